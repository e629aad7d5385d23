# SPDX-License-Identifier: Apache-2.0
"""grpo_image_edit.py step costs on tiny random models at REAL token counts (CPU, offline; judge = the tests' loopback
server), measured side by side in one process: one GRPO step of 8 completions of one edit.

- the VLM sees the pipeline's ~1 MP view of a 512 x 384 source through a processor with the real Qwen2.5-VL bounds
  (min_pixels 3136, max_pixels 12845056): ~1,350 image tokens, ~1,500 conditioning tokens per row, as with the 7B;
- embedding pass: completions + CFG negatives in ONE batched forward vs one forward per row;
- rendering (64² output, the pipeline's resize shrunk as in the tests): Qwen-Image-Edit in calls of 4 edits vs one edit
  per call (what Qwen-Image-Edit-2509 / QwenImageEditPlusPipeline allows).

    python benchmarks/image_edit_bench.py
Run from the repo root. Widths are tiny, so absolute times say little about a GPU; ratios and token counts are the point.
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
sys.path[:0] = [str(REPO), str(REPO / "tests")]

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


if __name__ == "__main__":
    with torch.no_grad():
        main()
