# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.35", "trl>=1.0", "peft>=0.17", "accelerate>=1.10",
#                 "openai>=1.60", "pydantic>=2.0", "datasets>=3.0", "open_clip_torch>=3.0", "pillow>=10.0"]
# ///
"""R1-style GRPO reprompter: an LLM thinks, then writes an image prompt; a diffusion pipeline renders it; rewards.

README section: "r1_prompter.py". Method: RePrompt (first released as R1-Prompter), Wu et al., "RePrompt:
Reasoning-Augmented Reprompting for Text-to-Image Generation via Reinforcement Learning", arXiv 2505.17540; code
microsoft/DKI_LLM/RePrompt (train_reprompt.py). A Qwen2.5 instruct model reasons inside <think>...</think> and puts a
rewritten prompt inside <answer>...</answer>; one image per completion is rendered and scored against the ORIGINAL
user prompt (ImageReward, optionally a VLM judge), plus a format reward and an answer-length window; GRPO
(num_generations=4 per prompt) updates the LLM. Paper result (GenEval overall, FLUX.1-dev): 0.66 plain, 0.68 with
Qwen2.5-3B rewriting, 0.76 with RePrompt (8 GPUs, ~104 optimizer steps).

Differences from the paper / reference code:
1. Training and inference build the chat prompt with one function (system + user, generation prompt on); upstream
   trains with an assistant prefill but evaluates with a closed assistant turn, a train/inference mismatch.
2. The format reward accepts multi-line <think>/<answer> bodies (upstream's regex has no DOTALL, so every multi-line
   answer was scored -1 and rendered as "a photo"); a completion without an answer is rendered from the original prompt.
3. All completions of a step are rendered in batched pipeline calls with one seed per prompt group (the group's
   members differ only by their prompt); upstream renders one unseeded image at a time.
4. The judge is any OpenAI-compatible VLM with structured output; a failed call yields None for that sample (TRL then
   ignores that reward for the row) and is counted in `judge/failures`. Upstream's openai<1.0 call failed silently
   under openai>=1.0 and returned 0 for every sample.
5. Reward weights: image 1.0 (ImageReward, standard normalisation), format 1.0, length 1.0, judge 0.5 when enabled;
   upstream summed 0.25*ImageReward + 0.5*(s-5)/5 + format + length. Set `--reward_weights` to change them.
6. GRPO settings follow upstream's effective run (num_generations 4, lr 2e-6, grad-accum 2, 3 epochs, temperature 0.9,
   256 completion tokens, beta 0.04) on TRL's current loss (`loss_type` default); upstream vendored trl 0.16.

Usage (run from the repository root):
    # full run (8 GPUs; upstream used DeepSpeed ZeRO-2 and bf16)
    accelerate launch r1_prompter.py --data recipes/r1_prompts.txt --gpt_path Qwen/Qwen2.5-3B-Instruct \\
        --sdmodel_name black-forest-labs/FLUX.1-dev --outdir runs/r1
    # with a VLM judge (any OpenAI-compatible server; key from OPENAI_API_KEY)
    ... --judge_model gpt-4o --judge_base_url https://api.openai.com/v1
    # inference (no accelerate; laptop or CPU): prints the reasoning, then the final prompt on the last line
    python r1_prompter.py "a red cube on top of a blue sphere" --gpt_path runs/r1 --generate_image out.png
    # evaluation: original vs reprompted images with the same seeds, scored with score.py
    python r1_prompter.py --eval_prompts recipes/r1_prompts.txt --gpt_path runs/r1 --outdir runs/r1_eval --n_images 4
    # the same run from a recipe (every GRPOConfig / ModelConfig flag also works on the CLI or in the yaml)
    accelerate launch --num_processes 8 r1_prompter.py --config recipes/r1_prompter.yaml
    # CPU smoke run (2 steps, 64 px) with small local models, e.g. the tiny ones tests/conftest.py builds
    accelerate launch --cpu --num_processes 1 r1_prompter.py --config recipes/r1_prompter_smoke.yaml \
        --gpt_path <small chat LLM> --sdmodel_name <small t2i pipeline> --outdir runs/r1_smoke
Expected: the format reward reaches +1 within tens of steps; image reward rises slowly (paper: GenEval +0.08).
Measured here only on tiny random models on CPU (no GPU was available to this project).
"""

import asyncio
import base64
import functools
import io
import json
import os
import re
import sys
import textwrap
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PROMPT = (
    "You rewrite short requests for a text-to-image model into one precise, vivid image prompt. First think about "
    "what the request literally asks for: every object, how many of each, their colours, attributes and positions "
    "relative to each other; then about style, lighting, background and composition that would make the picture "
    "clear without changing its content. Write that reasoning inside <think> </think>, then give only the final image "
    "prompt inside <answer> </answer>."
)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
FORMAT_RE = re.compile(r"\s*<think>.+?</think>\s*<answer>.+?</answer>\s*", re.DOTALL)
THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
JUDGE_SYSTEM = (
    "You grade images made by a text-to-image model. Judge first whether the image shows what the prompt asks for: the "
    "right objects, counts, colours, attributes and spatial relations; then how natural and well made it is."
)


@dataclass
class ScriptArguments:
    # data and models (upstream CLI names)
    data: str | None = field(
        default=None, metadata={"help": "Prompts: .txt (one per line), .json/.jsonl with `prompt`, or a dataset id."}
    )
    gpt_path: str | None = field(
        default=None, metadata={"help": "Policy LLM (hub id or folder); sets --model_name_or_path."}
    )
    sdmodel_name: str = field(
        default="black-forest-labs/FLUX.1-dev", metadata={"help": "Any diffusers text-to-image pipeline."}
    )
    outdir: str | None = field(default=None, metadata={"help": "Output folder (training: the trainer's output_dir)."})
    # image reward
    image_metrics: str = field(
        default="imagereward", metadata={"help": 'score.py metrics with weights, e.g. "imagereward:1,hpsv2:1".'}
    )
    image_batch_size: int = field(default=8, metadata={"help": "Images per pipeline call."})
    num_inference_steps: int = field(default=50, metadata={"help": "Denoising steps (upstream FLUX: 50)."})
    guidance_scale: float = field(default=3.5, metadata={"help": "Guidance (upstream FLUX: 3.5)."})
    height: int = field(default=512, metadata={"help": "Image height (upstream: 512)."})
    width: int = field(default=512, metadata={"help": "Image width (upstream: 512)."})
    pipeline_cpu_offload: bool = field(
        default=False, metadata={"help": "diffusers model CPU offload for the pipeline."}
    )
    min_words: int = field(default=16, metadata={"help": "Length reward: +1 for min_words..max_words answer words."})
    max_words: int = field(
        default=76, metadata={"help": "Length reward upper bound (inclusive; CLIP's 77-token window)."}
    )
    log_images_every: int = field(default=10, metadata={"help": "Save a captioned grid every N steps (0: never)."})
    # judge
    judge_model: str | None = field(default=None, metadata={"help": "VLM judge model name; enables the judge reward."})
    judge_base_url: str | None = field(
        default=None, metadata={"help": "OpenAI-compatible base URL (default: OpenAI)."}
    )
    judge_retries: int = field(default=3, metadata={"help": "Retries per judge call (exponential backoff)."})
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per judge call."})
    # inference / evaluation
    eval_prompts: str | None = field(
        default=None, metadata={"help": "Evaluate: render original vs reprompted prompts."}
    )
    n_images: int = field(default=4, metadata={"help": "Evaluation images per prompt (same seeds for both)."})
    generate_image: str | None = field(
        default=None, metadata={"help": "Inference: render the final prompt to this PNG."}
    )
    max_new_tokens: int = field(default=512, metadata={"help": "Inference: greedy decoding budget (upstream: 512)."})
    image_seed: int = field(default=42, metadata={"help": "Inference/evaluation seed (image i uses image_seed + i)."})


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def build_messages(prompt: str) -> list[dict]:
    """The one chat prompt used by training and inference alike."""
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt.strip()}]


def completion_text(completion) -> str:
    return completion if isinstance(completion, str) else completion[-1]["content"]


def extract_answer(text: str) -> str | None:
    m = ANSWER_RE.search(text)
    return " ".join(m.group(1).split()) if m and m.group(1).strip() else None


########################
# Rewards (TRL contract: f(prompts, completions, **kwargs) -> list[float | None])
########################
def format_reward(completions, **kwargs) -> list[float]:
    """+1 if the completion is <think>...</think> then <answer>...</answer> (multi-line bodies allowed), else -1."""
    return [1.0 if FORMAT_RE.fullmatch(completion_text(c)) else -1.0 for c in completions]


def get_length_reward(min_words: int = 16, max_words: int = 76):
    def length_reward(completions, **kwargs) -> list[float]:
        """+1 if the answer has min_words..max_words words, -1 outside, 0 without an answer."""
        answers = [extract_answer(completion_text(c)) for c in completions]
        return [0.0 if a is None else (1.0 if min_words <= len(a.split()) <= max_words else -1.0) for a in answers]

    return length_reward


def group_seed(seed: int, step: int, original: str) -> int:
    """Seed shared by every completion of one prompt at one step, on every rank (no cross-rank state needed)."""
    return zlib.crc32(f"{seed}|{step}|{original}".encode())


def render(pipe, prompts: list[str], seeds: list[int], args: ScriptArguments) -> list:
    """Images for `prompts` in batched pipeline calls; image i uses torch.Generator seeded with seeds[i]."""
    import torch

    tok = getattr(pipe, "tokenizer", None)
    if tok is not None and not render.warned and any(len(tok(p)["input_ids"]) > tok.model_max_length for p in prompts):
        print(
            f"warning: a prompt exceeds the text encoder's {tok.model_max_length} tokens; the pipeline truncates it",
            file=sys.stderr,
        )
        render.warned = True  # once per process
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
    """Renders every completion (answer, or the original prompt when there is none) and scores it vs the original."""

    def image_reward(prompts, completions, original_prompt, trainer_state=None, log_metric=None, **kwargs):
        from accelerate import PartialState

        step = trainer_state.global_step if trainer_state is not None else 0
        answers = [extract_answer(completion_text(c)) for c in completions]
        to_render = [a or o for a, o in zip(answers, original_prompt, strict=True)]
        seeds = [group_seed(seed, step, o) for o in original_prompt]
        t0 = time.perf_counter()
        images = render(pipe, to_render, seeds, args)
        t1 = time.perf_counter()
        total, details = scorer(images, original_prompt)
        cache.update(step=step, images=images, originals=list(original_prompt))  # the judge reads these
        if log_metric is not None:
            for name, vals in details.items():
                log_metric(f"image/{name}", sum(vals) / len(vals))
            log_metric("image/no_answer_frac", sum(a is None for a in answers) / len(answers))
            log_metric("time/render_s", t1 - t0)
            log_metric("time/score_s", time.perf_counter() - t1)
        if args.log_images_every and step % args.log_images_every == 0 and PartialState().is_main_process:
            n = min(len(images), 2 * num_generations)
            captions = [
                [f"{o}\n-> {a or '(no answer)'}\nreward {r:.3f}"]
                for o, a, r in zip(original_prompt, answers, total, strict=True)
            ]
            save_grid(Path(output_dir) / "grids" / f"step{step:06d}.png", [[im] for im in images[:n]], captions[:n])
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


async def judge_one(client, model: str, image, prompt: str, retries: int) -> float | None:
    """(s - 5) / 5 for the judge's 0-10 score, or None once every retry failed (API error, timeout, bad JSON)."""
    schema = judge_schema()
    content = [
        {
            "type": "text",
            "text": f"Prompt: {prompt}\nRate from 0 (unrelated or broken) to 10 (perfect match, well made).",
        },
        {"type": "image_url", "image_url": {"url": png_data_url(image), "detail": "low"}},
    ]
    for attempt in range(retries + 1):
        try:
            res = await client.chat.completions.create(
                model=model, messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}],
                response_format={"type": "json_schema", "json_schema": {"name": "image_score", "schema": schema.model_json_schema()}},
            )  # fmt: skip
            return (schema.model_validate_json(res.choices[0].message.content).score - 5) / 5
        except Exception as e:  # openai.APIError, timeouts, pydantic.ValidationError: all retried, then None
            if attempt == retries:
                print(
                    f"warning: judge failed after {retries + 1} tries: {type(e).__name__}: {str(e)[:120]}",
                    file=sys.stderr,
                )
                return None
            await asyncio.sleep(0.5 * 2**attempt)


def get_judge_reward(args: ScriptArguments, cache: dict):
    async def judge_reward(prompts, completions, log_metric=None, **kwargs) -> list[float | None]:
        """VLM judge of the image rendered by image_reward vs the original prompt; (s-5)/5 in [-1, 1], None on failure."""
        from openai import AsyncOpenAI

        async with AsyncOpenAI(base_url=args.judge_base_url, max_retries=0, timeout=args.judge_timeout) as client:
            jobs = [
                judge_one(client, args.judge_model, im, p, args.judge_retries)
                for im, p in zip(cache["images"], cache["originals"], strict=True)
            ]
            scores = list(await asyncio.gather(*jobs))
        if log_metric is not None:
            log_metric("judge/failures", float(sum(s is None for s in scores)))
        return scores

    return judge_reward


########################
# Plumbing
########################
def read_prompts(path: str) -> list[str]:
    """.txt lines, .json list of strings or objects with `prompt`, .jsonl objects with `prompt`; else a dataset id."""
    p = Path(path)
    if p.suffix in (".txt", ".json", ".jsonl") or p.exists():
        if not p.is_file():
            raise ValueError(f"data file not found: {p}")
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".jsonl":
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        elif p.suffix == ".json":
            rows = json.loads(text or "[]")
        else:
            rows = text.splitlines()
        prompts = [r if isinstance(r, str) else r.get("prompt", "") for r in rows]
    else:
        from datasets import load_dataset

        prompts = load_dataset(path, split="train")["prompt"]
    prompts = [q.strip() for q in prompts if q and q.strip()]
    if not prompts:
        raise ValueError(f"no prompts in {path}")
    return prompts


def check_text2image(name: str):
    """Fail fast (before any weights load) on a pipeline that is not text-to-image, from its model_index.json."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.auto_pipeline import AUTO_TEXT2IMAGE_PIPELINES_MAPPING

    cls = DiffusionPipeline.load_config(name)["_class_name"]
    if cls not in {c.__name__ for c in AUTO_TEXT2IMAGE_PIPELINES_MAPPING.values()}:
        raise ValueError(f"--sdmodel_name {name} is a {cls}, not a text-to-image pipeline")


def load_pipeline(args: ScriptArguments, device):
    import torch
    from diffusers import DiffusionPipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(args.sdmodel_name, dtype=dtype)
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


def check_judge(args: ScriptArguments):
    if args.judge_model and not os.environ.get("OPENAI_API_KEY"):
        raise ValueError("--judge_model needs OPENAI_API_KEY in the environment (any value for a local server)")


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

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval(), AutoTokenizer.from_pretrained(
        path
    )


########################
# Training
########################
def train(script_args: ScriptArguments, training_args, model_args):
    from accelerate import PartialState
    from datasets import Dataset
    from trl import GRPOTrainer, get_peft_config

    import score

    model_args.model_name_or_path = script_args.gpt_path or model_args.model_name_or_path
    if script_args.outdir:
        training_args.output_dir = script_args.outdir
    try:  # every user error before any weights load
        if not model_args.model_name_or_path:
            raise ValueError("give the policy with --gpt_path (or --model_name_or_path)")
        if not script_args.data:
            raise ValueError("give the training prompts with --data")
        prompts = read_prompts(script_args.data)
        weights = score.parse_metric_weights(script_args.image_metrics)
        check_judge(script_args)
        check_text2image(script_args.sdmodel_name)
    except (ValueError, OSError, KeyError) as e:
        fail(str(e).splitlines()[0])

    ################
    # Model
    ################
    if model_args.dtype not in (None, "auto"):
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), "dtype": model_args.dtype}
    device = PartialState().device

    ################
    # Dataset
    ################
    dataset = Dataset.from_dict({"prompt": [build_messages(p) for p in prompts], "original_prompt": prompts})

    ################
    # Reward
    ################
    pipe = load_pipeline(script_args, device)
    scorer = score.MultiScorer(weights, device=device)
    cache = {}  # images of the current step, shared by the image reward and the judge (async: runs after it)
    reward_funcs = [
        format_reward,
        get_length_reward(script_args.min_words, script_args.max_words),
        get_image_reward(
            pipe,
            scorer,
            script_args,
            training_args.seed,
            training_args.num_generations,
            training_args.output_dir,
            cache,
        ),
    ]
    if script_args.judge_model:
        reward_funcs.append(get_judge_reward(script_args, cache))
    if training_args.reward_weights is None:
        training_args.reward_weights = [1.0, 1.0, 1.0, 0.5][: len(reward_funcs)]

    ################
    # Trainer
    ################
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path, reward_funcs=reward_funcs, args=training_args, train_dataset=dataset,
        peft_config=get_peft_config(model_args),
    )  # fmt: skip
    if trainer.accelerator.is_main_process:
        n = trainer.accelerator.num_processes
        per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * n
        print(f"{len(prompts)} prompts; {per_step} completions = {per_step // training_args.num_generations} prompts "
              f"x {training_args.num_generations} per optimizer step on {n} process(es); reward weights {training_args.reward_weights}")  # fmt: skip
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
        think = THINK_RE.search(completion)
        print(f"reasoning: {' '.join((think.group(1) if think else completion).split())}")
        finals.append(extract_answer(completion) or prompt.strip())  # no answer: keep the user's prompt
    if args.generate_image:
        del model
        pipe = load_pipeline(args, device)
        image = render(pipe, finals[-1:], [args.image_seed], args)[0]
        Path(args.generate_image).parent.mkdir(parents=True, exist_ok=True)
        image.save(args.generate_image)
        print(f"saved {args.generate_image}", file=sys.stderr)
    for final in finals:
        print(final)


def evaluate(args: ScriptArguments):
    """Original vs reprompted prompt, n_images each with the same seeds, scored with score.py vs the original."""
    import score

    device = pick_device()
    prompts = read_prompts(args.eval_prompts)
    model, tokenizer = load_llm(args.gpt_path, device)
    finals = [
        extract_answer(c) or p
        for p, c in zip(prompts, reprompt(model, tokenizer, prompts, args.max_new_tokens), strict=True)
    ]
    del model
    pipe = load_pipeline(args, device)
    scorer = score.MultiScorer(score.parse_metric_weights(args.image_metrics), device=device)
    seeds = [args.image_seed + i for i in range(args.n_images)]
    out_dir = Path(args.outdir or "r1_eval")
    records, rows, captions = [], [], []
    for p, f in zip(prompts, finals, strict=True):
        images = render(pipe, [p] * args.n_images + [f] * args.n_images, seeds + seeds, args)
        _, details = scorer(images, [p] * (2 * args.n_images))
        n = args.n_images
        records.append({"prompt": p, "reprompt": f, "seeds": seeds,
                        "original": {m: v[:n] for m, v in details.items()}, "reprompted": {m: v[n:] for m, v in details.items()}})  # fmt: skip
        rows.append(images)
        captions.append([f"original: {p}"] * n + [f"reprompted: {f}"] * n)
    means = {
        m: {k: sum(sum(r[k][m]) for r in records) / (len(records) * args.n_images) for k in ("original", "reprompted")}
        for m in records[0]["original"]
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "eval.json").write_text(json.dumps({"means": means, "prompts": records}, indent=2))
    save_grid(out_dir / "eval_grid.png", rows, captions)
    print(f"{'metric':<12} {'original':>10} {'reprompted':>11} {'delta':>8}")
    for m, v in means.items():
        print(f"{m:<12} {v['original']:>10.4f} {v['reprompted']:>11.4f} {v['reprompted'] - v['original']:>+8.4f}")
    print(f"wrote {out_dir / 'eval.json'} and {out_dir / 'eval_grid.png'}", file=sys.stderr)


GRPO_DEFAULTS = dict(  # upstream's effective run (train_reprompt.py + vendored trl 0.16 defaults); yaml/CLI override
    num_generations=4, learning_rate=2e-6, gradient_accumulation_steps=2, num_train_epochs=3, temperature=0.9,
    max_completion_length=256, beta=0.04, logging_steps=1, save_steps=100, save_total_limit=2,
)  # fmt: skip


def main(argv=None):
    from trl import TrlParser

    argv = sys.argv[1:] if argv is None else list(argv)
    if (argv and not argv[0].startswith("-")) or any(a.split("=")[0] == "--eval_prompts" for a in argv):
        parser = TrlParser((ScriptArguments,), allow_abbrev=False)
        args, prompts = parser.parse_args_and_config(argv, return_remaining_strings=True)
        if any(p.startswith("-") for p in prompts):
            fail(f"unrecognised arguments: {' '.join(p for p in prompts if p.startswith('-'))}")
        if not args.gpt_path:
            fail("give the reprompter with --gpt_path")
        if any(not p.strip() for p in prompts):
            fail("empty prompt")
        try:
            if args.generate_image or args.eval_prompts:
                check_text2image(args.sdmodel_name)
            if args.eval_prompts:
                evaluate(args)
            else:
                infer(args, prompts)
        except (ValueError, OSError) as e:
            fail(str(e).splitlines()[0])
        return
    from trl import GRPOConfig, ModelConfig

    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig))
    parser.set_defaults(**GRPO_DEFAULTS)
    train(*parser.parse_args_and_config(argv))


if __name__ == "__main__":
    main()
