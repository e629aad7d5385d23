# SPDX-License-Identifier: Apache-2.0
"""EPD sampling with the K intermediate points of a step batched into one UNet call vs one call per point (RLEPD's
rollout way), on the tiny SD1.5 UNet (CPU, offline), same table, noise and prompts, measured side by side.

    python benchmarks/epd_bench.py                  # 8 images, num_steps 11, K 2, 64 px
    python benchmarks/epd_bench.py --num_points 4
Run from the repo root.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import epd_ppo as E  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--num_steps", type=int, default=11)
    p.add_argument("--num_points", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    import conftest

    folder = conftest.tiny_sd15.__wrapped__(
        type("F", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(prefix=n))})()
    )
    pipe = E.load_pipeline(folder, torch.device("cpu"))
    den = E.SDDenoiser(pipe, 7.5)
    den.set_prompts([f"prompt {i}: a red cube on a blue sphere" for i in range(args.images)])
    sigmas = E.get_sigmas(args.num_steps, "discrete", alphas_cumprod=pipe.scheduler.alphas_cumprod)
    pos, w = E.cold_start(args.num_steps, args.num_points, 0.5, 0.33)
    x = E.initial_noise(range(args.images), (4, args.size // 8, args.size // 8), float(sigmas[0]), torch.device("cpu"))
    times, outs = {}, {}
    for batched in (False, True, False, True):  # interleaved, best of two
        t = time.perf_counter()
        outs[batched] = E.epd(den, x, sigmas, pos, w, batched=batched)
        times[batched] = min(times.get(batched, float("inf")), time.perf_counter() - t)
    print(
        f"EPD {args.images} images, num_steps {args.num_steps}, K {args.num_points}, {args.size} px, tiny SD1.5 UNet, CPU"
    )
    print(f"one UNet call per point : {times[False]:.2f} s")
    print(f"K points in one call    : {times[True]:.2f} s   speed-up {times[False] / times[True]:.2f}x "
          f"(max |diff| {(outs[True] - outs[False]).abs().max():.1e})")  # fmt: skip


if __name__ == "__main__":
    main()
