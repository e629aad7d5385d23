# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "diffusers>=0.35", "transformers>=5.0", "accelerate>=1.10", "trl>=1.0", "safetensors",
#                 "open_clip_torch>=3.0", "pillow>=10.0", "tqdm"]
# ///
"""EPD parallel ODE solver for Stable Diffusion, its baselines, and RLEPD's residual-Dirichlet PPO on the EPD table.

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

Differences from the reference code:
1. Advantage: leave-one-out baseline within each prompt's group by default. RLEPD reshapes prompt-major rewards
   `view(k, G)`, which mixes prompts in each baseline; `--mixed_prompt_baseline` reproduces that (its paper runs used it).
2. The K intermediate evaluations of a step are one batched denoiser call (RLEPD's rollouts loop over k).
3. SD1.x/2.x is wrapped from diffusers components (UNet, VAE, CLIP; alphas_cumprod from the scheduler) instead of the
   CompVis LDM code; eps- and v-prediction UNets both work. The exported table is JSON (or safetensors), not a pickle.
4. The policy, PPO and export follow RLEPD 5258a7f; c_k / a_k scale heads (unused for SD1.5) are not implemented.

NFE (sequential UNet calls per image, CFG counted once as in the paper) for --num_steps N:
    ddim N-1 | ipndm N-1 | dpm2 2(N-1) | heun 2(N-1) | epd 2(N-1) sequential, (K+1)(N-1) evaluations.
    Paper rows: DDIM 20 = --num_steps 21; EPD "Step 10, NFE 20" = --num_steps 11 --num_points 2.

Usage (run from the repository root):
    # PPO (paper-best SD1.5 defaults: rollout 8 = 2 prompts x 4 seeds, lr 7e-5, concentration 20, HPSv2.1 reward)
    accelerate launch epd_ppo.py --prompt_file prompts.txt --outdir runs/epd --total_steps 9000
    # sample with the learned mean table, and with baselines on the same seeds; then score with score.py
    python epd_ppo.py --sample --table runs/epd/table.json --prompt_file test.txt --outdir samples/epd
    python epd_ppo.py --sample --solver ddim --num_steps 21 --prompt_file test.txt --outdir samples/ddim20
    python score.py --metrics hpsv2,pickscore,imagereward,clip,aesthetic --images samples/epd --prompts test.txt
    # CPU smoke run: tests/test_epd_ppo.py (tiny SD, 64 px, 2 PPO steps)
Resumes from `<outdir>/checkpoint.pt` when present; Ctrl-C or a crash saves first. Expected: training HPS ~0.26 on
MS-COCO captions, exported-table HPSv2.1 ~0.248 on the 1000 test prompts (not reproduced here: no GPU was available).
"""

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

SCHEDULES = ("discrete", "time_uniform", "polynomial", "logsnr")
NORMALISE = {  # RLEPD reward_multi: each metric mapped to ~[0, 1] before weighting
    "hpsv2": lambda s: s.clamp(0, 1), "pickscore": lambda s: (s / 26).clamp(0, 1),
    "imagereward": lambda s: (s / 10).clamp(0, 1), "clip": lambda s: s.clamp(0, 1),
    "aesthetic": lambda s: (s / 10).clamp(0, 1),
}  # fmt: skip


@dataclass
class ScriptArguments:
    # model and solver
    model_id: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5", metadata={"help": "SD1.x/2.x diffusers id or folder."}
    )
    solver: str = field(default="epd", metadata={"help": "epd | ddim | dpm2 | heun | ipndm (sampling)."})
    num_steps: int = field(default=11, metadata={"help": "Noise levels N (N-1 steps); EPD table rows = N-1."})
    num_points: int = field(default=2, metadata={"help": "EPD parallel points K per step."})
    schedule: str = field(default="discrete", metadata={"help": f"One of {', '.join(SCHEDULES)}."})
    rho: float = field(default=1.0, metadata={"help": "Schedule exponent (7 for EDM's polynomial)."})
    max_order: int = field(default=4, metadata={"help": "iPNDM order (the paper's iPNDM rows use 3)."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance."})
    height: int = field(default=512, metadata={"help": "Image height."})
    width: int = field(default=512, metadata={"help": "Image width."})
    prompt_file: str | None = field(default=None, metadata={"help": "Prompts: .txt lines or .csv `text` column."})
    outdir: str = field(default="runs/epd", metadata={"help": "Run folder (training) or image folder (--sample)."})
    seed: int = field(default=0, metadata={"help": "Training: rank r uses seed + r; sampling: first seed."})
    # sampling
    sample: bool = field(default=False, metadata={"help": "Sample images instead of training."})
    table: str | None = field(default=None, metadata={"help": "EPD table (.json/.safetensors): sample or start."})
    batch_size: int = field(default=4, metadata={"help": "Images per sampling batch."})
    # RL (defaults: RLEPD run sd15_k20, the paper's SD1.5 row)
    r_base: float = field(default=0.5, metadata={"help": "Cold start: positions spread around r_base."})
    r_epsilon: float = field(default=0.33, metadata={"help": "Cold start: span r_base +- r_epsilon/2 (.335, .665)."})
    concentration: float = field(default=20.0, metadata={"help": "Base Dirichlet concentration (sum of alphas)."})
    hidden_dim: int = field(default=128, metadata={"help": "Policy MLP width."})
    rollout_batch_size: int = field(default=8, metadata={"help": "Images per PPO step per process."})
    group_size: int = field(default=4, metadata={"help": "Seeds per prompt (RLEPD rloo_k)."})
    minibatch_size: int = field(default=4, metadata={"help": "PPO minibatch (images)."})
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
        self.t = torch.arange(1, len(acp) + 1, dtype=torch.float64) / len(acp)
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


def get_sigmas(num_steps, schedule="discrete", sigma_min=None, sigma_max=None, rho=1.0, alphas_cumprod=None):
    """Descending noise levels t_0 = sigma_max > ... > t_{N-1} = sigma_min (EDM sigma space)."""
    vp = VPTime(sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod)
    smin = float(vp.sigma(vp.t[0])) if sigma_min is None else sigma_min  # SD1.5: 0.029168
    smax = float(vp.sigma(1.0)) if sigma_max is None else sigma_max  # SD1.5: 14.6146
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
        raise ValueError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    return s.float()


########################
# Solvers: solver(denoise, x, sigmas, **params) -> x, with denoise(x, sigma[B]) = D(x; sigma), slope (x - D) / sigma
########################
def slope(denoise, x, t):
    t = t.expand(x.shape[0]) if t.dim() == 0 else t
    return (x - denoise(x, t)) / t.view(-1, *[1] * (x.dim() - 1))


def ddim(denoise, x, sigmas):
    """Euler on the probability-flow ODE = deterministic DDIM. NFE N-1."""
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
# SD1.x/2.x as an EDM denoiser (RLEPD CFGPrecond on diffusers components)
########################
class SDDenoiser:
    """D(x; sigma) = x - sigma * eps_cfg(x / sqrt(sigma^2 + 1), 1000 t(sigma) - 1), CFG as one UNet batch."""

    def __init__(self, pipe, guidance_scale: float):
        self.pipe, self.guidance = pipe, guidance_scale
        self.vp = VPTime(pipe.scheduler.alphas_cumprod)
        self.v_prediction = pipe.scheduler.config.prediction_type == "v_prediction"
        self.dtype, self.device = pipe.unet.dtype, pipe.unet.device
        self.cond = self.uncond = None

    def set_prompts(self, prompts: list[str]):
        cond, uncond = self.pipe.encode_prompt(prompts, self.device, 1, True, negative_prompt=[""] * len(prompts))
        self.cond, self.uncond = cond, uncond

    @torch.no_grad()
    def __call__(self, x, sigma):
        reps = x.shape[0] // self.cond.shape[0]  # EPD's K points per image share that image's prompt
        cond, uncond = self.cond.repeat_interleave(reps, 0), self.uncond.repeat_interleave(reps, 0)
        sig = sigma.to(torch.float64)
        c_in = (1 / torch.sqrt(sig**2 + 1)).view(-1, 1, 1, 1).to(x)
        t = (1000 * self.vp.sigma_inv(sig.cpu()) - 1).to(self.device, torch.float32)  # continuous UNet timestep
        x_in = (x * c_in).to(self.dtype)
        out = self.pipe.unet(
            torch.cat([x_in, x_in]), torch.cat([t, t]), encoder_hidden_states=torch.cat([uncond, cond])
        ).sample
        out_u, out_c = out.float().chunk(2)
        out = out_u + self.guidance * (out_c - out_u)
        if self.v_prediction:  # eps = sigma_vp x_vp + alpha v, with x_vp = c_in x, alpha = c_in, sigma_vp = sigma c_in
            out = (sig.view(-1, 1, 1, 1).to(x) * c_in) * (c_in * x) + c_in * out
        return x - sigma.view(-1, 1, 1, 1).to(x) * out

    @torch.no_grad()
    def decode(self, x):
        """The state at sigma_min decoded as is (no final denoise, as upstream) to [0, 1] images [B, 3, H, W]."""
        vae = self.pipe.vae
        img = vae.decode((x / vae.config.scaling_factor).to(vae.dtype)).sample
        return ((img.float() + 1) / 2).clamp(0, 1)


def load_pipeline(model_id: str, device):
    from diffusers import StableDiffusionPipeline

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = StableDiffusionPipeline.from_pretrained(
        model_id, dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    pipe.to(device).set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False).eval()
    return pipe


def initial_noise(seeds: list[int], shape, sigma_max: float, device):
    """One generator per image seed (RLEPD StackedRandomGenerator): any image can be regenerated from its seed."""
    return (
        torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)
        * sigma_max
    )


########################
# Tables and the residual Dirichlet policy (RLEPD training/ppo/policy.py)
########################
def cold_start(num_steps: int, num_points: int, r_base: float, r_epsilon: float):
    """RLEPD fake_train.py: positions evenly spread over r_base +- r_epsilon/2 in every row, uniform weights."""
    row = (
        torch.linspace(r_base - r_epsilon / 2, r_base + r_epsilon / 2, num_points)
        if num_points > 1
        else torch.tensor([r_base])
    )
    return row.repeat(num_steps - 1, 1), torch.full((num_steps - 1, num_points), 1 / num_points)


def load_table(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        data = load_file(path)
    else:
        data = {
            k: torch.tensor(v, dtype=torch.float32)
            for k, v in json.loads(Path(path).read_text()).items()
            if k in ("positions", "weights")
        }
    return data["positions"].float(), data["weights"].float()


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

    def __init__(self, positions, weights, concentration: float, hidden: int = 128, layers: int = 2):
        super().__init__()
        pos_sorted, order = positions.sort(-1)  # ordered positions; weights follow their points
        rows = len(pos_sorted)
        segments = torch.diff(torch.cat([torch.zeros(rows, 1), pos_sorted, torch.ones(rows, 1)], -1))
        self.register_buffer("base_log_alpha_pos", torch.log(concentration * segments.clamp_min(1e-6)))
        self.register_buffer("base_log_alpha_w", torch.log(concentration * weights.gather(-1, order).clamp_min(1e-6)))
        self.steps, self.k = positions.shape
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
        return torch.cumsum(alpha_pos / alpha_pos.sum(-1, keepdim=True), -1)[:, :-1], alpha_w / alpha_w.sum(
            -1, keepdim=True
        )

    @staticmethod
    def log_prob(alpha_pos, alpha_w, segments, w):
        """Trajectory log-prob: sum over steps of log Dir(segments) + log Dir(weights); inputs [B, N-1, .]."""
        D = torch.distributions.Dirichlet
        return (D(alpha_pos).log_prob(segments) + D(alpha_w).log_prob(w)).sum(-1)

    @staticmethod
    def sample(alpha_pos, alpha_w, n: int):
        D = torch.distributions.Dirichlet
        seg = D(alpha_pos).sample((n,)).clamp_min(1e-6)
        w = D(alpha_w).sample((n,)).clamp_min(1e-6)
        seg, w = seg / seg.sum(-1, keepdim=True), w / w.sum(-1, keepdim=True)
        return seg, w, torch.cumsum(seg, -1)[..., :-1]


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


def ppo_update(policy, optimizer, accelerator, base_alphas, seg, w, old_logp, adv, args: ScriptArguments) -> dict:
    """Clipped-ratio PPO on trajectory log-probs (no value net: one terminal reward), + kl/entropy terms (RLEPD)."""
    Dir = torch.distributions.Dirichlet
    stats = {k: [] for k in ("policy_loss", "approx_kl", "clipfrac", "grad_norm", "kl_to_base", "entropy")}
    for _ in range(args.ppo_epochs):
        for mb in torch.randperm(len(adv)).split(args.minibatch_size):
            alpha_pos, alpha_w = policy()
            ratio = torch.exp(DirichletPolicy.log_prob(alpha_pos, alpha_w, seg[mb], w[mb]) - old_logp[mb])
            pg_loss = torch.max(
                -adv[mb] * ratio, -adv[mb] * ratio.clamp(1 - args.clip_range, 1 + args.clip_range)
            ).mean()
            kl_base = (
                torch.distributions.kl_divergence(Dir(alpha_pos), Dir(base_alphas[0]))
                + torch.distributions.kl_divergence(Dir(alpha_w), Dir(base_alphas[1]))
            ).sum()
            entropy = (Dir(alpha_pos).entropy() + Dir(alpha_w).entropy()).sum()
            optimizer.zero_grad()
            accelerator.backward(pg_loss + args.kl_coef * kl_base - args.entropy_coef * entropy)
            stats["grad_norm"].append(float(accelerator.clip_grad_norm_(policy.parameters(), args.max_grad_norm)))
            optimizer.step()
            with torch.no_grad():  # approx KL estimator k3, http://joschu.net/blog/kl-approx.html
                stats["approx_kl"].append(((ratio - 1) - torch.log(ratio)).mean().item())
                stats["clipfrac"].append(((ratio - 1).abs() > args.clip_range).float().mean().item())
            for k, v in (("policy_loss", pg_loss), ("kl_to_base", kl_base), ("entropy", entropy)):
                stats[k].append(v.item())
    return {k: sum(v) / len(v) for k, v in stats.items()}


def read_prompts(path: str | None) -> list[str]:
    if not path or not Path(path).is_file():
        raise ValueError(f"--prompt_file not found: {path}")
    text = Path(path).read_text(encoding="utf-8")
    if path.endswith(".csv"):
        import csv

        prompts = [r["text"] for r in csv.DictReader(text.splitlines())]
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


########################
# Sampling
########################
def sample(args: ScriptArguments, table):
    from torchvision.transforms.functional import to_pil_image
    from tqdm import tqdm

    params = {
        "epd": dict(zip(("positions", "weights"), table or (), strict=False)),
        "ipndm": {"max_order": args.max_order},
    }
    params = params.get(args.solver, {})
    prompts = read_prompts(args.prompt_file)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pipe = load_pipeline(args.model_id, device)
    denoiser = SDDenoiser(pipe, args.guidance_scale)
    sigmas = get_sigmas(args.num_steps, args.schedule, rho=args.rho, alphas_cumprod=pipe.scheduler.alphas_cumprod).to(
        device
    )
    params = {k: v.to(device) for k, v in params.items()} | (
        {"max_order": args.max_order} if args.solver == "ipndm" else {}
    )
    seq, evals = nfe(args.solver, args.num_steps, args.num_points)
    print(
        f"{args.solver}: {args.num_steps - 1} steps, {args.schedule} schedule, NFE {seq} (denoiser evaluations {evals})"
    )
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    shape = (pipe.unet.config.in_channels, args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)
    for i in tqdm(range(0, len(prompts), args.batch_size), desc=f"sampling {args.solver}", unit="batch"):
        seeds = list(range(args.seed + i, args.seed + min(i + args.batch_size, len(prompts))))  # seed s <-> prompt s
        denoiser.set_prompts(prompts[i : i + len(seeds)])
        x = SOLVERS[args.solver](denoiser, initial_noise(seeds, shape, float(sigmas[0]), device), sigmas, **params)
        for s, img in zip(seeds, denoiser.decode(x), strict=True):
            to_pil_image(img.cpu()).save(out / f"{s:06d}.png")
    print(f"wrote {len(prompts)} images to {out}")


########################
# PPO (CleanRL order: seeding -> models -> storage -> loop: rollout -> reward -> advantage -> update -> log)
########################
def train(args: ScriptArguments, table):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    import score

    prompts = read_prompts(args.prompt_file)
    weights_spec = score.parse_metric_weights(args.reward)
    base_pos, base_w = table or cold_start(args.num_steps, args.num_points, args.r_base, args.r_epsilon)

    # seeding: CRUCIAL - every rank draws its own rollout seeds (RLEPD: RandomState(seed + rank))
    accelerator = Accelerator(log_with=None)
    rank, world = accelerator.process_index, accelerator.num_processes
    set_seed(args.seed, device_specific=True)
    rng = torch.Generator().manual_seed(args.seed + rank)
    out = Path(args.outdir)

    # models
    pipe = load_pipeline(args.model_id, accelerator.device)
    denoiser = SDDenoiser(pipe, args.guidance_scale)
    sigmas = get_sigmas(args.num_steps, args.schedule, rho=args.rho, alphas_cumprod=pipe.scheduler.alphas_cumprod).to(
        accelerator.device
    )
    scorer = score.MultiScorer(weights_spec, device=accelerator.device)
    policy = DirichletPolicy(base_pos, base_w, args.concentration, args.hidden_dim)
    optimizer = torch.optim.AdamW(
        policy.parameters(), lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    policy, optimizer = accelerator.prepare(policy, optimizer)
    base = accelerator.unwrap_model(policy)
    base_alphas = (base.base_log_alpha_pos.exp(), base.base_log_alpha_w.exp())
    start, cursor = 0, rank * (args.rollout_batch_size // args.group_size)
    if (out / "checkpoint.pt").is_file():  # resume
        ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
        base.load_state_dict(ckpt["policy"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, cursor = int(ckpt["step"]), int(ckpt["cursor"][rank]) if rank < len(ckpt["cursor"]) else cursor
        rng.manual_seed(args.seed + rank + 1000003 * start)
        accelerator.print(f"resumed from {out / 'checkpoint.pt'} at step {start}")

    # storage
    n_prompts = args.rollout_batch_size // args.group_size
    shape = (pipe.unet.config.in_channels, args.height // pipe.vae_scale_factor, args.width // pipe.vae_scale_factor)
    accelerator.print(f"{world} process(es) x {args.rollout_batch_size} images = {n_prompts * world} prompts x {args.group_size} "
                      f"seeds per PPO step; NFE {nfe('epd', args.num_steps)[0]}; {len(prompts)} training prompts")  # fmt: skip
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(asdict(args), indent=1))

    def save(step: int):
        cursors = accelerator.gather(torch.tensor([cursor], device=accelerator.device)).tolist()
        if accelerator.is_main_process:
            torch.save(
                {"policy": base.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "cursor": cursors},
                out / "checkpoint.pt",
            )
            with torch.no_grad():
                pos, w = DirichletPolicy.mean_table(*base())
            meta = dict(
                step=step,
                num_steps=args.num_steps,
                num_points=args.num_points,
                schedule=args.schedule,
                rho=args.rho,
                guidance_scale=args.guidance_scale,
            )
            save_table(out / "table.json", pos.cpu(), w.cpu(), **meta)
            save_table(out / f"table-step{step:06d}.json", pos.cpu(), w.cpu(), **meta)

    step, t_start = start, time.time()
    try:
        for step in range(start + 1, args.total_steps + 1):
            # rollout: prompt-major [p0 x k, p1 x k, ...], one sampled table and one noise seed per image
            batch_prompts = [prompts[(cursor + j) % len(prompts)] for j in range(n_prompts)]
            cursor += n_prompts * world
            seeds = torch.randint(0, 2**31 - 1, (args.rollout_batch_size,), generator=rng).tolist()
            with torch.no_grad():
                alpha_pos, alpha_w = policy()
                seg, w, pos = DirichletPolicy.sample(alpha_pos, alpha_w, args.rollout_batch_size)
                old_logp = DirichletPolicy.log_prob(alpha_pos, alpha_w, seg, w)
                denoiser.set_prompts([p for p in batch_prompts for _ in range(args.group_size)])
                x = epd(denoiser, initial_noise(seeds, shape, float(sigmas[0]), accelerator.device), sigmas, pos, w)
                images = denoiser.decode(x)
            # reward (RLEPD reward_multi normalisation; HPS-only = the raw HPSv2.1 score)
            _, details = scorer(images, [p for p in batch_prompts for _ in range(args.group_size)])
            raw = {m: torch.tensor(v) for m, v in details.items()}
            rewards = sum(weights_spec[m] * NORMALISE[m](raw[m]) for m in raw) / sum(
                max(v, 0) for v in weights_spec.values()
            )
            adv = advantages(rewards, args.group_size, args.mixed_prompt_baseline).to(accelerator.device)
            # update
            stats = ppo_update(policy, optimizer, accelerator, base_alphas, seg, w, old_logp, adv, args)
            # log (all ranks' rewards averaged)
            group_std = rewards.view(-1, args.group_size).std(-1)
            local = torch.tensor([rewards.mean(), rewards.std(unbiased=False), (group_std < 1e-6).float().mean(),
                                  *[raw[m].mean() for m in raw]], device=accelerator.device)  # fmt: skip
            local = accelerator.reduce(local, "mean")
            record = {"step": step, "elapsed_sec": time.time() - t_start, "charts/reward_mean": local[0].item(),
                      "charts/reward_std": local[1].item(), "charts/frac_zero_std_groups": local[2].item(),
                      **{f"charts/{m}_mean": local[3 + i].item() for i, m in enumerate(raw)},
                      **{f"losses/{k}": v for k, v in stats.items()}}  # fmt: skip
            if accelerator.is_main_process:
                with open(out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(" ".join(f"{k.split('/')[-1]}={v:.4g}" for k, v in record.items()), flush=True)
            if step % args.save_interval == 0:
                save(step)
    except BaseException:  # Ctrl-C or a crash: keep the last completed step
        save(step - 1 if step > start else start)
        raise
    save(step)


def main(argv=None):
    from trl import TrlParser

    parser = TrlParser((ScriptArguments,))
    (args,) = parser.parse_args_and_config(argv)
    table = None
    try:
        if args.solver not in SOLVERS:
            raise ValueError(f"unknown solver {args.solver!r}; valid: {', '.join(SOLVERS)}")
        if args.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {args.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if args.num_steps < 2 or args.num_points < 1:
            raise ValueError("--num_steps must be >= 2 and --num_points >= 1")
        if args.sample and args.solver == "epd" and not args.table:
            raise ValueError("--sample with the epd solver needs --table (or pick a baseline with --solver)")
        if args.table:
            positions, weights = load_table(args.table)
            if args.sample and args.num_steps == 11 and len(positions) != 10:  # default num_steps: follow the table
                args.num_steps = len(positions) + 1
            check_table(positions, weights, args.num_steps, args.num_points)
            table = (positions, weights)
        if not args.sample:
            if args.rollout_batch_size % args.group_size or args.group_size < 2:
                raise ValueError(f"--rollout_batch_size {args.rollout_batch_size} must be a multiple of --group_size {args.group_size} (>= 2)")  # fmt: skip
            if args.minibatch_size > args.rollout_batch_size:
                raise ValueError("--minibatch_size must not exceed --rollout_batch_size")
            import score

            for m in score.parse_metric_weights(args.reward):
                if m not in NORMALISE:
                    raise ValueError(f"reward metric {m!r} has no RLEPD normalisation; use {', '.join(NORMALISE)}")
        read_prompts(args.prompt_file)
    except (ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if args.sample:
        sample(args, table)
    else:
        train(args, table)


if __name__ == "__main__":
    main()
