# SPDX-License-Identifier: Apache-2.0
"""r1_prompter.py rollout costs, measured side by side in one process; GPU check (issue 17).

    python benchmarks/r1_bench.py                     # tiny random models (CPU, offline), 16 completions per step
    python benchmarks/r1_bench.py --gpu_check         # CUDA: the real architectures with random weights (below)
    python benchmarks/r1_bench.py --gpu_check --tiny  # the same code on the tests' tiny configs (CPU)

1. Rendering one step's completions: batched pipeline calls (r1_prompter.render, --image_batch_size 16) vs one image
   per call (upstream's way), same prompts, seeds and pipeline, tiny SD1.5 and tiny FLUX.
2. Per-step time split of a short GRPO run (tiny Qwen2 + tiny SD1.5 + tiny ImageReward): rendering and scoring are
   timed inside the reward (logged as time/render_s, time/score_s), LLM generation is timed separately with the same
   batch, the update is the rest of TRL's step_time.
3. The judge: 16 calls (r1_prompter.judge_one) to the tests' loopback server answering after 0.2 s, concurrent (as
   the judge reward sends them) vs one after another.

GPU check (`gpu_check()`): 16 completions rendered at 512² by `r1_prompter.render`, batched (one call) vs one per
call, on SD1.5 and on the FLUX.1-dev architecture (random weights from benchmarks/memory.py's written-out configs, bf16
as `r1_prompter.load_pipeline` uses on CUDA, 4 denoising steps: a ratio, not a full render); then the Qwen2.5-3B
architecture sampling one GRPO group (4 completions x 256 tokens, temperature 0.9) from the training chat prompt
(`r1_prompter.build_messages`). Peak allocated GPU memory per phase. Goal: batched >= 3x on SD1.5. Tokenizers are the
tests' small BPEs (offline): the sequence lengths the encoders see are the real padded ones (CLIP 77, T5 512), the
LLM's chat prompt is longer than with Qwen's real BPE. Run from the repo root.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ["HF_HUB_OFFLINE"] = "1"

import r1_prompter as r1  # noqa: E402

PROMPTS = [f"a photo of {i} red cubes on a blue table, studio light" for i in range(16)]


def build(fixture, tmp):
    """Run a conftest fixture function outside pytest."""
    return fixture.__wrapped__(
        type("F", (), {"mktemp": lambda self, name: Path(tempfile.mkdtemp(prefix=name, dir=tmp))})()
    )


def rendering(tmp):
    import conftest
    from diffusers import DiffusionPipeline

    seeds = [r1.group_seed(0, 0, str(i // 4)) for i in range(len(PROMPTS))]
    for name in ("tiny_sd15", "tiny_flux"):
        pipe = DiffusionPipeline.from_pretrained(build(getattr(conftest, name), tmp))
        pipe.set_progress_bar_config(disable=True)
        for px in (32, 64):
            times = {}
            for bs in (1, 16):
                args = r1.ScriptArguments(image_batch_size=bs, height=px, width=px, num_inference_steps=4)
                r1.render(pipe, PROMPTS[:2], seeds[:2], args)  # warm-up
                t = time.perf_counter()
                r1.render(pipe, PROMPTS, seeds, args)
                times[bs] = time.perf_counter() - t
            n = len(PROMPTS)
            print(f"1. {name:<10} {n} completions {px} px 4 steps: one per call {n / times[1]:6.1f} img/s, "
                  f"batched x16 {n / times[16]:6.1f} img/s, speed-up {times[1] / times[16]:.2f}x")  # fmt: skip


def step_split(tmp):
    import conftest
    import tiny_scorers
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, ModelConfig

    print("2. per-step time split, GRPO 3 steps, 16 completions/step (tiny Qwen2 + tiny SD1.5 + tiny ImageReward)")
    qwen, sd = build(conftest.tiny_qwen2, tmp), build(conftest.tiny_sd15, tmp)
    for k, v in tiny_scorers.build_tiny_scorers(Path(tempfile.mkdtemp(dir=tmp))).env.items():
        os.environ[k] = v
    tok, model = AutoTokenizer.from_pretrained(qwen), AutoModelForCausalLM.from_pretrained(qwen)
    texts = [tok.apply_chat_template(r1.build_messages(p), tokenize=False, add_generation_prompt=True) for p in PROMPTS[:4]]  # fmt: skip
    enc = tok(texts, return_tensors="pt", padding=True)
    t = time.perf_counter()
    model.generate(**enc, do_sample=True, num_return_sequences=4, max_new_tokens=32, min_new_tokens=32, pad_token_id=tok.pad_token_id)  # fmt: skip
    gen = time.perf_counter() - t
    script = r1.ScriptArguments(data=str(REPO / "recipes" / "r1_prompts.txt"), sdmodel_name=sd, gpt_path=qwen, height=64,
                                width=64, num_inference_steps=4, image_batch_size=16, log_images_every=0)  # fmt: skip
    cfg = GRPOConfig(output_dir=tmp + "/run", max_steps=3, per_device_train_batch_size=16, num_generations=4, max_completion_length=32,
                     report_to="none", use_cpu=True, bf16=False, save_strategy="no", logging_steps=1, gradient_checkpointing=False)  # fmt: skip
    logs = []

    class Keep(TrainerCallback):
        def on_log(self, args, state, control, logs_=None, **kw):
            logs.append(kw.get("logs") or logs_)

    original = GRPOTrainer.__init__

    def init(self, *a, **kw):
        original(self, *a, **kw)
        self.add_callback(Keep())

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GRPOTrainer, "__init__", init)
        r1.train(script, cfg, ModelConfig())
    steps = [log for log in logs if log and "step_time" in log][1:]  # drop the first (warm-up) step
    avg = {k: sum(float(s[k]) for s in steps) / len(steps) for k in ("step_time", "time/render_s", "time/score_s")}
    rest = avg["step_time"] - avg["time/render_s"] - avg["time/score_s"]
    print(f"   step {avg['step_time']:.2f} s = render {avg['time/render_s']:.2f} + score {avg['time/score_s']:.2f} "
          f"+ generation ~{gen:.2f} (measured apart) + update/other {rest - gen:.2f}")  # fmt: skip


def judge_concurrency(n: int = 16, latency: float = 0.2):
    import asyncio
    import json
    import threading

    import conftest
    from openai import AsyncOpenAI
    from PIL import Image

    state = conftest.OpenAIServer()
    server = conftest.LoopbackServer(("127.0.0.1", 0), conftest._make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.chat_handler = lambda body: time.sleep(latency) or json.dumps({"reasoning": "ok", "score": 7})
    url, image = f"http://127.0.0.1:{server.server_address[1]}/v1", Image.new("RGB", (64, 64))

    async def run(concurrent: bool):
        async with AsyncOpenAI(base_url=url, api_key="test", max_retries=0, timeout=30) as client:
            jobs = [r1.judge_one(client, "j", image, p, 0) for p in PROMPTS[:n]]
            return await asyncio.gather(*jobs) if concurrent else [await j for j in jobs]

    times = {}
    for concurrent in (False, True):
        t = time.perf_counter()
        assert asyncio.run(run(concurrent)) == [0.4] * n
        times[concurrent] = time.perf_counter() - t
    server.shutdown()
    print(f"3. judge, {n} calls at {latency} s each: one after another {times[False]:.2f} s, concurrent "
          f"{times[True]:.2f} s, speed-up {times[False] / times[True]:.1f}x")  # fmt: skip


def gpu_check(tiny: bool = False, n: int = 16, steps: int = 4, new_tokens: int = 256) -> dict:
    """See the module docstring. Returns seconds, ratios and peak GiB (None off CUDA) per phase."""
    import gc

    import conftest
    import memory
    import torch
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusionPipeline

    if tiny:
        from gpu_check import TINY as archs
    else:
        archs = memory.ARCHS
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16  # load_pipeline / load_llm: bf16 on CUDA

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def fresh_peak():
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak():
        return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None

    def model(name):  # random weights, built on the device in the script's dtype
        return memory.build_on(name, device, dtype, archs)

    res = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (tiny configs)", "tiny": tiny}
    px = 64 if tiny else 512
    seeds = [r1.group_seed(42, 0, str(i // 4)) for i in range(n)]  # 4 groups of 4, as in a GRPO step
    sd = lambda: StableDiffusionPipeline(  # noqa: E731
        unet=model("sd15-unet"), vae=model("sd-vae"), text_encoder=model("clip-text-l"),
        tokenizer=conftest.make_clip_tokenizer(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False, scheduler=DDIMScheduler(beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1),
    )  # fmt: skip
    flux = lambda: FluxPipeline(  # noqa: E731  (FLUX.1-dev's scheduler config)
        transformer=model("flux-dit"), text_encoder=model("clip-text-l"), tokenizer=conftest.make_clip_tokenizer(),
        text_encoder_2=model("t5-xxl"), tokenizer_2=conftest.make_t5_tokenizer(), vae=model("flux-vae"),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                  base_image_seq_len=256, max_image_seq_len=4096),
    )  # fmt: skip
    for name, make in (("sd15", sd), ("flux", flux)):
        fresh_peak()
        pipe = make()
        pipe.set_progress_bar_config(disable=True)
        times = {}
        for bs in (1, n):
            args = r1.ScriptArguments(image_batch_size=bs, height=px, width=px, num_inference_steps=steps)
            r1.render(pipe, PROMPTS[:2], seeds[:2], args)  # warm-up
            sync()
            t = time.perf_counter()
            r1.render(pipe, PROMPTS[:n], seeds, args)
            sync()
            times[bs] = time.perf_counter() - t
        res |= {f"{name}_per_call_s": times[1], f"{name}_batched_s": times[n], f"{name}_speedup": times[1] / times[n],
                f"{name}_peak_gib": peak()}  # fmt: skip
        del pipe
    fresh_peak()
    llm, tok = model("qwen2.5-3b"), conftest.make_qwen2_tokenizer()
    text = tok.apply_chat_template(r1.build_messages(PROMPTS[0]), tokenize=False, add_generation_prompt=True)
    enc = tok([text], return_tensors="pt").to(device)
    kw = dict(do_sample=True, temperature=0.9, num_return_sequences=4, max_new_tokens=new_tokens,
              min_new_tokens=new_tokens, pad_token_id=tok.pad_token_id)  # fmt: skip
    llm.generate(**enc, **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
    sync()
    t = time.perf_counter()
    llm.generate(**enc, **kw)
    sync()
    res |= {"qwen_group_s": time.perf_counter() - t, "qwen_prompt_tokens": enc["input_ids"].shape[1],
            "qwen_peak_gib": peak()}  # fmt: skip
    return res


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu_check", action="store_true", help="real architectures on CUDA (see the docstring)")
    parser.add_argument("--tiny", action="store_true", help="with --gpu_check: tiny configs on the CPU")
    args = parser.parse_args(argv)
    if args.gpu_check:
        for k, v in gpu_check(tiny=args.tiny).items():
            print(f"{k:<20} {v:.3f}" if isinstance(v, float) else f"{k:<20} {v}")
        return
    tmp = tempfile.mkdtemp()
    rendering(tmp)
    step_split(tmp)
    judge_concurrency()


if __name__ == "__main__":
    main()
