# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "diffusers>=0.40", "transformers>=5.0", "accelerate>=1.10", "trl>=1.0",
#                 "open_clip_torch>=3.0", "pillow>=10.0", "tqdm"]
# ///
"""EPD parallel ODE solver for diffusion models, its baselines, and RLEPD's residual-Dirichlet PPO on the EPD table.

README section: "epd_ppo.py". EPD-Solver (Zhu et al., "Distilling Parallel Gradients for Fast ODE Solvers of
Diffusion Models", ICCV 2025, arXiv 2507.14797; github.com/BeierZhu/EPD) replaces each step of a probability-flow ODE
solver by K slopes evaluated *in parallel* at learned intermediate noise levels and mixed with learned weights:
    d_n = (x_n - D(x_n; t_n)) / t_n,  tau_k = t_{n+1}^{r_k} t_n^{1-r_k},  x_k = x_n + (tau_k - t_n) d_n,
    x_{n+1} = x_n + (t_{n+1} - t_n) sum_k w_k (x_k - D(x_k; tau_k)) / tau_k.
RLEPD / RDPO (Wang, Li, Zhu et al., "Parallel Diffusion Solver via Residual Dirichlet Policy Optimization",
arXiv 2512.22796; github.com/Ziyuli1121/RLEPD) tunes that table (r, w per step) with PPO: each step's positions are a
Dirichlet over K+1 segments (cumulative sums, so always ordered) and its weights a Dirichlet over K; a small residual
MLP on a step embedding, zero-initialised, corrects the cold-start concentrations; every rollout image samples its own
table; the reward is HPSv2.1. Paper (SD1.5 512², 1000 prompts, HPSv2.1 at NFE 20): DDIM-20 0.2416, DPM-Solver-2
0.2435, iPNDM 0.2454, EPD+RL **0.2482** (DDIM-50: 0.2454); 9,000 PPO steps on one H200 (8.4 s/step, ~21 h).
SD3-Medium 1024² (RDPO paper): EPD+RL at NFE 20 0.2823 vs DDIM-28 0.2820.

Models (the pipeline class picks the wrapper): SD1.x/2.x as an EDM denoiser (RLEPD's CFGPrecond on diffusers
components); SD3 and FLUX (rectified flow x_t = (1-t) x0 + t eps) as D(x_t; t) = x_t - t v, with the ODE in (x_t, t):
dx_t/dt = v = (x_t - D)/t is exactly the EDM form with sigma := t, so every solver runs unchanged; the grid is the
scheduler's own shifted one ("flowmatch", FLUX's resolution-dependent mu included), as RLEPD's SD3/FLUX backends do.

Differences from the reference code:
1. Advantage: leave-one-out baseline within each prompt's group by default. RLEPD reshapes prompt-major rewards
   `view(k, G)`, which mixes prompts in each baseline; `--mixed_prompt_baseline` reproduces that (its paper runs used it).
   Advantages are standardised over the whole batch of all processes (RLEPD: per process), so N processes make
   exactly the update of one process with the same global batch (tested).
2. The K intermediate evaluations of a step are one batched denoiser call (RLEPD's rollouts loop over k).
3. Diffusers components instead of the CompVis LDM code; eps- and v-prediction UNets both work. The exported table is
   JSON and carries its settings (num_steps, num_points, schedule, rho, guidance_scale), which `--sample` follows.
4. The policy, PPO and export follow RLEPD 5258a7f; c_k / a_k scale heads (unused for SD1.5) are not implemented.
5. Flow models: the state is x_t itself with sigma := t (RLEPD HEAD's SD3/FLUX backends), not the VE rescaling
   x_t/(1-t) with sigma = t/(1-t): that one starts at sigma = infinity on the t = 1 grids these schedulers use.
6. Rollout tables: each sampled segment/weight vector is clamped at 1e-6 and renormalised (RLEPD uses the raw
   rsample): a float32 Dirichlet draw at small concentrations can be exactly 0, a -inf log-prob and a position of
   exactly 0 or 1. The log-probs are those of the clamped draws.
7. Reward normalisation: RLEPD's for hpsv2, pickscore, imagereward (on its +3.1-offset ImageReward), clip, aesthetic;
   hpsv3 (not in RLEPD) maps its benchmark's model means SD2 -0.24 .. Kolors 10.55 to 0 .. 1; mps has none (refused).

NFE (sequential denoiser calls per image, CFG counted once as in the paper) for --num_steps N:
    ddim N-1 | ipndm N-1 | dpm2 2(N-1) | heun 2(N-1) | epd 2(N-1) sequential, (K+1)(N-1) evaluations.
    Paper rows: DDIM 20 = --num_steps 21; EPD "Step 10, NFE 20" = --num_steps 11 --num_points 2.

Usage (run from the repository root; `python epd_ppo.py --help` lists every flag):
    # PPO at the paper-best SD1.5 settings (rollout 8 = 2 prompts x 4 seeds, lr 7e-5, concentration 20, HPSv2.1) on
    # ONE GPU, as RLEPD (one H200, 8.4 s/step): recipes/epd_ppo_sd15.yaml, hardware 1 x 80GB (frozen fp16 SD1.5, the
    # HPS ViT-H-14 scorer and a 35k-parameter policy; computed per-GPU memory: README "Memory per GPU")
    accelerate launch epd_ppo.py --config recipes/epd_ppo_sd15.yaml --prompt_file coco_captions.csv
    # several GPUs: plain DDP splits each rollout and makes the same update (ZeRO/FSDP buy nothing at 35k parameters)
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 8 epd_ppo.py \
        --config recipes/epd_ppo_sd15.yaml --prompt_file coco_captions.csv --rollout_batch_size 64   # 8 images per GPU
    # sample with the learned table (its own settings), and baselines on the same seeds; then score with score.py
    python epd_ppo.py --sample --table runs/epd/table.json --prompt_file test.txt --outdir samples/epd
    python epd_ppo.py --sample --solver ddim --num_steps 21 --prompt_file test.txt --outdir samples/ddim20
    python epd_ppo.py "a cat in the rain" --table runs/epd/table.json --outdir samples/cat    # laptop: one prompt
    python score.py --metrics hpsv2,pickscore,imagereward,clip,aesthetic --images samples/epd --prompts test.txt
    # SD3-Medium 512² with the rollout and concentration of RLEPD's SD3 512 run (flowmatch grid, CFG 4.5: SD3 defaults)
    accelerate launch epd_ppo.py --model_id stabilityai/stable-diffusion-3-medium-diffusers --rollout_batch_size 16 \
        --concentration 10 --prompt_file coco_captions.csv --outdir runs/epd_sd3
    # CPU smoke run (tiny models: 2 PPO steps, resume, export, sampling; no device flags)
    python -m pytest tests/test_epd_ppo.py -k end_to_end
Resumes from `<outdir>/checkpoint.pt` when present. Every step is seeded from (seed, step, image index), never from
the process rank. A non-finite reward, log-prob or parameter stops the run with one `error:` line and keeps the last
finite policy as the checkpoint; Ctrl-C or a crash saves the last completed step first. Expected: training HPS ~0.26
on MS-COCO captions, exported-table HPSv2.1 ~0.248 on the 1000 test prompts (not reproduced here: no GPU was lent).
`ppo_step()` is the method in one function (rollout -> reward -> advantage -> PPO); copy it for your own model/reward.
"""

import copy
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

# bitsandbytes' CPU backend (imported by diffusers/peft) logs a missing optional kernel on every import
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

SCHEDULES = ("discrete", "time_uniform", "polynomial", "logsnr", "flowmatch")  # flowmatch: SD3/FLUX only
FLOW_PIPELINES = {"StableDiffusion3Pipeline": 4.5, "FluxPipeline": 3.5}  # -> default guidance (RLEPD backends)
VP_PIPELINES = {"StableDiffusionPipeline": 7.5}
TABLE_SETTINGS = {"num_steps": int, "num_points": int, "schedule": str, "rho": float, "guidance_scale": float}
# RLEPD's vendored ImageReward (reward_models/imagereward/ImageReward.py) returns the standard score + 3 x 1.03334 (its
# std) = + 3.1000, and reward_multi (training/ppo/reward_multi.py) divides THAT by 10; score.py returns the standard
# score, so the offset is added back here: without it every image below the ImageReward mean would map to 0
IMAGEREWARD_OFFSET = 3 * 1.0333394966054072
# HPSv3 (Ma et al., ICCV 2025, arXiv 2508.03789) has no RLEPD normalisation: its benchmark's lowest and highest model
# means (SD2 -0.24, Kolors 10.55) map to 0 and 1. Not clamped: single images of good models score above the top mean
HPSV3_RANGE = (-0.24, 10.55)
NORMALISE = {  # RLEPD reward_multi: each metric mapped to ~[0, 1] before weighting
    "hpsv2": lambda s: s.clamp(0, 1), "pickscore": lambda s: (s / 26).clamp(0, 1),
    "imagereward": lambda s: ((s + IMAGEREWARD_OFFSET) / 10).clamp(0, 1), "clip": lambda s: s.clamp(0, 1),
    "aesthetic": lambda s: (s / 10).clamp(0, 1),
    "hpsv3": lambda s: (s - HPSV3_RANGE[0]) / (HPSV3_RANGE[1] - HPSV3_RANGE[0]),
}  # fmt: skip


@dataclass
class ScriptArguments:
    # model and solver
    model_id: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5",
        metadata={"help": "Diffusers pipeline id or folder: SD1.x/2.x, SD3 or FLUX."},
    )
    solver: str = field(default="epd", metadata={"help": "epd | ddim | dpm2 | heun | ipndm (sampling)."})
    num_steps: int = field(default=11, metadata={"help": "Noise levels N >= 2 (N-1 steps); EPD table rows = N-1."})
    num_points: int = field(default=2, metadata={"help": "EPD parallel points K >= 1 per step."})
    schedule: str = field(
        default="auto", metadata={"help": f"auto (discrete for SD, flowmatch for SD3/FLUX) | {' | '.join(SCHEDULES)}."}
    )
    rho: float = field(default=1.0, metadata={"help": "Schedule exponent > 0 (7 for EDM's polynomial)."})
    max_order: int = field(default=4, metadata={"help": "iPNDM order 1-4 (the paper's iPNDM rows use 3)."})
    guidance_scale: float | None = field(
        default=None, metadata={"help": "CFG scale (FLUX: embedded guidance); default SD 7.5, SD3 4.5, FLUX 3.5."}
    )
    height: int = field(default=512, metadata={"help": "Image height (multiple of 8; SD3/FLUX: of 16)."})
    width: int = field(default=512, metadata={"help": "Image width (multiple of 8; SD3/FLUX: of 16)."})
    prompt_file: str | None = field(default=None, metadata={"help": "Prompts: .txt lines or .csv `text` column."})
    outdir: str = field(default="runs/epd", metadata={"help": "Run folder (training) or image folder (sampling)."})
    seed: int = field(default=0, metadata={"help": "Training: rollouts seeded by (seed, step); sampling: first seed."})
    # sampling
    sample: bool = field(default=False, metadata={"help": "Sample images instead of training (implied by PROMPTs)."})
    table: str | None = field(default=None, metadata={"help": "EPD table (.json, as exported): sample or start."})
    batch_size: int = field(default=4, metadata={"help": "Images per sampling batch."})
    device: str | None = field(default=None, metadata={"help": "Sampling device (default cuda > mps > cpu)."})
    # RL (defaults: RLEPD run sd15_k20, the paper's SD1.5 row)
    r_base: float = field(default=0.5, metadata={"help": "Cold start: positions spread around r_base."})
    r_epsilon: float = field(default=0.33, metadata={"help": "Cold start: span r_base +- r_epsilon/2 (.335, .665)."})
    concentration: float = field(default=20.0, metadata={"help": "Base Dirichlet concentration (sum of alphas)."})
    hidden_dim: int = field(default=128, metadata={"help": "Policy MLP width."})
    rollout_batch_size: int = field(default=8, metadata={"help": "Images per PPO step, all processes together."})
    group_size: int = field(default=4, metadata={"help": "Seeds per prompt (RLEPD rloo_k), >= 2."})
    minibatch_size: int = field(default=4, metadata={"help": "PPO minibatch (images, all processes together)."})
    ppo_epochs: int = field(default=1, metadata={"help": "Passes over each rollout batch."})
    learning_rate: float = field(default=7e-5, metadata={"help": "AdamW learning rate."})
    clip_range: float = field(default=0.2, metadata={"help": "PPO ratio clip."})
    kl_coef: float = field(default=0.0, metadata={"help": "KL to the cold-start Dirichlet (paper: 0)."})
    entropy_coef: float = field(default=0.0, metadata={"help": "Entropy bonus (paper: 0)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping."})
    mixed_prompt_baseline: bool = field(default=False, metadata={"help": "RLEPD's mixed-prompt LOO baseline."})
    reward: str = field(default="hpsv2", metadata={"help": 'score.py metrics:weights, e.g. "hpsv2:1,pickscore:1".'})
    total_steps: int = field(default=9000, metadata={"help": "PPO steps (paper best: 9000)."})
    save_interval: int = field(default=500, metadata={"help": "Checkpoint + table export every N steps."})


########################
# Schedules (RLEPD solver_utils.get_schedule; SD's continuous time from alphas_cumprod)
########################
def interp(x, xp, fp):
    """Piecewise-linear interpolation with linear extrapolation (DPM-Solver interpolate_fn); xp increasing."""
    i = torch.searchsorted(xp, x.clamp(xp[0], xp[-1])).clamp(1, len(xp) - 1)
    x0, x1, f0, f1 = xp[i - 1], xp[i], fp[i - 1], fp[i]
    return f0 + (x - x0) * (f1 - f0) / (x1 - x0)


class VPTime:
    """Continuous time t in (0, 1] of a discrete VP model: log alpha interpolated over t_i = (i+1)/T (RLEPD CFGPrecond)."""

    def __init__(self, alphas_cumprod):
        acp = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        self.steps = len(acp)  # T: 1000 for SD, but read from the scheduler
        self.t = torch.arange(1, self.steps + 1, dtype=torch.float64) / self.steps
        self.log_alpha = 0.5 * acp.log()

    def sigma(self, t):
        return torch.sqrt(torch.exp(-2 * interp(torch.as_tensor(t, dtype=torch.float64), self.t, self.log_alpha)) - 1)

    def sigma_inv(self, sigma):
        log_alpha = -0.5 * torch.log1p(torch.as_tensor(sigma, dtype=torch.float64) ** 2)
        return interp(log_alpha, self.log_alpha.flip(0), self.t.flip(0))  # log alpha decreases with t


def sd15_alphas_cumprod():
    """SD1.x "scaled_linear" betas (0.00085..0.012, 1000 steps) = LDM's "linear" schedule."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def get_sigmas(num_steps, schedule="discrete", rho=1.0, alphas_cumprod=None):
    """Descending noise levels t_0 = sigma_max > ... > t_{N-1} = sigma_min (EDM sigma space, VP models)."""
    vp = VPTime(sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod)
    smin, smax = float(vp.sigma(vp.t[0])), float(vp.sigma(1.0))  # SD1.5: 0.029168, 14.6146
    i = torch.arange(num_steps, dtype=torch.float64) / (num_steps - 1)
    if schedule == "polynomial":
        s = (smax ** (1 / rho) + i * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    elif schedule == "logsnr":
        s = torch.exp(math.log(smax) + i * (math.log(smin) - math.log(smax)))
    elif schedule == "time_uniform":  # DPM-Solver's fitted VP-SDE, eps_s = 1e-3
        eps = 1e-3
        beta_d = 2 * (math.log(smin**2 + 1) / eps - math.log(smax**2 + 1)) / (eps - 1)
        beta_min = math.log(smax**2 + 1) - 0.5 * beta_d
        u = (1 + i * (eps ** (1 / rho) - 1)) ** rho
        s = torch.sqrt(torch.exp(beta_d * u**2 / 2 + beta_min * u) - 1)
    elif schedule == "discrete":  # uniform in the model's own continuous time
        tmin, tmax = vp.sigma_inv(smin), vp.sigma_inv(smax)
        s = vp.sigma((tmax ** (1 / rho) + i * (tmin ** (1 / rho) - tmax ** (1 / rho))) ** rho)
    else:
        raise ValueError(f"unknown schedule {schedule!r} for an SD (VP) model; valid: {', '.join(SCHEDULES[:4])}")
    return s.float()


########################
# Solvers: solver(denoise, x, sigmas, **params) -> x, with denoise(x, sigma[B]) = D(x; sigma), slope (x - D) / sigma
########################
def slope(denoise, x, t):
    t = t.expand(x.shape[0]) if t.dim() == 0 else t
    return (x - denoise(x, t)) / t.view(-1, *[1] * (x.dim() - 1))


def ddim(denoise, x, sigmas):
    """Euler on the probability-flow ODE = deterministic DDIM (= flow-matching Euler for SD3/FLUX). NFE N-1."""
    for t, t_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x = x + (t_next - t) * slope(denoise, x, t)
    return x


def dpm2(denoise, x, sigmas, r=0.5):
    """DPM-Solver-2: Euler to s = t_next^r t^(1-r), then the r-weighted update (r = 0.5: midpoint). NFE 2(N-1)."""
    for t, t_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = slope(denoise, x, t)
        s = t_next ** torch.tensor(r) * t ** (1 - torch.tensor(r))  # tensor exponents: same kernel as epd's tau
        d_mid = slope(denoise, x + (s - t) * d, s)
        x = x + (t_next - t) * (d_mid / (2 * r) + (1 - 1 / (2 * r)) * d)
    return x


def heun(denoise, x, sigmas):
    """Heun's 2nd order method on the given grid (EDM Alg. 1 without churn, no appended sigma=0). NFE 2(N-1)."""
    for t, t_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        d = slope(denoise, x, t)
        x_pred = x + (t_next - t) * d
        x = x + (t_next - t) * 0.5 * (d + slope(denoise, x_pred, t_next))
    return x


IPNDM = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}


def ipndm(denoise, x, sigmas, max_order=4):
    """iPNDM: Adams-Bashforth on buffered slopes (fixed-step coefficients, as upstream), warm-up by order. NFE N-1."""
    history = []
    for t, t_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        history = [slope(denoise, x, t), *history][:max_order]
        x = x + (t_next - t) * sum(c * d for c, d in zip(IPNDM[len(history)], history, strict=True))
    return x


def epd(denoise, x, sigmas, positions, weights, batched=True):
    """EPD step: K intermediate slopes at tau_k = t_next^r_k t^(1-r_k), mixed by w_k (module docstring).

    positions, weights: (N-1, K) for all images or (B, N-1, K), one table per image. With batched=True the K
    evaluations are one denoiser call of B*K samples (image-major: image b's points are rows b*K ... b*K+K-1).
    """
    b, k = x.shape[0], positions.shape[-1]
    pos, w = positions.expand(b, *positions.shape[-2:]), weights.expand(b, *weights.shape[-2:])
    view = (b, k, *[1] * (x.dim() - 1))
    for n, (t, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:], strict=True)):
        d = slope(denoise, x, t)
        tau = t_next ** pos[:, n] * t ** (1 - pos[:, n])  # (B, K)
        x_k = x[:, None] + (tau.view(view) - t) * d[:, None]  # (B, K, ...)
        if batched:
            d_k = slope(denoise, x_k.flatten(0, 1), tau.flatten()).view(x_k.shape)
        else:  # upstream's rollout way: one call per point
            d_k = torch.stack([slope(denoise, x_k[:, j], tau[:, j]) for j in range(k)], 1)
        x = x + (t_next - t) * (w[:, n].view(view) * d_k).sum(1)
    return x


SOLVERS = {"ddim": ddim, "dpm2": dpm2, "heun": heun, "ipndm": ipndm, "epd": epd}


def nfe(solver: str, num_steps: int, num_points: int = 2) -> tuple[int, int]:
    """(sequential NFE, denoiser evaluations) per image; CFG's doubled batch counts once, as in the papers."""
    steps = num_steps - 1
    return {"ddim": (steps, steps), "ipndm": (steps, steps), "dpm2": (2 * steps, 2 * steps),
            "heun": (2 * steps, 2 * steps), "epd": (2 * steps, (num_points + 1) * steps)}[solver]  # fmt: skip


########################
# Denoisers: D(x; sigma) of a diffusers pipeline, plus its grid, latent shape, prompts and decoder
########################
class Denoiser:
    """Shared by both wrappers: `prompts` of the current batch (set_prompts) and the decoder."""

    prompts: list[str] = []

    @torch.no_grad()
    def decode(self, x):
        """The last grid state decoded as is (no final denoise, as upstream) to [0, 1] images [B, 3, H, W], with
        x / scaling + shift as the SD/SD3/FLUX pipelines decode."""
        vae = self.pipe.vae
        img = vae.decode((x / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)).to(vae.dtype))
        return ((img.sample.float() + 1) / 2).clamp(0, 1)


class SDDenoiser(Denoiser):
    """SD1.x/2.x (RLEPD CFGPrecond): D = x - sigma eps_cfg(x / sqrt(sigma^2 + 1), T t(sigma) - 1), CFG as one batch."""

    def __init__(self, pipe, guidance_scale: float, height: int, width: int):
        self.pipe, self.guidance = pipe, guidance_scale
        self.vp = VPTime(pipe.scheduler.alphas_cumprod)
        self.v_prediction = pipe.scheduler.config.prediction_type == "v_prediction"
        self.dtype, self.device = pipe.unet.dtype, pipe.unet.device
        self.shape = (pipe.unet.config.in_channels, height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)

    def sigmas(self, num_steps: int, schedule: str, rho: float):
        return get_sigmas(num_steps, schedule, rho=rho, alphas_cumprod=self.pipe.scheduler.alphas_cumprod)

    def set_prompts(self, prompts: list[str]):
        n = len(prompts)
        self.cond, self.uncond = self.pipe.encode_prompt(prompts, self.device, 1, True, negative_prompt=[""] * n)
        self.prompts = list(prompts)

    @torch.no_grad()
    def __call__(self, x, sigma):
        reps = x.shape[0] // self.cond.shape[0]  # EPD's K points per image share that image's prompt
        cond, uncond = self.cond.repeat_interleave(reps, 0), self.uncond.repeat_interleave(reps, 0)
        sig = sigma.to(torch.float64)
        c_in = (1 / torch.sqrt(sig**2 + 1)).view(-1, 1, 1, 1).to(x)
        t = (self.vp.steps * self.vp.sigma_inv(sig.cpu()) - 1).to(self.device, torch.float32)  # continuous timestep
        x_in = (x * c_in).to(self.dtype)
        out = self.pipe.unet(
            torch.cat([x_in, x_in]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])
        ).sample
        out_u, out_c = out.float().chunk(2)
        out = out_u + self.guidance * (out_c - out_u)
        if self.v_prediction:  # eps = sigma_vp x_vp + alpha v, with x_vp = c_in x, alpha = c_in, sigma_vp = sigma c_in
            out = (sig.view(-1, 1, 1, 1).to(x) * c_in) * (c_in * x) + c_in * out
        return x - sigma.view(-1, 1, 1, 1).to(x) * out


class FlowDenoiser(Denoiser):
    """SD3 / FLUX: x = x_t, sigma = t, D(x_t; t) = x_t - t v(x_t, t) (RLEPD HEAD models/backends/*_diffusers_backend).

    The grid is the scheduler's own: set_timesteps(N) (shifted; FLUX with mu from the image length) without the
    appended 0, so sampling ends at the last nonzero t like SD ends at sigma_min (RLEPD make_flowmatch_schedule).
    """

    def __init__(self, pipe, guidance_scale: float, height: int, width: int):
        self.pipe, self.guidance, self.model = pipe, guidance_scale, pipe.transformer
        self.flux = type(pipe).__name__.startswith("Flux")
        self.dtype, self.device = self.model.dtype, self.model.device
        self.hw, f = (height, width), pipe.vae_scale_factor
        if self.flux:  # FLUX packs 2x2 latent patches: latent sides rounded to even, as FluxPipeline.prepare_latents
            self.shape = (self.model.config.in_channels // 4, 2 * (height // (2 * f)), 2 * (width // (2 * f)))
            self.seq_len = (self.shape[1] // 2) * (self.shape[2] // 2)
        else:
            self.shape = (self.model.config.in_channels, height // f, width // f)
            self.seq_len = (self.shape[1] // self.model.config.patch_size) * (
                self.shape[2] // self.model.config.patch_size
            )
        self.cfg = not self.flux and guidance_scale > 1  # SD3: true CFG; FLUX-dev: guidance is a model input

    def sigmas(self, num_steps: int, schedule: str, rho: float):
        if schedule != "flowmatch":
            raise ValueError(f"schedule {schedule!r} is for SD (VP) models; SD3/FLUX use flowmatch")
        sched, kwargs = self.pipe.scheduler, {}
        if sched.config.get("use_dynamic_shifting", False):  # diffusers calculate_shift: mu linear in image tokens
            c = sched.config
            slope_mu = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
            kwargs["mu"] = c.base_shift + slope_mu * (self.seq_len - c.base_image_seq_len)
        sched.set_timesteps(num_steps, **kwargs)
        return sched.sigmas[:-1].detach().cpu().float().clone()

    def set_prompts(self, prompts: list[str]):
        n, p = len(prompts), self.pipe
        if self.flux:
            self.emb, self.pooled, self.text_ids = p.encode_prompt(
                prompts, None, self.device, 1, max_sequence_length=512
            )
        else:
            emb, neg, pooled, neg_pooled = p.encode_prompt(
                prompts, None, None, self.device, 1, self.cfg, negative_prompt=[""] * n, max_sequence_length=256
            )
            self.emb, self.pooled = (
                (torch.cat([neg, emb]), torch.cat([neg_pooled, pooled])) if self.cfg else (emb, pooled)
            )
        self.prompts = list(prompts)

    @torch.no_grad()
    def __call__(self, x, t):
        b, reps = x.shape[0], x.shape[0] // len(self.prompts)
        # timesteps as the pipelines pass them: FLUX casts 1000 t to the model dtype, then divides by 1000; SD3 gives
        # the scheduler's fp32 1000 t (a bf16 t near 1 would be ~2/1000 off)
        x_in, t_in = x.to(self.dtype), (t * 1000).to(self.device, self.dtype if self.flux else torch.float32)
        if self.flux:
            c, h, w = self.shape
            guidance = (
                torch.full([b], self.guidance, device=self.device) if self.model.config.guidance_embeds else None
            )
            v = self.model(
                hidden_states=self.pipe._pack_latents(x_in, b, c, h, w), timestep=t_in / 1000, guidance=guidance,
                pooled_projections=self.pooled.repeat_interleave(reps, 0),
                encoder_hidden_states=self.emb.repeat_interleave(reps, 0), txt_ids=self.text_ids,
                img_ids=self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, self.device, self.dtype),
                return_dict=False,
            )[0]  # fmt: skip
            v = self.pipe._unpack_latents(v, *self.hw, self.pipe.vae_scale_factor)
        else:  # SD3: CFG batch [uncond, cond] as StableDiffusion3Pipeline
            emb, pooled = self.emb.repeat_interleave(reps, 0), self.pooled.repeat_interleave(reps, 0)
            n = 2 if self.cfg else 1
            v = self.model(
                hidden_states=torch.cat([x_in] * n), timestep=torch.cat([t_in] * n),
                encoder_hidden_states=emb, pooled_projections=pooled, return_dict=False,
            )[0]  # fmt: skip
            if self.cfg:
                v_u, v_c = v.float().chunk(2)
                v = v_u + self.guidance * (v_c - v_u)
        return x - t.view(-1, 1, 1, 1).to(x) * v.float()


def pipeline_class(model_id: str) -> str | None:
    """The pipeline class named in model_index.json, read without loading weights (None: hub unreachable now)."""
    path = Path(model_id).expanduser()
    if model_id.startswith(("/", "./", "../", "~")) or path.exists():
        if not path.is_dir():
            raise ValueError(f"--model_id: no such folder: {model_id}")
        if not (path / "model_index.json").is_file():
            raise ValueError(f"--model_id {model_id} is not a diffusers pipeline folder (no model_index.json)")
        return json.loads((path / "model_index.json").read_text())["_class_name"]
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:  # only the small index file, cached or fetched
        return json.loads(Path(hf_hub_download(model_id, "model_index.json")).read_text())["_class_name"]
    except GatedRepoError:
        raise ValueError(f"--model_id {model_id} is gated: accept its licence on the hub and log in") from None
    except (HFValidationError, RepositoryNotFoundError):
        raise ValueError(f"--model_id {model_id}: no such folder or hub repository") from None
    except Exception:  # offline and not cached: checked again after loading
        return None


def load_pipeline(model_id: str, device):
    from diffusers import DiffusionPipeline

    cls = pipeline_class(model_id)
    dtype = torch.float32 if device.type != "cuda" else torch.float16 if cls in VP_PIPELINES else torch.bfloat16
    extra = {"safety_checker": None, "requires_safety_checker": False} if cls in VP_PIPELINES else {}
    pipe = DiffusionPipeline.from_pretrained(model_id, dtype=dtype, **extra)
    if type(pipe).__name__ not in {**VP_PIPELINES, **FLOW_PIPELINES}:
        raise ValueError(f"{model_id} is a {type(pipe).__name__}; supported: SD1.x/2.x, SD3, FLUX")
    pipe.to(device).set_progress_bar_config(disable=True)
    for m in pipe.components.values():
        if isinstance(m, nn.Module):
            m.requires_grad_(False).eval()
    return pipe


def make_denoiser(pipe, guidance_scale: float | None, height: int, width: int):
    """The wrapper for the pipeline's class: SDDenoiser (UNet, VP) or FlowDenoiser (SD3/FLUX transformer)."""
    name = type(pipe).__name__
    guidance = {**VP_PIPELINES, **FLOW_PIPELINES}[name] if guidance_scale is None else guidance_scale
    return (FlowDenoiser if name in FLOW_PIPELINES else SDDenoiser)(pipe, guidance, height, width)


def setup(args: ScriptArguments, device):
    """(denoiser, grid) for sampling and training; settles schedule/guidance "auto" if the class was unknown before."""
    den = make_denoiser(load_pipeline(args.model_id, device), args.guidance_scale, args.height, args.width)
    args.schedule = (
        ("flowmatch" if isinstance(den, FlowDenoiser) else "discrete") if args.schedule == "auto" else args.schedule
    )
    args.guidance_scale = den.guidance
    return den, den.sigmas(args.num_steps, args.schedule, args.rho).to(device)


def initial_noise(seeds: list[int], shape, sigma_max: float, device):
    """One generator per image seed (RLEPD StackedRandomGenerator): any image can be regenerated from its seed."""
    noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.stack(noise).to(device) * sigma_max


########################
# Tables and the residual Dirichlet policy (RLEPD training/ppo/{cold_start,policy,export_epd_predictor}.py)
########################
def cold_start(num_steps: int, num_points: int, r_base: float, r_epsilon: float):
    """RLEPD fake_train.py: positions evenly spread over r_base +- r_epsilon/2 in every row, uniform weights."""
    row = torch.linspace(r_base - r_epsilon / 2, r_base + r_epsilon / 2, num_points) if num_points > 1 else None
    row = torch.tensor([r_base]) if row is None else row
    return row.repeat(num_steps - 1, 1), torch.full((num_steps - 1, num_points), 1 / num_points)


def sanitize_table(positions, weights, eps: float = 1e-6):
    """RLEPD _sanitize_table_arrays + export: sort each row (weights follow their points), clip r_k into
    [r_{k-1} + eps, 1 - eps (K - k)] (k from 1), weights clamped at eps and renormalised (= softmax(log clamp))."""
    pos, order = positions.double().sort(-1)
    w = weights.double().gather(-1, order).clamp_min(eps)
    prev, k = torch.zeros(len(pos), dtype=torch.float64), pos.shape[-1]
    for j in range(k):
        pos[:, j] = torch.minimum(
            torch.maximum(pos[:, j], prev + eps), torch.tensor(1 - eps * (k - j), dtype=torch.float64)
        )
        prev = pos[:, j]
    return pos, w / w.sum(-1, keepdim=True)  # float64: a clipped segment stays exactly eps


def load_table(path: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(positions, weights, settings) from a JSON table as save_table writes it."""
    if not Path(path).is_file():
        raise ValueError(f"--table: no such file: {path}")
    try:
        raw = json.loads(Path(path).read_text())
        pos, w = (torch.tensor(raw[k], dtype=torch.float32) for k in ("positions", "weights"))
    except json.JSONDecodeError as e:
        raise ValueError(f"--table {path}: invalid JSON (line {e.lineno}: {e.msg})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"--table {path}: needs numeric 2-D `positions` and `weights` ({e!r})") from None
    if pos.dim() != 2:
        raise ValueError(f"--table {path}: needs numeric 2-D `positions` and `weights`")
    return pos, w, {k: raw[k] for k in TABLE_SETTINGS if raw.get(k) is not None}


def check_table(positions, weights, num_steps: int, num_points: int):
    if positions.shape != (num_steps - 1, num_points) or weights.shape != positions.shape:
        raise ValueError(f"table has positions {tuple(positions.shape)} / weights {tuple(weights.shape)}, "
                         f"expected ({num_steps - 1}, {num_points}) for --num_steps {num_steps} --num_points {num_points}")  # fmt: skip
    if not ((positions > 0) & (positions < 1)).all():
        raise ValueError("table positions must lie in (0, 1)")
    if (weights < 0).any() or not torch.allclose(weights.sum(-1), torch.ones(len(weights)), atol=1e-4):
        raise ValueError("table weights must be on the simplex (non-negative, rows summing to 1)")


def save_table(path: Path, positions, weights, **meta):
    path.write_text(json.dumps({"positions": positions.tolist(), "weights": weights.tolist(), **meta}, indent=1))


class DirichletPolicy(nn.Module):
    """log alpha = base log alpha (cold start x concentration) + zero-initialised residual MLP of a step embedding."""

    def __init__(self, positions, weights, concentration: float, hidden: int = 128, layers: int = 2, eps=1e-6):
        super().__init__()
        pos, w = sanitize_table(positions, weights, eps)  # RLEPD cold start: sorted, clipped rows
        rows, k = pos.shape
        segments = torch.diff(
            torch.cat([torch.zeros(rows, 1, dtype=pos.dtype), pos, torch.ones(rows, 1, dtype=pos.dtype)], -1)
        )
        # RLEPD build_dirichlet_params: a row with a segment or weight <= 1e-6 falls back to the uniform mean
        # (the 1e-12 absorbs float64 rounding of a segment the clip above set to exactly eps)
        segments[(segments <= eps + 1e-12).any(-1)] = 1 / (k + 1)
        w[(w <= eps + 1e-12).any(-1)] = 1 / k
        self.register_buffer("base_log_alpha_pos", torch.log(concentration * segments).float())
        self.register_buffer("base_log_alpha_w", torch.log(concentration * w).float())
        self.steps, self.k = rows, k
        self.embed = nn.Embedding(self.steps, hidden)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(layers)
        )
        self.head = nn.Linear(hidden, 2 * self.k + 1)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self):
        """Concentrations (alpha_pos [N-1, K+1], alpha_w [N-1, K]) for every step."""
        h = self.embed.weight
        for block in self.blocks:
            h = h + block(h)
        delta = self.head(h)
        alpha_pos = torch.exp(self.base_log_alpha_pos + delta[:, : self.k + 1]).clamp_min(1e-5)
        return alpha_pos, torch.exp(self.base_log_alpha_w + delta[:, self.k + 1 :]).clamp_min(1e-5)

    @staticmethod
    def mean_table(alpha_pos, alpha_w):
        """Dirichlet means (RLEPD export: the mean, not the mode or a sample), sorted and clipped as upstream."""
        pos = torch.cumsum(alpha_pos / alpha_pos.sum(-1, keepdim=True), -1)[:, :-1]
        pos, w = sanitize_table(pos, alpha_w / alpha_w.sum(-1, keepdim=True))
        return pos.float(), w.float()

    @staticmethod
    def log_prob(alpha_pos, alpha_w, segments, w):
        """Trajectory log-prob: sum over steps of log Dir(segments) + log Dir(weights); inputs [B, N-1, .]."""
        D = torch.distributions.Dirichlet
        return (D(alpha_pos).log_prob(segments) + D(alpha_w).log_prob(w)).sum(-1)

    @staticmethod
    def sample(alpha_pos, alpha_w, n: int, seed: int):
        """n tables drawn on the CPU from `seed` alone, so every process draws the same ones. Unlike RLEPD's raw
        rsample, each draw is clamped at 1e-6 and renormalised: a float32 Dirichlet draw can be exactly 0 at small
        concentrations (a -inf log-prob; a position of exactly 0 or 1)."""
        D = torch.distributions.Dirichlet
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            seg = D(alpha_pos.detach().float().cpu()).sample((n,)).clamp_min(1e-6)
            w = D(alpha_w.detach().float().cpu()).sample((n,)).clamp_min(1e-6)
        seg, w = (
            (seg / seg.sum(-1, keepdim=True)).to(alpha_pos.device),
            (w / w.sum(-1, keepdim=True)).to(alpha_w.device),
        )
        return seg, w, torch.cumsum(seg, -1)[..., :-1]


def check_finite(what: str, *tensors):
    if not all(torch.isfinite(t).all() for t in tensors):
        raise FloatingPointError(f"non-finite {what}")


########################
# PPO (RLEPD ppo_trainer): advantage, update, and the whole step
########################
def advantages(rewards, group_size: int, mixed_prompt: bool = False):
    """Leave-one-out baseline per prompt group on prompt-major rewards, then standardised over the batch.

    mixed_prompt=True reproduces RLEPD ppo_trainer._compute_advantages: view(k, G) groups every G-th reward, mixing
    prompts in each baseline (e.g. B=8, k=4: {r0, r2, r4, r6} and {r1, r3, r5, r7}).
    """
    k = group_size
    grid = rewards.view(k, -1) if mixed_prompt else rewards.view(-1, k)
    dim = 0 if mixed_prompt else 1
    adv = (grid - (grid.sum(dim, keepdim=True) - grid) / (k - 1)).flatten()
    return (adv - adv.mean()) / adv.std(unbiased=False).clamp_min(1e-8)


def ppo_update(policy, optimizer, accelerator, base_alphas, seg, w, old_logp, adv, args, seed: int = 0) -> dict:
    """Clipped-ratio PPO on trajectory log-probs (no value net: one terminal reward), + kl/entropy terms (RLEPD)."""
    Dir = torch.distributions.Dirichlet
    stats = {k: [] for k in ("policy_loss", "approx_kl", "clipfrac", "grad_norm", "kl_to_base", "entropy")}
    order = torch.Generator().manual_seed(seed)  # same minibatches on every process
    for _ in range(args.ppo_epochs):
        for mb in torch.randperm(len(adv), generator=order).split(args.minibatch_size):
            alpha_pos, alpha_w = policy()
            check_finite("policy concentrations", alpha_pos, alpha_w)
            ratio = torch.exp(DirichletPolicy.log_prob(alpha_pos, alpha_w, seg[mb], w[mb]) - old_logp[mb])
            pg_loss = torch.max(
                -adv[mb] * ratio, -adv[mb] * ratio.clamp(1 - args.clip_range, 1 + args.clip_range)
            ).mean()
            kl_base = (
                torch.distributions.kl_divergence(Dir(alpha_pos), Dir(base_alphas[0]))
                + torch.distributions.kl_divergence(Dir(alpha_w), Dir(base_alphas[1]))
            ).sum()
            entropy = (Dir(alpha_pos).entropy() + Dir(alpha_w).entropy()).sum()
            loss = pg_loss + args.kl_coef * kl_base - args.entropy_coef * entropy
            check_finite("PPO loss", loss)
            optimizer.zero_grad()
            accelerator.backward(loss)
            stats["grad_norm"].append(float(accelerator.clip_grad_norm_(policy.parameters(), args.max_grad_norm)))
            optimizer.step()
            with torch.no_grad():  # approx KL estimator k3, http://joschu.net/blog/kl-approx.html
                stats["approx_kl"].append(((ratio - 1) - torch.log(ratio)).mean().item())
                stats["clipfrac"].append(((ratio - 1).abs() > args.clip_range).float().mean().item())
            for k, v in (("policy_loss", pg_loss), ("kl_to_base", kl_base), ("entropy", entropy)):
                stats[k].append(v.item())
    with torch.no_grad():
        check_finite("policy parameters after the update", *policy.parameters(), *policy())
    return {k: sum(v) / len(v) for k, v in stats.items()}


def ppo_step(policy, optimizer, accelerator, base_alphas, denoise, x, sigmas, reward_fn, args, seed: int = 0):
    """One RLEPD PPO step: sample one table per image, run `epd` with `denoise` from this process's noise x [b, ...],
    `reward_fn(final_x) -> [b]`, advantages over the global batch, PPO epochs. Returns (rewards [b * processes], stats).

    The global batch is the processes' x in rank order. Tables and minibatch order come from `seed` alone, and the few
    numbers per image (rewards) are gathered, so every process makes the same update on the same global batch: N
    processes x b images = 1 process x N b images. Raises FloatingPointError on a non-finite log-prob/reward/parameter
    (identically on every process, so no rank waits in a collective).
    """
    b, rank = x.shape[0], accelerator.process_index
    with torch.no_grad():
        alpha_pos, alpha_w = policy()
        check_finite("policy concentrations", alpha_pos, alpha_w)
        seg, w, pos = DirichletPolicy.sample(alpha_pos, alpha_w, b * accelerator.num_processes, seed)
        old_logp = DirichletPolicy.log_prob(alpha_pos, alpha_w, seg, w)
        check_finite("rollout log-probs", old_logp)
        final = epd(denoise, x, sigmas.to(x.device), pos[rank * b : (rank + 1) * b], w[rank * b : (rank + 1) * b])
    local = torch.as_tensor(reward_fn(final), dtype=torch.float32, device=accelerator.device).view(b)
    rewards = accelerator.gather(local)
    check_finite("rewards", rewards)
    adv = advantages(rewards, args.group_size, args.mixed_prompt_baseline)
    return rewards, ppo_update(policy, optimizer, accelerator, base_alphas, seg, w, old_logp, adv, args, seed)


def make_reward_fn(denoiser, scorer, weights: dict):
    """reward_fn(x) -> [b]: decode, score the denoiser's current prompts with a score.MultiScorer, and combine as RLEPD
    reward_multi: sum_m w_m norm_m(score_m) / sum_m max(w_m, 0) (HPS-only = the raw HPSv2.1). Raw scores: fn.details."""

    def reward_fn(x):
        _, details = scorer(denoiser.decode(x), denoiser.prompts)
        reward_fn.details = {m: torch.tensor(v, dtype=torch.float32) for m, v in details.items()}
        total = sum(weights[m] * NORMALISE[m](reward_fn.details[m]) for m in weights)
        return total / sum(max(v, 0) for v in weights.values())

    return reward_fn


def read_prompts(path: str | None) -> list[str]:
    if not path:
        raise ValueError("give prompts: --prompt_file FILE (training/sampling) or PROMPT words (sampling)")
    if not Path(path).is_file():
        raise ValueError(f"--prompt_file: no such file: {path}")
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".csv"):
        import csv

        rows = list(csv.DictReader(text.splitlines()))
        if rows and "text" not in rows[0]:
            raise ValueError(f"--prompt_file {path}: no `text` column (columns: {', '.join(rows[0])})")
        prompts = [r["text"] or "" for r in rows]
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"--prompt_file {path}: no prompts")
    return prompts


########################
# Sampling
########################
def sample(args: ScriptArguments, table, prompts: list[str]):
    from torchvision.transforms.functional import to_pil_image
    from tqdm import tqdm

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"))  # fmt: skip
    if device.type == "cpu":
        print("note: no GPU: sampling on the CPU in fp32")
    den, sigmas = setup(args, device)
    params = {"epd": {"positions": table[0].to(device), "weights": table[1].to(device)} if table else {},
              "ipndm": {"max_order": args.max_order}}.get(args.solver, {})  # fmt: skip
    seq, evals = nfe(args.solver, args.num_steps, args.num_points)
    print(f"{args.solver}: {args.num_steps - 1} steps, {args.schedule} schedule, guidance {den.guidance}, "
          f"NFE {seq} (denoiser evaluations {evals})")  # fmt: skip
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(range(0, len(prompts), args.batch_size), desc=f"sampling {args.solver}", unit="batch"):
        seeds = list(range(args.seed + i, args.seed + min(i + args.batch_size, len(prompts))))  # seed s <-> prompt s
        den.set_prompts(prompts[i : i + len(seeds)])
        x = SOLVERS[args.solver](den, initial_noise(seeds, den.shape, float(sigmas[0]), device), sigmas, **params)
        for s, img in zip(seeds, den.decode(x), strict=True):
            to_pil_image(img.cpu()).save(out / f"{s:06d}.png")
    print(f"wrote {len(prompts)} images to {out}")


########################
# PPO (CleanRL order: seeding -> models -> storage -> loop: rollout -> reward -> advantage -> update -> log)
########################
def train(args: ScriptArguments, table, prompts: list[str], ckpt: dict | None = None):
    from accelerate import Accelerator
    from accelerate.utils import gather_object, set_seed

    import score

    cuda = torch.cuda.is_available()
    accelerator = Accelerator(cpu=not cuda)  # gloo ranks on a CPU-only machine, NCCL with CUDA
    if not cuda:
        accelerator.print("note: no CUDA device: training on the CPU in fp32 (Accelerator(cpu=True))")
    rank, world, device, main = (accelerator.process_index, accelerator.num_processes, accelerator.device,
                                 accelerator.is_main_process)  # fmt: skip
    if args.rollout_batch_size % world:
        fail(f"--rollout_batch_size {args.rollout_batch_size} must be divisible by the {world} processes")
    # seeding: noise seeds, tables and minibatch order come from (seed, step) and the global image index, never the
    # rank, so the run is the same on any number of processes (RLEPD seeds each rank with seed + rank instead)
    set_seed(args.seed)
    b, out = args.rollout_batch_size // world, Path(args.outdir)
    mine = range(rank * b, (rank + 1) * b)  # this process's images in the global, prompt-major batch

    # models
    den, sigmas = setup(args, device)
    weights_spec = score.parse_metric_weights(args.reward)
    reward_fn = make_reward_fn(den, score.MultiScorer(weights_spec, device=device), weights_spec)
    policy = DirichletPolicy(*(table or cold_start(args.num_steps, args.num_points, args.r_base, args.r_epsilon)),
                             args.concentration, args.hidden_dim)  # fmt: skip
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0
    )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    base = accelerator.unwrap_model(policy)
    start = 0
    if ckpt is not None:  # resume: validate() read <outdir>/checkpoint.pt (every process the same file)
        base.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start = int(ckpt["step"])
        accelerator.print(f"resumed from {out / 'checkpoint.pt'} at step {start}")
    base_alphas = (base.base_log_alpha_pos.exp(), base.base_log_alpha_w.exp())  # the run's cold start (KL term)

    # storage
    settings = {k: getattr(args, k) for k in TABLE_SETTINGS}
    groups = args.rollout_batch_size // args.group_size
    accelerator.print(f"{world} process(es) x {b} images = {groups} prompts x {args.group_size} seeds per PPO step; "
                      f"NFE {nfe('epd', args.num_steps)[0]}; {len(prompts)} training prompts")  # fmt: skip
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(args) | settings, indent=1))

    def snapshot(step: int) -> dict:  # the last finite state, kept in memory so a failure never saves a bad one
        with torch.no_grad():
            pos, w = DirichletPolicy.mean_table(*base())
        return {"step": step, "policy": {k: v.detach().cpu().clone() for k, v in base.state_dict().items()},
                "optimizer": copy.deepcopy(optimizer.state_dict()), "table": (pos.cpu(), w.cpu())}  # fmt: skip

    def save(snap: dict):  # main process only, no collectives: safe on an error path
        if main:
            saved = {k: snap[k] for k in ("policy", "optimizer", "step")}
            torch.save(saved | {"settings": settings | {"hidden_dim": args.hidden_dim}}, out / "checkpoint.pt")
            for name in ("table.json", f"table-step{snap['step']:06d}.json"):
                save_table(out / name, *snap["table"], step=snap["step"], model_id=args.model_id, **settings)

    last_good, step, t_start = snapshot(start), start, time.time()
    try:
        for step in range(start + 1, args.total_steps + 1):
            # rollout: prompt-major [p0 x k, p1 x k, ...] read sequentially; one noise seed and one table per image
            step_seed = args.seed * 1_000_003 + step
            seeds = torch.randint(0, 2**31 - 1, (args.rollout_batch_size,), generator=torch.Generator().manual_seed(step_seed)).tolist()  # fmt: skip
            den.set_prompts([prompts[((step - 1) * groups + i // args.group_size) % len(prompts)] for i in mine])
            x = initial_noise([seeds[i] for i in mine], den.shape, float(sigmas[0]), device)
            # reward -> advantage -> update
            rewards, stats = ppo_step(policy, optimizer, accelerator, base_alphas, den, x, sigmas, reward_fn, args, step_seed)  # fmt: skip
            # log: rewards and raw scores of all processes; the trace names the process that rendered each image
            raw = accelerator.gather(torch.stack([reward_fn.details[m] for m in weights_spec], 1).to(device))
            rows = gather_object([{"step": step, "index": i, "rank": rank, "seed": seeds[i], "prompt": p,
                                   "reward": rewards[i].item()} for i, p in zip(mine, den.prompts, strict=True)])  # fmt: skip
            group_std = rewards.view(-1, args.group_size).std(-1)
            record = {"step": step, "elapsed_sec": time.time() - t_start, "charts/reward_mean": rewards.mean().item(),
                      "charts/reward_std": rewards.std(unbiased=False).item(),
                      "charts/frac_zero_std_groups": (group_std < 1e-6).float().mean().item(),
                      **{f"charts/{m}_mean": raw[:, j].mean().item() for j, m in enumerate(weights_spec)},
                      **{f"losses/{k}": v for k, v in stats.items()}}  # fmt: skip
            if main:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                with open(out / "rollouts.jsonl", "a") as f:
                    f.writelines(json.dumps(r) + "\n" for r in rows)
                print(" ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in record.items()), flush=True)
            last_good = snapshot(step)
            if step % args.save_interval == 0 or step == args.total_steps:
                save(last_good)
    except FloatingPointError as e:  # identical on every process (same global batch), so all stop here together
        save(last_good)
        fail(f"{e} at PPO step {step}; stopped. {out / 'checkpoint.pt'} holds step {last_good['step']}, the last finite "
             "policy (lower --learning_rate, or raise --kl_coef, before resuming)", code=1)  # fmt: skip
    except BaseException:  # Ctrl-C or a crash: keep the last completed step
        save(last_good)
        raise


########################
# CLI: parse, validate everything that needs no weights, dispatch
########################
HELP_GROUPS = {"model_id": "model and solver", "sample": "sampling", "r_base": "RL (PPO training)"}
USAGE = "python epd_ppo.py [PROMPT ...] [--config FILE.yaml] [options]   (PROMPTs or --sample: sampling; otherwise PPO training)"


def fail(message: str, code: int = 2):
    if os.environ.get("RANK", "0") == "0":  # launched processes (torchrun sets RANK): only the main process prints
        print(f"error: {message}", file=sys.stderr)
    sys.exit(code)  # every process exits, before any collective


def make_parser():
    """TrlParser over ScriptArguments whose --help groups the flags; every parse error is one `error:` line."""
    from trl import TrlParser

    parser = TrlParser((ScriptArguments,), allow_abbrev=False, usage=USAGE)
    parser.error = fail
    group = None
    for action in list(parser._optionals._group_actions):
        if action.dest in HELP_GROUPS:
            group = parser.add_argument_group(HELP_GROUPS[action.dest])
        if group is not None:
            parser._optionals._group_actions.remove(action)
            group._group_actions.append(action)
    parser._optionals.title = "other"
    parser._action_groups.remove(parser._optionals)  # the script's own groups first
    parser._action_groups.append(parser._optionals)
    return parser


def parse(argv: list[str]) -> tuple[ScriptArguments, list[str], set[str]]:
    """(args, positional prompts, names of the fields set on the command line or in --config)."""
    import yaml

    parser = make_parser()
    # a bool flag takes an optional value (HfArgumentParser: nargs="?"), so `--sample "a cat"` would read the prompt
    # as that value: a bare bool flag followed by a word that is not a bool value gets an explicit `true`
    bools = {s for a in parser._actions if a.nargs == "?" for s in a.option_strings}
    words = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}
    argv = [w for i, a in enumerate(argv) for w in ((a, "true") if a in bools and i + 1 < len(argv)
            and argv[i + 1][:1] != "-" and argv[i + 1].lower() not in words else (a,))]  # fmt: skip
    try:
        args, config_rest, rest = parser.parse_args_and_config(argv, True, separate_remaining_strings=True)
        config = yaml.safe_load(Path(argv[argv.index("--config") + 1]).read_text()) if "--config" in argv else {}
    except (OSError, ValueError, yaml.YAMLError) as e:
        fail(f"--config: {e}".replace("\n", " "))
    unknown = [a for a in rest if a.startswith("-")] + config_rest
    if unknown:
        fail(f"unrecognised arguments: {' '.join(unknown)}")
    options = parser._option_string_actions
    explicit = {options[a.split("=")[0]].dest for a in argv if a.split("=")[0] in options} | set(config or {})
    return args, rest, explicit


def validate(args: ScriptArguments, prompts: list[str], explicit: set[str]):
    """Every check that needs no weights; resolves schedule/guidance and a table's settings.

    Returns (table, prompts, the run's checkpoint to resume from or None)."""
    training, ckpt = not (args.sample or prompts), None
    if args.solver not in SOLVERS:
        raise ValueError(f"unknown solver {args.solver!r}; valid: {', '.join(SOLVERS)}")
    if args.schedule not in ("auto", *SCHEDULES):
        raise ValueError(f"unknown schedule {args.schedule!r}; valid: auto, {', '.join(SCHEDULES)}")
    for name, low in (("num_steps", 2), ("num_points", 1), ("height", 8), ("width", 8), ("batch_size", 1),
                      ("hidden_dim", 1), ("rollout_batch_size", 1), ("group_size", 2), ("minibatch_size", 1),
                      ("ppo_epochs", 1), ("total_steps", 1), ("save_interval", 1), ("max_order", 1)):  # fmt: skip
        if getattr(args, name) < low:
            raise ValueError(f"--{name} must be >= {low} (got {getattr(args, name)})")
    for name in ("rho", "concentration", "learning_rate", "clip_range", "max_grad_norm"):
        if not getattr(args, name) > 0:
            raise ValueError(f"--{name} must be > 0 (got {getattr(args, name)})")
    if args.kl_coef < 0 or args.entropy_coef < 0 or (args.guidance_scale or 0) < 0:
        raise ValueError("--kl_coef, --entropy_coef and --guidance_scale must be >= 0")
    if args.max_order > 4:
        raise ValueError(f"--max_order must be 1-4 (got {args.max_order})")
    if not 0 < args.r_base - args.r_epsilon / 2 <= args.r_base + args.r_epsilon / 2 < 1:
        raise ValueError(
            f"cold start r_base +- r_epsilon/2 = {args.r_base} +- {args.r_epsilon / 2} must lie in (0, 1)"
        )
    if args.device is not None:
        if training:
            raise ValueError("--device is for sampling; training runs where accelerate puts it (accelerate launch)")
        try:
            dev = torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"--device {args.device!r} is not a device (cpu, cuda, cuda:1, mps)") from None
        if (dev.type == "cuda" and not torch.cuda.is_available()) or (
            dev.type == "mps" and not torch.backends.mps.is_available()
        ):
            raise ValueError(f"--device {args.device}: no such device on this machine")  # fmt: skip
    cls = pipeline_class(args.model_id)
    if cls is not None and cls not in {**VP_PIPELINES, **FLOW_PIPELINES}:
        raise ValueError(f"--model_id {args.model_id} is a {cls}; supported: SD1.x/2.x, SD3, FLUX")
    flow = cls in FLOW_PIPELINES
    if args.height % (16 if flow else 8) or args.width % (16 if flow else 8):
        raise ValueError(f"--height/--width must be multiples of {16 if flow else 8} for {cls or args.model_id}")
    table = None
    if args.table:
        if args.solver != "epd":
            raise ValueError(f"--table is an EPD table; --solver {args.solver} does not use it")
        positions, weights, meta = load_table(args.table)
        meta.setdefault("num_steps", len(positions) + 1)
        meta.setdefault("num_points", positions.shape[-1])
        for key, value in meta.items():  # the table's own settings win; a contradicting flag is an error
            mine, value = getattr(args, key), TABLE_SETTINGS[key](value)
            if key in explicit and mine != value and not (key == "schedule" and mine == "auto"):
                raise ValueError(f"--{key} {mine} contradicts the table's {key} {value} ({args.table}); drop the flag")
            setattr(args, key, TABLE_SETTINGS[key](value))
        check_table(positions, weights, args.num_steps, args.num_points)
        table = (positions, weights)
    elif not training and args.solver == "epd":
        raise ValueError("sampling with the epd solver needs --table (or pick a baseline with --solver)")
    if cls is not None and args.schedule == "auto":
        args.schedule = "flowmatch" if flow else "discrete"
    if cls is not None and (args.schedule == "flowmatch") != flow:
        raise ValueError(f"--schedule {args.schedule} does not fit {cls} ({'flowmatch' if flow else 'SD schedules: ' + ', '.join(SCHEDULES[:4])})")  # fmt: skip
    if cls is not None and args.guidance_scale is None:
        args.guidance_scale = {**VP_PIPELINES, **FLOW_PIPELINES}[cls]
    if training:
        if args.rollout_batch_size % args.group_size:
            raise ValueError(f"--rollout_batch_size {args.rollout_batch_size} must be a multiple of --group_size {args.group_size}")  # fmt: skip
        if args.minibatch_size > args.rollout_batch_size:
            raise ValueError("--minibatch_size must not exceed --rollout_batch_size")
        import score

        weights = score.parse_metric_weights(args.reward)
        for m in weights:
            if m not in NORMALISE:
                raise ValueError(f"reward metric {m!r} has no RLEPD normalisation; use {', '.join(NORMALISE)}")
        if not any(v > 0 for v in weights.values()):
            raise ValueError(f"--reward {args.reward}: needs a positive weight")
        out = Path(args.outdir)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--outdir {out} is a file")
        if (out / "checkpoint.pt").is_file():  # resuming: the run's own settings must match
            ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
            saved = ckpt.get("settings", {})
            for key in ("num_steps", "num_points", "schedule", "rho", "hidden_dim"):
                if key in saved and saved[key] != getattr(args, key):
                    raise ValueError(f"{out} was trained with --{key} {saved[key]}, not {getattr(args, key)}: use another --outdir")  # fmt: skip
    return table, prompts or read_prompts(args.prompt_file), ckpt


def main(argv: list[str] | None = None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        make_parser().print_help()
        return
    args, positional, explicit = parse(argv)
    try:
        table, prompts, ckpt = validate(args, positional, explicit)
    except (ValueError, OSError, KeyError) as e:
        fail(str(e).replace("\n", " "))
    if args.sample or positional:
        sample(args, table, prompts)
    else:
        train(args, table, prompts, ckpt)


if __name__ == "__main__":
    main()
