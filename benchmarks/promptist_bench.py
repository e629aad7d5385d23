# SPDX-License-Identifier: Apache-2.0
"""promptist_infer.py: batched vs per-prompt optimisation (timed), SD1.5 render memory (computed), GPU check.

    python benchmarks/promptist_bench.py                  # tiny random GPT-2 (CPU, offline), 32 prompts
    python benchmarks/promptist_bench.py --memory         # SD1.5 fp16 512² render memory per --image_batch_size
    python benchmarks/promptist_bench.py --gpu_check      # CUDA: the real architectures, random weights (below)
    python benchmarks/promptist_bench.py --gpu_check --tiny   # the same code on tiny configs (CPU)

Timing: both runs use the same model, tokenizer, prompts and official recipe (8 beams x 8 returns, 75 new tokens,
length_penalty -1) in one process; the ratio is printed.

Memory (`--memory`, seconds on a CPU): the real SD1.5 UNet, VAE and CLIP text encoder are built from their configs on
PyTorch's meta device in fp16 (no weights, no FLOPs). A dispatch mode adds up the bytes of every tensor an operator
returns and subtracts them when the tensor dies; the peak of that count during one UNet call (2 rows per image: CFG)
and one VAE decode is the activation memory. Attention is counted as CUDA's flash / memory-efficient SDPA kernels
allocate it (output + fp32 logsumexp, no N² matrix). Not counted: the CUDA context, cuDNN/cuBLAS workspaces and
allocator fragmentation. These are computed numbers, not measurements.

GPU check (`gpu_check()`, issue 17): GPT-2 small architecture (random weights, saved and loaded through
`promptist_infer.load_promptist` with `--load_in_8bit`) optimises 32 prompts batched (32 per call) vs one per call;
then SD1.5 (random weights, fp16, PNDM, 20 steps, 512², set up by `promptist_infer.setup_pipeline`) renders 4 pairs
with `promptist_infer.render` at the default `--image_batch_size`; peak allocated GPU memory per phase. Goal: batched
>= 4x faster, every phase <= 4.5 GB. Run from the repo root.
"""

import argparse
import sys
import time
import weakref
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import promptist_infer  # noqa: E402

# stable-diffusion-v1-5 unet/config.json, vae/config.json, text_encoder/config.json (the values that differ from the
# diffusers / transformers class defaults, plus the ones that size the model)
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)  # fmt: skip
SD15_VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4,
                sample_size=512)  # fmt: skip
SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                      steps_offset=1, num_train_timesteps=1000)  # fmt: skip
SD15_TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                 num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
                 projection_dim=768)  # fmt: skip


class LiveBytes(torch.utils._python_dispatch.TorchDispatchMode):
    """Peak bytes of the tensors created inside the mode that are alive at the same time (views share storage)."""

    def __init__(self, ignore: set):
        super().__init__()
        self.ignore, self.refs, self.size, self.now, self.peak = ignore, {}, {}, 0, 0

    def _release(self, key):
        self.refs[key] -= 1
        if not self.refs[key]:
            self.now -= self.size.pop(key)
            del self.refs[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in self.ignore:
                key = t.untyped_storage()._cdata
                if key not in self.refs:
                    self.refs[key], self.size[key] = 0, t.untyped_storage().nbytes()
                    self.now += self.size[key]
                    self.peak = max(self.peak, self.now)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
        return out


def flash_sdpa(q, k, v, *args, **kwargs):
    """What CUDA's flash / memory-efficient attention allocates: the output and an fp32 logsumexp per query."""
    lse = q.new_empty(q.shape[:-1], dtype=torch.float32)
    out = q.new_empty(*q.shape[:-1], v.shape[-1])
    del lse
    return out


def sd15_render_memory(pairs_per_call: int, vae_slicing: bool = True, height: int = 512, width: int = 512) -> dict:
    """Computed bytes of one promptist_infer render call on SD1.5 fp16: `weights`, activation peaks `unet` (one
    denoising step, 2 images per pair x 2 CFG rows) and `vae` (decode of 1 image with slicing, else of all), `peak`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET).to(torch.float16).eval()
        vae = AutoencoderKL(**SD15_VAE).to(torch.float16).eval()
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).to(torch.float16)
    models = (unet, vae, text)
    weights = sum(t.untyped_storage().nbytes() for m in models for t in (*m.parameters(), *m.buffers()))
    ignore = {t.untyped_storage()._cdata for m in models for t in (*m.parameters(), *m.buffers())}
    images, lat = 2 * pairs_per_call, (height // 8, width // 8)
    F = torch.nn.functional
    sdpa, F.scaled_dot_product_attention = F.scaled_dot_product_attention, flash_sdpa
    peaks = {}
    try:
        with torch.no_grad():
            x = torch.empty(2 * images, 4, *lat, device="meta", dtype=torch.float16)
            ctx = torch.empty(2 * images, 77, 768, device="meta", dtype=torch.float16)
            with LiveBytes(ignore) as mode:
                unet(x, torch.tensor(999, device="meta"), encoder_hidden_states=ctx)
            peaks["unet"] = mode.peak
            z = torch.empty(1 if vae_slicing else images, 4, *lat, device="meta", dtype=torch.float16)
            with LiveBytes(ignore) as mode:
                vae.decode(z)
            peaks["vae"] = mode.peak
    finally:
        F.scaled_dot_product_attention = sdpa
    return {"weights": weights, **peaks, "peak": weights + max(peaks.values())}


# the tests' tiny SD1.5 (tests/conftest.py tiny_sd15) and GPT-2 (tiny_gpt2) sizes, for `--gpu_check --tiny`
TINY_UNET = dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, cross_attention_dim=32,
                 down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                 up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))  # fmt: skip
TINY_VAE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4)  # fmt: skip
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 max_position_embeddings=77)  # fmt: skip
GPT2_SMALL = dict(n_embd=768, n_layer=12, n_head=12, n_positions=1024, vocab_size=50257)
GPT2_TINY = dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gpu_check(tiny: bool = False, n_prompts: int = 32, n_pairs: int = 4) -> dict:
    """Measured (on CUDA; `tiny` = the same code on tiny configs, CPU): optimise batched vs per prompt, then render,
    with peak allocated GPU memory per phase in GiB (0 off CUDA)."""
    import gc
    import tempfile

    from conftest import CORPUS, make_clip_tokenizer, make_gpt2_tokenizer
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, GPT2Config, GPT2LMHeadModel

    device = torch.device("cpu" if tiny else "cuda")
    res = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "tiny": tiny}
    words = CORPUS.split()
    prompts = [" ".join(words[(7 * i) % 60 : (7 * i) % 60 + 3 + i % 6]) for i in range(n_prompts)]
    with tempfile.TemporaryDirectory() as d:  # phase 1: GPT-2 through the script's loader (8-bit on CUDA)
        tok = make_gpt2_tokenizer()
        eos = tok.eos_token_id
        size = GPT2_TINY | {"vocab_size": len(tok)} if tiny else GPT2_SMALL
        torch.manual_seed(0)
        GPT2LMHeadModel(GPT2Config(bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **size)).save_pretrained(d)
        tok.save_pretrained(d)
        args = promptist_infer.ScriptArguments(model_name_or_path=d, tokenizer_name_or_path=d, load_in_8bit=not tiny)
        model, tokenizer = promptist_infer.load_promptist(args, device)
    promptist_infer.optimize(model, tokenizer, prompts[:2], args)  # warm-up
    for name, batch in (("optimise_loop_s", 1), ("optimise_batched_s", n_prompts)):
        sync(device)
        t = time.perf_counter()
        promptist_infer.optimize(model, tokenizer, prompts, promptist_infer.ScriptArguments(batch_size=batch))
        sync(device)
        res[name] = time.perf_counter() - t
    res["optimise_speedup"] = res["optimise_loop_s"] / res["optimise_batched_s"]
    res["optimise_peak_gib"] = promptist_infer.cuda_peak(device, "optimise")
    del model, tokenizer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    # phase 2: SD1.5 from configs, set up and rendered by the script's functions
    dtype = torch.float32 if tiny else torch.float16
    with torch.device(device):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(**(TINY_UNET if tiny else SD15_UNET)).to(dtype)
        vae = AutoencoderKL(**(TINY_VAE if tiny else SD15_VAE)).to(dtype)
        ctok = make_clip_tokenizer()
        text_cfg = TINY_TEXT | {"vocab_size": len(ctok)} if tiny else SD15_TEXT
        text = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, **text_cfg)).to(dtype)
    pipe = StableDiffusionPipeline(
        unet=unet.eval(), vae=vae.eval(), text_encoder=text.eval(), tokenizer=ctok,
        scheduler=PNDMScheduler(**SD15_SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )  # fmt: skip
    px, steps = (64, 2) if tiny else (512, 20)
    args = promptist_infer.ScriptArguments(height=px, width=px, num_inference_steps=steps)
    pipe = promptist_infer.setup_pipeline(pipe, args, device)
    if device.type == "cuda":  # the fp32 build above is no part of the render phase
        torch.cuda.reset_peak_memory_stats(device)
    pairs = [{"original": p, "optimized": p + ", highly detailed, 4k"} for p in prompts[:n_pairs]]
    promptist_infer.render(pipe, pairs[:1], args)  # warm-up
    sync(device)
    t = time.perf_counter()
    promptist_infer.render(pipe, pairs, args)
    sync(device)
    res["render_s_per_pair"] = (time.perf_counter() - t) / n_pairs
    res["render_pairs_per_call"] = args.image_batch_size
    res["render_peak_gib"] = promptist_infer.cuda_peak(device, "render")
    return res


def memory_table():
    gib = 2**30
    print("SD1.5 fp16 512², computed on the meta device (not measured); GiB; pairs = --image_batch_size")
    print(f"{'pairs':>5} {'images':>6} {'VAE slicing':>11} {'weights':>8} {'UNet act':>8} {'VAE act':>8} {'peak':>6}")
    for pairs in (1, 2, 4, 8):
        for slicing in (False, True):
            m = sd15_render_memory(pairs, slicing)
            print(f"{pairs:>5} {2 * pairs:>6} {str(slicing):>11} {m['weights'] / gib:8.2f} {m['unet'] / gib:8.2f} "
                  f"{m['vae'] / gib:8.2f} {m['peak'] / gib:6.2f}")  # fmt: skip


def timing(args):
    from conftest import CORPUS, make_gpt2_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = make_gpt2_tokenizer()
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    torch.manual_seed(0)
    eos = tok.eos_token_id
    cfg = GPT2Config(vocab_size=len(tok), bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **GPT2_TINY)
    model = GPT2LMHeadModel(cfg).eval()
    words = CORPUS.split()
    prompts = [" ".join(words[(7 * i) % 60 : (7 * i) % 60 + 3 + i % 6]) for i in range(args.n)]
    batched = promptist_infer.ScriptArguments(batch_size=args.batch_size)
    looped = promptist_infer.ScriptArguments(batch_size=1)
    promptist_infer.optimize(model, tok, prompts[:2], batched)  # warm-up
    timings = {}
    for name, cfg in (("per-prompt loop", looped), (f"batched ({args.batch_size}/call)", batched)):
        t = time.perf_counter()
        promptist_infer.optimize(model, tok, prompts, cfg)
        timings[name] = time.perf_counter() - t
    print(f"{args.n} prompts, tiny GPT-2, cpu, recipe 8 beams x 75 tokens")
    for name, sec in timings.items():
        print(f"{name:<22} {sec:8.2f} s  {args.n / sec:8.1f} prompts/s")
    loop, batch = timings.values()
    print(f"speed-up batched vs loop: {loop / batch:.1f}x")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=32, help="prompts")
    p.add_argument("--batch_size", type=int, default=32, help="prompts per generate call in the batched run")
    p.add_argument("--memory", action="store_true", help="computed SD1.5 render memory instead of timing")
    p.add_argument("--gpu_check", action="store_true", help="measure the real architectures on CUDA")
    p.add_argument("--tiny", action="store_true", help="with --gpu_check: tiny configs on the CPU")
    args = p.parse_args()
    if args.memory:
        memory_table()
    elif args.gpu_check:
        res = gpu_check(tiny=args.tiny)
        for k, v in res.items():
            print(f"{k:<22} {v:.3f}" if isinstance(v, float) else f"{k:<22} {v}")
        gb = 4.5e9 / 2**30
        print(f"goals: batched >= 4x ({res['optimise_speedup']:.1f}x); peak <= {gb:.2f} GiB per phase "
              f"(optimise {res['optimise_peak_gib']:.2f}, render {res['render_peak_gib']:.2f})")  # fmt: skip
    else:
        timing(args)


if __name__ == "__main__":
    main()
