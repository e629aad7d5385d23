# SPDX-License-Identifier: Apache-2.0
"""Optimising N prompts with promptist_infer.optimize: one batched generate per chunk vs a per-prompt loop.

    python benchmarks/promptist_bench.py                  # tiny random GPT-2 (CPU, offline), 32 prompts
    python benchmarks/promptist_bench.py --real_arch      # GPT-2 small architecture (124M), random weights; for a GPU

Both runs use the same model, tokenizer, prompts and official recipe (8 beams x 8 returns, 75 new tokens,
length_penalty -1) in one process; the ratio is printed. Run from the repo root.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from conftest import CORPUS, make_gpt2_tokenizer  # noqa: E402

import promptist_infer  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="prompts")
    p.add_argument("--batch_size", type=int, default=32, help="prompts per generate call in the batched run")
    p.add_argument("--real_arch", action="store_true", help="GPT-2 small (n_embd 768, 12 layers) instead of tiny")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_gpt2_tokenizer()
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    size = (
        dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024)
        if args.real_arch
        else dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)
    )
    vocab = 50257 if args.real_arch else len(tok)  # the real vocabulary size costs the real lm_head matmul
    torch.manual_seed(0)
    eos = tok.eos_token_id
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **size))
    dtype = torch.float16 if args.device == "cuda" else torch.float32
    model = model.to(args.device, dtype).eval()
    words = CORPUS.split()
    prompts = [" ".join(words[(7 * i) % 60 : (7 * i) % 60 + 3 + i % 6]) for i in range(args.n)]
    batched = promptist_infer.ScriptArguments(batch_size=args.batch_size)
    looped = promptist_infer.ScriptArguments(batch_size=1)
    promptist_infer.optimize(model, tok, prompts[:2], batched)  # warm-up
    timings = {}
    for name, cfg in (("per-prompt loop", looped), (f"batched ({args.batch_size}/call)", batched)):
        if args.device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        promptist_infer.optimize(model, tok, prompts, cfg)
        if args.device == "cuda":
            torch.cuda.synchronize()
        timings[name] = time.perf_counter() - t
    arch = "GPT-2 small arch (random)" if args.real_arch else "tiny GPT-2"
    print(f"{args.n} prompts, {arch}, {args.device}, recipe 8 beams x 75 tokens")
    for name, sec in timings.items():
        print(f"{name:<22} {sec:8.2f} s  {args.n / sec:8.1f} prompts/s")
    loop, batch = timings.values()
    print(f"speed-up batched vs loop: {loop / batch:.1f}x")


if __name__ == "__main__":
    main()
