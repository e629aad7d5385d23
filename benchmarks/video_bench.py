# SPDX-License-Identifier: Apache-2.0
"""video_enhancer.py costs on tiny random models (CPU, offline), measured side by side in one process:
videos/s batched per group vs one at a time; a repeated prompt served from the cache; reward cost per video.

    python benchmarks/video_bench.py             # tiny Wan, 8 videos of 9 frames at 32 px, 4 steps
Run from the repo root.
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import video_enhancer as V  # noqa: E402


def main():
    import conftest
    import tiny_scorers

    import score

    factory = type("F", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(prefix=n))})()
    wan = conftest.tiny_wan.__wrapped__(factory)
    prompts = [f"a dog surfing at sunset, take {i}" for i in range(8)]
    seeds = [7] * 8
    rates = {}
    for bs in (1, 4):
        args = V.ScriptArguments(
            video_model=wan, num_frames=9, height=32, width=32, num_inference_steps=4, fps=8, video_batch_size=bs
        )
        videos = V.Videos(args, tempfile.mkdtemp(), torch.device("cpu"))
        videos(["warm-up"], [0])
        t = time.perf_counter()
        paths = videos(prompts, seeds)
        rates[bs] = len(prompts) / (time.perf_counter() - t)
    t = time.perf_counter()
    videos(prompts, seeds)
    hit = len(prompts) / (time.perf_counter() - t)
    print(f"tiny Wan, {len(prompts)} videos x 9 frames, 32 px, 4 steps, CPU")
    print(
        f"one per call {rates[1]:.2f} videos/s | batched per group of 4 {rates[4]:.2f} videos/s | speed-up {rates[4] / rates[1]:.2f}x"
    )
    print(f"repeat from cache {hit:.0f} videos/s ({hit / rates[4]:.0f}x the batched generation)")
    paths_tiny = tiny_scorers.build_tiny_scorers(Path(tempfile.mkdtemp())).paths
    scorer = score.MultiScorer(score.parse_metric_weights("clip:1,aesthetic:0.1"), **paths_tiny)
    for n in (2, 4, 8):
        t = time.perf_counter()
        frames = [f for p in paths for f in V.sample_frames(p, n)]
        scorer(frames, ["a dog surfing at sunset"] * len(frames))
        print(
            f"reward with {n} frames/video: {1000 * (time.perf_counter() - t) / len(paths):.1f} ms per video (decode + score)"
        )


if __name__ == "__main__":
    main()
