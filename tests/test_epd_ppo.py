# SPDX-License-Identifier: Apache-2.0
"""epd_ppo.py: sigma grids, solver orders on an analytic ODE, EPD = DPM-2 at K=1, NFE accounting, the Dirichlet
policy (cold start, degenerate rows, clipped export), advantages, `ppo_step` learning an analytic solver and its NaN
guard; SD and flow-matching (tiny SD3 / FLUX-dev) wrappers against the pipelines' own scheduler steps; every solver x
schedule sampled; table settings; end-to-end train / resume / sample on tiny SD and SD3; bad inputs; 2 processes."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import REPO, _clip_text_encoder, _eval, _t5_encoder, launch, run_command
from PIL import Image

import epd_ppo as E

GRIDS = {  # SD1.5, N = 11 (RLEPD solver_utils.get_schedule with the model's own sigma(t))
    ("discrete", 1.0): [14.6146, 8.3072, 5.0924, 3.3251, 2.2797, 1.6156, 1.1629, 0.8319, 0.5712, 0.3437, 0.02917],
    ("polynomial", 7.0): [14.6146, 9.5583, 6.0822, 3.7513, 2.2322, 1.2741, 0.6926, 0.3552, 0.1698, 0.0744, 0.02917],
    ("logsnr", 1.0): [14.6146, 7.8487, 4.2151, 2.2637, 1.2157, 0.6529, 0.3506, 0.1883, 0.1011, 0.0543, 0.02917],
    ("time_uniform", 1.0): [14.6146, 9.0868, 5.8840, 3.9519, 2.7358, 1.9343, 1.3784, 0.9702, 0.6498, 0.3747, 0.02917],
}


@pytest.mark.parametrize("schedule, rho", list(GRIDS))
def test_sigma_grids_match_sd15_reference(schedule, rho):
    assert E.get_sigmas(11, schedule, rho=rho).tolist() == pytest.approx(GRIDS[(schedule, rho)], abs=2e-4)


S = 0.5  # Gaussian data N(0, S^2 I): D(x; sigma) = x S^2 / (S^2 + sigma^2); exact x(sigma) = x_T sqrt(S^2+sigma^2)/sqrt(S^2+sigma_T^2)


class Gaussian:
    def __init__(self):
        self.calls, self.evals = 0, 0

    def __call__(self, x, sigma):
        self.calls, self.evals = self.calls + 1, self.evals + x.shape[0]
        return x * S**2 / (S**2 + sigma.view(-1, 1) ** 2)


def exact(x_t, sigmas):
    return x_t * math.sqrt(S**2 + sigmas[-1] ** 2) / math.sqrt(S**2 + sigmas[0] ** 2)


def solve(name, n, **params):
    sigmas = E.get_sigmas(n, "logsnr").double()
    x_t = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    den = Gaussian()
    x = E.SOLVERS[name](den, x_t, sigmas, **params)
    return (x - exact(x_t, sigmas)).abs().max().item(), den


@pytest.mark.parametrize("name, order", [("ddim", 1), ("dpm2", 2), ("heun", 2), ("ipndm", 2)])
def test_error_falls_at_the_solver_order(name, order):
    errors = [solve(name, n)[0] for n in (21, 41, 81)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:], strict=False)]
    assert min(rates) > order - 0.35, (errors, rates)


def test_epd_with_one_midpoint_equals_dpm2_exactly():
    sigmas = E.get_sigmas(6, "discrete")
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    table = torch.full((5, 1), 0.5), torch.ones(5, 1)
    assert torch.equal(E.epd(Gaussian(), x, sigmas, *table), E.dpm2(Gaussian(), x, sigmas))


@pytest.mark.parametrize("name", list(E.SOLVERS))
def test_nfe_accounting_and_one_batched_call_per_epd_step(name):
    n, k = 6, 3
    params = (
        {"positions": torch.rand(n - 1, k).sort(-1).values, "weights": torch.full((n - 1, k), 1 / k)}
        if name == "epd"
        else {}
    )
    _, den = solve(name, n, **params)
    seq, evals = E.nfe(name, n, k)
    assert (den.calls, den.evals // 4) == (seq, evals)
    if name == "epd":
        _, loop = solve(name, n, **params, batched=False)
        assert loop.calls == evals and solve(name, n, **params, batched=False)[0] == pytest.approx(
            solve(name, n, **params)[0]
        )


def test_per_image_tables_match_separate_runs():
    sigmas = E.get_sigmas(5, "discrete")
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(2)) * sigmas[0]
    pos, w = torch.rand(3, 4, 2).sort(-1).values, torch.softmax(torch.randn(3, 4, 2), -1)
    together = E.epd(Gaussian(), x, sigmas, pos, w)
    for b in range(3):
        assert torch.allclose(together[b], E.epd(Gaussian(), x[b : b + 1], sigmas, pos[b], w[b])[0], atol=1e-6)


def test_policy_starts_at_cold_start_and_log_prob_is_dirichlet():
    pos, w = E.cold_start(11, 2, 0.5, 0.33)
    assert pos[0].tolist() == pytest.approx([0.335, 0.665]) and w[0].tolist() == [0.5, 0.5]
    policy = E.DirichletPolicy(pos, w, concentration=20.0)
    alpha_pos, alpha_w = policy()
    assert alpha_pos.sum(-1).tolist() == pytest.approx([20.0] * 10) and alpha_w[0].tolist() == pytest.approx(
        [10.0, 10.0]
    )
    mean_pos, mean_w = E.DirichletPolicy.mean_table(alpha_pos, alpha_w)
    assert torch.allclose(mean_pos, pos, atol=1e-6) and torch.allclose(mean_w, w, atol=1e-6)
    seg, ws, positions = E.DirichletPolicy.sample(alpha_pos, alpha_w, 5, seed=3)
    assert (positions.diff(dim=-1) > 0).all() and (positions > 0).all() and (positions < 1).all()
    assert torch.equal(E.DirichletPolicy.sample(alpha_pos, alpha_w, 5, seed=3)[0], seg)  # the seed alone decides

    def log_dir(a, x):  # log Dir(x | a) = lgamma(sum a) - sum lgamma(a) + sum (a - 1) log x
        return torch.lgamma(a.sum(-1)) - torch.lgamma(a).sum(-1) + ((a - 1) * x.log()).sum(-1)

    manual = (log_dir(alpha_pos, seg) + log_dir(alpha_w, ws)).sum(-1)
    assert torch.allclose(E.DirichletPolicy.log_prob(alpha_pos, alpha_w, seg, ws), manual, atol=1e-4)
    assert sum(p.numel() for p in policy.parameters()) == 35_461  # RLEPD EPDParamPolicy at K=2, N=11


def test_cold_start_sorts_rows_and_degenerate_rows_fall_back_to_uniform():
    # RLEPD cold_start: sort (weights follow), clip eps 1e-6, then rows with a segment or weight <= 1e-6 -> uniform
    positions = torch.tensor([[0.7, 0.2], [0.5, 0.5], [0.3, 0.6], [0.3, 1.0]])
    weights = torch.tensor([[0.9, 0.1], [0.5, 0.5], [1.0, 0.0], [0.4, 0.6]])
    pos, w = E.DirichletPolicy.mean_table(*E.DirichletPolicy(positions, weights, concentration=20.0)())
    assert pos.flatten().tolist() == pytest.approx([0.2, 0.7, 1 / 3, 2 / 3, 0.3, 0.6, 1 / 3, 2 / 3], abs=1e-6)
    assert w.flatten().tolist() == pytest.approx([0.1, 0.9, 0.5, 0.5, 0.5, 0.5, 0.4, 0.6], abs=1e-6)


def test_export_of_a_collapsed_policy_is_sorted_clipped_and_accepted(tmp_path):
    policy = E.DirichletPolicy(*E.cold_start(4, 2, 0.5, 0.33), concentration=20.0, hidden=8)
    with torch.no_grad():  # collapse: the last segment's concentration -> the 1e-5 floor, a weight -> 0
        policy.head.bias.copy_(torch.tensor([8.0, 8.0, -60.0, 9.0, -60.0]))
        alpha_pos, alpha_w = policy()
    raw = torch.cumsum(alpha_pos / alpha_pos.sum(-1, keepdim=True), -1)[:, :-1]
    assert (raw[:, 1] == 1.0).all()  # an unclipped export would hold a position of exactly 1.0
    pos, w = E.DirichletPolicy.mean_table(alpha_pos, alpha_w)
    assert (pos[:, 1] <= 1 - 1e-6).all() and (pos[:, 0] < pos[:, 1]).all() and (w >= 1e-6 * 0.99).all()
    E.save_table(tmp_path / "t.json", pos, w, num_steps=4, num_points=2)
    E.check_table(*E.load_table(str(tmp_path / "t.json"))[:2], 4, 2)


def test_advantages_same_prompt_and_mixed_prompt():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 10.0, 10.0, 10.0, 14.0])
    raw = torch.tensor([1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2, 10 - 34 / 3, 10 - 34 / 3, 10 - 34 / 3, 14 - 10])
    assert E.advantages(r, 4).tolist() == pytest.approx(
        ((raw - raw.mean()) / raw.std(unbiased=False)).tolist(), abs=1e-6
    )
    # RLEPD's view(4, 2): baselines over {r0, r2, r4, r6} and {r1, r3, r5, r7}
    even, odd = r[0::2], r[1::2]
    mixed = torch.empty(8)
    mixed[0::2], mixed[1::2] = even - (even.sum() - even) / 3, odd - (odd.sum() - odd) / 3
    expected = (mixed - mixed.mean()) / mixed.std(unbiased=False)
    assert E.advantages(r, 4, mixed_prompt=True).tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_reward_is_rlepd_reward_multi_on_score_py_scores():
    import types

    import score

    assert set(E.NORMALISE) == set(score.METRICS) - {"mps"}  # MPS has no RLEPD normalisation: refused up front
    # RLEPD reward_multi: clamp(ir_raw / 10, 0, 1) on its own ImageReward, ir_raw = the standard score (score.py) + 3.1
    ir = [-3.5, -2.0, -0.5, 0.0, 0.9, 7.5]
    expected = [min(max((v + 3.1) / 10, 0.0), 1.0) for v in ir]  # 0, .11, .26, .31, .4, 1
    assert E.NORMALISE["imagereward"](torch.tensor(ir)).tolist() == pytest.approx(expected, abs=1e-5)
    # hpsv3 at the HPSv3 benchmark's model means: SD2 -0.24 -> 0, SD3 5.31, SDXL 8.20, FLUX-dev 10.43, Kolors 10.55 -> 1;
    # not clamped above
    hps3 = E.NORMALISE["hpsv3"](torch.tensor([-0.24, 5.31, 8.20, 10.43, 10.55, 12.0], dtype=torch.float64))
    assert hps3.tolist() == pytest.approx([0.0, 0.514365, 0.782206, 0.988879, 1.0, 1.134384], abs=1e-6)
    # the whole reward: sum_m w_m norm_m(score_m) / sum_m max(w_m, 0), norm as RLEPD (pick / 26, aesthetic / 10, ...)
    raw = {"imagereward": [-0.5, 0.3], "pickscore": [21.0, 27.0], "hpsv2": [0.25, 0.27], "aesthetic": [5.2, 5.6]}
    weights = {"imagereward": 1.0, "pickscore": 0.5, "hpsv2": 2.0, "aesthetic": -0.5}
    scorer = lambda images, prompts: (None, raw)  # noqa: E731 (a stand-in that returns fixed raw scores)
    reward = E.make_reward_fn(types.SimpleNamespace(decode=lambda x: x, prompts=["a", "b"]), scorer, weights)
    expected = [(1.0 * 0.26 + 0.5 * 21 / 26 + 2.0 * 0.25 - 0.5 * 0.52) / 3.5,
                (1.0 * 0.34 + 0.5 * 1.0 + 2.0 * 0.27 - 0.5 * 0.56) / 3.5]  # fmt: skip
    assert reward(torch.zeros(2)).tolist() == pytest.approx(expected, abs=1e-5)


def analytic_setup(lr=1e-2):
    """EPD (N 4, K 2) on Gaussian data; reward = -squared error of the final state vs the exact ODE solution."""
    sigmas = E.get_sigmas(4, "logsnr")
    torch.manual_seed(0)  # the MLP's initial weights (the zero head keeps the cold start whatever they are)
    policy = E.DirichletPolicy(*E.cold_start(4, 2, 0.5, 0.33), concentration=20.0, hidden=16)
    args = E.ScriptArguments(group_size=4, minibatch_size=8, learning_rate=lr)
    opt = torch.optim.AdamW(policy.parameters(), lr=lr, weight_decay=0.0)
    base = (policy.base_log_alpha_pos.exp(), policy.base_log_alpha_w.exp())
    return sigmas, policy, args, opt, base


def test_ppo_step_learns_a_more_accurate_table_on_an_analytic_ode():
    sigmas, policy, args, opt, base = analytic_setup()
    acc = Accelerator(cpu=True)
    x_test = torch.randn(64, 8, generator=torch.Generator().manual_seed(123)) * sigmas[0]

    def table_error():  # mean squared error of the policy's mean table on held-out noise
        with torch.no_grad():
            out = E.epd(Gaussian(), x_test, sigmas, *E.DirichletPolicy.mean_table(*policy()))
        return ((out - exact(x_test, sigmas)) ** 2).mean().item()

    cold = table_error()
    with torch.no_grad():  # DPM-Solver-2 at the same NFE (6) on the same grid
        dpm2 = ((E.dpm2(Gaussian(), x_test, sigmas) - exact(x_test, sigmas)) ** 2).mean().item()
    for step in range(1, 31):  # a "prompt" group = 4 images from the same noise, each with its own sampled table
        x = (torch.randn(4, 8, generator=torch.Generator().manual_seed(step)) * sigmas[0]).repeat_interleave(4, 0)
        rewards, stats = E.ppo_step(
            policy, opt, acc, base, Gaussian(), x, sigmas, lambda out, x=x: -((out - exact(x, sigmas)) ** 2).mean(1),
            args, seed=step,
        )  # fmt: skip
        assert rewards.shape == (16,) and stats["clipfrac"] >= 0
    learned = table_error()  # the README's numbers: pytest tests/test_epd_ppo.py -k analytic -s
    print(f"\nEPD N 4, K 2, Gaussian data: mean-table MSE {cold:.2g} (cold start) -> {learned:.2g} after 30 ppo_steps "
          f"({learned / cold:.2%}); DPM-Solver-2 at the same NFE: {dpm2:.2g}")  # fmt: skip
    # measured: 5.2e-2 -> 8.4e-5 (0.16 %), DPM-Solver-2 3.7e-2; 0.01-5.8 % over the initialisation seeds 0-7
    assert learned < 0.1 * cold and learned < 0.1 * dpm2, (cold, learned, dpm2)


def test_ppo_step_stops_on_a_nan_reward_before_any_update():
    sigmas, policy, args, opt, base = analytic_setup()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    x = torch.randn(16, 8) * sigmas[0]
    with pytest.raises(FloatingPointError, match="non-finite rewards"):
        E.ppo_step(policy, opt, Accelerator(cpu=True), base, Gaussian(), x, sigmas,
                   lambda out: torch.full((16,), float("nan")), args)  # fmt: skip
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())


def test_ppo_update_moves_the_mean_table_towards_a_rewarded_table():
    torch.manual_seed(0)
    target_pos, target_w = torch.tensor([[0.2, 0.9]] * 3), torch.tensor([[0.8, 0.2]] * 3)
    policy = E.DirichletPolicy(*E.cold_start(4, 2, 0.5, 0.33), concentration=20.0, hidden=16)
    args = E.ScriptArguments(minibatch_size=16, learning_rate=3e-2)
    opt = torch.optim.AdamW(policy.parameters(), lr=args.learning_rate)
    acc = Accelerator(cpu=True)
    base = (policy.base_log_alpha_pos.exp(), policy.base_log_alpha_w.exp())

    def distance():
        with torch.no_grad():
            pos, w = E.DirichletPolicy.mean_table(*policy())
        return ((pos - target_pos) ** 2).sum().item() + ((w - target_w) ** 2).sum().item()

    before = distance()
    for i in range(40):
        with torch.no_grad():
            alpha_pos, alpha_w = policy()
            seg, w, pos = E.DirichletPolicy.sample(alpha_pos, alpha_w, 16, seed=i)
            old = E.DirichletPolicy.log_prob(alpha_pos, alpha_w, seg, w)
        reward = -((pos - target_pos) ** 2).sum((1, 2)) - ((w - target_w) ** 2).sum((1, 2))
        stats = E.ppo_update(policy, opt, acc, base, seg, w, old, E.advantages(reward, 4), args, seed=i)
    assert distance() < 0.5 * before
    assert set(stats) == {"policy_loss", "approx_kl", "clipfrac", "grad_norm", "kl_to_base", "entropy"}


########################
# SD1.x wrapper, sampling, table settings
########################
def capture_steps(pipe, num_steps: int, **kwargs) -> list:
    """Run the pipeline itself and return the latents after each of its scheduler steps."""
    seen = []

    def grab(p, i, t, tensors):
        seen.append(tensors["latents"].clone())
        return tensors

    with torch.no_grad():
        pipe(num_inference_steps=num_steps, output_type="latent", callback_on_step_end=grab, **kwargs)
    return seen


def test_sd_denoiser_step_equals_the_pipelines_ddim_step_with_500_train_steps(tiny_sd15):
    from diffusers import DDIMScheduler

    pipe = E.load_pipeline(tiny_sd15, torch.device("cpu"))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, num_train_timesteps=500)
    den = E.make_denoiser(pipe, None, 32, 32)
    x_vp = torch.randn(1, *den.shape, generator=torch.Generator().manual_seed(0))
    after = capture_steps(pipe, 2, prompt="a red cube", latents=x_vp, guidance_scale=7.5, height=32, width=32)[0]
    acp = pipe.scheduler.alphas_cumprod.double()
    t0, t1 = pipe.scheduler.timesteps.tolist()  # [251, 1]: the T = 500 grid
    sig = torch.tensor([((1 - acp[t]) / acp[t]).sqrt() for t in (t0, t1)])
    den.set_prompts(["a red cube"])  # DDIM = Euler in x / sqrt(alpha_bar), sigma = sqrt((1 - a) / a)
    ours = E.ddim(den, x_vp / acp[t0].sqrt().float(), sig.float()) * acp[t1].sqrt().float()
    assert torch.allclose(ours, after, atol=1e-4), (ours - after).abs().max()


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat in the rain\ntwo dogs\na red cube\n")
    return path


def tiny_args(model, prompts, outdir, *extra):
    return ["--model_id", model, "--prompt_file", str(prompts), "--outdir", str(outdir), "--height", "32", "--width", "32",
            "--num_steps", "3", "--num_points", "2", *extra]  # fmt: skip


def test_every_solver_and_schedule_samples(tiny_sd15, prompts_file, tmp_path, capsys):
    table = tmp_path / "t.json"  # a table without settings: the flags decide
    E.save_table(table, *E.cold_start(3, 2, 0.5, 0.33))
    images = {}
    for solver in E.SOLVERS:
        for schedule in E.SCHEDULES[:4]:
            out = tmp_path / f"{solver}-{schedule}"
            extra = ["--table", str(table)] if solver == "epd" else ["--max_order", "3"] if solver == "ipndm" else []
            E.main(tiny_args(tiny_sd15, prompts_file, out, "--sample", "--solver", solver, "--schedule", schedule,
                             "--batch_size", "3", *extra))  # fmt: skip
            images[solver, schedule] = np.asarray(Image.open(out / "000001.png"), dtype=float)
            assert f"{solver}: 2 steps, {schedule} schedule" in capsys.readouterr().out
    for schedule in E.SCHEDULES[:4]:  # every solver really ran: its image differs from DDIM's
        assert all(np.abs(images[s, schedule] - images["ddim", schedule]).max() > 0 for s in E.SOLVERS if s != "ddim")


def test_sampling_follows_the_tables_settings_and_rejects_contradicting_flags(
    tiny_sd15, prompts_file, tmp_path, capsys
):
    table = tmp_path / "t.json"
    E.save_table(table, *E.cold_start(5, 3, 0.5, 0.33), num_steps=5, num_points=3, schedule="logsnr", rho=1.0,
                 guidance_scale=3.0)  # fmt: skip
    base = ["--model_id", tiny_sd15, "--prompt_file", str(prompts_file), "--height", "32", "--width", "32"]
    E.main([*base, "--sample", "--table", str(table), "--outdir", str(tmp_path / "a")])
    assert "epd: 4 steps, logsnr schedule, guidance 3.0, NFE 8 (denoiser evaluations 16)" in capsys.readouterr().out
    E.main([*base, "a lone prompt", "--table", str(table), "--schedule", "logsnr", "--outdir", str(tmp_path / "b")])
    assert [p.name for p in (tmp_path / "b").iterdir()] == ["000000.png"]  # positional prompt -> sampling
    for flag, value, theirs in (("--schedule", "discrete", "logsnr"), ("--guidance_scale", "7.5", "3.0"),
                                ("--num_steps", "11", "5")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            E.main([*base, "--sample", "--table", str(table), flag, value, "--outdir", str(tmp_path / "c")])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and f"{flag} {value if flag != '--num_steps' else 11}" in err and theirs in err


def test_end_to_end_train_resume_export_sample(tiny_sd15, tiny_scorers, monkeypatch, prompts_file, tmp_path, capsys):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    run = tmp_path / "run"
    rl = ["--rollout_batch_size", "4", "--group_size", "2", "--minibatch_size", "2", "--learning_rate", "1e-2",
          "--save_interval", "100"]  # fmt: skip
    E.main(tiny_args(tiny_sd15, prompts_file, run, *rl, "--total_steps", "2"))  # no device flags: CPU picked itself
    assert "note: no CUDA device: training on the CPU in fp32" in capsys.readouterr().out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and "charts/hpsv2_mean" in lines[0] and "losses/approx_kl" in lines[0]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["policy"]["head.weight"].abs().sum() > 0  # the zero-initialised head moved
    table = json.loads((run / "table.json").read_text())
    assert table["step"] == 2 and len(table["positions"]) == 2 and table["num_steps"] == 3
    assert (table["schedule"], table["guidance_scale"]) == ("discrete", 7.5)
    loads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: loads.append(f) or real_load(f, *a, **k))
    E.main(tiny_args(tiny_sd15, prompts_file, run, *rl, "--total_steps", "3"))  # resumes at step 3
    assert [f for f in loads if str(f).endswith("checkpoint.pt")] == [run / "checkpoint.pt"]  # read once
    monkeypatch.setattr(torch, "load", real_load)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert "resumed from" in capsys.readouterr().out
    for solver in ("epd", "ddim"):  # sample with the exported table and with a baseline: same seed-named files
        extra = ["--table", str(run / "table.json")] if solver == "epd" else ["--solver", "ddim"]
        E.main(tiny_args(tiny_sd15, prompts_file, tmp_path / solver, "--sample", "--batch_size", "2", *extra))
        assert sorted(p.name for p in (tmp_path / solver).iterdir()) == ["000000.png", "000001.png", "000002.png"]
    out = capsys.readouterr().out
    assert (
        "epd: 2 steps, discrete schedule, guidance 7.5, NFE 4 (denoiser evaluations 6)" in out
        and "ddim: 2 steps" in out
    )


@pytest.mark.parametrize("fault", ["rewards", "parameters"])
def test_non_finite_stops_with_one_line_keeps_the_last_good_checkpoint_and_never_gathers(
    fault, tiny_sd15, tiny_scorers, monkeypatch, prompts_file, tmp_path, capsys
):
    import accelerate

    import score

    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    calls, gathers_after_fault = {"score": 0, "optimizer": 0, "fault": False}, []
    real_call, real_gather = score.MultiScorer.__call__, accelerate.Accelerator.gather
    real_step = torch.optim.AdamW.step

    def scorer(self, images, prompts):  # rewards: the third step's are NaN (e.g. a scorer in fp16 overflowing)
        calls["score"] += 1
        total, details = real_call(self, images, prompts)
        if fault == "rewards" and calls["score"] == 3:
            calls["fault"], details = True, {m: [float("nan")] * len(v) for m, v in details.items()}
        return total, details

    def step(self, *args, **kwargs):  # parameters: the last optimizer step of PPO step 3 (2 minibatches a step)
        calls["optimizer"] += 1
        out = real_step(self, *args, **kwargs)
        if fault == "parameters" and calls["optimizer"] == 6:
            calls["fault"] = True
            for group in self.param_groups:
                for param in group["params"]:
                    param.data.fill_(float("nan"))
        return out

    def gather(self, tensor):
        if calls["fault"]:
            gathers_after_fault.append(tensor.shape)
        return real_gather(self, tensor)

    monkeypatch.setattr(score.MultiScorer, "__call__", scorer)
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    monkeypatch.setattr(accelerate.Accelerator, "gather", gather)
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as exc:
        E.main(tiny_args(tiny_sd15, prompts_file, run, "--rollout_batch_size", "4", "--group_size", "2",
                         "--minibatch_size", "2", "--learning_rate", "1e-2", "--save_interval", "100",
                         "--total_steps", "5"))  # fmt: skip
    err = capsys.readouterr().err  # (above it: the loaders' progress bars)
    assert (
        exc.value.code == 1
        and "Traceback" not in err
        and [ln for ln in err.splitlines() if "error" in ln] == [err.splitlines()[-1]]
    )
    what = {"rewards": "rewards", "parameters": "policy parameters after the update"}[fault]
    assert err.splitlines()[-1].startswith(f"error: non-finite {what} at PPO step 3") and "holds step 2" in err
    assert len(gathers_after_fault) == (1 if fault == "rewards" else 0)  # the rewards' own; none on the error path
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(torch.isfinite(v).all() for v in ckpt["policy"].values())
    table = json.loads((run / "table.json").read_text())
    assert table["step"] == 2 and np.isfinite(table["positions"]).all()
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


########################
# Flow-matching models: tiny SD3 and FLUX-dev with their real scheduler configs
########################
@pytest.fixture(scope="session")
def tiny_sd3(tmp_path_factory):
    """StableDiffusion3Pipeline after diffusers' fast tests; scheduler = SD3-Medium's (shift 3.0), patch size 2."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from diffusers import StableDiffusion3Pipeline as Pipe
    from transformers import CLIPTextModelWithProjection

    path = tmp_path_factory.mktemp("tiny_sd3")
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
    )  # fmt: skip
    clip1, tok = _clip_text_encoder()
    clip2, tok2 = _clip_text_encoder()
    clips = [CLIPTextModelWithProjection(c.config) for c in (clip1, clip2)]
    t5, t5_tok = _t5_encoder()
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=4,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    _eval(transformer, *clips, t5, vae)
    Pipe(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clips[0], tokenizer=tok, text_encoder_2=clips[1], tokenizer_2=tok2, text_encoder_3=t5,
        tokenizer_3=t5_tok,
    ).save_pretrained(path)  # fmt: skip
    return str(path)


@pytest.fixture(params=["sd3", "flux"])
def flow_pipe(request):
    model = request.getfixturevalue("tiny_sd3" if request.param == "sd3" else "tiny_flux")
    return request.param, E.load_pipeline(model, torch.device("cpu"))


def run_flow_pipe(name, pipe, x, prompts, num_steps=3):
    """The pipeline's own latents after each of its steps (FLUX: packed latents, embedded guidance 3.5; SD3: true CFG
    4.5 with the empty negative prompt)."""
    if name == "flux":
        packed = pipe._pack_latents(x, len(x), *x.shape[1:])
        steps = capture_steps(pipe, num_steps, prompt=prompts, latents=packed, guidance_scale=3.5, height=32, width=32)
        return [pipe._unpack_latents(a, 32, 32, pipe.vae_scale_factor) for a in steps]
    return capture_steps(pipe, num_steps, prompt=prompts, latents=x, guidance_scale=4.5, height=32, width=32)


def test_flow_denoiser_steps_equal_the_pipelines_own_scheduler_steps(flow_pipe):
    """Three steps: at the first (t = 1) D = x - t v and a wrong D = x - v agree; the later ones prove it at t < 1."""
    name, pipe = flow_pipe
    den = E.make_denoiser(pipe, None, 32, 32)
    x = torch.randn(2, *den.shape, generator=torch.Generator().manual_seed(0))
    prompts = ["a cat in the rain", "two dogs"]
    steps = run_flow_pipe(name, pipe, x, prompts)
    t = pipe.scheduler.sigmas  # the pipeline's own grid 1 = t0 > t1 > t2 > t3 = 0 (flow-matching Euler)
    assert len(steps) == 3 and t[0] == 1 and 0 < t[2] < t[1] < 1 and t[3] == 0
    den.set_prompts(prompts)
    assert den.guidance == (3.5 if name == "flux" else 4.5)
    for i, after in enumerate(steps):
        ours = E.ddim(den, x, t[: i + 2])
        assert torch.allclose(ours, after, atol=1e-5), (i, (ours - after).abs().max())


def test_flow_denoiser_passes_the_pipelines_timesteps_in_bf16(flow_pipe):
    """SD3's pipeline passes fp32 1000 t (a bf16 t near 1 is ~2/1000 off); FLUX's casts 1000 t to bf16, then / 1000."""
    name, pipe = flow_pipe
    pipe.to(dtype=torch.bfloat16)
    seen, forward = [], pipe.transformer.forward

    def spy(*args, **kwargs):
        seen.append(kwargs["timestep"][0].clone())
        return forward(*args, **kwargs)

    pipe.transformer.forward = spy
    den = E.make_denoiser(pipe, None, 32, 32)
    x = torch.randn(1, *den.shape, generator=torch.Generator().manual_seed(0))
    run_flow_pipe(name, pipe, x, ["a cat"], num_steps=4)
    theirs, seen[:] = list(seen), []
    den.set_prompts(["a cat"])
    for t in pipe.scheduler.sigmas[:-1]:
        den(x, t.expand(1))
    assert len(seen) == len(theirs) == 4
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(seen, theirs, strict=True)), (seen, theirs)


def test_every_solver_converges_with_nfe_on_flow_models(flow_pipe):
    name, pipe = flow_pipe
    den = E.make_denoiser(pipe, None, 32, 32)
    den.set_prompts(["a red cube on top of a blue sphere"])
    grids = {n: den.sigmas(n, "flowmatch", 1.0) for n in (3, 5, 9, 17, 65)}
    assert grids[3][0] == 1.0 and all(g[-1] == pytest.approx(grids[3][-1]) for g in grids.values())  # same ends
    x = torch.randn(1, *den.shape, generator=torch.Generator().manual_seed(0))
    reference = E.heun(den, x, grids[65])
    for solver in E.SOLVERS:
        errors = []
        for n in (3, 5, 9, 17):
            params = dict(zip(("positions", "weights"), E.cold_start(n, 2, 0.5, 0.33), strict=True)) if solver == "epd" else {}  # fmt: skip
            errors.append((E.SOLVERS[solver](den, x, grids[n], **params) - reference).abs().max().item())
        assert all(a > b for a, b in zip(errors, errors[1:], strict=False)) and errors[-1] < errors[0] / 4, (
            solver,
            errors,
        )


def test_ppo_on_tiny_sd3_writes_a_table_that_sample_reproduces(tiny_sd3, tiny_scorers, monkeypatch, prompts_file,
                                                                tmp_path, capsys):  # fmt: skip
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    run, samples = tmp_path / "run", tmp_path / "samples"
    E.main(tiny_args(tiny_sd3, prompts_file, run, "--rollout_batch_size", "4", "--group_size", "2",
                     "--minibatch_size", "2", "--learning_rate", "1e-2", "--total_steps", "2"))  # fmt: skip
    table = json.loads((run / "table.json").read_text())
    assert (table["schedule"], table["guidance_scale"], table["num_steps"]) == ("flowmatch", 4.5, 3)
    E.main(["--sample", "--table", str(run / "table.json"), "--model_id", tiny_sd3, "--prompt_file", str(prompts_file),
            "--outdir", str(samples), "--height", "32", "--width", "32", "--batch_size", "3"])  # fmt: skip
    assert "epd: 2 steps, flowmatch schedule, guidance 4.5" in capsys.readouterr().out
    # the same images from the checkpoint's policy: Dirichlet mean -> EPD on SD3's own shifted grid -> decode
    policy = E.DirichletPolicy(*E.cold_start(3, 2, 0.5, 0.33), concentration=20.0)
    policy.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["policy"])
    with torch.no_grad():
        pos, w = E.DirichletPolicy.mean_table(*policy())
    pipe = E.load_pipeline(tiny_sd3, torch.device("cpu"))
    pipe.scheduler.set_timesteps(3)
    sigmas = pipe.scheduler.sigmas[:-1]
    den = E.make_denoiser(pipe, 4.5, 32, 32)
    den.set_prompts(prompts_file.read_text().splitlines())
    x = torch.stack([torch.randn(den.shape, generator=torch.Generator().manual_seed(s)) for s in range(3)])
    images = (den.decode(E.epd(den, x, sigmas, pos, w)) * 255).byte().permute(0, 2, 3, 1).numpy()
    for s in range(3):
        png = np.asarray(Image.open(samples / f"{s:06d}.png"), dtype=int)
        assert np.abs(png - images[s].astype(int)).max() <= 1


########################
# Bad inputs (issue 14): one `error:` line, exit 2, before any weights load
########################
BAD = {  # name -> (extra argv, expected message part); {model} = the tiny SD1.5 folder, {tmp} = a scratch folder
    "num_steps": (["--num_steps", "1"], "--num_steps must be >= 2"),
    "num_points": (["--num_points", "0"], "--num_points must be >= 1"),
    "not_an_int": (["--num_steps", "abc"], "invalid int value"),
    "batch_size": (["--sample", "--solver", "ddim", "--batch_size", "0"], "--batch_size must be >= 1"),
    "lr": (["--learning_rate", "0"], "--learning_rate must be > 0"),
    "concentration": (["--concentration", "-1"], "--concentration must be > 0"),
    "max_order": (["--sample", "--solver", "ipndm", "--max_order", "5"], "--max_order must be 1-4"),
    "r_base": (["--r_base", "0.9", "--r_epsilon", "0.4"], "must lie in (0, 1)"),
    "height": (["--height", "30"], "multiples of 8"),
    "group": (["--rollout_batch_size", "6", "--group_size", "4"], "must be a multiple of --group_size 4"),
    "minibatch": (["--minibatch_size", "16"], "--minibatch_size must not exceed"),
    "device_nonsense": (["--sample", "--solver", "ddim", "--device", "nonsense"], "is not a device"),
    "device_cuda": (["--sample", "--solver", "ddim", "--device", "cuda"], "no such device"),
    "device_training": (["--device", "cpu"], "--device is for sampling"),
    "model_missing": (["--model_id", "/no/such/model"], "no such folder: /no/such/model"),
    "model_not_pipeline": (["--model_id", "{tmp}"], "is not a diffusers pipeline folder"),
    "solver": (["--sample", "--solver", "euler"], "unknown solver 'euler'"),
    "schedule": (["--schedule", "karras"], "unknown schedule 'karras'"),
    "schedule_family": (["--schedule", "flowmatch"], "does not fit StableDiffusionPipeline"),
    "epd_no_table": (["--sample"], "needs --table"),
    "table_missing": (["--table", "{tmp}/none.json"], "no such file"),
    "table_syntax": (["--table", "{tmp}/syntax.json"], "invalid JSON (line 2"),
    "table_keys": (["--table", "{tmp}/keys.json"], "needs numeric 2-D `positions` and `weights`"),
    "table_shape": (["--table", "{tmp}/shape.json", "--num_steps", "4"], "contradicts the table's num_steps 3"),
    "table_pos": (["--table", "{tmp}/pos.json"], "positions must lie in (0, 1)"),
    "table_w": (["--table", "{tmp}/w.json"], "weights must be on the simplex"),
    "table_solver": (["--sample", "--solver", "ddim", "--table", "{tmp}/pos.json"], "--solver ddim does not use it"),
    "prompt_missing": (["--prompt_file", "{tmp}/none.txt"], "no such file"),
    "prompt_empty": (["--prompt_file", "{tmp}/empty.txt"], "no prompts"),
    "prompt_csv": (["--prompt_file", "{tmp}/p.csv"], "no `text` column"),
    "reward_unknown": (["--reward", "nosuch"], "unknown metric 'nosuch'"),
    "reward_norm": (["--reward", "mps"], "no RLEPD normalisation"),
    "reward_weight": (["--reward", "hpsv2:x"], "must be a number"),
    "unknown_flag": (["--num_step", "4"], "unrecognised arguments: --num_step"),
    "outdir_file": (["--outdir", "{tmp}/p.csv"], "is a file"),
    "resume_other_settings": (["--outdir", "{tmp}/oldrun"], "was trained with --num_steps 5, not 3"),
    "resume_hidden_dim": (["--outdir", "{tmp}/oldrun3", "--hidden_dim", "64"], "--hidden_dim 128, not 64"),
    "config_missing": (["--config", "{tmp}/none.yaml"], "--config"),
    "config_unknown_key": (["--config", "{tmp}/c.yaml"], "unrecognised arguments: --num_stepz"),
}


def bad_files(tmp):
    (tmp / "syntax.json").write_text('{"positions": [[0.3, 0.6]],\n "weights": [[0.5, 0.5]],,}')
    (tmp / "keys.json").write_text(json.dumps({"positions": [[0.3, 0.6]]}))
    (tmp / "shape.json").write_text(json.dumps({"positions": [[0.3, 0.6]] * 2, "weights": [[0.5, 0.5]] * 2}))
    (tmp / "pos.json").write_text(json.dumps({"positions": [[0.3, 1.2]] * 2, "weights": [[0.5, 0.5]] * 2}))
    (tmp / "w.json").write_text(json.dumps({"positions": [[0.3, 0.6]] * 2, "weights": [[0.7, 0.5]] * 2}))
    (tmp / "empty.txt").write_text("\n  \n")
    (tmp / "p.csv").write_text("caption,id\na cat,1\n")
    (tmp / "p.txt").write_text("a cat\n")
    (tmp / "c.yaml").write_text("num_stepz: 4\n")
    (tmp / "oldrun").mkdir()
    torch.save({"settings": {"num_steps": 5, "num_points": 2}}, tmp / "oldrun" / "checkpoint.pt")
    (tmp / "oldrun3").mkdir()
    settings = {"num_steps": 3, "num_points": 2, "schedule": "discrete", "rho": 1.0, "hidden_dim": 128}
    torch.save({"settings": settings}, tmp / "oldrun3" / "checkpoint.pt")


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_before_any_weights(case, tiny_sd15, no_weights, tmp_path, capsys):
    bad_files(tmp_path)
    extra, message = BAD[case]
    extra = [a.format(tmp=tmp_path) for a in extra]
    argv = tiny_args(tiny_sd15, tmp_path / "p.txt", tmp_path / "out", *extra)
    with pytest.raises(SystemExit) as exc:
        E.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err


def test_one_error_line_from_the_main_process_only(tiny_sd15, monkeypatch, tmp_path, capsys):
    """Under a launcher every process validates; only rank 0 prints the error, every process exits."""
    argv = tiny_args(tiny_sd15, tmp_path / "none.txt", tmp_path / "out")
    for rank, printed in (("1", ""), ("0", f"error: --prompt_file: no such file: {tmp_path / 'none.txt'}\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            E.main(argv)
        assert exc.value.code == 2 and capsys.readouterr().err == printed


def test_bare_bool_flag_does_not_swallow_the_prompt():
    args, prompts, _ = E.parse(["--table", "t.json", "--sample", "a cat"])
    assert prompts == ["a cat"] and args.sample is True
    args, prompts, _ = E.parse(["--mixed_prompt_baseline", "a cat", "--table", "t.json"])
    assert prompts == ["a cat"] and args.mixed_prompt_baseline is True
    args, prompts, _ = E.parse(["--sample", "false", "a cat"])  # a bool word after the flag is its value
    assert prompts == ["a cat"] and args.sample is False


def test_recipe_is_the_papers_sd15_run():
    args, prompts, explicit = E.parse(["--config", str(REPO / "recipes" / "epd_ppo_sd15.yaml")])  # no unknown keys
    assert prompts == [] and not args.sample and args.prompt_file is None  # prompts come on the command line
    run = (args.num_steps, args.num_points, args.rollout_batch_size, args.group_size, args.minibatch_size,
           args.ppo_epochs, args.learning_rate, args.concentration, args.reward, args.total_steps, args.save_interval)  # fmt: skip
    assert run == (11, 2, 8, 4, 4, 1, 7e-5, 20.0, "hpsv2", 9000, 500)  # RLEPD sd15_k20
    assert "# hardware: 1 x 80GB, single" in (REPO / "recipes" / "epd_ppo_sd15.yaml").read_text().splitlines()


def test_bad_input_from_the_real_cli_and_grouped_help(tmp_path):
    res = subprocess.run([sys.executable, "epd_ppo.py", "--prompt_file", str(tmp_path / "none.txt")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "Traceback" not in res.stderr + res.stdout
    assert "no such file" in res.stderr
    help_text = run_command(["epd_ppo.py", "--help"]).stdout
    assert help_text.startswith("usage: python epd_ppo.py [PROMPT ...]")
    heads = [h for h in ("model and solver:", "sampling:", "RL (PPO training):") if h in help_text]
    assert heads == ["model and solver:", "sampling:", "RL (PPO training):"]
    assert help_text.index("--model_id") < help_text.index("sampling:") < help_text.index("--table")
    assert help_text.index("RL (PPO training):") < help_text.index("other:") and "[--config FILE.yaml]" in help_text


########################
# Several processes (issue 15): 2 x rollout 4 = 1 x rollout 8, main-only writes, resume
########################
def test_two_processes_make_the_one_process_update_and_resume(tiny_sd15, tiny_scorers, monkeypatch, prompts_file,
                                                               tmp_path, capsys):  # fmt: skip
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    common = ["--rollout_batch_size", "8", "--group_size", "4", "--minibatch_size", "4", "--learning_rate", "1e-2",
              "--save_interval", "1", "--seed", "7"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    E.main(tiny_args(tiny_sd15, prompts_file, one, *common, "--total_steps", "2"))
    first = run_command(launch("epd_ppo.py", *tiny_args(tiny_sd15, prompts_file, two, *common, "--total_steps", "1"),
                               num_processes=2), env=tiny_scorers.env)  # fmt: skip
    assert "2 process(es) x 4 images" in first.stdout
    resumed = run_command(launch("epd_ppo.py", *tiny_args(tiny_sd15, prompts_file, two, *common, "--total_steps", "2"),
                                 num_processes=2), env=tiny_scorers.env)  # fmt: skip
    assert resumed.stdout.count("resumed from") == 1  # printed by the main process only
    policies = []
    for run in (one, two):
        ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
        policies.append(E.DirichletPolicy(*E.cold_start(3, 2, 0.5, 0.33), concentration=20.0))
        policies[-1].load_state_dict(ckpt["policy"])
        assert ckpt["step"] == 2
    with (
        torch.no_grad()
    ):  # the policy = its Dirichlet concentrations: equal after a large update (lr 1e-2, 4 Adam steps)
        (a_pos, a_w), (b_pos, b_w) = policies[0](), policies[1]()
        start = policies[0].base_log_alpha_pos.exp()
    assert torch.allclose(a_pos, b_pos, rtol=2e-3) and torch.allclose(a_w, b_w, rtol=2e-3)
    assert ((a_pos - start) / start).abs().max() > 0.3  # moved far more than the tolerance
    # (single hidden weights whose gradient is float noise can differ: Adam normalises noise to a full step, and the
    # rewards of 8 images rendered in one batch vs 2 x 4 differ by ~1e-6, the rounding of batched convolutions)
    # every process rendered its own half, with the seeds of the 1-process run; the main process wrote everything once
    rows_a = [json.loads(line) for line in (one / "rollouts.jsonl").read_text().splitlines()]
    rows_b = [json.loads(line) for line in (two / "rollouts.jsonl").read_text().splitlines()]
    assert [(r["step"], r["index"], r["rank"]) for r in rows_b] == [(s, i, i // 4) for s in (1, 2) for i in range(8)]
    assert [(r["seed"], r["prompt"]) for r in rows_a] == [(r["seed"], r["prompt"]) for r in rows_b]
    assert [r["reward"] for r in rows_a] == pytest.approx([r["reward"] for r in rows_b], abs=1e-5)
    assert [json.loads(line)["step"] for line in (two / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())
