# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.35", "trl>=1.0", "accelerate>=1.10", "pillow>=10.0", "tqdm"]
# ///
"""Promptist: rewrite a plain prompt into one Stable Diffusion renders better, and show both images side by side.

README section: "promptist_infer.py". Paper: Hao, Chi, Dong, Wei, "Optimizing Prompts for Text-to-Image Generation"
(NeurIPS 2023, arXiv 2212.09611); code microsoft/LMOps/promptist; weights `microsoft/Promptist`. A GPT-2 was
fine-tuned on (plain prompt, engineered prompt) pairs, then trained with PPO on a reward that pays for aesthetic gain
over the plain prompt's image while keeping CLIP relevance to the plain prompt. This script runs the released model
with the official decoding recipe: input `text.strip() + " Rephrase:"`, left padding with pad = eos, beam search with
8 beams and 8 returns, length_penalty -1.0 (favours shorter beams), at most 75 new tokens, no sampling, beam 0 kept.

Differences from the reference (LMOps README / HF Space app.py):
1. The prompt prefix is removed by slicing the generated tokens, not by `output.replace(plain_text + " Rephrase:", "")`,
   which leaks the prefix whenever the input has stray whitespace (the replace uses the unstripped text).
2. Prompts are batched through one `generate` call (left padding + attention mask); the Space handles one at a time.
3. transformers >= 4.36 ranks beams by generated length only (PR #27351), so beam 0 can differ from the 2023 Space.
4. Images use Stable Diffusion v1.5 (v1.4, which the model card targets, is gated); any diffusers text-to-image id works.
5. `--score` evaluates the RL reward of the paper (LMOps `PromptScorer.get_score_batched`) on one image per prompt
   instead of two: aesthetic(optimised image) - aesthetic(baseline image) + min(20 * max(cos, 0) - 5.6, 0), with cos the
   CLIP ViT-L/14 cosine between the optimised image and the ORIGINAL text.

Usage (run from the repository root):
    python promptist_infer.py "a cat in the rain"                                  # prints the optimised prompt
    python promptist_infer.py "a cat in the rain" "a red car" --output_json pairs.json
    python promptist_infer.py --prompt_file prompts.txt --generate_images --score --output_dir out/promptist
    python promptist_infer.py --from_json out/promptist/pairs.json --generate_images --output_dir out/again
Laptop GPU (6 GB): add `--load_in_8bit` (GPT-2 via bitsandbytes; CUDA only) and, if SD1.5 fp16 does not fit,
`--enable_model_cpu_offload`. The LLM is deleted and the CUDA cache emptied before the pipeline loads.
CPU smoke run with tiny local models: see tests/test_promptist_infer.py (`--model_name_or_path DIR
--tokenizer_name_or_path DIR --pipeline_name_or_path DIR --height 64 --width 64 --num_inference_steps 2`).

Expected: on a GPU, optimising one prompt takes well under a second (8 beams x 75 tokens of GPT-2 small); one 512²
SD1.5 pair at 20 steps a few seconds. Peak GPU memory ~3.5 GB for SD1.5 fp16 alone (the GPT-2 phase is ~0.3 GB);
not measured on a GPU here (no GPU was available to this project's CI or developers).
The last line on stdout is always the optimised prompt (one line per prompt), so the command pipes.
"""

import gc
import json
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

SUFFIX = " Rephrase:"  # the format Promptist was trained on (LMOps ppo_prompter.py; model card)


@dataclass
class ScriptArguments:
    # model
    model_name_or_path: str = field(
        default="microsoft/Promptist", metadata={"help": "Promptist weights: hub id or folder."}
    )
    tokenizer_name_or_path: str = field(default="gpt2", metadata={"help": "Tokenizer (the official code uses gpt2)."})
    load_in_8bit: bool = field(default=False, metadata={"help": "Load the LLM in 8-bit (bitsandbytes, CUDA only)."})
    load_in_4bit: bool = field(
        default=False, metadata={"help": "Load the LLM in 4-bit NF4 (bitsandbytes, CUDA only)."}
    )
    device: str | None = field(default=None, metadata={"help": "cuda / mps / cpu (default: the best available)."})
    # prompts and decoding (defaults = the official recipe)
    prompt_file: str | None = field(default=None, metadata={"help": "Prompts: .txt (one per line) or .json list."})
    output_json: str | None = field(default=None, metadata={"help": 'Write [{"original", "optimized"}] here.'})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generate call."})
    num_beams: int = field(default=8, metadata={"help": "Beams = returned sequences (recipe: 8); beam 0 is kept."})
    max_new_tokens: int = field(default=75, metadata={"help": "Recipe: 75."})
    length_penalty: float = field(default=-1.0, metadata={"help": "Recipe: -1.0 (favours shorter beams)."})
    # images
    generate_images: bool = field(default=False, metadata={"help": "Render baseline and optimised images."})
    from_json: str | None = field(default=None, metadata={"help": "Pairs JSON to render from, skipping the LLM."})
    pipeline_name_or_path: str = field(
        default="stable-diffusion-v1-5/stable-diffusion-v1-5", metadata={"help": "Any diffusers text-to-image id."}
    )
    output_dir: str = field(default="promptist_out", metadata={"help": "Images, grid.png and pairs.json go here."})
    num_inference_steps: int = field(default=20, metadata={"help": "Denoising steps (the RL reward used 20)."})
    guidance_scale: float = field(default=7.5, metadata={"help": "Classifier-free guidance scale."})
    height: int = field(default=512, metadata={"help": "Image height in pixels."})
    width: int = field(default=512, metadata={"help": "Image width in pixels."})
    seed: int = field(default=0, metadata={"help": "Pair i uses seed + i for both of its images."})
    image_batch_size: int = field(default=4, metadata={"help": "Prompt pairs per pipeline call (2x images)."})
    enable_model_cpu_offload: bool = field(default=False, metadata={"help": "diffusers CPU offload for small GPUs."})
    score: bool = field(
        default=False, metadata={"help": "Evaluate the Promptist reward with score.py (implies images)."}
    )


def log(msg: str):
    print(msg, file=sys.stderr, flush=True)


def fail(msg: str):
    """A user error: one line on stderr, exit code 2, no traceback."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def pick_device(requested: str | None):
    import torch

    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def read_prompts(args: ScriptArguments, positional: list[str]) -> list[str]:
    """Positional prompts, then --prompt_file; raises ValueError with a one-line reason."""
    prompts = list(positional)
    if args.prompt_file:
        path = Path(args.prompt_file)
        if not path.is_file():
            raise ValueError(f"prompt file not found: {path}")
        text = path.read_text(encoding="utf-8")
        if path.suffix.lower() == ".json":
            data = json.loads(text or "[]")
            if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
                raise ValueError(f"{path}: expected a JSON list of strings")
            prompts += data
        else:
            prompts += [line for line in text.splitlines() if line.strip()]
        if len(prompts) == len(positional):
            raise ValueError(f"prompt file is empty: {path}")
    if any(not p.strip() for p in prompts):
        raise ValueError("empty prompt")
    return prompts


def read_pairs(path: str) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"pairs JSON not found: {p}")
    pairs = json.loads(p.read_text(encoding="utf-8"))
    if not pairs or not all(isinstance(r, dict) and {"original", "optimized"} <= set(r) for r in pairs):
        raise ValueError(f'{p}: expected a non-empty list of {{"original", "optimized"}} objects')
    return [{"original": r["original"], "optimized": r["optimized"]} for r in pairs]


def load_promptist(args: ScriptArguments, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    kwargs = {"dtype": torch.float16 if device.type == "cuda" else torch.float32}
    if args.load_in_8bit or args.load_in_4bit:
        if device.type == "cuda":  # bitsandbytes also "works" on CPU, silently and very slowly: refuse that
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit
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


def cuda_memory(device) -> float:
    import torch

    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def cuda_peak(device, phase: str):
    """Print and reset the peak allocated GPU memory of a phase (no-op off CUDA)."""
    import torch

    if device.type == "cuda":
        log(f"[{phase}] peak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
        torch.cuda.reset_peak_memory_stats(device)


def render(pairs: list[dict], args: ScriptArguments, device) -> list[tuple]:
    """Baseline and optimised image of each pair in one pipeline call per chunk, both with seed + pair index."""
    import torch
    from diffusers import AutoPipelineForText2Image
    from tqdm import tqdm

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = AutoPipelineForText2Image.from_pretrained(args.pipeline_name_or_path, dtype=dtype)
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None  # side-by-side comparisons need every image; the user may re-enable it in code
    if args.enable_model_cpu_offload:
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    images, n = [], len(pairs)
    for i in tqdm(range(0, n, args.image_batch_size), desc="rendering", unit="batch"):
        chunk = pairs[i : i + args.image_batch_size]
        seeds = [args.seed + i + j for j in range(len(chunk))]
        gens = [
            torch.Generator("cpu").manual_seed(s) for s in seeds + seeds
        ]  # baseline j and optimised j share a seed
        prompts = [p["original"] for p in chunk] + [p["optimized"] for p in chunk]
        out = pipe(
            prompt=prompts, generator=gens, num_inference_steps=args.num_inference_steps,
            guidance_scale=args.guidance_scale, height=args.height, width=args.width,
        ).images  # fmt: skip
        images += list(zip(out[: len(chunk)], out[len(chunk) :], strict=True))
    del pipe
    return images


def save_images(pairs: list[dict], images: list[tuple], out_dir: Path):
    """NNN_baseline.png, NNN_optimized.png and one captioned grid: a row per pair, baseline left, optimised right."""
    from PIL import Image, ImageDraw

    out_dir.mkdir(parents=True, exist_ok=True)
    w, h = images[0][0].size
    cap = 14 * 6 + 8  # six caption lines under each image
    grid = Image.new("RGB", (2 * w, len(images) * (h + cap)), "white")
    draw = ImageDraw.Draw(grid)
    chars = max(8, w // 7)
    for i, (pair, (base, opt)) in enumerate(zip(pairs, images, strict=True)):
        pair["baseline_image"], pair["optimized_image"] = f"{i:03d}_baseline.png", f"{i:03d}_optimized.png"
        base.save(out_dir / pair["baseline_image"])
        opt.save(out_dir / pair["optimized_image"])
        y = i * (h + cap)
        for col, (img, text) in enumerate(((base, pair["original"]), (opt, pair["optimized"]))):
            grid.paste(img, (col * w, y))
            lines = textwrap.wrap(text, chars)[:6]
            draw.multiline_text((col * w + 4, y + h + 4), "\n".join(lines), fill="black", spacing=2)
    grid.save(out_dir / "grid.png")
    log(f"saved {2 * len(images)} images and {out_dir / 'grid.png'}")


def promptist_scores(pairs: list[dict], images: list[tuple], device) -> None:
    """Adds aesthetic_baseline, aesthetic_optimized, clip_optimized and reward to each pair (LMOps reward, §5)."""
    import score

    aesthetic = score.load_scorer("aesthetic", device=device)
    clip = score.load_scorer("clip", device=device)
    originals = [p["original"] for p in pairs]
    aes_b = aesthetic([b for b, _ in images], originals)
    aes_o = aesthetic([o for _, o in images], originals)
    cos = clip([o for _, o in images], originals)  # relevance to the ORIGINAL text, as in the paper
    print(f"{'#':>3} {'aes base':>9} {'aes opt':>9} {'clip opt':>9} {'reward':>9}", file=sys.stderr)
    for i, p in enumerate(pairs):
        reward = aes_o[i] - aes_b[i] + min(20 * max(cos[i], 0.0) - 5.6, 0.0)
        p.update(aesthetic_baseline=aes_b[i], aesthetic_optimized=aes_o[i], clip_optimized=cos[i], reward=reward)
        print(f"{i:>3} {aes_b[i]:>9.4f} {aes_o[i]:>9.4f} {cos[i]:>9.4f} {reward:>9.4f}", file=sys.stderr)
    mean = sum(p["reward"] for p in pairs) / len(pairs)
    print(f"mean reward {mean:.4f} over {len(pairs)} prompts", file=sys.stderr)


def infer(args: ScriptArguments, prompts: list[str]):
    import torch

    device = pick_device(args.device)
    if args.from_json:
        pairs = read_pairs(args.from_json)
        log(f"loaded {len(pairs)} prompt pairs from {args.from_json} (no LLM)")
    else:
        model, tokenizer = load_promptist(args, device)
        pairs = [
            {"original": p, "optimized": o}
            for p, o in zip(prompts, optimize(model, tokenizer, prompts, args), strict=True)
        ]
        cuda_peak(device, "optimise")
        if args.output_json:
            Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.output_json).write_text(json.dumps(pairs, indent=2))
        if args.generate_images:  # phase 2: free the LLM so SD fits a small GPU
            before = cuda_memory(device)
            del model, tokenizer
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                log(f"freed {before - cuda_memory(device):.2f} GiB of GPU memory held by the LLM")
    if args.generate_images:
        images = render(pairs, args, device)
        cuda_peak(device, "render")
        out_dir = Path(args.output_dir)
        save_images(pairs, images, out_dir)
        if args.score:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            promptist_scores(pairs, images, device)
            cuda_peak(device, "score")
        (out_dir / "pairs.json").write_text(json.dumps(pairs, indent=2))
        log(f"wrote {out_dir / 'pairs.json'}")
    for p in pairs:  # stdout carries only the prompts: the last line is the (last) optimised prompt
        print(p["optimized"])


def main(argv=None):
    from trl import TrlParser

    parser = TrlParser((ScriptArguments,), allow_abbrev=False)
    args, positional = parser.parse_args_and_config(argv, return_remaining_strings=True)
    flags = [s for s in positional if s.startswith("-")]
    if flags:
        fail(f"unrecognised arguments: {' '.join(flags)}")
    args.generate_images = args.generate_images or args.score
    if args.load_in_8bit and args.load_in_4bit:
        fail("choose one of --load_in_8bit and --load_in_4bit")
    try:
        llm = () if args.from_json else ("model_name_or_path", "tokenizer_name_or_path")
        for name in (*llm, "pipeline_name_or_path") if args.generate_images else llm:
            value = getattr(args, name)
            if value.startswith((".", "/", "~")) and not Path(value).expanduser().exists():
                raise ValueError(f"--{name}: no such folder {value}")
        prompts = [] if args.from_json else read_prompts(args, positional)
        if args.from_json:
            read_pairs(args.from_json)
            if not args.generate_images:
                raise ValueError("--from_json only renders images: add --generate_images")
        elif not prompts:
            raise ValueError('no prompt given: python promptist_infer.py "a cat in the rain" (or --prompt_file)')
    except (ValueError, json.JSONDecodeError) as e:
        fail(str(e))
    try:
        infer(args, prompts)
    except OSError as e:  # unknown hub id: transformers and diffusers raise OSError with a page of advice
        fail(f"could not load a model: {str(e).splitlines()[0]}")


if __name__ == "__main__":
    main()
