# SPDX-License-Identifier: Apache-2.0
"""epd_ppo.py costs on tiny random models (CPU, offline), measured side by side in one process.

    python benchmarks/epd_bench.py                  # 8 images, num_steps 11, K 2, 64 px; tiny SD1.5 and tiny SD3
    python benchmarks/epd_bench.py --num_points 4

1. EPD sampling with the K intermediate points of a step in one denoiser call (epd(..., batched=True)) vs one call per
   point (RLEPD's rollout way): same table, noise and prompts, outputs compared. Interleaved, best of two.
2. One PPO step (epd_ppo.ppo_step) at rollout 8 (2 prompts x 4 seeds), K 2, N 11 with the tiny HPS reward, split into
   rendering (epd), reward (decode + score) and the PPO update; best of three after a warm-up.
Run from the repo root.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ["HF_HUB_OFFLINE"] = "1"

import epd_ppo as E  # noqa: E402


def build(fixture, tmp):
    """Run a session fixture function outside pytest."""
    return fixture.__wrapped__(type("F", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(prefix=n, dir=tmp))})())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--num_steps", type=int, default=11)
    p.add_argument("--num_points", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    import conftest
    import test_epd_ppo
    import tiny_scorers
    from accelerate import Accelerator

    import score

    tmp, cpu = tempfile.mkdtemp(), torch.device("cpu")
    models = {"SD1.5": build(conftest.tiny_sd15, tmp), "SD3": build(test_epd_ppo.tiny_sd3, tmp)}
    print(
        f"1. EPD sampling, {args.images} images, num_steps {args.num_steps}, K {args.num_points}, {args.size} px, CPU"
    )
    for name, folder in models.items():
        den = E.make_denoiser(E.load_pipeline(folder, cpu), None, args.size, args.size)
        den.set_prompts([f"prompt {i}: a red cube on a blue sphere" for i in range(args.images)])
        sigmas = den.sigmas(args.num_steps, "discrete" if name == "SD1.5" else "flowmatch", 1.0)
        pos, w = E.cold_start(args.num_steps, args.num_points, 0.5, 0.33)
        x = E.initial_noise(range(args.images), den.shape, float(sigmas[0]), cpu)
        times, outs = {}, {}
        for batched in (False, True, False, True):
            t = time.perf_counter()
            outs[batched] = E.epd(den, x, sigmas, pos, w, batched=batched)
            times[batched] = min(times.get(batched, float("inf")), time.perf_counter() - t)
        print(f"   tiny {name:<5}: one call per point {times[False]:.2f} s | K points in one call {times[True]:.2f} s | "
              f"speed-up {times[False] / times[True]:.2f}x (max |diff| {(outs[True] - outs[False]).abs().max():.1e})")  # fmt: skip

    print(f"2. one PPO step, rollout 8, K 2, N 11, {args.size} px, tiny SD1.5 + tiny HPS reward, CPU")
    scorers = tiny_scorers.build_tiny_scorers(Path(tempfile.mkdtemp(dir=tmp)))
    for k, v in scorers.env.items():
        os.environ[k] = v
    den = E.make_denoiser(E.load_pipeline(models["SD1.5"], cpu), None, args.size, args.size)
    sigmas = den.sigmas(11, "discrete", 1.0)
    reward_fn = E.make_reward_fn(den, score.MultiScorer({"hpsv2": 1.0}, device=cpu), {"hpsv2": 1.0})
    run = E.ScriptArguments()  # the paper run: group 4, minibatch 4, lr 7e-5
    policy = E.DirichletPolicy(*E.cold_start(11, 2, 0.5, 0.33), run.concentration, run.hidden_dim)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=run.learning_rate, weight_decay=0.0)
    base = (policy.base_log_alpha_pos.exp(), policy.base_log_alpha_w.exp())
    acc, split = Accelerator(cpu=True), {}

    def timed(name, fn):
        def wrapper(*a, **kw):
            t = time.perf_counter()
            out = fn(*a, **kw)
            split[name] = split.get(name, 0.0) + time.perf_counter() - t
            return out

        return wrapper

    E.epd, E.ppo_update = timed("render", E.epd), timed("update", E.ppo_update)
    best = None
    for step in range(4):
        den.set_prompts(["a cat in the rain"] * 4 + ["two dogs on a bench"] * 4)
        x = E.initial_noise(range(8 * step, 8 * step + 8), den.shape, float(sigmas[0]), cpu)
        split.clear()
        t = time.perf_counter()
        E.ppo_step(policy, optimizer, acc, base, den, x, sigmas, timed("reward", reward_fn), run, seed=step)
        total = time.perf_counter() - t
        if step and (best is None or total < best[0]):
            best = (total, dict(split))
    total, split = best
    print(f"   {total:.2f} s/step: render {split['render']:.2f} s, reward {split['reward']:.2f} s, "
          f"update {split['update']:.3f} s")  # fmt: skip


if __name__ == "__main__":
    main()
