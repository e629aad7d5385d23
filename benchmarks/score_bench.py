# SPDX-License-Identifier: Apache-2.0
"""Images/s of score.py's batched scoring vs one image at a time, on the same models, measured side by side.

    python benchmarks/score_bench.py                      # tiny random-weight models (CPU, offline), all 7 metrics
    python benchmarks/score_bench.py --n 64 --batch_size 32 --metrics hpsv3,pickscore

Each metric is timed twice in one process on the same images: batch_size=1 (one forward per image, as
`ImageReward.inference_rank`, `hpsv2.score` and MPS's eval do) and batch_size=B; the ratio is printed. The tiny models
keep every metric's real input pipeline (224 px CLIP-family crops, HPSv3's 256*28*28-pixel budget = ~256 image
tokens + ~1k text tokens per pair), so the ratios show batching of the whole pipeline, not of real-size models.
Run from the repo root.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from tiny_scorers import build_tiny_scorers  # noqa: E402

import score  # noqa: E402


def timed(scorer, images, prompts, repeats=3):
    scorer(images[:2], prompts[:2])  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        scorer(images, prompts)
        best = min(best, time.perf_counter() - t)
    return len(images) / best


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="images per measurement")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--metrics", default=",".join(score.METRICS))
    p.add_argument("--size", type=int, default=256, help="generated image side in pixels")
    args = p.parse_args()
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.n)]
    # equal-length prompts, as in a GRPO group (one prompt, many images): HPSv3 then batches without padding
    prompts = [f"prompt {i % 100:02d}: a red cube on a blue sphere" for i in range(args.n)]
    paths = build_tiny_scorers(Path(tempfile.mkdtemp())).paths
    print(f"{args.n} images of {args.size}px, tiny random-weight models, device={score.device_dtype('clip')[0]}")
    print(f"{'metric':<12} {'1-at-a-time img/s':>18} {f'batch {args.batch_size} img/s':>16} {'speed-up':>9}")
    for name in score.parse_metric_weights(args.metrics):
        one = timed(score.load_scorer(name, batch_size=1, **paths), images, prompts)
        many = timed(score.load_scorer(name, batch_size=args.batch_size, **paths), images, prompts)
        print(f"{name:<12} {one:>18.1f} {many:>16.1f} {many / one:>8.2f}x")


if __name__ == "__main__":
    main()
