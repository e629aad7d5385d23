# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.35", "trl>=1.0", "peft>=0.17", "accelerate>=1.10",
#                 "openai>=1.60", "pydantic>=2.0", "datasets>=3.0", "pillow>=10.0"]
# ///
"""GRPO of Qwen2.5-VL (LoRA) as the text encoder of Qwen-Image-Edit, rewarded by a VLM judge of the edited image.

README section: "grpo_image_edit.py". Design of nickni-canva/trl_qwen_ie: the VLM sees [source image + edit
instruction] and writes how to edit it; the pipeline's own edit template with that completion appended as the
assistant turn is run through the *current* VLM (LoRA active) in one forward pass; the last hidden state, minus the
template's system prefix (exactly as diffusers' QwenImageEditPipeline drops it), conditions the frozen diffusion
transformer, which edits the image; an OpenAI-compatible judge scores instruction following (IF) and perceptual quality
(Q); reward = 0.6 IF/10 + 0.4 Q/10; GRPO updates only the VLM's LoRA. The VLM *is* the pipeline's text encoder: the
pipeline is loaded without its own copy.

Differences from the reference code:
1. The prefix drop is exactly `prompt_template_encode_start_idx` (64) tokens of each unpadded row, as diffusers does;
   upstream dropped num_padding + 64 after padding was already removed, eating image tokens of shorter rows.
2. Generation and embedding prompts are the same template (upstream's embedding prompt added "Picture 1: ").
3. `--judge_n_evals` judge calls are averaged (upstream parsed the flag and never used it); a failed judge gives None
   (TRL skips that sample) and is counted, where upstream returned a constant 0.5.
4. One structured judge call returns both scores (upstream: two calls, alignment with CoT and quality).
5. Stock diffusers `QwenImageEditPipeline` with `prompt_embeds` / `prompt_embeds_mask` (upstream: a private fork).

Usage (run from the repository root):
    accelerate launch grpo_image_edit.py --data edits.jsonl --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct \\
        --pipeline Qwen/Qwen-Image-Edit --output_dir runs/edit --use_peft --lora_r 128 --lora_alpha 256 \\
        --lora_target_modules q_proj k_proj v_proj o_proj --dtype bfloat16 --judge_model gpt-4o
    accelerate launch grpo_image_edit.py --config recipes/image_edit_qwen7b.yaml --data my_edits.jsonl  # upstream recipe
    python grpo_image_edit.py "make the sky purple" --image in.png --model_name_or_path runs/edit --output out.png
    # CPU smoke run: tests/test_grpo_image_edit.py (tiny Qwen2.5-VL + tiny Qwen-Image-Edit + loopback judge)
Data: a JSONL of {"image": path, "instruction": str} or a dataset id with those columns. Key: OPENAI_API_KEY.
Expected: upstream trained on 8 x H200 (VLM 7B + LoRA ~25 GB, DiT ~15 GB, VAE etc. ~20 GB per GPU); not run here.
"""

import asyncio
import base64
import io
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MIN_DIFFUSERS = "0.35.0"  # prompt_template_encode / _start_idx and calculate_dimensions as read here (0.42.1)
JUDGE_SYSTEM = (
    "You evaluate image edits. The first image is the input, the second the edited output. Score instruction "
    "following (0 = ignored, 10 = every requested change made, nothing else changed) and perceptual quality of the "
    "output (0 = broken, 10 = natural and artefact-free). Reason briefly first."
)


@dataclass
class ScriptArguments:
    data: str | None = field(
        default=None, metadata={"help": 'JSONL of {"image": path, "instruction": str}, or a dataset id.'}
    )
    pipeline: str = field(
        default="Qwen/Qwen-Image-Edit", metadata={"help": "Qwen-Image-Edit pipeline (prompt_embeds interface)."}
    )
    with_response: bool = field(
        default=True, metadata={"help": "Condition on instruction + completion (off: instruction only)."}
    )
    num_inference_steps: int = field(default=50, metadata={"help": "Denoising steps (upstream 50)."})
    true_cfg_scale: float = field(default=4.0, metadata={"help": "True CFG with a blank negative prompt (1: off)."})
    edit_batch_size: int = field(default=4, metadata={"help": "Edits per pipeline call."})
    pipeline_cpu_offload: bool = field(default=False, metadata={"help": "diffusers model CPU offload."})
    max_embed_length: int = field(default=1024, metadata={"help": "Cap on conditioning tokens (pipeline limit 1024)."})
    log_images_every: int = field(default=10, metadata={"help": "Save a captioned grid every N steps (0: never)."})
    # judge
    judge_model: str = field(default="gpt-4o", metadata={"help": "OpenAI-compatible VLM judge."})
    judge_base_url: str | None = field(default=None, metadata={"help": "Judge base URL (default: OpenAI)."})
    judge_n_evals: int = field(default=1, metadata={"help": "Judge calls averaged per sample."})
    judge_retries: int = field(default=3, metadata={"help": "Retries per judge call (exponential backoff)."})
    if_weight: float = field(default=0.6, metadata={"help": "Reward weight of instruction following."})
    quality_weight: float = field(default=0.4, metadata={"help": "Reward weight of perceptual quality."})
    # inference
    image: str | None = field(default=None, metadata={"help": "Inference: source image."})
    output: str = field(default="edited.png", metadata={"help": "Inference: edited image path."})
    max_new_tokens: int = field(default=256, metadata={"help": "Inference: description length."})
    edit_seed: int = field(default=0, metadata={"help": "Inference: diffusion seed."})


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def check_diffusers():
    import diffusers
    from packaging.version import Version

    if Version(diffusers.__version__) < Version(MIN_DIFFUSERS):
        raise ValueError(
            f"diffusers>={MIN_DIFFUSERS} needed (found {diffusers.__version__}): this script uses its Qwen-Image-Edit internals"
        )


def open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise ValueError(f"not an image: {path}") from None


def system_prompt(pipe) -> str:
    """The pipeline's own edit-template system text (so generation and conditioning share one template)."""
    return pipe.prompt_template_encode.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]


def vlm_view(image):
    """The ~1 MP resize the Edit pipeline applies before its VLM sees the image (pipeline_qwenimage_edit.__call__)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as mod

    w, h, _ = mod.calculate_dimensions(1024 * 1024, image.size[0] / image.size[1])
    return image.resize((w, h), resample=3)  # bicubic, as VaeImageProcessor.resize with PIL


def edit_embeddings(model, processor, pipe, images, instructions, completions, with_response=True, max_len=1024):
    """prompt_embeds [B, L, D] and mask [B, L] from ONE batched forward of `model` (LoRA active) over the pipeline's
    template + completion; the first `prompt_template_encode_start_idx` tokens of each unpadded row are dropped."""
    import torch

    texts = [  # a None completion (a CFG negative prompt) gets the pipeline's plain template
        pipe.prompt_template_encode.format(i) + (f"{c}<|im_end|>" if with_response and c is not None else "")
        for i, c in zip(instructions, completions, strict=True)
    ]
    inputs = processor(text=texts, images=[vlm_view(im) for im in images], padding=True, return_tensors="pt").to(
        model.device
    )
    was_training = model.training
    model.eval()  # no LoRA dropout while conditioning
    with torch.no_grad():
        # exactly the pipeline's call (_get_qwen_prompt_embeds): the processor's extra mm_token_type_ids would change
        # transformers 5's multimodal RoPE indices and so every embedding (measured: up to 7e-4 on the tiny model)
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        hidden = model(**{k: inputs[k] for k in keys}, output_hidden_states=True).hidden_states[-1]
    model.train(was_training)
    rows = [
        h[m.bool()][pipe.prompt_template_encode_start_idx :][:max_len]
        for h, m in zip(hidden, inputs["attention_mask"], strict=True)
    ]
    length = max(len(r) for r in rows)
    embeds = torch.stack([torch.cat([r, r.new_zeros(length - len(r), r.shape[1])]) for r in rows])
    mask = torch.stack([torch.arange(length, device=embeds.device) < len(r) for r in rows]).long()
    return embeds, mask


def edit_conditions(model, processor, pipe, images, instructions, completions, args: ScriptArguments):
    """(embeds, mask, neg, neg_mask) for the pipeline: completions and, only when true CFG is on, the blank negative
    prompts (" ", as the pipeline's own negative), all in the one batched forward of edit_embeddings."""
    n, cfg = len(images), args.true_cfg_scale > 1
    embeds, mask = edit_embeddings(model, processor, pipe, list(images) * (1 + cfg), list(instructions) + [" "] * n * cfg,
                                   list(completions) + [None] * n * cfg, args.with_response, args.max_embed_length)  # fmt: skip
    return embeds[:n], mask[:n], (embeds[n:] if cfg else None), (mask[n:] if cfg else None)


def render_edits(pipe, images, embeds, mask, neg, neg_mask, seeds, args: ScriptArguments) -> list:
    """Edited images in pipeline calls of --edit_batch_size; calls group equal-size sources (one target size per call)."""
    import torch

    out = [None] * len(images)
    order = sorted(range(len(images)), key=lambda i: images[i].size)
    chunks, cur = [], []
    for i in order:
        if cur and (len(cur) == args.edit_batch_size or images[cur[0]].size != images[i].size):
            chunks.append(cur)
            cur = []
        cur.append(i)
    chunks += [cur] if cur else []
    for idx in chunks:
        kw = dict(true_cfg_scale=args.true_cfg_scale)  # explicit: the pipeline's default is 4.0
        if args.true_cfg_scale > 1:
            kw.update(negative_prompt_embeds=neg[idx], negative_prompt_embeds_mask=neg_mask[idx])
        with torch.no_grad():
            result = pipe(image=[images[i] for i in idx], prompt_embeds=embeds[idx], prompt_embeds_mask=mask[idx],
                          num_inference_steps=args.num_inference_steps, generator=[torch.Generator("cpu").manual_seed(seeds[i]) for i in idx], **kw).images  # fmt: skip
        for i, im in zip(idx, result, strict=True):
            out[i] = im
    return out


def data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def judge_edit(client, args: ScriptArguments, source, edited, instruction: str) -> float | None:
    """Mean over --judge_n_evals structured calls of (w_if IF + w_q Q) / 10; None once a call fails all retries."""
    from pydantic import BaseModel, Field

    class EditScore(BaseModel):
        reasoning: str
        instruction_following: int = Field(ge=0, le=10)
        perceptual_quality: int = Field(ge=0, le=10)

    content = [{"type": "image_url", "image_url": {"url": data_url(source)}}, {"type": "image_url", "image_url": {"url": data_url(edited)}},
               {"type": "text", "text": f"The edit instruction is:\n{instruction}"}]  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "edit_score", "schema": EditScore.model_json_schema()}}

    async def one() -> float | None:
        for attempt in range(args.judge_retries + 1):
            try:
                res = await client.chat.completions.create(model=args.judge_model, response_format=fmt, temperature=0.0,
                                                           messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}])  # fmt: skip
                s = EditScore.model_validate_json(res.choices[0].message.content)
                return (args.if_weight * s.instruction_following + args.quality_weight * s.perceptual_quality) / 10
            except Exception as e:  # API error, timeout, malformed JSON: retry, then give up
                if attempt == args.judge_retries:
                    print(f"warning: judge failed: {type(e).__name__}: {str(e)[:100]}", file=sys.stderr)
                    return None
                await asyncio.sleep(0.5 * 2**attempt)

    scores = await asyncio.gather(*[one() for _ in range(args.judge_n_evals)])
    return None if any(s is None for s in scores) else sum(scores) / len(scores)


def save_grid(path: Path, rows: list[tuple]):
    """Rows of (source, edited, caption) side by side with the caption underneath."""
    import textwrap

    from PIL import Image, ImageDraw

    w, h, cap = 256, 256, 100
    grid = Image.new("RGB", (2 * w, len(rows) * (h + cap)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (src, edited, text) in enumerate(rows):
        grid.paste(src.resize((w, h)), (0, r * (h + cap)))
        grid.paste(edited.resize((w, h)), (w, r * (h + cap)))
        draw.multiline_text((4, r * (h + cap) + h + 4), "\n".join(textwrap.wrap(text, 70)[:6]), fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


def get_edit_reward(pipe, processor, args: ScriptArguments, state: dict):
    def edit_reward(
        prompts, completions, image, instruction, trainer_state=None, log_metric=None, **kwargs
    ) -> list[float | None]:
        """Judge reward of the image edited under the current policy's embeddings; in [0, 1], None on judge failure."""
        from accelerate import PartialState
        from openai import AsyncOpenAI

        step = trainer_state.global_step if trainer_state is not None else 0
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        n, model = len(texts), state["model"]
        t0 = time.perf_counter()
        conditions = edit_conditions(model, processor, pipe, list(image), list(instruction), texts, args)
        t1 = time.perf_counter()
        seeds = [zlib.crc32(f"{step}|{ins}".encode()) for ins in instruction]  # a group shares a seed, on every rank
        edited = render_edits(pipe, list(image), *conditions, seeds, args)
        t2 = time.perf_counter()

        async def judge_all():
            async with AsyncOpenAI(base_url=args.judge_base_url, max_retries=0) as client:
                return await asyncio.gather(
                    *[judge_edit(client, args, s, e, i) for s, e, i in zip(image, edited, instruction, strict=True)]
                )

        rewards = list(asyncio.run(judge_all()))
        if log_metric is not None:
            log_metric("judge/failures", float(sum(r is None for r in rewards)))
            for name, sec in (
                ("time/embed_s", t1 - t0),
                ("time/diffusion_s", t2 - t1),
                ("time/judge_s", time.perf_counter() - t2),
            ):
                log_metric(name, sec)
        if args.log_images_every and step % args.log_images_every == 0 and PartialState().is_main_process:
            rows = [
                (s, e, f"{i} | {t[:200]} | reward {r}")
                for s, e, i, t, r in zip(image, edited, instruction, texts, rewards, strict=True)
            ]
            save_grid(Path(state["output_dir"]) / "grids" / f"step{step:06d}.png", rows[: min(n, 8)])
        return rewards

    return edit_reward


def load_pipeline(name: str, device, offload: bool = False):
    """The edit pipeline WITHOUT its text encoder: the policy VLM takes that role (no second 7B copy)."""
    import torch
    from diffusers import DiffusionPipeline

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    pipe = DiffusionPipeline.from_pretrained(name, text_encoder=None, dtype=dtype)
    for m in (pipe.transformer, pipe.vae):
        m.requires_grad_(False).eval()
    if offload and device.type == "cuda":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def read_rows(data: str) -> list[dict]:
    p = Path(data or "")
    if p.suffix == ".jsonl" or p.exists():
        if not p.is_file():
            raise ValueError(f"data file not found: {p}")
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
        for i, r in enumerate(rows, 1):
            if not str(r.get("instruction", "")).strip():
                raise ValueError(f"{p}: record {i} has an empty instruction")
            r["image"] = open_image(str(p.parent / r["image"]) if not Path(r["image"]).is_absolute() else r["image"])
    else:
        from datasets import load_dataset

        rows = [dict(r, image=r["image"].convert("RGB")) for r in load_dataset(data, split="train")]  # PIL column
    if not rows:
        raise ValueError(f"no records in {data}")
    return rows


########################
# Training
########################
def train(args: ScriptArguments, training_args, model_args):
    from accelerate import PartialState
    from datasets import Dataset
    from trl import GRPOTrainer, get_peft_config

    try:  # user errors before any model loads
        check_diffusers()
        if not os.environ.get("OPENAI_API_KEY"):
            raise ValueError("the judge needs OPENAI_API_KEY in the environment (any value for a local server)")
        rows = read_rows(args.data)
    except (ValueError, OSError, json.JSONDecodeError) as e:
        fail(str(e).splitlines()[0])

    ################
    # Model: the policy VLM doubles as the pipeline's text encoder
    ################
    device = PartialState().device
    pipe = load_pipeline(args.pipeline, device, args.pipeline_cpu_offload)
    if model_args.dtype not in (None, "auto"):
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), "dtype": model_args.dtype}

    ################
    # Dataset: the generation prompt is the pipeline's own edit template (TRL inserts the image before the text)
    ################
    sys_text = system_prompt(pipe)
    dataset = Dataset.from_list([{"prompt": [{"role": "system", "content": sys_text}, {"role": "user", "content": r["instruction"]}],
                                  "image": r["image"], "instruction": r["instruction"]} for r in rows])  # fmt: skip

    ################
    # Reward and trainer
    ################
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path)
    state = {"output_dir": training_args.output_dir}  # "model" is set once the trainer has wrapped the policy
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path, reward_funcs=[get_edit_reward(pipe, processor, args, state)], args=training_args,
        train_dataset=dataset, processing_class=processor, peft_config=get_peft_config(model_args),
    )  # fmt: skip
    state["model"] = trainer.model  # LoRA-wrapped policy: embeddings always come from the current weights
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    print(f"{len(rows)} edits; trainable parameters {trainable:,} (LoRA only: {model_args.use_peft})")
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except KeyboardInterrupt:
        trainer.save_model(str(Path(training_args.output_dir) / "interrupted"))
        raise
    trainer.save_model(training_args.output_dir)


########################
# Inference (no GRPOConfig, no accelerate)
########################
def infer(args: ScriptArguments, model_args, instruction: str):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    source = open_image(args.image)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    path = model_args.model_name_or_path
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForImageTextToText as Auto
    else:
        Auto = AutoModelForImageTextToText
    model = Auto.from_pretrained(path, dtype=dtype).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    pipe = load_pipeline(args.pipeline, device, args.pipeline_cpu_offload)
    msgs = [
        {"role": "system", "content": system_prompt(pipe)},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]},
    ]
    text = processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[vlm_view(source)], return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens)
    description = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()
    conditions = edit_conditions(model, processor, pipe, [source], [instruction], [description], args)
    edited = render_edits(pipe, [source], *conditions, [args.edit_seed], args)[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    edited.save(args.output)
    print(f"saved {args.output}", file=sys.stderr)
    print(" ".join(description.split()) or "(empty description)")


GRPO_DEFAULTS = dict(learning_rate=1e-5, num_generations=4, per_device_train_batch_size=4, max_completion_length=1024,
                     loss_type="dr_grpo", logging_steps=1, save_steps=50, save_total_limit=10)  # fmt: skip


def main(argv=None):
    from trl import ModelConfig, TrlParser

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):  # inference: instruction first
        parser = TrlParser((ScriptArguments, ModelConfig), allow_abbrev=False)
        args, model_args, rest = parser.parse_args_and_config(argv, return_remaining_strings=True)
        if any(r.startswith("-") for r in rest):
            fail(f"unrecognised arguments: {' '.join(r for r in rest if r.startswith('-'))}")
        instruction = " ".join(rest).strip()
        try:
            check_diffusers()
            if not instruction:
                raise ValueError("empty instruction")
            if not args.image:
                raise ValueError("give the source image with --image")
            open_image(args.image)
            if not model_args.model_name_or_path:
                raise ValueError("give the policy with --model_name_or_path")
        except ValueError as e:
            fail(str(e))
        return infer(args, model_args, instruction)
    from trl import GRPOConfig

    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig))
    parser.set_defaults(**GRPO_DEFAULTS)
    train(*parser.parse_args_and_config(argv))


if __name__ == "__main__":
    main()
