# SPDX-License-Identifier: Apache-2.0
"""epd_ppo.py costs, measured side by side in one process: tiny random models on the CPU; GPU check (issue 17).

    python benchmarks/epd_bench.py                  # 8 images, num_steps 11, K 2, 64 px; tiny SD1.5 and tiny SD3
    python benchmarks/epd_bench.py --num_points 4

1. EPD sampling with the K intermediate points of a step in one denoiser call (epd(..., batched=True)) vs one call per
   point (RLEPD's rollout way): same table, noise and prompts, outputs compared. Interleaved, best of two.
2. One PPO step (epd_ppo.ppo_step) at rollout 8 (2 prompts x 4 seeds), K 2, N 11 with the tiny HPS reward, split into
   rendering (epd), reward (decode + score) and the PPO update; best of three after a warm-up.

GPU check (`gpu_check()`, issue 17; `--gpu_check` needs CUDA, `--gpu_check --tiny` runs the same code on the CPU):
    python benchmarks/epd_bench.py --gpu_check
SD1.5 (UNet, VAE, CLIP text encoder from benchmarks/memory.py's written-out configs, random weights, built on the GPU
in fp16 as epd_ppo.load_pipeline loads it; SD1.5's scheduler config; the real CLIP BPE rebuilt offline) and the HPSv2.1
reward through score.py's own loader: open_clip's ViT-H-14 (the architecture of HPS_v2.1_compressed.pt; its parameter
count is checked against memory.ARCHS["clip-vit-h-14"]) with random weights, written as a {"state_dict": ...} file in
fp16 (2 GB; open_clip's load_state_dict casts it into the fp32 model score.py builds) and loaded by
score.MultiScorer({"hpsv2": 1}) as any HPS checkpoint folder (fp32 weights, fp16 autocast). Then, at 512², rollout 8
(2 prompts x 4 seeds), K 2, N 11: a warm-up `epd_ppo.ppo_step` on a one-step grid (same shapes), one timed ppo_step
split into rollout (epd_ppo.epd), reward (decode + HPS) and update (epd_ppo.ppo_update) with peak allocated GPU memory
per phase, then `epd_ppo.epd` with the K points of a step in one UNet call vs one call per point (same table, noise
and prompts; best of two each; outputs compared). Goal: <= 3 s per PPO step (RLEPD: 8.4 s on an H200).
Run from the repo root.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ["HF_HUB_OFFLINE"] = "1"

import epd_ppo as E  # noqa: E402


def build(fixture, tmp):
    """Run a session fixture function outside pytest."""
    return fixture.__wrapped__(type("F", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(prefix=n, dir=tmp))})())


# SD1.5's scheduler_config.json (PNDM); EPD reads only its alphas_cumprod and prediction_type (epsilon)
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
                      skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)  # fmt: skip


def gpu_check(tiny: bool = False) -> dict:
    """See the module docstring. Seconds, the K-batched speed-up and peak GiB per phase (None off CUDA).

    Budget (60 s on one H100/H200 with ~15 s of imports): FLOPs counted on the meta device (torch FlopCounterMode):
    SD1.5 UNet 0.80 TFLOP per row at 64x64 latents, VAE decode 2.5 TFLOP per 512² image, HPS ViT-H-14 0.38 TFLOP per
    image + prompt. One PPO step = 10 steps x (8 + 16 images) x 2 CFG rows = 480 UNet rows (385 TFLOP) + 8 decodes
    (20 TFLOP) + 8 HPS (3 TFLOP) ~ 0.41 PFLOP, ~1 s at 40 % of an H200's 989 dense fp16 TFLOP/s (an estimate). The
    run does ~5 steps' worth (warm-up on a one-step grid, the step, then four rollouts), ~2 PFLOP, ~5 s; the rest is
    building (SD1.5 on the GPU; ViT-H-14 built on the GPU and written, 2 GB, then score.py's fp32 CPU build and load:
    ~8 s on this repo's 2 slow CPU cores, measured) and the imports.
    """
    import gc

    import memory
    import open_clip
    import pytest
    import tiny_scorers
    from accelerate import Accelerator
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    import score

    if tiny:
        from gpu_check import TINY as archs
    else:
        archs = memory.ARCHS
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.float16  # epd_ppo.load_pipeline: SD1.x in fp16 on CUDA, fp32 on CPU
    px = 32 if tiny else 512
    cuda = device.type == "cuda"
    res = {"device": torch.cuda.get_device_name() if cuda else "cpu (tiny configs)", "tiny": tiny}

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def gib(x):
        return x / 2**30 if cuda else None

    def model(name):  # random weights, built on the device in the script's dtype
        return memory.build_on(name, device, dtype, archs)

    # models: SD1.5 as epd_ppo.load_pipeline leaves it (fp16, frozen, eval), without a folder on disk
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        tokenizer = tiny_scorers.save_real_clip_tokenizer(d)
    pipe = StableDiffusionPipeline(
        unet=model("sd15-unet"), vae=model("sd-vae"), text_encoder=model("clip-text-l"), tokenizer=tokenizer,
        scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    sync()
    res["build_sd15_s"] = time.perf_counter() - t

    # HPS: a random ViT-H-14 (tiny: the tests' tiny open_clip config) written where score.py looks for the checkpoint
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        name = arch = "ViT-H-14"  # score.py's default hps_arch
        if tiny:  # score.py registers a .json config under its file stem
            name, arch = "tiny-hps-vit", str(Path(d) / "tiny-hps-vit.json")
            Path(arch).write_text(json.dumps(tiny_scorers.TINY_OPEN_CLIP))
            open_clip.add_model_config(arch)
        with torch.device(device):  # initialised on the GPU (a CPU init of 1 B parameters costs seconds)
            scratch = open_clip.create_model(name, device=device)
        res["hps_params"] = sum(p.numel() for p in scratch.parameters())
        if not tiny and res["hps_params"] != memory.params("clip-vit-h-14"):
            raise RuntimeError(f"open_clip ViT-H-14 has {res['hps_params']} parameters, memory.ARCHS another count")
        state = {k: v.half().cpu() for k, v in scratch.state_dict().items()}
        del scratch
        torch.save({"state_dict": state}, Path(d) / score.HPS_FILES["v2.1"])
        del state
        scorer = score.MultiScorer({"hpsv2": 1.0}, device=device, hps_checkpoint=d, hps_arch=arch)
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    sync()
    res["build_hps_s"] = time.perf_counter() - t

    # the calls epd_ppo.train makes, at the paper's SD1.5 settings (rollout 8 = 2 prompts x 4 seeds, K 2, N 11)
    run = E.ScriptArguments()
    den = E.make_denoiser(pipe, 7.5, px, px)
    den.set_prompts(["a cat in the rain"] * 4 + ["two dogs on a bench"] * 4)
    sigmas = den.sigmas(11, "discrete", 1.0).to(device)
    x = E.initial_noise(range(8), den.shape, float(sigmas[0]), device)
    policy = E.DirichletPolicy(*E.cold_start(11, 2, 0.5, 0.33), concentration=20.0, hidden=128).to(device)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=run.learning_rate, weight_decay=0.0)
    base_alphas = (policy.base_log_alpha_pos.exp(), policy.base_log_alpha_w.exp())
    reward_fn = E.make_reward_fn(den, scorer, {"hpsv2": 1.0})
    accelerator = Accelerator(cpu=not cuda)
    res["resident_gib"] = gib(torch.cuda.memory_allocated() if cuda else 0)

    def measured(name, fn):  # seconds (the best of the calls) and peak allocated memory of a phase, as called
        def wrapper(*args, **kwargs):
            sync()
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            res[f"{name}_s"] = min(res.get(f"{name}_s", float("inf")), time.perf_counter() - t)
            res[f"{name}_peak_gib"] = gib(torch.cuda.max_memory_allocated() if cuda else 0)
            return out

        return wrapper

    E.ppo_step(policy, optimizer, accelerator, base_alphas, den, x, sigmas[:2], reward_fn, run, seed=0)  # warm-up
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(E, "epd", measured("rollout", E.epd))
        mp.setattr(E, "ppo_update", measured("update", E.ppo_update))
        sync()
        t = time.perf_counter()
        timed_reward = measured("reward", reward_fn)
        E.ppo_step(policy, optimizer, accelerator, base_alphas, den, x, sigmas, timed_reward, run, seed=1)
        sync()
        res["step_s"] = time.perf_counter() - t

    # K-batched vs per-point EPD sampling: the cold-start table, the same noise and prompts; best of two, in the order
    # A B B A so that a drifting clock favours neither
    pos, w = (v.to(device) for v in E.cold_start(11, 2, 0.5, 0.33))
    outs = {}
    for name in ("k_batched", "per_point", "per_point", "k_batched"):
        outs[name] = measured(name, E.epd)(den, x, sigmas, pos, w, batched=name == "k_batched")
    res["k_speedup"] = res["per_point_s"] / res["k_batched_s"]
    res["k_max_abs_diff"] = (outs["k_batched"] - outs["per_point"]).abs().max().item()
    return res


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--num_steps", type=int, default=11)
    p.add_argument("--num_points", type=int, default=2)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--gpu_check", action="store_true", help="real architectures on CUDA (see the docstring)")
    p.add_argument("--tiny", action="store_true", help="with --gpu_check: tiny configs on the CPU")
    args = p.parse_args()
    if args.gpu_check:
        if not args.tiny and not torch.cuda.is_available():
            p.error("--gpu_check needs CUDA (add --tiny for the CPU dry run)")
        res = gpu_check(tiny=args.tiny)
        for k, v in res.items():
            print(f"{k:<18} {v:.4g}" if isinstance(v, float) else f"{k:<18} {v}")
        print(f"goal: <= 3 s per PPO step (RLEPD: 8.4 s on an H200): {res['step_s']:.2f} s; K points in one call "
              f"{res['k_speedup']:.2f}x faster than one call per point")  # fmt: skip
        return
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
