# SPDX-License-Identifier: Apache-2.0
"""grpo_image_edit.py step costs on tiny random models (CPU, offline; judge = the tests' loopback server), measured in
one process: VLM generation / embedding pass / diffusion / judge for one step of 8 completions, and the embedding
pass batched (one forward) vs one forward per completion.

    python benchmarks/image_edit_bench.py
Run from the repo root.
"""

import asyncio
import os
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import grpo_image_edit as G  # noqa: E402


def main():
    import conftest
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as mod
    from openai import AsyncOpenAI

    original = mod.calculate_dimensions
    mod.calculate_dimensions = lambda area, ratio: original(64 * 64, ratio)  # tiny model: skip the 1024² resize
    factory = type("F", (), {"mktemp": lambda self, n: Path(tempfile.mkdtemp(prefix=n))})()
    pipe = DiffusionPipeline.from_pretrained(conftest.tiny_qwen_image_edit.__wrapped__(factory))
    pipe.set_progress_bar_config(disable=True)
    vlm, proc = pipe.text_encoder, pipe.processor
    n, image = 8, Image.new("RGB", (64, 64), "red")
    images, instr = [image] * n, ["make the sky purple"] * n
    completions = [f"the sky turns purple, take {i} " * (1 + i % 3) for i in range(n)]
    msgs = [
        {"role": "system", "content": G.system_prompt(pipe)},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instr[0]}]},
    ]
    inputs = proc(
        text=[proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)],
        images=[image],
        return_tensors="pt",
    )
    t = time.perf_counter()
    vlm.generate(**inputs, do_sample=True, num_return_sequences=n, max_new_tokens=32, min_new_tokens=32)
    times = {"VLM generation (8 x 32 tokens)": time.perf_counter() - t}
    G.edit_embeddings(vlm, proc, pipe, images[:2], instr[:2], completions[:2])  # warm-up
    t = time.perf_counter()
    for i in range(n):
        G.edit_embeddings(vlm, proc, pipe, images[i : i + 1], instr[i : i + 1], completions[i : i + 1])
    one_by_one = time.perf_counter() - t
    t = time.perf_counter()
    embeds, mask = G.edit_embeddings(vlm, proc, pipe, images, instr, completions)
    times["embedding pass (one batched forward)"] = time.perf_counter() - t
    args = G.ScriptArguments(
        num_inference_steps=4, true_cfg_scale=1.0, edit_batch_size=8, judge_model="j", judge_retries=0
    )
    t = time.perf_counter()
    edited = G.render_edits(pipe, images, embeds, mask, None, None, list(range(n)), args)
    times["diffusion (4 steps, 64 px)"] = time.perf_counter() - t
    state = conftest.OpenAIServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), conftest._make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    os.environ["OPENAI_API_KEY"] = "bench"

    async def judge():
        async with AsyncOpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", max_retries=0) as c:
            return await asyncio.gather(*[G.judge_edit(c, args, image, e, instr[0]) for e in edited])

    t = time.perf_counter()
    asyncio.run(judge())
    times["judge (8 async calls, loopback)"] = time.perf_counter() - t
    server.shutdown()
    print(f"one GRPO step of {n} completions, tiny Qwen2.5-VL + tiny Qwen-Image-Edit, CPU")
    for k, v in times.items():
        print(f"  {k:<40} {v:6.3f} s")
    print(f"embedding pass: one forward per completion {one_by_one:.3f} s vs batched {times['embedding pass (one batched forward)']:.3f} s "
          f"-> {one_by_one / times['embedding pass (one batched forward)']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    with torch.no_grad():
        main()
