# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.40", "trl>=1.0", "accelerate>=1.10", "pillow>=10.0",
#                 "tqdm"]
# ///
"""Promptist: rewrite a plain prompt into one Stable Diffusion renders better, and show both images side by side.

README section: "promptist_infer.py". Paper: Hao, Chi, Dong, Wei, "Optimizing Prompts for Text-to-Image Generation"
(NeurIPS 2023, arXiv 2212.09611); code microsoft/LMOps/promptist; weights `microsoft/Promptist`. A GPT-2 was
fine-tuned on (plain prompt, engineered prompt) pairs, then trained with PPO on a reward that pays for aesthetic gain
over the plain prompt's image while keeping CLIP relevance to the plain prompt. This script runs the released model
with the official decoding recipe: input `text.strip() + " Rephrase:"`, left padding with pad = eos, beam search with
8 beams and 8 returns, length_penalty -1.0 (favours shorter beams), at most 75 new tokens, no sampling, beam 0 kept.

Differences from the reference (LMOps README / HF Space app.py):
1. The prompt prefix is removed by slicing the generated tokens, not by upstream's
   `output.replace(plain_text + " Rephrase:", "")`, which leaks the prefix whenever the input has stray whitespace.
2. Prompts are batched through one `generate` call (left padding + attention mask); the Space handles one at a time.
3. transformers >= 4.36 ranks beams by generated length only (PR #27351), so beam 0 can differ from the 2023 Space.
4. Images use Stable Diffusion v1.5 (v1.4, which the model card targets, is gated); any diffusers text-to-image id
   works.
5. `--score` evaluates the RL reward of the paper (LMOps `PromptScorer.get_score_batched`) on one image per prompt
   instead of two: aesthetic(optimised image) - aesthetic(baseline image) + min(20 * max(cos, 0) - 5.6, 0), with cos
   the CLIP ViT-L/14 cosine between the optimised image and the ORIGINAL text.

Usage (run from the repository root):
    python promptist_infer.py "a cat in the rain"                                  # prints the optimised prompt
    python promptist_infer.py "a cat in the rain" "a red car" --output_json pairs.json
    python promptist_infer.py --prompt_file prompts.txt --generate_images --score --output_dir out/promptist
    python promptist_infer.py --from_json out/promptist/pairs.json --generate_images --output_dir out/again
Laptop GPU (6 GB): the defaults fit (see "GPU memory" below); `--load_in_8bit` shrinks GPT-2 (bitsandbytes, CUDA only)
and `--enable_model_cpu_offload` helps if even SD1.5 does not fit. The LLM is deleted and the CUDA cache emptied before
the pipeline loads; the VAE decodes one image at a time; on a CUDA out-of-memory error the render batch is halved and
retried (one note on stderr).
CPU smoke run with tiny local models: see tests/test_promptist_infer.py (`--model_name_or_path DIR
--tokenizer_name_or_path DIR --pipeline_name_or_path DIR --height 64 --width 64 --num_inference_steps 2`).

GPU memory (computed, not measured: `python benchmarks/promptist_bench.py --memory` traces the real SD1.5 architecture
on the meta device, flash attention assumed): render phase 2.49 GiB at the default `--image_batch_size 2` (fp16 weights
1.99 GiB + one UNet call on 8 CFG rows 0.51 GiB; 0.25 GiB per extra pair), so 4 pairs need 3.00 GiB and 8 pairs
4.02 GiB; the old default (4 pairs, VAE decoding all 8 images at once) needed 4.99 GiB. GPT-2 phase: 0.23 GiB fp16
weights + a beam KV cache of 16 prompts x 8 beams x ~90 tokens x 36 KiB = 0.40 GiB (about twice that while beams are
reordered). Scoring: CLIP ViT-L/14 fp16 0.80 GiB. Not counted: CUDA context, cuDNN workspaces, fragmentation.
Speed on a GPU: not measured here (no GPU was available to this project's CI or developers).
The optimised prompts go to stdout (one line per prompt, printed before any image is rendered), so the command pipes.
"""

import gc
import json
import logging
import re
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

# bitsandbytes (imported by transformers' quantizers) logs a CPU-kernel notice on import that is no error of ours
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

SUFFIX = " Rephrase:"  # the format Promptist was trained on (LMOps ppo_prompter.py; model card)
USAGE = (
    "python promptist_infer.py PROMPT [PROMPT ...] [options] [--config recipe.yaml]  (or --prompt_file / --from_json)"
)
HELP_GROUPS = {"model_name_or_path": "models", "prompt_file": "prompts and decoding", "generate_images": "images"}
# a folder given as a model must hold one of these files (what from_pretrained looks for first)
MODEL_FILES = {
    "model_name_or_path": ("config.json",),
    "tokenizer_name_or_path": ("tokenizer.json", "tokenizer_config.json", "vocab.json"),
    "pipeline_name_or_path": ("model_index.json",),
}


@dataclass
class ScriptArguments:
    # model
    model_name_or_path: str = field(
        default="microsoft/Promptist", metadata={"help": "Promptist weights: hub id or folder."}
    )
    tokenizer_name_or_path: str = field(default="gpt2", metadata={"help": "Tokenizer (the official code uses gpt2)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the LLM in 8-bit (bitsandbytes, CUDA only)."})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "Load the LLM in 4-bit NF4, fp16 compute (bitsandbytes, CUDA only)."}
    )
    device: str | None = field(default=None, metadata={"help": "cuda, cuda:N, mps or cpu (default: the best one)."})
    # prompts and decoding (defaults = the official recipe)
    prompt_file: str | None = field(default=None, metadata={"help": "Prompts: .txt (one per line) or .json list."})
    from_json: str | None = field(default=None, metadata={"help": "Pairs JSON to render from, skipping the LLM."})
    output_json: str | None = field(
        default=None, metadata={"help": "Write the pairs (and images, rewards) as a JSON list here."}
    )
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate call (>= 1)."})
    num_beams: int = field(default=8, metadata={"help": "Beams = returned sequences (recipe: 8); beam 0 is kept."})
    max_new_tokens: int = field(default=75, metadata={"help": "Recipe: 75."})
    length_penalty: float = field(default=-1.0, metadata={"help": "Recipe: -1.0 (favours shorter beams)."})
    # images
    generate_images: bool = field(default=False, metadata={"help": "Render baseline and optimised images."})
    pipeline_name_or_path: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5", metadata={"help": "Any diffusers text-to-image id."}
    )
    output_dir: str = field(default="promptist_out", metadata={"help": "Images, grid.png and pairs.json go here."})
    num_inference_steps: int = field(default=20, metadata={"help": "Denoising steps (the RL reward used 20)."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})
    height: int = field(default=512, metadata={"help": "Image height in pixels (multiple of 8)."})
    width: int = field(default=512, metadata={"help": "Image width in pixels (multiple of 8)."})
    seed: int = field(default=0, metadata={"help": "Pair i uses seed + i for both of its images."})
    image_batch_size: int = field(
        default=2,
        metadata={"help": "Prompt pairs per call (2 images each), halved on CUDA OOM; SD1.5 512²: 2.5 GiB at 2."},
    )
    enable_model_cpu_offload: bool = field(default=False, metadata={"help": "diffusers CPU offload for small GPUs."})
    score: bool = field(
        default=False, metadata={"help": "Evaluate the Promptist reward with score.py (implies images)."}
    )


def promptist_reward(aesthetic_optimized: float, aesthetic_baseline: float, clip_optimized: float) -> float:
    """Promptist's RL reward for one image pair (LMOps ppo_prompter.py `PromptScorer.get_score_batched`).

    aesthetic gain of the optimised image over the baseline + a relevance hinge that only penalises: the CLIP cosine
    between the optimised image and the ORIGINAL text, clamped at 0, below 0.28 costs 20 per unit. Higher is better;
    unbounded above, at least -5.6 + the aesthetic difference.
    """
    return aesthetic_optimized - aesthetic_baseline + min(20 * max(clip_optimized, 0.0) - 5.6, 0.0)


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str):
    """A user error: one line on stderr, exit code 2, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def pick_device(requested: str | None):
    """The requested device if it exists here (ValueError otherwise), else cuda > mps > cpu."""
    import torch

    if not requested:
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cuda", "mps", "cpu"):
        raise ValueError(f"--device {requested}: not a device (use cuda, cuda:N, mps or cpu)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: no CUDA device here (torch.cuda.is_available() is False)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {requested}: only {torch.cuda.device_count()} CUDA device(s) here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {requested}: MPS is not available here")
    return device


def read_json_list(path: Path) -> list:
    """A JSON list; a syntax error names the 1-based record (top-level element) it occurs in."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        head, depth, record = re.sub(r'"(?:[^"\\]|\\.)*"?', '""', text[: e.pos]), 0, 1  # strings emptied
        for ch in head:  # the record = 1 + the top-level commas before the error
            depth += (ch in "[{") - (ch in "]}")
            record += ch == "," and depth == 1
        raise ValueError(f"{path}: record {record}: {e.msg} (line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, list) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON list")
    return data


def read_prompts(args: ScriptArguments, positional: list[str]) -> list[str]:
    """Positional prompts, then --prompt_file; raises ValueError with a one-line reason."""
    prompts = list(positional)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise ValueError(f"prompt file not found: {path}")
        if path.suffix.lower() == ".json":
            data = read_json_list(path)
            for i, p in enumerate(data, 1):
                if not isinstance(p, str) or not p.strip():
                    raise ValueError(f"{path}: record {i}: expected a non-empty string, got {json.dumps(p)[:40]}")
            prompts += data
        else:
            try:
                prompts += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
            if len(prompts) == len(positional):
                raise ValueError(f"prompt file is empty: {path}")
    if any(not p.strip() for p in prompts):
        raise ValueError("empty prompt")
    return prompts


def read_pairs(path: str) -> list[dict]:
    """Records of an earlier run, every field kept (earlier scores too; this run overwrites what it recomputes)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"pairs JSON not found: {p}")
    pairs = read_json_list(p)
    for i, r in enumerate(pairs, 1):
        ok = isinstance(r, dict) and all(isinstance(r.get(k), str) and r[k].strip() for k in ("original", "optimized"))
        if not ok:
            raise ValueError(f'{p}: record {i}: needs non-empty "original" and "optimized" strings')
    return [dict(r) for r in pairs]


def check_args(args: ScriptArguments, positional: list[str]) -> list[str]:
    """Every check that needs no weights; returns the prompts. Raises ValueError with a one-line reason."""
    for name in ("batch_size", "num_beams", "max_new_tokens", "image_batch_size", "num_inference_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.generate_images and (args.height < 8 or args.height % 8 or args.width < 8 or args.width % 8):
        raise ValueError(f"--height and --width must be positive multiples of 8, got {args.height}x{args.width}")
    if args.load_in_8bit and args.load_in_4bit:
        raise ValueError("choose one of --load_in_8bit and --load_in_4bit")
    pick_device(args.device)
    names = () if args.from_json else ("model_name_or_path", "tokenizer_name_or_path")
    for name in (*names, "pipeline_name_or_path") if args.generate_images else names:
        value, p = getattr(args, name), Path(getattr(args, name)).expanduser()
        if p.exists() and not any((p / f).is_file() for f in MODEL_FILES[name]):
            raise ValueError(f"--{name} {value}: not a model folder (no {' or '.join(MODEL_FILES[name])})")
        if not p.exists() and value.startswith(("/", "./", "../", "~")):
            raise ValueError(f"--{name}: no such folder {value}")
    if args.score:  # score.py's model locations (SCORE_* variables) are checked the same way
        import score

        for key in ("clip_model", "aesthetic_head"):
            where = score.locate(key, {})
            if where.startswith(("/", "./", "../", "~")) and not Path(where).expanduser().exists():
                raise ValueError(f"SCORE_{key.upper()}: no such file or folder {where}")
    for out, is_dir in ((args.output_json, False), (args.output_dir if args.generate_images else None, True)):
        p = Path(out or ".")
        if out and ((p.exists() and p.is_dir() != is_dir) or any(q.is_file() for q in p.parents)):
            raise ValueError(f"cannot write {out}: a {'file' if is_dir else 'file or folder'} is in the way")
    if args.from_json:
        if positional or args.prompt_file:
            raise ValueError("give prompts or --from_json, not both")
        if not args.generate_images:
            raise ValueError("--from_json only renders images: add --generate_images")
        read_pairs(args.from_json)
        return []
    prompts = read_prompts(args, positional)
    if not prompts:
        raise ValueError('no prompt given: python promptist_infer.py "a cat in the rain" (or --prompt_file)')
    return prompts


def free_memory(device):
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def cuda_peak(device, phase: str) -> float:
    """Print, return and reset the peak allocated GPU memory of a phase in GiB (0 off CUDA)."""
    import torch

    if device.type != "cuda":
        return 0.0
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    log(f"[{phase}] peak GPU memory {peak:.2f} GiB")
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def load_promptist(args: ScriptArguments, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs = {"dtype": torch.float16 if device.type == "cuda" else torch.float32}
    if args.load_in_8bit or args.load_in_4bit:
        if device.type == "cuda":  # bitsandbytes also "works" on CPU, silently and very slowly: refuse that
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_8bit=True)
                if args.load_in_8bit  # NF4 weights, fp16 matmuls (QLoRA's format); bnb's defaults are FP4 + fp32
                else BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float16
                )
            )
            kwargs["device_map"] = {"": device.index or 0}
        else:
            log(f"note: --load_in_8bit/--load_in_4bit need CUDA; ignored on {device.type} (loading in full precision)")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_name_or_path)
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "left"  # the recipe: pad = eos, left padding
    model = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, **kwargs).eval()
    return (model if "device_map" in kwargs else model.to(device)), tokenizer


def optimize(model, tokenizer, prompts: list[str], args: ScriptArguments) -> list[str]:
    """Batched official recipe; beam 0 of each input, continuation tokens only (no string replace)."""
    import torch
    from tqdm import tqdm

    out = []
    for i in tqdm(
        range(0, len(prompts), args.batch_size),
        desc="optimising",
        unit="batch",
        disable=len(prompts) <= args.batch_size,
    ):
        chunk = [p.strip() + SUFFIX for p in prompts[i : i + args.batch_size]]
        enc = tokenizer(chunk, return_tensors="pt", padding=True).to(model.device)
        with torch.no_grad():
            gen = model.generate(
                **enc, do_sample=False, num_beams=args.num_beams, num_return_sequences=args.num_beams,
                max_new_tokens=args.max_new_tokens, length_penalty=args.length_penalty,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
            )  # fmt: skip
        # rows are grouped per input, best beam first; left padding puts every continuation at the same offset
        best = gen[:: args.num_beams, enc["input_ids"].shape[1] :]
        out += [t.strip() for t in tokenizer.batch_decode(best, skip_special_tokens=True)]
    return out


def setup_pipeline(pipe, args: ScriptArguments, device):
    """Safety checker off, VAE decodes one image at a time, then offload or move to the device."""
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # side-by-side comparisons need every image; the user may re-enable it in code
    if hasattr(getattr(pipe, "vae", None), "enable_slicing"):
        pipe.vae.enable_slicing()  # SD1.5 512²: 0.38 GiB of decoder activations per image (promptist_bench.py)
    if args.enable_model_cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        if args.enable_model_cpu_offload:
            log(f"note: --enable_model_cpu_offload needs CUDA; ignored on {device.type}")
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(args: ScriptArguments, device):
    import torch
    from diffusers import AutoPipelineForText2Image

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(args.pipeline_name_or_path, dtype=dtype)
    return setup_pipeline(pipe, args, device)


def render(pipe, pairs: list[dict], args: ScriptArguments, out_dir: Path | None = None) -> list[tuple]:
    """Baseline and optimised image of each pair, `--image_batch_size` pairs per pipeline call; pair i uses seed + i
    for both images, so its starting noise does not depend on the batch. On CUDA out-of-memory the batch is halved and
    the call retried (re-raised at one pair). With `out_dir`, each image is saved as soon as it exists."""
    import torch
    from tqdm import tqdm

    images, i, batch, warned = [], 0, args.image_batch_size, False
    bar = tqdm(total=len(pairs), desc="rendering", unit="pair", disable=len(pairs) <= batch)
    while i < len(pairs):
        chunk = pairs[i : i + batch]
        seeds = [args.seed + i + j for j in range(len(chunk))]
        try:
            out = pipe(
                prompt=[p["original"] for p in chunk] + [p["optimized"] for p in chunk],
                generator=[torch.Generator("cpu").manual_seed(s) for s in seeds + seeds],
                num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                height=args.height, width=args.width,
            ).images  # fmt: skip
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            out = None  # retry outside the handler: its traceback still holds the failed call's tensors
        if out is None:
            batch = len(chunk) // 2
            if not warned:
                log(f"note: CUDA out of memory at {len(chunk)} pairs per call: halving the batch until it fits")
                warned = True
            gc.collect()
            torch.cuda.empty_cache()
            continue
        for j, (pair, base, opt) in enumerate(zip(chunk, out[: len(chunk)], out[len(chunk) :], strict=True)):
            if out_dir is not None:
                for kind, img in (("baseline", base), ("optimized", opt)):
                    pair[f"{kind}_image"] = f"{i + j:03d}_{kind}.png"
                    img.save(out_dir / pair[f"{kind}_image"])
            images.append((base, opt))
        i += len(chunk)
        bar.update(len(chunk))
    bar.close()
    return images


def save_grid(pairs: list[dict], images: list[tuple], out_dir: Path):
    """One captioned grid: a row per pair, baseline left, optimised right."""
    from PIL import Image, ImageDraw

    w, h = images[0][0].size
    cap = 14 * 6 + 8  # six caption lines under each image
    grid = Image.new("RGB", (2 * w, len(images) * (h + cap)), "white")
    draw = ImageDraw.Draw(grid)
    chars = max(8, w // 7)
    for i, (pair, (base, opt)) in enumerate(zip(pairs, images, strict=True)):
        y = i * (h + cap)
        for col, (img, text) in enumerate(((base, pair["original"]), (opt, pair["optimized"]))):
            grid.paste(img, (col * w, y))
            lines = textwrap.wrap(text, chars)[:6]
            draw.multiline_text((col * w + 4, y + h + 4), "\n".join(lines), fill="black", spacing=2)
    grid.save(out_dir / "grid.png")
    log(f"saved {2 * len(images)} images and {out_dir / 'grid.png'}")


def promptist_scores(pairs: list[dict], images: list[tuple], device) -> None:
    """Adds aesthetic_baseline, aesthetic_optimized, clip_optimized and reward to each pair (score.py models)."""
    import score

    aesthetic = score.load_scorer("aesthetic", device=device)
    clip = score.load_scorer("clip", device=device)
    originals = [p["original"] for p in pairs]
    aes_b = aesthetic([b for b, _ in images], originals)
    aes_o = aesthetic([o for _, o in images], originals)
    cos = clip([o for _, o in images], originals)  # relevance to the ORIGINAL text, as in the paper
    print(f"{'#':>3} {'aes base':>9} {'aes opt':>9} {'clip opt':>9} {'reward':>9}", file=sys.stderr)
    for i, p in enumerate(pairs):
        reward = promptist_reward(aes_o[i], aes_b[i], cos[i])
        p.update(aesthetic_baseline=aes_b[i], aesthetic_optimized=aes_o[i], clip_optimized=cos[i], reward=reward)
        print(f"{i:>3} {aes_b[i]:>9.4f} {aes_o[i]:>9.4f} {cos[i]:>9.4f} {reward:>9.4f}", file=sys.stderr)
    mean = sum(p["reward"] for p in pairs) / len(pairs)
    print(f"mean reward {mean:.4f} over {len(pairs)} prompts", file=sys.stderr)


def write_json(pairs: list[dict], args: ScriptArguments):
    """--output_json and, with images, <output_dir>/pairs.json (image names are relative to --output_dir)."""
    paths = [Path(args.output_json)] if args.output_json else []
    for path in paths + ([Path(args.output_dir) / "pairs.json"] if args.generate_images else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(pairs, indent=2))


def infer(args: ScriptArguments, prompts: list[str]):
    import torch

    device = pick_device(args.device)
    if args.from_json:
        pairs = read_pairs(args.from_json)
        log(f"loaded {len(pairs)} prompt pairs from {args.from_json} (no LLM)")
    else:
        model, tokenizer = load_promptist(args, device)
        optimized = optimize(model, tokenizer, prompts, args)
        pairs = [{"original": p, "optimized": o} for p, o in zip(prompts, optimized, strict=True)]
        cuda_peak(device, "optimise")
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        del model, tokenizer  # phase 2 gets the whole GPU
        free_memory(device)
        if device.type == "cuda":
            freed = (before - torch.cuda.memory_allocated(device)) / 2**30
            log(f"freed {freed:.2f} GiB of GPU memory held by the LLM")
    for p in pairs:  # stdout carries only the prompts (printed now, before any rendering can fail)
        print(p["optimized"], flush=True)
    write_json(pairs, args)
    if args.generate_images:
        out_dir = Path(args.output_dir)
        pipe = load_pipeline(args, device)
        images = render(pipe, pairs, args, out_dir)
        del pipe
        free_memory(device)
        cuda_peak(device, "render")
        save_grid(pairs, images, out_dir)
        if args.score:
            promptist_scores(pairs, images, device)
            cuda_peak(device, "score")
        write_json(pairs, args)  # again, now with image names and rewards
        log(f"wrote {', '.join(filter(None, [args.output_json, str(out_dir / 'pairs.json')]))}")


def make_parser():
    """TrlParser (so --config recipe.yaml works) with grouped --help, PROMPT in the usage and one-line errors."""
    from trl import TrlParser

    parser = TrlParser((ScriptArguments,), allow_abbrev=False, usage=USAGE)
    parser.error = fail  # argparse would print the usage block, then the error
    group = None
    for action in list(parser._optionals._group_actions):
        if action.dest in HELP_GROUPS:
            group = parser.add_argument_group(HELP_GROUPS[action.dest])
        if group is not None:
            parser._optionals._group_actions.remove(action)
            group._group_actions.append(action)
    parser._optionals.title = "other"
    parser._action_groups.append(parser._action_groups.pop(parser._action_groups.index(parser._optionals)))
    return parser


def main(argv=None):
    import yaml

    parser = make_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # a bool flag takes an optional value, so `--score "a cat"` would read the prompt as that value: give it `true`
    flags = {s for a in parser._actions if a.nargs == "?" for s in a.option_strings}
    words = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}
    explicit = [a in flags and i + 1 < len(argv) and argv[i + 1][:1] != "-" and argv[i + 1].lower() not in words
                for i, a in enumerate(argv)]  # fmt: skip
    argv = [w for a, e in zip(argv, explicit, strict=True) for w in ((a, "true") if e else (a,))]
    try:
        args, positional = parser.parse_args_and_config(argv, return_remaining_strings=True)
    except (OSError, IndexError, ValueError, yaml.YAMLError) as e:  # --config: no value, no file, bad YAML
        if isinstance(e, IndexError):
            fail("--config needs a YAML file")
        fail(f"--config {argv[argv.index('--config') + 1]}: {' '.join(str(e).split())}")
    unknown = [s for s in positional if s.startswith("-")]
    if unknown:
        fail(f"unrecognised arguments: {' '.join(unknown)}")
    args.generate_images = args.generate_images or args.score
    try:
        prompts = check_args(args, positional)
    except ValueError as e:
        fail(str(e))
    import torch

    try:
        infer(args, prompts)
    except OSError as e:  # unknown hub id: transformers and diffusers raise OSError with a page of advice
        fail(f"could not load a model: {str(e).splitlines()[0]}")
    except torch.OutOfMemoryError:
        fail("CUDA out of memory rendering one pair: add --enable_model_cpu_offload or lower --height/--width")


if __name__ == "__main__":
    main()
