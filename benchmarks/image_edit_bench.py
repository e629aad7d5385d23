# SPDX-License-Identifier: Apache-2.0
"""grpo_image_edit.py step costs on tiny random models at REAL token counts (CPU, offline; judge = the tests' loopback
server), measured side by side in one process: one GRPO step of 8 completions of one edit.

- the VLM sees the pipeline's ~1 MP view of a 512 x 384 source through a processor with the real Qwen2.5-VL bounds
  (min_pixels 3136, max_pixels 12845056): ~1,350 image tokens, ~1,500 conditioning tokens per row, as with the 7B;
- embedding pass: completions + CFG negatives in ONE batched forward vs one forward per row;
- rendering (64² output, the pipeline's resize shrunk as in the tests): Qwen-Image-Edit in calls of 4 edits vs one edit
  per call (what Qwen-Image-Edit-2509 / QwenImageEditPlusPipeline allows).

    python benchmarks/image_edit_bench.py
    python benchmarks/image_edit_bench.py --gpu_check          # CUDA: the real architectures, random weights (below)
    python benchmarks/image_edit_bench.py --gpu_check --tiny   # the same code on gpu_check.TINY's twins (CPU)
    python benchmarks/image_edit_bench.py --memory             # computed per-GPU memory of the recipe (memory.py)
Run from the repo root. Widths are tiny, so absolute times say little about a GPU; ratios and token counts are the point.

GPU check (issue 17, `gpu_check()`): does one GRPO step of recipes/image_edit_qwen7b.yaml fit one 80 GB GPU? The real
Qwen2.5-VL-7B (peft LoRA r 128 on q,k,v,o from the recipe, adapters fp32), Qwen-Image DiT (20.4 B) and VAE are built
with random weights in bf16 on the GPU from benchmarks/memory.py's written-out configs; the AdamW state of the LoRA is
resident throughout (as from step 2 on). At the recipe's per-GPU batch (2 completions of exactly max_completion_length
1,024 tokens, true CFG 4) the script's own functions run each phase of a step, and the peak allocated memory (resident
weights included) is measured per phase, once for QwenImageEditPlusPipeline (the recipe's Qwen-Image-Edit-2509: ~384²
VLM view, one edit per call) and once for QwenImageEditPipeline (1 MP VLM view: the longest sequences, the worst case):
- generation: the policy samples `gen_tokens` (64) per row from edit_messages' chat prompt (time; the KV cache of
  1,024 tokens is 0.1 GiB more, computed);
- conditioning: edit_conditions, the completions + blank negatives in one forward;
- rendering: render_edits for the rank's 2 edits at 1 MP from a 1024² source (2 denoising steps: memory does not
  depend on the count); for Plus also timed at 2 and 3 steps (per-step slope, a 50-step estimate);
- training: TRL's loss forward (its fused LM head) on processor(edit_texts + views), backward under activation
  checkpointing, AdamW step.
Keys: `{plus,edit}_{gen,cond,render,train}_peak_gib`, `{plus,edit}_peak_gib` (max over phases), `_reserved_gib`
(allocator reserve, what the card must hold), `_fits_80gb` (peak <= 90 % of 79.6 GiB), `_offload_peak_gib_derived`
(--pipeline_cpu_offload: the measured phases minus the DiT + VAE bytes outside rendering; derived, not run),
`{plus,edit}_{prompt,view,cond,train}_tokens`, `{plus,edit}_lora_grad_norm` (> 0: the backward reached the
adapters), `{plus,edit}_oom` (only after an out-of-memory; that pipeline's peak is then inf), `edit_render4_peak_gib`
(Edit, 4 edits per call: ranks that get >= 4 completions per reward call; skipped when late), `resident_gib`,
parameter counts, `plus_render_{2step,3step}_s` (the rank's render_edits call), `plus_render_step_s` (their
difference: one denoising step of 2 edits with CFG), `plus_render_50_steps_s_est` (the recipe's 50 steps,
extrapolated); `peak_gib` = the recipe's pipeline (Plus). One GPU without sharding: under the recipe's ZeRO-2 on 8 GPUs
the LoRA's grads + AdamW state (1.2 GiB here, computed) shrink to 1/8. One H100/H200, ~75-95 s of a 120 s budget.
"""

import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import grpo_image_edit as G  # noqa: E402


def timed(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main():
    import conftest
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as mod
    from openai import AsyncOpenAI
    from test_grpo_image_edit import gradient

    factory = type("F", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(prefix=n))})()
    pipe = DiffusionPipeline.from_pretrained(conftest.tiny_qwen_image_edit.__wrapped__(factory))
    pipe.set_progress_bar_config(disable=True)
    vlm, proc = pipe.text_encoder, pipe.processor
    n, source = 8, gradient(512, 384)
    view = G.vlm_view(pipe, source)  # real ~1 MP view
    instr = ["make the sky purple and add two small white clouds"] * n
    completions = [
        f"The sky turns a deep purple, take {i}; two small white clouds appear. " * (1 + i % 3) for i in range(n)
    ]
    args = G.ScriptArguments(
        num_inference_steps=4, true_cfg_scale=4.0, edit_batch_size=4, judge_model="j", judge_retries=0
    )
    rows = {}
    text = proc.apply_chat_template(G.edit_messages(pipe, instr[0]), tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[text], images=[view], return_tensors="pt")
    rows["VLM generation, 8 x 32 tokens"] = timed(lambda: vlm.generate(**inputs, do_sample=True, num_return_sequences=n, max_new_tokens=32, min_new_tokens=32), 1)[0]  # fmt: skip
    batched, (embeds, mask, neg, neg_mask) = timed(lambda: G.edit_conditions(vlm, proc, pipe, [view] * n, instr, completions, args))  # fmt: skip
    one = timed(lambda: [G.edit_conditions(vlm, proc, pipe, [view], instr[:1], [c], args) for c in completions])[0]
    rows["embedding pass, 16 rows in one forward"] = batched
    rows["embedding pass, one forward per row"] = one

    original = mod.calculate_dimensions
    mod.calculate_dimensions = lambda area, ratio: original(area / 256, ratio)  # 64² output: CPU-sized rendering
    small = gradient(64, 48)
    sources = [small] * n
    batched4 = timed(
        lambda: G.render_edits(pipe, sources, embeds, mask, neg, neg_mask, list(range(n)), args, "cpu"), 1
    )
    args.edit_batch_size = 1
    single = timed(lambda: G.render_edits(pipe, sources, embeds, mask, neg, neg_mask, list(range(n)), args, "cpu"), 1)[
        0
    ]
    rows["render (4 steps, CFG, 64 px), 4 edits per call"] = batched4[0]
    rows["render (4 steps, CFG, 64 px), 1 edit per call"] = single
    edited = batched4[1]

    state = conftest.OpenAIServer()
    server = conftest.LoopbackServer(("127.0.0.1", 0), conftest._make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OPENAI_API_KEY"] = "bench"

    async def judge():
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", max_retries=0) as c:
            return await asyncio.gather(*[G.judge_edit(c, args, view, e, instr[0]) for e in edited])

    rows["judge, 8 async calls (loopback)"] = timed(lambda: asyncio.run(judge()), 1)[0]
    server.shutdown()
    tokens = mask.sum(1)
    print(f"one GRPO step of {n} completions; tiny Qwen2.5-VL (real processor bounds) + tiny Qwen-Image-Edit, CPU")
    print(f"  source 512x384 -> VLM view {view.size[0]}x{view.size[1]}: {int(neg_mask[0].sum())} conditioning tokens "
          f"without a completion, {int(tokens.min())}-{int(tokens.max())} with one (no cap)")  # fmt: skip
    for k, v in rows.items():
        print(f"  {k:<48} {v:7.3f} s")
    print(f"  embedding pass: one forward per row / batched = {one / batched:.2f}x")
    print(f"  rendering: 1 edit per call / 4 edits per call = {single / batched4[0]:.2f}x")


QWEN_IMAGE_SCHEDULER = dict(  # Qwen-Image(-Edit) scheduler_config.json (dynamic shift, exponential time shift)
    base_image_seq_len=256, base_shift=0.5, max_image_seq_len=8192, max_shift=0.9, num_train_timesteps=1000,
    shift=1.0, shift_terminal=0.02, time_shift_type="exponential", use_dynamic_shifting=True,
)  # fmt: skip


def gpu_check(tiny: bool = False, gen_tokens: int = 64) -> dict:
    """One GRPO step's phases at the recipe's per-GPU batch, through the script's own functions, with peak allocated
    GPU memory per phase (GiB, None off CUDA). See the module docstring for what each key means.

    Time on one H100/H200 (estimate, bf16 at ~450 TFLOP/s effective): the DiT costs 2 x 20.4e9 x T + 4 x 60 x T² x
    3072 FLOPs per image and forward; Plus T ≈ 4,096 target + 4,096 source + ~1,300 text tokens ≈ 9.5k -> 4.6e14,
    Edit T ≈ 10.6k -> 5.1e14; true CFG runs 2 forwards per step. Plus: a warm-up edit at 2 steps + the rank's 2 edits
    at 2 and at 3 steps = 24 forwards ≈ 1.1e16 ≈ 25 s (+ the 1 MP VAE, ~1 s per edit); Edit: 2 edits at 2 steps = 8
    forwards ≈ 9 s; Edit with 4 edits per call = 16 forwards ≈ 18 s, run only while the part is under ~75 s. The VLM:
    64 sampled tokens x 2 rows ≈ 2 s per pipeline (memory-bound), conditioning ≈ 1.5e14 and training ≈ 3e14 FLOPs
    (< 1 s each). With ~15 s of imports and ~10 s to build 29 B random parameters: ≈ 75 s (≈ 95 s with the optional
    case) of the part's 120 s.
    Sequence lengths: the tests' small BPE spells the template's system prompt in more tokens than Qwen's real BPE
    (~440 instead of ~260 prompt tokens for Plus), so every sequence is a little LONGER than in a real run (the
    measured peaks are upper bounds in that respect); image tokens and the 1,024 completion tokens are exact."""
    t_start = time.perf_counter()  # imports (~15 s) are before this
    import contextlib
    import gc
    from unittest import mock

    import conftest
    import memory
    import yaml
    from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline, QwenImageEditPlusPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_mod
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus_mod
    from peft import get_peft_model
    from test_grpo_image_edit import gradient
    from trl import ModelConfig, get_peft_config
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import add_fused_lm_head

    if tiny:
        from gpu_check import TINY as archs
    else:
        archs = memory.ARCHS
    recipe = yaml.safe_load((REPO / "recipes" / "image_edit_qwen7b.yaml").read_text())
    batch, comp = recipe["per_device_train_batch_size"], recipe["max_completion_length"]
    device = torch.device("cpu" if tiny else "cuda")
    dtype = torch.float32 if tiny else torch.bfloat16  # load_pipeline and the recipe's dtype on CUDA; fp32 on the CPU
    cuda = device.type == "cuda"
    gib = 2**30

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def fresh():  # the cache is kept between phases, as in a run: reserved memory then includes fragmentation
        gc.collect()
        if cuda:
            torch.cuda.reset_peak_memory_stats()

    def peak():
        return (torch.cuda.max_memory_allocated() / gib, torch.cuda.max_memory_reserved() / gib) if cuda else (None, None)  # fmt: skip

    def autocast():  # accelerate's bf16 mixed precision wraps the policy's forward in autocast (TRL's generate too)
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    @contextlib.contextmanager
    def render_area():  # tiny only: the pipelines' fixed 1 MP (VAE) resizes shrunk 256x, as the tests do (CPU time)
        if not tiny:
            yield
            return
        e, p = edit_mod.calculate_dimensions, plus_mod.calculate_dimensions
        with mock.patch.object(edit_mod, "calculate_dimensions", lambda area, ratio: e(area / 256, ratio)), \
             mock.patch.object(plus_mod, "calculate_dimensions", lambda area, ratio: p(area / 256, ratio)):  # fmt: skip
            yield

    # the tests' processor: the real Qwen2.5-VL bounds (min_pixels 3136, max_pixels 12845056) and chat template, a
    # small BPE (offline) whose special tokens the config is told about; vocabulary rows stay the real 152,064
    _, proc = conftest.make_qwen25_vl()
    tok = proc.tokenizer
    special = dict(image_token_id="<|image_pad|>", video_token_id="<|video_pad|>",
                   vision_start_token_id="<|vision_start|>", vision_end_token_id="<|vision_end|>")  # fmt: skip
    model_cls, config_cls, kw = archs["qwen2.5-vl-7b"]
    ids = dict(bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    kw = {**kw, **{k: tok.convert_tokens_to_ids(t) for k, t in special.items()}, **ids, "text_config": {**kw["text_config"], **ids}}  # fmt: skip
    archs = {**archs, "qwen2.5-vl-7b": (model_cls, config_cls, kw)}

    def build(name):  # random weights, built on the device in the script's dtype (no fp32 copy first)
        return memory.build_on(name, device, dtype, archs)

    res = {"device": torch.cuda.get_device_name() if cuda else "cpu (tiny configs)", "tiny": tiny}
    fresh()
    # Model: the policy as GRPOTrainer sets it up from the recipe (peft LoRA, adapters in fp32; TRL's fused LM head;
    # activation checkpointing + input grads), AdamW state primed so it is resident in every phase as from step 2 on
    vlm = build("qwen2.5-vl-7b")
    vlm.generation_config.pad_token_id, vlm.generation_config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    lora = get_peft_config(ModelConfig(use_peft=True, lora_r=recipe["lora_r"], lora_alpha=recipe["lora_alpha"],
                                       lora_target_modules=recipe["lora_target_modules"]))  # fmt: skip
    with torch.device(device):
        model = get_peft_model(vlm, lora)
    add_fused_lm_head(model.get_base_model(), temperature=1.0, outputs=("log_probs", "entropy"))
    if recipe.get("activation_checkpointing", recipe.get("gradient_checkpointing", True)):
        model.activation_checkpointing_enable()  # Trainer: activation_checkpointing=True
        model.enable_input_require_grads()  # GRPOTrainer with peft
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=recipe["learning_rate"], weight_decay=0.0, fused=cuda)  # adamw_torch_fused
    for p in trainable:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    dit, vae = build("qwen-image-dit"), build("qwen-image-vae")
    pipes = {
        name: cls(scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), vae=vae, text_encoder=None,
                  tokenizer=tok, processor=proc, transformer=dit)
        for name, cls in (("plus", QwenImageEditPlusPipeline), ("edit", QwenImageEditPipeline))
    }  # fmt: skip
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    sync()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    nbytes = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())  # noqa: E731
    res |= {"vlm_params_b": count(vlm) / 1e9, "lora_params_m": sum(p.numel() for p in trainable) / 1e6,
            "dit_params_b": count(dit) / 1e9, "vae_params_b": count(vae) / 1e9,
            "resident_gib": torch.cuda.memory_allocated() / gib if cuda else None, "gen_tokens": gen_tokens}  # fmt: skip

    # the recipe's per-GPU batch: TRL hands each rank per_device_train_batch_size completions per reward call (8 ranks x
    # 2 = generation_batch_size 16). Completions are constructed at exactly max_completion_length tokens (with the end
    # of turn, as TRL counts them); generation samples only gen_tokens (its KV cache for the other ~960 tokens: 2 rows
    # x 28 layers x 2 x 512 x 2 B per token = 0.1 GiB, computed)
    source = gradient(96, 64) if tiny else gradient(1024, 1024)
    instr = ["make the sky purple and add two small white clouds"] * batch
    words = [w for w in dict.fromkeys(conftest.CORPUS.split()) if len(tok(" " + w)["input_ids"]) == 1]
    completions = ["".join(" " + words[(i + k) % len(words)] for k in range(comp - 1)) for i in range(batch)]
    args = G.ScriptArguments(true_cfg_scale=recipe["true_cfg_scale"], with_response=recipe["with_response"])

    def run(name, pipe):  # one pipeline's phases; results go into res
        view = G.vlm_view(pipe, source)
        with_c, without = G.edit_texts(pipe, instr[:1], completions[:1]), G.edit_texts(pipe, instr[:1], [None])
        n_comp = len(tok(with_c[0])["input_ids"]) - len(tok(without[0])["input_ids"])
        assert n_comp == comp, f"constructed completion is {n_comp} tokens, not {comp}"

        # generation phase: TRL's sampling with checkpointing off (unwrap_model_for_generation), the policy in train mode
        fresh()
        text = proc.apply_chat_template(G.edit_messages(pipe, instr[0]), tokenize=False, add_generation_prompt=True)
        inputs = proc(text=[text] * batch, images=[view] * batch, padding=True, return_tensors="pt").to(device)
        with disable_gradient_checkpointing(model), torch.no_grad(), autocast():
            model.generate(**inputs, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=gen_tokens,
                           min_new_tokens=gen_tokens, pad_token_id=tok.pad_token_id)  # fmt: skip
        sync()
        gen = peak()
        res[f"{name}_prompt_tokens"] = inputs["input_ids"].shape[1]
        res[f"{name}_view_tokens"] = int(inputs["image_grid_thw"][0].prod()) // 4  # merged 2x2 patches
        del inputs

        # conditioning phase: the reward's one batched forward (completions + CFG negatives)
        fresh()
        conditions = G.edit_conditions(model, proc, pipe, [view] * batch, instr, completions, args)
        sync()
        cond = peak()
        res[f"{name}_cond_tokens"] = int(conditions[1].sum(1).max())

        # rendering phase: the reward's render_edits for this rank's completions, at 2 denoising steps (memory does not
        # depend on the count; 1 step is degenerate with Qwen-Image's scheduler: shift_terminal stretches the single
        # sigma 1.0 by 0/0 into NaN)
        seeds = list(range(batch))
        args.num_inference_steps = 2
        fresh()
        with render_area():
            if name == "plus":  # one edit per pipeline call, all of one shape: a 1-edit call is the warm-up
                first = [c[:1] if c is not None else None for c in conditions]
                G.render_edits(pipe, [source], *first, seeds[:1], args, device)
                for steps in (2, 3):  # the rank's whole render_edits call, timed; the difference is one step
                    args.num_inference_steps = steps
                    sync()
                    t = time.perf_counter()
                    G.render_edits(pipe, [source] * batch, *conditions, seeds, args, device)
                    sync()
                    res[f"plus_render_{steps}step_s"] = time.perf_counter() - t
                step = res["plus_render_3step_s"] - res["plus_render_2step_s"]
                res["plus_render_step_s"] = step
                res["plus_render_50_steps_s_est"] = res["plus_render_2step_s"] + 48 * step
            else:
                G.render_edits(pipe, [source] * batch, *conditions, seeds, args, device)
            sync()
            render = peak()
        four = [torch.cat([c, c]) if c is not None else None for c in conditions] if name == "edit" else None
        del conditions

        # training phase: TRL's loss forward (fused LM head, logits never materialised) + backward under activation
        # checkpointing + the AdamW step, on the recipe's batch at full length; dr_grpo normalisation
        fresh()
        enc = proc(
            text=G.edit_texts(pipe, instr, completions), images=[view] * batch, padding=True, return_tensors="pt"
        )
        enc = enc.to(device)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        labels[:, :-comp] = -100
        with autocast():
            out = model(**enc, labels=labels, fused_lm_head=True)
        logps = out.log_probs[:, -comp:]
        advantages = torch.linspace(-1, 1, batch, device=device)[:, None]
        loss = -(torch.exp(logps - logps.detach()) * advantages).sum() / (batch * comp)
        loss.backward()
        grads = [p.grad.float().norm() for p in trainable if p.grad is not None]  # > 0: the backward reached the LoRA
        res[f"{name}_lora_grad_norm"] = float(torch.stack(grads).norm()) if grads else 0.0
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        train = peak()
        res[f"{name}_train_tokens"] = enc["input_ids"].shape[1]
        del enc, labels, out, logps, loss

        phases = dict(gen=gen, cond=cond, render=render, train=train)
        for phase, (alloc, _) in phases.items():
            res[f"{name}_{phase}_peak_gib"] = alloc
        if cuda:
            top = max(a for a, _ in phases.values())
            # --pipeline_cpu_offload: DiT + VAE leave the GPU outside rendering (derived from the measured phases)
            off = max(render[0], *(phases[p][0] - (nbytes(dit) + nbytes(vae)) / gib for p in ("gen", "cond", "train")))
            res.update({f"{name}_peak_gib": top, f"{name}_reserved_gib": max(r for _, r in phases.values()),
                        f"{name}_fits_80gb": top <= 0.9 * 79.6, f"{name}_offload_peak_gib_derived": off})  # fmt: skip
        else:
            res.update(dict.fromkeys([f"{name}_peak_gib", f"{name}_reserved_gib", f"{name}_fits_80gb",
                                      f"{name}_offload_peak_gib_derived"]))  # fmt: skip

        # Edit with 4 edits per call (--edit_batch_size 4): what a rank renders when it gets >= 4 completions per
        # reward call (fewer GPUs than the recipe's 8); last, and only while the part is well inside its budget
        if four is not None and (tiny or time.perf_counter() - t_start < 60):
            fresh()
            try:
                with render_area():
                    args.num_inference_steps = 2
                    G.render_edits(pipe, [source] * 2 * batch, *four, list(range(2 * batch)), args, device)
                sync()
                res["edit_render4_peak_gib"] = peak()[0]
            except torch.cuda.OutOfMemoryError:  # does not fit this card; Edit's other numbers stand
                res["edit_render4_peak_gib"] = float("inf")

    for name, pipe in pipes.items():  # the recipe's -2509 (Plus: ~384² VLM view) first, then Edit's 1 MP view
        try:
            run(name, pipe)
        except torch.cuda.OutOfMemoryError:  # this pipeline does not fit the card: reported, the other still runs
            res |= {f"{name}_oom": 1, f"{name}_peak_gib": float("inf"), f"{name}_fits_80gb": False}
            gc.collect()
            torch.cuda.empty_cache()
    res["peak_gib"] = res["plus_peak_gib"]  # the recipe's pipeline (-2509): the goal row
    return res


def cli(argv=None):
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpu_check", action="store_true", help="real architectures on CUDA (see the docstring)")
    parser.add_argument("--tiny", action="store_true", help="with --gpu_check: tiny configs on the CPU")
    parser.add_argument("--memory", action="store_true", help="computed per-GPU memory of the recipe (memory.py)")
    args = parser.parse_args(argv)
    if args.memory:  # parameters counted on the meta device from the real configs, activations estimated
        import memory

        return memory.main(["--recipe", str(REPO / "recipes" / "image_edit_qwen7b.yaml")])
    if args.gpu_check:
        if not args.tiny and not torch.cuda.is_available():
            print("error: --gpu_check needs CUDA (add --tiny for the CPU dry run)", file=sys.stderr)
            return 2
        for k, v in gpu_check(tiny=args.tiny).items():
            print(f"{k:<34} {v:.3f}" if isinstance(v, float) else f"{k:<34} {v}")
        return 0
    with torch.no_grad():
        main()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
