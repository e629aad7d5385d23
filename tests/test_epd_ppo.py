# SPDX-License-Identifier: Apache-2.0
"""epd_ppo.py: sigma grids, solver orders on an analytic ODE, EPD = DPM-2 at K=1, NFE accounting, the Dirichlet
policy, advantages, PPO on a synthetic reward, and an end-to-end run on tiny SD (train, resume, export, sample)."""

import json
import math

import pytest
import torch
from accelerate import Accelerator

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


def solve(name, n, **params):
    sigmas = E.get_sigmas(n, "logsnr").double()
    x_t = torch.randn(4, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    exact = x_t * math.sqrt(S**2 + sigmas[-1] ** 2) / math.sqrt(S**2 + sigmas[0] ** 2)
    den = Gaussian()
    x = E.SOLVERS[name](den, x_t, sigmas, **params)
    return (x - exact).abs().max().item(), den


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
    seg, ws, positions = E.DirichletPolicy.sample(alpha_pos, alpha_w, 5)
    assert (positions.diff(dim=-1) > 0).all() and (positions > 0).all() and (positions < 1).all()

    def log_dir(a, x):  # log Dir(x | a) = lgamma(sum a) - sum lgamma(a) + sum (a - 1) log x
        return torch.lgamma(a.sum(-1)) - torch.lgamma(a).sum(-1) + ((a - 1) * x.log()).sum(-1)

    manual = (log_dir(alpha_pos, seg) + log_dir(alpha_w, ws)).sum(-1)
    assert torch.allclose(E.DirichletPolicy.log_prob(alpha_pos, alpha_w, seg, ws), manual, atol=1e-4)
    assert sum(p.numel() for p in policy.parameters()) == 35_461  # RLEPD EPDParamPolicy at K=2, N=11


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


def test_ppo_moves_the_mean_table_towards_a_rewarded_table():
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
    for _ in range(40):
        with torch.no_grad():
            alpha_pos, alpha_w = policy()
            seg, w, pos = E.DirichletPolicy.sample(alpha_pos, alpha_w, 16)
            old = E.DirichletPolicy.log_prob(alpha_pos, alpha_w, seg, w)
        reward = -((pos - target_pos) ** 2).sum((1, 2)) - ((w - target_w) ** 2).sum((1, 2))
        stats = E.ppo_update(policy, opt, acc, base, seg, w, old, E.advantages(reward, 4), args)
    assert distance() < 0.5 * before
    assert set(stats) == {"policy_loss", "approx_kl", "clipfrac", "grad_norm", "kl_to_base", "entropy"}


def tiny_args(tiny_sd15, prompts, outdir, *extra):
    return ["--model_id", tiny_sd15, "--prompt_file", str(prompts), "--outdir", str(outdir), "--height", "32", "--width", "32",
            "--num_steps", "4", "--num_points", "2", *extra]  # fmt: skip


def test_end_to_end_train_resume_export_sample(tiny_sd15, tiny_scorers, monkeypatch, tmp_path, capsys):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat in the rain\ntwo dogs\na red cube\n")
    run = tmp_path / "run"
    rl = [
        "--rollout_batch_size",
        "4",
        "--group_size",
        "2",
        "--minibatch_size",
        "2",
        "--learning_rate",
        "1e-2",
        "--save_interval",
        "100",
    ]
    E.main(tiny_args(tiny_sd15, prompts, run, *rl, "--total_steps", "2"))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2] and "charts/hpsv2_mean" in lines[0] and "losses/approx_kl" in lines[0]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["policy"]["head.weight"].abs().sum() > 0  # the zero-initialised head moved
    table = json.loads((run / "table.json").read_text())
    assert table["step"] == 2 and len(table["positions"]) == 3 and table["num_steps"] == 4
    E.main(tiny_args(tiny_sd15, prompts, run, *rl, "--total_steps", "3"))  # resumes at step 3
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert "resumed from" in capsys.readouterr().out
    # sample with the exported table and with a baseline: same seed-named files
    for solver in ("epd", "ddim"):
        extra = ["--table", str(run / "table.json")] if solver == "epd" else ["--solver", "ddim"]
        E.main(tiny_args(tiny_sd15, prompts, tmp_path / solver, "--sample", "--batch_size", "2", *extra))
        assert sorted(p.name for p in (tmp_path / solver).iterdir()) == ["000000.png", "000001.png", "000002.png"]
    out = capsys.readouterr().out
    assert (
        "epd: 3 steps, discrete schedule, NFE 6 (denoiser evaluations 9)" in out
        and "ddim: 3 steps" in out
        and "NFE 3" in out
    )


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--table", "BAD_SHAPE"], "expected (3, 2) for --num_steps 4 --num_points 2"),
        (["--table", "BAD_POS"], "positions must lie in (0, 1)"),
        (["--table", "BAD_W"], "weights must be on the simplex"),
        (["--rollout_batch_size", "6", "--group_size", "4"], "must be a multiple of --group_size 4"),
        (["--sample", "--solver", "euler"], "unknown solver 'euler'"),
        (["--schedule", "karras"], "unknown schedule 'karras'"),
        (["--reward", "mps"], "no RLEPD normalisation"),
    ],
)
def test_bad_input_is_one_line(extra, message, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a cat\n")
    tables = {"BAD_SHAPE": ([[0.3, 0.6]] * 2, [[0.5, 0.5]] * 2), "BAD_POS": ([[0.3, 1.2]] * 3, [[0.5, 0.5]] * 3),
              "BAD_W": ([[0.3, 0.6]] * 3, [[0.7, 0.5]] * 3)}  # fmt: skip
    for name, (p, w) in tables.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({"positions": p, "weights": w}))
    extra = [str(tmp_path / f"{a}.json") if a in tables else a for a in extra]
    with pytest.raises(SystemExit) as exc:
        E.main(tiny_args("/no/model", tmp_path / "p.txt", tmp_path / "o", *extra))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1
