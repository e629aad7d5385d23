# SPDX-License-Identifier: Apache-2.0
"""r1_prompter.py rollout costs on tiny random models (CPU, offline), measured side by side in one process.

    python benchmarks/r1_bench.py            # tiny SD1.5 and tiny FLUX, 16 completions per step

1. Rendering one step's completions: batched pipeline calls (r1_prompter.render, --image_batch_size) vs one image per
   call (upstream's way), same prompts, seeds and pipeline.
2. Per-step time split of a short GRPO run (tiny Qwen2 + tiny SD1.5 + tiny ImageReward): rendering and scoring are
   timed inside the reward (logged as time/render_s, time/score_s), LLM generation is timed separately with the same
   batch, the update is the rest of TRL's step_time. Run from the repo root.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ["HF_HUB_OFFLINE"] = "1"

import r1_prompter as r1  # noqa: E402


def build(fixture, tmp):
    """Run a conftest fixture function outside pytest."""
    return fixture.__wrapped__(
        type("F", (), {"mktemp": lambda self, name: Path(tempfile.mkdtemp(prefix=name, dir=tmp))})()
    )


def main():
    import conftest
    import tiny_scorers
    from diffusers import DiffusionPipeline

    tmp = tempfile.mkdtemp()
    n = 16
    prompts = [f"a photo of {i} red cubes on a blue table, studio light" for i in range(n)]
    seeds = [r1.group_seed(0, 0, str(i // 4)) for i in range(n)]
    for name in ("tiny_sd15", "tiny_flux"):
        pipe = DiffusionPipeline.from_pretrained(build(getattr(conftest, name), tmp))
        pipe.set_progress_bar_config(disable=True)
        for px in (32, 64):
            times = {}
            for bs in (1, 16):
                args = r1.ScriptArguments(image_batch_size=bs, height=px, width=px, num_inference_steps=4)
                r1.render(pipe, prompts[:2], seeds[:2], args)  # warm-up
                t = time.perf_counter()
                r1.render(pipe, prompts, seeds, args)
                times[bs] = time.perf_counter() - t
            print(f"1. {name:<10} {n} completions {px} px 4 steps: one per call {n / times[1]:6.1f} img/s, "
                  f"batched x16 {n / times[16]:6.1f} img/s, speed-up {times[1] / times[16]:.2f}x")  # fmt: skip

    print("2. per-step time split, GRPO 3 steps, 16 completions/step (tiny Qwen2 + tiny SD1.5 + tiny ImageReward)")
    qwen, sd = build(conftest.tiny_qwen2, tmp), build(conftest.tiny_sd15, tmp)
    for k, v in tiny_scorers.build_tiny_scorers(Path(tempfile.mkdtemp(dir=tmp))).env.items():
        os.environ[k] = v
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, ModelConfig

    tok, model = AutoTokenizer.from_pretrained(qwen), AutoModelForCausalLM.from_pretrained(qwen)
    texts = [
        tok.apply_chat_template(r1.build_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts[:4]
    ]
    enc = tok(texts, return_tensors="pt", padding=True)
    t = time.perf_counter()
    model.generate(
        **enc,
        do_sample=True,
        num_return_sequences=4,
        max_new_tokens=32,
        min_new_tokens=32,
        pad_token_id=tok.pad_token_id,
    )
    gen = time.perf_counter() - t
    script = r1.ScriptArguments(data=str(REPO / "recipes" / "r1_prompts.txt"), sdmodel_name=sd, gpt_path=qwen, height=64,
                                width=64, num_inference_steps=4, image_batch_size=16, log_images_every=0)  # fmt: skip
    cfg = GRPOConfig(output_dir=tmp + "/run", max_steps=3, per_device_train_batch_size=16, num_generations=4, max_completion_length=32,
                     report_to="none", use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, gradient_checkpointing=False)  # fmt: skip
    logs = []
    from transformers import TrainerCallback

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs_=None, **kw):
            logs.append(kw.get("logs") or logs_)

    import trl

    original = trl.GRPOTrainer.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Keep())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl.GRPOTrainer, "__init__", init)
        r1.train(script, cfg, ModelConfig())
    steps = [log for log in logs if log and "step_time" in log][1:]  # drop the first (warm-up) step
    avg = {k: sum(float(s[k]) for s in steps) / len(steps) for k in ("step_time", "time/render_s", "time/score_s")}
    rest = avg["step_time"] - avg["time/render_s"] - avg["time/score_s"]
    print(f"   step {avg['step_time']:.2f} s = render {avg['time/render_s']:.2f} + score {avg['time/score_s']:.2f} "
          f"+ generation ~{gen:.2f} (measured apart) + update/other {rest - gen:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
