# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.40", "trl>=1.16", "peft>=0.17", "accelerate>=1.10",
#                 "openai>=1.60", "pydantic>=2.0", "datasets>=3.0", "open_clip_torch>=3.0", "pillow>=10.0"]
# ///
"""R1-style GRPO reprompter: an LLM thinks, then writes an image prompt; a diffusion pipeline renders it; rewards.

README section: "r1_prompter.py". Method: RePrompt (first released as R1-Prompter), Wu et al., "RePrompt:
Reasoning-Augmented Reprompting for Text-to-Image Generation via Reinforcement Learning", arXiv 2505.17540; code
microsoft/DKI_LLM/RePrompt (train_reprompt.py, configs/qwen25-3b-full-sft.yaml). A Qwen2.5 instruct model reasons
inside <think>...</think> and puts a rewritten prompt inside <answer>...</answer>; one image per completion is rendered
and scored against the ORIGINAL user prompt (ImageReward, optionally a VLM judge), plus a format reward and an
answer-length window; GRPO (num_generations=4 per prompt) updates the LLM. RePrompt first fine-tunes the LLM on ~8k
teacher-written (reasoning, prompt) pairs (`--stage sft`; make such data with `--make_sft_data`): without that cold
start a small instruct model rarely writes the tags, every group has zero advantage and GRPO cannot start.
Paper result (GenEval overall, FLUX.1-dev): 0.66 plain, 0.68 with Qwen2.5-3B rewriting, 0.76 with RePrompt.

Differences from the paper / reference code:
1. Training and inference build the chat prompt with one function (system + user, generation prompt on); upstream
   trains with an assistant prefill but evaluates with a closed assistant turn, a train/inference mismatch.
2. Format: exactly one <think> then one non-empty <answer>, no tag inside either body, multi-line bodies allowed
   (upstream's regex has no DOTALL: every multi-line answer scored -1 and was rendered as "a photo"). A malformed
   completion is rendered from the original prompt and has 0 answer words (length -1).
3. All completions of a step are rendered in batched pipeline calls with one seed per prompt group (the group's
   members differ only by their prompt); upstream renders one unseeded image at a time.
4. The judge is any OpenAI-compatible VLM with structured output. A failed call is neutral: it takes the mean judge
   score of its group's successful calls, so it moves no advantage (upstream returned 0 = a score of 5/10, silently,
   for every sample under openai>=1.0). `judge/failures` counts failures over all processes.
5. Reward weights: image 1.0 (ImageReward, standard normalisation), format 1.0, length 1.0, judge 0.5 when enabled;
   upstream summed 0.25*ImageReward + 0.5*(s-5)/5 + format + length. Set `--reward_weights` to change them.
6. GRPO settings follow upstream's effective run (num_generations 4, lr 2e-6, grad-accum 2, 3 epochs, temperature 0.9,
   256 completion tokens, beta 0.04) on TRL's current loss (`loss_type` default); upstream vendored trl 0.16. SFT
   follows qwen25-3b-full-sft.yaml (full, lr 1e-5, 1 epoch, cosine, warmup 0.1, 1024 tokens, 4 x 4 per GPU) with TRL's
   SFTTrainer (loss on the completion only, as LLaMA-Factory's default) and without its 10% validation split.
7. The policy loads in fp32 (bf16 autocast) unless DeepSpeed holds fp32 master weights or the base is quantized and
   frozen (QLoRA: bf16 weights and 4-bit compute): an Adam step of lr 2e-6 is far below bf16's 2^-8 relative
   resolution, so pure-bf16 trained weights would not move.

Usage (run from the repository root). Full runs: 8 x 80 GB GPUs, DeepSpeed ZeRO-2 like upstream's rl_ds2.yaml (per-GPU
memory: README, computed by benchmarks/memory.py). recipes/r1_prompts.txt is a 40-prompt demo set; the recipes read
RePrompt's 1,108 training prompts, fetched once:
    curl -L --create-dirs -o data/generation_prompts_1k_filterd.txt \\
        https://raw.githubusercontent.com/microsoft/DKI_LLM/2922f37614eddd31a895797149aaa73fd31e937e/RePrompt/data/generation_prompts_1k_filterd.txt
    # 0. cold-start data from any OpenAI-compatible LLM (key from OPENAI_API_KEY), 8 samples per prompt (<= 8,864
    #    records; upstream ~8k); keeps what passes format + length, appending each record as it arrives
    python r1_prompter.py --make_sft_data runs/r1_sft.jsonl --data data/generation_prompts_1k_filterd.txt \\
        --teacher_model gpt-4o --teacher_samples 8
    # 1. SFT (RePrompt stage 1; recipes/r1_sft.yaml = qwen25-3b-full-sft.yaml): <= 8,864 records, <= 70 steps
    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 r1_prompter.py --config recipes/r1_sft.yaml
    # 2. GRPO from the SFT model (recipes/r1_prompter.yaml = upstream's run: 34 steps per epoch, 102 in all); a judge:
    #    --judge_model gpt-4o
    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 \\
        r1_prompter.py --config recipes/r1_prompter.yaml --gpt_path runs/r1_sft
    #    with vLLM generation (optional: pip install vllm; TRL supports 0.22-0.31) on the training GPUs: append
    #    --use_vllm true --vllm_mode colocate --vllm_gpu_memory_utilization 0.15 (computed: the recipe needs 54.9 GiB
    #    per GPU, so TRL's default 0.3 x 79.6 = 23.9 GiB makes 78.8 > 71.6 GiB = 90 %; 0.15 -> 11.9 GiB, 66.8 GiB in
    #    all, of which Qwen2.5-3B's bf16 weights take 5.7 and its KV cache 36 KiB per token); or serve the policy on
    #    GPU 0 and train on GPUs 1-7:
    CUDA_VISIBLE_DEVICES=0 trl vllm-serve --model runs/r1_sft
    CUDA_VISIBLE_DEVICES=1,2,3,4,5,6,7 accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 7 \\
        r1_prompter.py --config recipes/r1_prompter.yaml --gpt_path runs/r1_sft --use_vllm true --vllm_mode server
    # inference on a laptop or CPU (no accelerate): the reasoning, then one final prompt per line; several PNGs: out_i.png.
    # SD1.5 (1.07 B parameters: 2.0 GiB in bf16 on CUDA / MPS, 4.0 GiB fp32 on a CPU); the default FLUX.1-dev has 16.9 B
    # (31.4 GiB bf16, 62.8 GiB fp32; computed from benchmarks/memory.py's counts), Qwen2.5-3B 5.7 / 11.5 GiB
    python r1_prompter.py "a red cube on top of a blue sphere" --gpt_path runs/r1 \\
        --sdmodel_name stable-diffusion-v1-5/stable-diffusion-v1-5 --generate_image out.png
    # evaluation: original vs reprompted images with the same seeds, scored with score.py (eval.json grows per prompt)
    python r1_prompter.py --eval_prompts recipes/r1_prompts.txt --gpt_path runs/r1 --outdir runs/r1_eval --n_images 4
    # CPU smoke run (2 steps, 64 px; no device flags: without CUDA the script picks the CPU and fp32 itself)
    accelerate launch --cpu --num_processes 1 r1_prompter.py --config recipes/r1_prompter_smoke.yaml \\
        --gpt_path <small chat LLM> --sdmodel_name <small t2i pipeline> --outdir runs/r1_smoke
Expected: format reward near +1 from the start after SFT; image reward rises slowly (paper: GenEval +0.08).
Measured here only on tiny random models on CPU (no GPU was available to this project).
"""

import asyncio
import base64
import functools
import importlib.util
import inspect
import io
import json
import logging
import math
import os
import re
import sys
import textwrap
import time
import warnings
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path

# bitsandbytes (imported by peft) logs a CPU-kernel failure on import on CPUs with AVX512-BF16; it is harmless here
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# transformers >= 5.24 renames TrainingArguments.gradient_checkpointing; TRL's configs still set it (not the user)
warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)

SYSTEM_PROMPT = (
    "You rewrite short requests for a text-to-image model into one precise, vivid image prompt. First think about "
    "what the request literally asks for: every object, how many of each, their colours, attributes and positions "
    "relative to each other; then about style, lighting, background and composition that would make the picture "
    "clear without changing its content. Write that reasoning inside <think> </think>, then give only the final image "
    "prompt inside <answer> </answer>."
)
TEACHER_NOTE = (
    " Reply with exactly <think>reasoning</think> then <answer>prompt</answer>; the prompt has {} to {} words."
)
FORMAT_RE = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)
TAGS = ("<think>", "</think>", "<answer>", "</answer>")
JUDGE_SYSTEM = (
    "You grade images made by a text-to-image model. Judge first whether the image shows what the prompt asks for: the "
    "right objects, counts, colours, attributes and spatial relations; then how natural and well made it is."
)
MODEL_FILES = ("config.json", "adapter_config.json")


@dataclass
class ScriptArguments:
    # data and models (upstream CLI names)
    data: str | None = field(default=None, metadata={"help": "Prompts (.txt/.json/.jsonl/dataset id); SFT: .jsonl."})
    gpt_path: str | None = field(default=None, metadata={"help": "Policy LLM (hub id or folder)."})
    sdmodel_name: str = field(default="black-forest-labs/FLUX.1-dev", metadata={"help": "Text-to-image pipeline."})
    outdir: str | None = field(default=None, metadata={"help": "Output folder (training: the trainer's output_dir)."})
    stage: str = field(default="grpo", metadata={"help": "grpo (RL) or sft (RePrompt's cold start on teacher data)."})
    # rewards
    image_metrics: str = field(
        default="imagereward", metadata={"help": 'score.py metrics, e.g. "imagereward:1,hpsv2:1".'}
    )
    image_batch_size: int = field(default=8, metadata={"help": "Images per pipeline call (>= 1)."})
    num_inference_steps: int = field(default=50, metadata={"help": "Denoising steps (upstream FLUX: 50)."})
    guidance_scale: float = field(default=3.5, metadata={"help": "Guidance (upstream FLUX: 3.5)."})
    height: int = field(default=512, metadata={"help": "Image height in px (upstream: 512)."})
    width: int = field(default=512, metadata={"help": "Image width in px (upstream: 512)."})
    pipeline_cpu_offload: bool = field(default=False, metadata={"help": "diffusers model CPU offload (CUDA)."})
    min_words: int = field(default=16, metadata={"help": "Length reward: +1 for min_words..max_words answer words."})
    max_words: int = field(default=76, metadata={"help": "Length reward upper bound (inclusive; upstream: < 77)."})
    log_images_every: int = field(default=10, metadata={"help": "Save a captioned grid every N steps (0: never)."})
    judge_model: str | None = field(default=None, metadata={"help": "VLM judge model name; enables the judge reward."})
    judge_base_url: str | None = field(default=None, metadata={"help": "Judge's OpenAI-compatible URL (or OpenAI)."})
    judge_retries: int = field(default=3, metadata={"help": "Retries per judge/teacher call (exponential backoff)."})
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per judge/teacher call."})
    # SFT cold start
    make_sft_data: str | None = field(default=None, metadata={"help": "Write teacher SFT data to this .jsonl; exit."})
    teacher_model: str | None = field(default=None, metadata={"help": "Teacher LLM for --make_sft_data."})
    teacher_base_url: str | None = field(default=None, metadata={"help": "Teacher's OpenAI-compatible URL."})
    teacher_samples: int = field(default=8, metadata={"help": "Teacher calls per prompt (upstream ~8k for 1,108)."})
    # inference and evaluation
    eval_prompts: str | None = field(default=None, metadata={"help": "Evaluate: original vs reprompted prompts."})
    n_images: int = field(default=4, metadata={"help": "Evaluation images per prompt (same seeds for both; >= 1)."})
    generate_image: str | None = field(default=None, metadata={"help": "Inference: PNG to render (several: NAME_i)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Inference: greedy decoding budget (upstream: 512)."})
    image_seed: int = field(default=42, metadata={"help": "Inference/evaluation seed (eval image i: image_seed + i)."})


def is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"  # launched processes (torchrun sets RANK): only rank 0 prints


def fail(msg: str):
    if is_main():
        print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)  # every rank exits, before any collective


def build_messages(prompt: str) -> list[dict]:
    """The one chat prompt used by SFT, GRPO and inference alike."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt.strip()}]


def completion_text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def parse_completion(text: str) -> tuple[str, str] | None:
    """(reasoning, answer), whitespace-normalised, of a well-formed completion, else None. Well-formed: nothing but
    whitespace around exactly one <think>...</think> followed by one <answer>...</answer>, both bodies non-empty and
    free of those four tags (so two answers, or an answer nested in the reasoning, do not pass)."""
    m = FORMAT_RE.fullmatch(text)
    if m is None:
        return None
    think, answer = (" ".join(body.split()) for body in m.groups())
    if not think or not answer or any(tag in body for body in (think, answer) for tag in TAGS):
        return None
    return think, answer


def extract_answer(text: str) -> str | None:
    parsed = parse_completion(text)
    return parsed[1] if parsed else None


########################
# Rewards (TRL contract: f(prompts, completions, **kwargs) -> list[float | None])
########################
def format_reward(completions, **kwargs) -> list[float]:
    """+1 for a well-formed completion (parse_completion), else -1."""
    return [1.0 if parse_completion(completion_text(c)) else -1.0 for c in completions]


def get_length_reward(min_words: int = 16, max_words: int = 76):
    def length_reward(completions, **kwargs) -> list[float]:
        """+1 if the answer has min_words..max_words words, else -1 (a malformed completion has 0 words)."""
        answers = [extract_answer(completion_text(c)) or "" for c in completions]
        return [1.0 if min_words <= len(a.split()) <= max_words else -1.0 for a in answers]

    return length_reward


def group_seed(seed: int, step: int, original: str) -> int:
    """Seed shared by every completion of one prompt at one step, on every rank (never from the rank)."""
    return zlib.crc32(f"{seed}|{step}|{original}".encode())


def text_limit(pipe) -> tuple[object, int] | None:
    """(tokenizer, tokens) of the text encoder that reads the prompt furthest, i.e. where it is finally cut: a T5-style
    encoder at the pipeline's max_sequence_length (FLUX 512, SD3 256, PixArt-Sigma 300), else CLIP's 77."""
    msl = inspect.signature(pipe.__call__).parameters.get("max_sequence_length")
    best = None
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        tok = getattr(pipe, name, None)
        if tok is not None:
            clip = type(tok).__name__.startswith("CLIP") or msl is None
            limit = tok.model_max_length if clip else msl.default
            best = best if best is not None and best[1] >= limit else (tok, limit)
    return best


def render(pipe, prompts: list[str], seeds: list[int], args: ScriptArguments) -> list:
    """Images for `prompts` in batched pipeline calls; image i uses torch.Generator seeded with seeds[i]."""
    import torch

    tok, limit = text_limit(pipe) or (None, 0)
    if tok is not None and not render.warned and any(len(tok(p)["input_ids"]) > limit for p in prompts):
        if is_main():
            print(f"warning: a prompt exceeds the text encoder's {limit} tokens; the pipeline truncates it", file=sys.stderr)  # fmt: skip
        render.warned = True  # once
    images = []
    for i in range(0, len(prompts), args.image_batch_size):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + args.image_batch_size]]
        with torch.no_grad():
            images += pipe(
                prompt=prompts[i : i + args.image_batch_size], generator=gens, height=args.height, width=args.width,
                num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
            ).images  # fmt: skip
    return images


render.warned = False


def save_grid(path: Path, rows: list[list], captions: list[list[str]]):
    """A captioned grid: rows of equally sized images, each with up to 6 wrapped caption lines underneath."""
    from PIL import Image, ImageDraw

    w, h = rows[0][0].size
    cap = 14 * 6 + 8
    grid = Image.new("RGB", (w * max(map(len, rows)), len(rows) * (h + cap)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (images, texts) in enumerate(zip(rows, captions, strict=True)):
        for c, (img, text) in enumerate(zip(images, texts, strict=True)):
            grid.paste(img, (c * w, r * (h + cap)))
            draw.multiline_text(
                (c * w + 4, r * (h + cap) + h + 4), "\n".join(textwrap.wrap(text, max(8, w // 7))[:6]), fill="black"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def get_image_reward(
    pipe, scorer, args: ScriptArguments, seed: int, num_generations: int, output_dir: str, cache: dict
):
    """Renders this rank's completions (answer, or the original prompt when malformed) and scores them vs the original.
    The main process appends every rank's rows to <output_dir>/traces.jsonl and saves the grids."""

    def image_reward(prompts, completions, original_prompt, trainer_state=None, log_metric=None, **kwargs):
        from accelerate import PartialState
        from accelerate.utils import gather_object

        state = PartialState()
        step = trainer_state.global_step if trainer_state is not None else 0
        answers = [extract_answer(completion_text(c)) for c in completions]
        seeds = [group_seed(seed, step, o) for o in original_prompt]
        t0 = time.perf_counter()
        images = render(pipe, [a or o for a, o in zip(answers, original_prompt, strict=True)], seeds, args)
        t1 = time.perf_counter()
        total, details = scorer(images, original_prompt)
        cache.update(images=images, originals=list(original_prompt))  # the judge reads these
        rows = [
            {"step": step, "rank": state.process_index, "seed": s, "prompt": o, "answer": a, "image_reward": t,
             **{name: vals[i] for name, vals in details.items()}}
            for i, (s, o, a, t) in enumerate(zip(seeds, original_prompt, answers, total, strict=True))
        ]  # fmt: skip
        # Collectives on every rank at every call (never on an error path): rows and the grid's first two groups
        rows = gather_object(rows)
        grid = bool(args.log_images_every) and step % args.log_images_every == 0
        shown = (
            gather_object(images[: max(0, 2 * num_generations - state.process_index * len(images))]) if grid else []
        )
        if log_metric is not None:
            for name, vals in details.items():
                log_metric(f"image/{name}", sum(vals) / len(vals))
            log_metric("image/no_answer_frac", sum(a is None for a in answers) / len(answers))
            log_metric("time/render_s", t1 - t0)
            log_metric("time/score_s", time.perf_counter() - t1)
        if state.is_main_process:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(output_dir) / "traces.jsonl", "a", encoding="utf-8") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            if shown:
                captions = [
                    [f"{r['prompt']}\n-> {r['answer'] or '(no answer)'}\nreward {r['image_reward']:.3f}"] for r in rows
                ]
                save_grid(Path(output_dir) / "grids" / f"step{step:06d}.png", [[im] for im in shown], captions[: len(shown)])  # fmt: skip
        return total

    return image_reward


@functools.cache
def judge_schema():
    """Pydantic schema of the judge's structured answer (built lazily so importing this script stays cheap)."""
    from pydantic import BaseModel, Field

    class ImageScore(BaseModel):
        reasoning: str
        score: int = Field(ge=0, le=10)

    return ImageScore


def png_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def ask(client, request: dict, parse, retries: int, who: str):
    """parse(reply text) of one chat request; API errors, timeouts and parse errors are retried with exponential
    backoff; None (with one warning) once every try failed."""
    for attempt in range(retries + 1):
        try:
            res = await client.chat.completions.create(**request)
            return parse(res.choices[0].message.content)
        except Exception as e:  # openai.APIError, timeouts, pydantic.ValidationError
            if attempt == retries:
                print(f"warning: {who} failed after {retries + 1} tries: {type(e).__name__}: {str(e)[:120]}", file=sys.stderr)  # fmt: skip
                return None
            await asyncio.sleep(0.5 * 2**attempt)


async def judge_one(client, model: str, image, prompt: str, retries: int) -> float | None:
    """(s - 5) / 5 for the judge's 0-10 score, or None once every retry failed."""
    schema = judge_schema()
    text = f"Prompt: {prompt}\nRate from 0 (unrelated or broken) to 10 (perfect match, well made)."
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": png_data_url(image), "detail": "low"}}]  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "image_score", "schema": schema.model_json_schema()}}
    request = dict(model=model, messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}], response_format=fmt)  # fmt: skip
    return await ask(client, request, lambda c: (schema.model_validate_json(c).score - 5) / 5, retries, "judge")


def get_judge_reward(args: ScriptArguments, cache: dict, num_generations: int):
    def judge_reward(prompts, completions, log_metric=None, log_extra=None, **kwargs) -> list[float | None]:
        """VLM judge of the images image_reward rendered, vs the original prompt: (s-5)/5 in [-1, 1]. A failed call
        takes the mean of its group's successful calls (groups may span ranks, hence the gather), so that neither
        its own advantage nor its group's moves; None only if the whole group failed (then equal, still neutral)."""
        from accelerate import PartialState
        from accelerate.utils import gather_object
        from openai import AsyncOpenAI

        async def run():
            async with AsyncOpenAI(base_url=args.judge_base_url, max_retries=0, timeout=args.judge_timeout) as client:
                jobs = [judge_one(client, args.judge_model, im, p, args.judge_retries) for im, p in zip(cache["images"], cache["originals"], strict=True)]  # fmt: skip
                return list(await asyncio.gather(*jobs))

        scores = asyncio.run(run())
        everyone = gather_object(scores)  # rank order = TRL's reward gather, whose groups are num_generations rows
        filled = []
        for i in range(0, len(everyone), num_generations):
            ok = [s for s in everyone[i : i + num_generations] if s is not None]
            filled += [s if s is not None or not ok else sum(ok) / len(ok) for s in everyone[i : i + num_generations]]
        if log_metric is not None:  # the global count on every rank: TRL's log_metric averages over ranks
            log_metric("judge/failures", float(sum(s is None for s in everyone)))
        if log_extra is not None:
            log_extra("judge_raw", scores)
        rank = PartialState().process_index
        return filled[rank * len(scores) : (rank + 1) * len(scores)]

    return judge_reward


########################
# Plumbing: data, checks that need no weights, loading
########################
def json_record(text: str, pos: int) -> int:
    """1-based record (element of the top-level list, or of {"prompt": [...]}) that text[pos] lies in."""
    head = re.sub(r'"(?:[^"\\]|\\.)*"?', '""', text[:pos])  # strings emptied: they may hold , [ ] { }
    depth, record, top = 0, 1, 1 if head.lstrip().startswith("[") else 2
    for ch in head:
        depth += (ch in "[{") - (ch in "]}")
        record += ch == "," and depth == top
    return record


def read_records(path: str) -> list:
    """Rows of a .txt (lines), .json (a list, or {"prompt": [...]}) or .jsonl (None for blank lines) file."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"data file not found: {path}")
    text, rows, n = p.read_text(encoding="utf-8"), [], 0
    try:
        if p.suffix == ".jsonl":
            for n, line in enumerate(text.splitlines(), 1):  # noqa: B007 (n: named in the error below)
                rows.append(json.loads(line) if line.strip() else None)
        elif p.suffix == ".json":
            rows = json.loads(text or "[]")
        else:
            return text.splitlines()
    except json.JSONDecodeError as e:
        n = n if p.suffix == ".jsonl" else f"{json_record(text, e.pos)} (line {e.lineno} column {e.colno})"
        raise ValueError(f"{path}: record {n}: invalid JSON ({e.msg})") from None
    rows = rows["prompt"] if isinstance(rows, dict) and isinstance(rows.get("prompt"), list) else rows
    if not isinstance(rows, list):
        raise ValueError(f'{path}: expected a JSON list of records or {{"prompt": [...]}}')
    return rows


def read_prompts(path: str) -> list[str]:
    """Prompts of a data file (strings, or objects with a string `prompt`), or of a hub dataset's `prompt` column."""
    p = Path(path)
    if p.suffix not in (".txt", ".json", ".jsonl") and not p.exists():
        from datasets import load_dataset

        rows = load_dataset(path, split="train")["prompt"]
    else:
        rows = read_records(path)
    prompts = []
    for i, r in enumerate(rows, 1):
        q = r.get("prompt") if isinstance(r, dict) else r
        if r is not None and not isinstance(q, str):
            raise ValueError(f"{path}: record {i}: expected a string prompt (or an object with one), got {json.dumps(r)[:60]}")  # fmt: skip
        prompts += [q.strip()] if q and q.strip() else []
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def read_sft_records(path: str, args: ScriptArguments) -> list[dict]:
    """{"prompt", "completion"} records whose completion passes the format and length rewards (--make_sft_data's)."""
    records = []
    for i, r in enumerate(read_records(path), 1):
        if r is None:
            continue
        if not (isinstance(r, dict) and isinstance(r.get("prompt"), str) and isinstance(r.get("completion"), str)):
            raise ValueError(f'{path}: record {i}: expected {{"prompt": str, "completion": str}}')
        if get_length_reward(args.min_words, args.max_words)([r["completion"]]) != [1.0]:
            raise ValueError(f"{path}: record {i}: completion fails the format or length reward")
        records.append(r)
    if not records:
        raise ValueError(f"no records in {path}")
    return records


def check_model_path(path: str, what: str, markers=MODEL_FILES):
    """A folder must hold a model; a missing path that looks local is an error; anything else may be a hub id."""
    p = Path(path).expanduser()
    if p.exists() and not any((p / m).is_file() for m in markers):
        raise ValueError(f"{what} {path} is not a model folder (no {' or '.join(markers)})")
    if not p.exists() and path.startswith(("/", "./", "../", "~")):
        raise ValueError(f"{what}: no such folder: {path}")


def check_text2image(name: str):
    """A pipeline that is not text-to-image is refused from its model_index.json (no weights load)."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    check_model_path(name, "--sdmodel_name", ("model_index.json",))
    cls = DiffusionPipeline.load_config(name)["_class_name"]
    if cls not in {c.__name__ for c in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}:
        raise ValueError(f"--sdmodel_name {name} is a {cls}, not a text-to-image pipeline")


def check_args(args: ScriptArguments, mode: str):
    """Every check that needs no weights; mode: grpo, sft, make_sft_data, eval or infer. Raises ValueError."""
    lows = dict(image_batch_size=1, num_inference_steps=1, height=8, width=8, min_words=1, n_images=1,
                max_new_tokens=1, judge_retries=0, log_images_every=0, teacher_samples=1)  # fmt: skip
    for name, low in lows.items():
        if getattr(args, name) < low:
            raise ValueError(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if args.max_words < args.min_words or args.judge_timeout <= 0:
        raise ValueError("need --max_words >= --min_words and --judge_timeout > 0")
    if args.stage not in ("grpo", "sft"):
        raise ValueError(f"unknown --stage {args.stage!r}: grpo or sft")
    if mode != "make_sft_data":
        if not args.gpt_path:
            raise ValueError("give the policy / reprompter with --gpt_path")
        check_model_path(args.gpt_path, "--gpt_path")
        adapter = Path(args.gpt_path).expanduser() / "adapter_config.json"
        if mode in ("grpo", "sft") and adapter.is_file() and not adapter.with_name("config.json").is_file():
            raise ValueError(f"--gpt_path {args.gpt_path} is a LoRA adapter: merge it first (peft merge_and_unload)")
    if mode in ("grpo", "sft", "make_sft_data") and not args.data:
        raise ValueError("give the data with --data")
    if mode == "make_sft_data" and not args.teacher_model:
        raise ValueError("--make_sft_data needs --teacher_model")
    if mode == "make_sft_data" and Path(args.make_sft_data).exists():  # records are appended as the teacher answers
        raise ValueError(f"--make_sft_data {args.make_sft_data} exists: choose a new file")
    if mode in ("grpo", "eval"):
        import score

        score.parse_metric_weights(args.image_metrics)
    if ((mode == "grpo" and args.judge_model) or mode == "make_sft_data") and not os.environ.get("OPENAI_API_KEY"):
        raise ValueError("the judge/teacher needs OPENAI_API_KEY in the environment (any value for a local server)")
    if mode in ("grpo", "eval") or (mode == "infer" and args.generate_image):
        check_text2image(args.sdmodel_name)


def optimizer_steps(rows: int, ta, sft: bool) -> int:
    """The run's optimizer steps as transformers' Trainer counts them (set_initial_training_values) on TRL's loaders:
    SFT batches every record; GRPO's RepeatSampler keeps only whole generation batches of generation_batch_size / g
    prompts, each read in steps_per_generation x num_iterations micro-batches."""
    if sft:
        batches = math.ceil(rows / (ta.per_device_train_batch_size * ta.world_size))
    else:  # whole generation batches only
        batches = rows // (ta.generation_batch_size // ta.num_generations)
        batches *= ta.steps_per_generation * ta.num_iterations
    if ta.max_steps > 0 and batches:
        return ta.max_steps
    return math.ceil(ta.num_train_epochs * math.ceil(batches / ta.gradient_accumulation_steps))


def model_init_kwargs(model_args, training_args) -> dict:
    """ModelConfig -> from_pretrained kwargs (TRL passes these to the policy and the reference model). trl 1.16 has no
    get_kbit_device_map: TRL picks the device map itself ("auto" on one GPU, the rank's GPU when distributed)."""
    from trl import get_quantization_config

    if model_args.dtype is None:  # see docstring item 7; DeepSpeed keeps fp32 master weights and optimizer state
        deepspeed = training_args.distributed_state.distributed_type == "DEEPSPEED"
        frozen = model_args.load_in_4bit or model_args.load_in_8bit  # also get_quantization_config's compute dtype
        model_args.dtype = "bfloat16" if training_args.bf16 and (deepspeed or frozen) else "float32"
    kwargs = dict(revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
                  dtype=model_args.dtype, trust_remote_code=training_args.trust_remote_code)  # fmt: skip
    if (quant := get_quantization_config(model_args)) is not None:
        kwargs["quantization_config"] = quant
    return {**kwargs, **(training_args.model_init_kwargs or {})}


def load_pipeline(args: ScriptArguments, device):
    import torch
    from diffusers import DiffusionPipeline

    dtype = torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32  # MPS bf16: macOS 14+
    pipe = DiffusionPipeline.from_pretrained(args.sdmodel_name, dtype=dtype)  # `dtype=`: diffusers >= 0.40
    if getattr(pipe, "safety_checker", None) is not None:
        pipe.safety_checker = None
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    if args.pipeline_cpu_offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def pick_device():
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


def reprompt(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
    """Greedy completions for a batch of prompts, built exactly as in training (build_messages + generation prompt)."""
    import torch

    texts = [
        tokenizer.apply_chat_template(build_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts
    ]
    tokenizer.padding_side = "left"
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad)
    return tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)


def load_llm(path: str, device):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type in ("cuda", "mps") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(path)


def make_sft_data(args: ScriptArguments):
    """RePrompt's SFT data (its GPT-4 set is not public): the teacher answers each --data prompt --teacher_samples
    times in the policy's own chat format; an answer that passes the format and length rewards is appended (and
    flushed) as it arrives, so an interrupted run keeps every record it paid for."""
    from openai import AsyncOpenAI

    prompts = read_prompts(args.data)
    note = TEACHER_NOTE.format(args.min_words, args.max_words)
    messages = lambda p: [{**build_messages(p)[0], "content": SYSTEM_PROMPT + note}, build_messages(p)[1]]  # noqa: E731
    length, counts = get_length_reward(args.min_words, args.max_words), dict(kept=0, failed=0, malformed=0, length=0)
    out = Path(args.make_sft_data)
    out.parent.mkdir(parents=True, exist_ok=True)

    async def run(f):
        limit = asyncio.Semaphore(16)  # concurrent requests

        async def one(client, p):
            async with limit:
                r = await ask(client, dict(model=args.teacher_model, messages=messages(p)), str.strip, args.judge_retries, "teacher")  # fmt: skip
            kind = "failed" if r is None else "malformed" if not parse_completion(r) else "length" if length([r]) != [1.0] else "kept"  # fmt: skip
            counts[kind] += 1
            if kind == "kept":
                f.write(json.dumps({"prompt": p, "completion": r}) + "\n")
                f.flush()

        async with AsyncOpenAI(base_url=args.teacher_base_url, max_retries=0, timeout=args.judge_timeout) as client:
            await asyncio.gather(*(one(client, p) for p in prompts for _ in range(args.teacher_samples)))

    with open(out, "x", encoding="utf-8") as f:  # before any call: a bad path costs nothing
        asyncio.run(run(f))
    print(f"kept {counts['kept']} of {sum(counts.values())} ({counts['failed']} calls failed, {counts['malformed']} malformed, "
          f"{counts['length']} outside {args.min_words}-{args.max_words} words) -> {out}")  # fmt: skip


########################
# Training (--stage grpo, or sft: RePrompt's cold start)
########################
def train(script_args: ScriptArguments, training_args, model_args):
    from accelerate import PartialState
    from datasets import Dataset
    from trl import GRPOTrainer, SFTTrainer, get_peft_config

    import score

    model_args.model_name_or_path = script_args.gpt_path = script_args.gpt_path or model_args.model_name_or_path
    training_args.output_dir = script_args.outdir or training_args.output_dir
    sft = script_args.stage == "sft"
    try:  # every user error before any weights load
        check_args(script_args, script_args.stage)
        if (model_args.load_in_4bit or model_args.load_in_8bit) and not model_args.use_peft:
            raise ValueError("--load_in_4bit/--load_in_8bit train LoRA adapters: add --use_peft true")
        if getattr(training_args, "use_vllm", False) and not importlib.util.find_spec("vllm"):
            raise ValueError("--use_vllm needs vLLM (optional): pip install vllm (TRL supports 0.22-0.31)")
        data = read_sft_records(script_args.data, script_args) if sft else read_prompts(script_args.data)
        steps = optimizer_steps(len(data), training_args, sft)
        if steps <= (warm := training_args.get_warmup_steps(steps)):  # e.g. 1 step with warmup: it runs at lr 0
            raise ValueError(f"{len(data)} {'records' if sft else 'prompts'} make {steps} optimizer step(s), {warm} of "
                             "them warmup, none at the full learning rate: add data (--teacher_samples), lower the "
                             "batch or --warmup_steps")  # fmt: skip
    except (ValueError, OSError, KeyError) as e:
        fail(str(e).splitlines()[0])
    if (note := device_defaults()[1]) and PartialState().is_main_process:
        print(f"note: {note}", file=sys.stderr)

    ################
    # Model
    ################
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    peft_config = get_peft_config(model_args)

    ################
    # Dataset
    ################
    if sft:  # conversational prompt/completion: SFTTrainer puts the loss on the completion (+ EOS) only
        rows = [{"prompt": build_messages(r["prompt"]), "completion": [{"role": "assistant", "content": r["completion"]}]} for r in data]  # fmt: skip
        trainer = SFTTrainer(model=model_args.model_name_or_path, args=training_args, train_dataset=Dataset.from_list(rows), peft_config=peft_config)  # fmt: skip
    else:
        dataset = Dataset.from_dict({"prompt": [build_messages(p) for p in data], "original_prompt": data})

        ################
        # Reward
        ################
        device = PartialState().device
        pipe = load_pipeline(script_args, device)
        scorer = score.MultiScorer(score.parse_metric_weights(script_args.image_metrics), device=device)
        cache, g = {}, training_args.num_generations  # cache: the step's images, read by the judge after rendering
        reward_funcs = [
            format_reward,
            get_length_reward(script_args.min_words, script_args.max_words),
            get_image_reward(pipe, scorer, script_args, training_args.seed, g, training_args.output_dir, cache),
        ]
        if script_args.judge_model:
            reward_funcs.append(get_judge_reward(script_args, cache, g))
        if training_args.reward_weights is None:
            training_args.reward_weights = [1.0, 1.0, 1.0, 0.5][: len(reward_funcs)]

        ################
        # Trainer
        ################
        trainer = GRPOTrainer(
            model=model_args.model_name_or_path, reward_funcs=reward_funcs, args=training_args, train_dataset=dataset,
            peft_config=peft_config,
        )  # fmt: skip
    if trainer.accelerator.is_main_process:
        n = trainer.accelerator.num_processes
        per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * n
        what = f"{len(data)} SFT records; {per_step}" if sft else f"{len(data)} prompts; {per_step} completions = {per_step // g} prompts x {g}"  # fmt: skip
        print(f"{what} per optimizer step on {n} process(es), {steps} steps; policy dtype {model_args.dtype}")
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except KeyboardInterrupt:  # keep what was learned: save before exiting
        trainer.save_model(str(Path(training_args.output_dir) / "interrupted"))
        raise

    ################
    # Save
    ################
    trainer.save_model(training_args.output_dir)


########################
# Inference and evaluation (no GRPOConfig, no accelerate: runs on a laptop or a CPU)
########################
def infer(args: ScriptArguments, prompts: list[str]):
    device = pick_device()
    model, tokenizer = load_llm(args.gpt_path, device)
    finals = []
    for prompt, completion in zip(prompts, reprompt(model, tokenizer, prompts, args.max_new_tokens), strict=True):
        parsed = parse_completion(completion)
        print(f"reasoning: {parsed[0] if parsed else ' '.join(completion.split())}")
        finals.append(parsed[1] if parsed else prompt.strip())  # malformed: keep the user's prompt
    if args.generate_image:
        del model
        out = Path(args.generate_image)
        paths = [out] if len(finals) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(finals))]  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, image in zip(paths, render(load_pipeline(args, device), finals, [args.image_seed] * len(finals), args), strict=True):  # fmt: skip
            image.save(path)
            print(f"saved {path}", file=sys.stderr)
    for final in finals:
        print(final)


def evaluate(args: ScriptArguments):
    """Original vs reprompted prompt, n_images each with the same seeds, scored with score.py vs the original."""
    import score

    device = pick_device()
    prompts = read_prompts(args.eval_prompts)
    out_dir = Path(args.outdir or "r1_eval")
    out_dir.mkdir(parents=True, exist_ok=True)  # before loading: a file in the way fails in one line
    model, tokenizer = load_llm(args.gpt_path, device)
    completions = reprompt(model, tokenizer, prompts, args.max_new_tokens)
    finals = [extract_answer(c) or p for p, c in zip(prompts, completions, strict=True)]
    del model
    pipe = load_pipeline(args, device)
    scorer = score.MultiScorer(score.parse_metric_weights(args.image_metrics), device=device)
    seeds, n = [args.image_seed + i for i in range(args.n_images)], args.n_images
    records, rows, captions = [], [], []
    for p, f in zip(prompts, finals, strict=True):
        images = render(pipe, [p] * n + [f] * n, seeds + seeds, args)
        _, details = scorer(images, [p] * (2 * n))
        records.append({"prompt": p, "reprompt": f, "seeds": seeds,
                        "original": {m: v[:n] for m, v in details.items()}, "reprompted": {m: v[n:] for m, v in details.items()}})  # fmt: skip
        rows.append(images)
        captions.append([f"original: {p}"] * n + [f"reprompted: {f}"] * n)
        means = {  # eval.json after every prompt: an interrupted evaluation keeps what it rendered
            m: {k: sum(sum(r[k][m]) for r in records) / (len(records) * n) for k in ("original", "reprompted")}
            for m in records[0]["original"]
        }
        (out_dir / "eval.json").write_text(json.dumps({"means": means, "prompts": records}, indent=2))
    save_grid(out_dir / "eval_grid.png", rows, captions)
    print(f"{'metric':<12} {'original':>10} {'reprompted':>11} {'delta':>8}")
    for m, v in means.items():
        print(f"{m:<12} {v['original']:>10.4f} {v['reprompted']:>11.4f} {v['reprompted'] - v['original']:>+8.4f}")
    print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval_grid.png'}", file=sys.stderr)


########################
# CLI: positional prompts anywhere -> inference; --eval_prompts / --make_sft_data; else training (--stage)
########################
STAGE_DEFAULTS = {  # yaml / CLI override these
    # upstream's effective GRPO run (train_reprompt.py + vendored trl 0.16 defaults)
    "grpo": dict(num_generations=4, learning_rate=2e-6, gradient_accumulation_steps=2, num_train_epochs=3,
                 temperature=0.9, max_completion_length=256, beta=0.04, logging_steps=1, save_steps=100,
                 save_total_limit=2),
    # RePrompt configs/qwen25-3b-full-sft.yaml (full fine-tuning; warmup_steps < 1 is a ratio in transformers 5)
    "sft": dict(learning_rate=1e-5, num_train_epochs=1, lr_scheduler_type="cosine", warmup_steps=0.1, max_length=1024,
                per_device_train_batch_size=4, gradient_accumulation_steps=4, logging_steps=10, save_steps=100),
}  # fmt: skip
HELP_GROUPS = {"data": "data and models", "image_metrics": "rewards", "make_sft_data": "SFT cold start",
               "eval_prompts": "inference and evaluation"}  # fmt: skip
USAGE = ("python r1_prompter.py [PROMPT ...] [options]\n  PROMPT: reprompt these and exit (inference); "
         "else --eval_prompts, --make_sft_data, or training (--stage grpo|sft)")  # fmt: skip


def make_parser(config_cls):
    """TrlParser whose --help lists this script's flags first, grouped as in ScriptArguments, then the trainer's."""
    from trl import ModelConfig, TrlParser

    parser = TrlParser((ScriptArguments, config_cls, ModelConfig), allow_abbrev=False, usage=USAGE)
    own, groups = {f.name for f in fields(ScriptArguments)}, []
    for action in list(parser._optionals._group_actions):
        if action.dest in HELP_GROUPS:
            groups.append(parser.add_argument_group(HELP_GROUPS[action.dest]))
        if action.dest in own:
            parser._optionals._group_actions.remove(action)
            groups[-1]._group_actions.append(action)
    parser._optionals.title = f"trainer options (TRL {config_cls.__name__} / ModelConfig)"
    parser._action_groups = [*groups, *(g for g in parser._action_groups if g not in groups)]
    parser.error = fail  # argparse's own errors (bad int, ...) in one line too
    return parser


def device_defaults() -> tuple[dict, str | None]:
    """Trainer defaults for this machine (set before parsing, so --use_cpu / --bf16 still win) and a note saying so."""
    import torch

    if not torch.cuda.is_available():
        return dict(use_cpu=True, bf16=False), "no CUDA device: training on the CPU in fp32 (use_cpu=True, bf16=False)"
    if not torch.cuda.is_bf16_supported():
        return dict(bf16=False), "this GPU has no bf16: training in fp32 (bf16=False)"
    return {}, None


def main(argv=None):
    import argparse

    from trl import GRPOConfig, SFTConfig, TrlParser

    argv = sys.argv[1:] if argv is None else list(argv)
    peek = argparse.ArgumentParser(add_help=False)
    peek.error = fail
    for flag in ("--stage", "--config", "--eval_prompts", "--make_sft_data"):
        peek.add_argument(flag)
    known = peek.parse_known_args(argv)[0]
    stage = known.stage
    if known.config:  # read here first: the stage picks the config class, and a YAML error is one line
        import yaml

        try:
            config = yaml.safe_load(Path(known.config).read_text())
        except yaml.MarkedYAMLError as e:
            fail(f"--config {known.config}, line {e.problem_mark.line + 1}: invalid YAML: {e.problem}")
        except (OSError, yaml.YAMLError) as e:
            fail(f"--config {known.config}: {' '.join(str(e).split())}")
        if not isinstance(config, dict):
            fail(f"--config {known.config}: expected a mapping of option: value")
        stage = stage or config.get("stage")
    if (stage or "grpo") not in STAGE_DEFAULTS:
        fail(f"unknown --stage {stage!r}: grpo or sft")
    parser = make_parser(SFTConfig if stage == "sft" else GRPOConfig)
    # a bool flag takes an optional value (nargs="?"), so `--pipeline_cpu_offload "a cat"` would read the prompt as
    # that value: give it `true`
    flags = {s for a in parser._actions if a.nargs == "?" for s in a.option_strings}
    words = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}
    explicit = [a in flags and i + 1 < len(argv) and argv[i + 1][:1] != "-" and argv[i + 1].lower() not in words
                for i, a in enumerate(argv)]  # fmt: skip
    argv = [w for a, e in zip(argv, explicit, strict=True) for w in ((a, "true") if e else (a,))]
    # argparse knows every option here, so an option's value is never taken for a prompt; builds no dataclass
    stripped = [a for i, a in enumerate(argv) if not (a == "--config" or a.startswith("--config=") or (i and argv[i - 1] == "--config"))]  # fmt: skip
    rest = parser.parse_known_args(stripped)[1]
    if [r for r in rest if r.startswith("-")]:
        fail(f"unrecognised arguments: {' '.join(r for r in rest if r.startswith('-'))}")
    mode = "eval" if known.eval_prompts else "make_sft_data" if known.make_sft_data else "infer" if rest else None
    if mode:  # no trainer config, no accelerate state
        parser = TrlParser((ScriptArguments,), allow_abbrev=False, usage=USAGE)
        parser.error = fail  # argparse's own errors in one line too
        try:  # a recipe's trainer keys are ignored here; the command line's leftovers are the prompts
            args, _, rest = parser.parse_args_and_config(argv, return_remaining_strings=True, separate_remaining_strings=True)  # fmt: skip
            if [r for r in rest if r.startswith("-")] or (mode != "infer" and rest):
                raise ValueError(f"not an option of {mode}: {' '.join(rest)}")
            if any(not p.strip() for p in rest):
                raise ValueError("empty prompt")
            check_args(args, mode)
            if mode == "infer":
                infer(args, rest)
            elif mode == "eval":
                evaluate(args)
            else:
                make_sft_data(args)
        except (ValueError, OSError) as e:
            fail(str(e).splitlines()[0])
        return
    # CLI / yaml values still win; dtype None = "not given" (ModelConfig says float32), see model_init_kwargs
    parser.set_defaults(**STAGE_DEFAULTS[stage or "grpo"], **device_defaults()[0], dtype=None)
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(argv)
    except (ValueError, OSError) as e:  # e.g. --bf16 true without a bf16 GPU, batch not divisible by num_generations
        fail(str(e).strip().splitlines()[0])
    script_args.stage = stage or script_args.stage
    train(script_args, training_args, model_args)


if __name__ == "__main__":
    main()
