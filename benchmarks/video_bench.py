# SPDX-License-Identifier: Apache-2.0
"""video_enhancer.py costs on tiny random models (CPU, offline), measured side by side in one process:
videos/s batched per group vs one at a time (pipeline only, and through the cache with mp4 encoding and the atomic
write); a repeated prompt served from the cache (each hit is decoded once to check it); reward cost per video.

    python benchmarks/video_bench.py             # tiny Wan, 8 videos (2 groups of 4), 4 steps, two clip sizes
Run from the repo root. The same functions on the real Wan 1.3B (33 frames, 480p) are what benchmarks/gpu_check.py
times on a GPU: video_enhancer.video_dtype(...) for the precision, video_enhancer.render_videos(...) for the rendering.
"""

import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import video_enhancer as V  # noqa: E402


def rate(fn, n: int, repeat: int = 2) -> float:
    """Items per second, best of `repeat` runs (the first call of each setting is a warm-up)."""
    fn(1)
    best = min(_timed(fn, n) for _ in range(repeat))
    return n / best


def _timed(fn, n):
    t = time.perf_counter()
    fn(n)
    return time.perf_counter() - t


def main():
    import conftest
    import diffusers
    import tiny_scorers
    import transformers
    from diffusers import DiffusionPipeline

    import score

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()

    factory = type("F", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(prefix=n))})()
    wan = conftest.tiny_wan.__wrapped__(factory)
    pipe = DiffusionPipeline.from_pretrained(wan, dtype=V.video_dtype("WanPipeline", torch.device("cpu")))
    pipe.set_progress_bar_config(disable=True)
    prompts = [f"a dog surfing at sunset, take {i}" for i in range(8)]
    seeds = [7] * 4 + [8] * 4  # two groups of 4, one seed per group (as in training)
    print(f"tiny Wan (CPU, {torch.get_num_threads()} threads), {len(prompts)} videos, 4 steps, CFG 5")
    for frames, px in ((9, 32), (33, 64)):
        size = dict(num_frames=frames, height=px, width=px, num_inference_steps=4, fps=8)
        r = {}
        for bs in (1, 4):
            args = V.ScriptArguments(video_model=wan, video_batch_size=bs, **size)
            r[bs] = rate(lambda n, a=args: V.render_videos(pipe, prompts[:n], seeds[:n], a), len(prompts))
        c = {}
        for bs in (1, 4):
            args = V.ScriptArguments(video_model=wan, video_batch_size=bs, **size)
            videos = V.Videos(args, tempfile.mkdtemp(), torch.device("cpu"))

            def generate(n, v=videos):  # an empty cache each time: every video is rendered, encoded and written
                v.cache = Path(tempfile.mkdtemp())
                v(prompts[:n], seeds[:n])

            c[bs] = rate(generate, len(prompts))
        videos.cache = Path(tempfile.mkdtemp())
        t = time.perf_counter()
        paths = videos(prompts, seeds)  # generated
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        assert videos(prompts, seeds) == paths
        hit = len(prompts) / (time.perf_counter() - t)
        print(f"{frames} frames, {px} px:")
        print(
            f"  pipeline only       one per call {r[1]:6.2f} videos/s | batched per group of 4 {r[4]:6.2f} | {r[4] / r[1]:.2f}x"
        )
        print(f"  + mp4 + cache write one per call {c[1]:6.2f} videos/s | batched per group of 4 {c[4]:6.2f} | {c[4] / c[1]:.2f}x")  # fmt: skip
        print(f"  repeat from the cache (decoded once to check) {hit:.0f} videos/s (generating them: {len(prompts) / t_gen:.1f} videos/s)")  # fmt: skip
    built = tiny_scorers.build_tiny_scorers(Path(tempfile.mkdtemp()))
    scorer = score.MultiScorer(score.parse_metric_weights("clip:1,aesthetic:0.1"), **built.paths)
    for n in (2, 4, 8):
        t = time.perf_counter()
        frames = [f for p in paths for f in V.sample_frames(p, n)]
        scorer(frames, ["a dog surfing at sunset"] * len(frames))
        ms = 1000 * (time.perf_counter() - t) / len(paths)
        print(f"reward with {n} frames/video (33 x 64 px clip): {ms:.1f} ms per video (decode + score)")


if __name__ == "__main__":
    main()
