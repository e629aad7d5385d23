# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.40", "trl>=1.16", "peft>=0.17", "accelerate>=1.10",
#                 "openai>=1.60", "pydantic>=2.0", "datasets>=3.0", "pillow>=10.0"]
# ///
"""GRPO of Qwen2.5-VL (LoRA) as the text encoder of Qwen-Image-Edit, rewarded by a VLM judge of the edited image.

README section: "grpo_image_edit.py". Design of nickni-canva/trl_qwen_ie: the VLM sees [source image + edit
instruction] and writes how to edit it; the pipeline's own edit template with that completion appended as the
assistant turn is run through the *current* VLM (LoRA active) in one forward pass; the last hidden state, minus the
template's system prefix (exactly as diffusers drops it), conditions the frozen diffusion transformer (DiT), which
edits the image; an OpenAI-compatible judge scores instruction following (IF) and perceptual quality (Q);
reward = 0.6 IF/10 + 0.4 Q/10; GRPO updates only the VLM's LoRA. The VLM *is* the pipeline's text encoder: the
pipeline is loaded without its own copy. Both stock pipelines work: QwenImageEditPipeline (Qwen/Qwen-Image-Edit) and
QwenImageEditPlusPipeline (Qwen/Qwen-Image-Edit-2509, upstream's choice and the default here).

Differences from the reference code:
1. The prefix drop is exactly `prompt_template_encode_start_idx` (64) tokens of each unpadded row, as diffusers does;
   upstream dropped num_padding + 64 after padding was already removed, eating image tokens of shorter rows.
2. One template and one view of the image. The generation prompt is the pipeline's own encode template (for -2509 with
   its "Picture 1: " before the image); the VLM sees the pipeline's own resize of the source (lanczos, ~1 MP for
   Qwen-Image-Edit, ~384² for -2509) when it writes the completion, when the completion is encoded, and at inference.
   Upstream generated from the raw image, encoded a resized one, and added "Picture 1: " only when encoding.
3. Nothing is capped: like the pipeline, every token after the prefix conditions the DiT (a 1 MP view alone is ~1,350
   image tokens, so upstream's cap at 1,024 kept only image tokens: the instruction and the completion, which come
   after the image in a causal VLM, never reached the DiT). Only the completion is bounded, by
   --max_completion_length at generation.
4. `--judge_n_evals` calls are averaged over those that succeed (sampled at --judge_temperature, 1.0 by default when
   n > 1); a sample is None (TRL skips it) only if all fail, and failures are counted. Upstream parsed n_evals and
   never used it, and returned a constant 0.5 on failure. One structured call returns both scores (upstream: two).
5. Stock diffusers pipelines with `prompt_embeds` / `prompt_embeds_mask` (upstream: a private fork); -2509 renders one
   edit per call (diffusers 0.42 refuses batches for it), Qwen-Image-Edit in batches of --edit_batch_size.

Memory (computed, not measured: parameters counted on the meta device from the real configs by benchmarks/memory.py;
activations estimated there): Qwen2.5-VL-7B 8.29 B (15.4 GiB bf16), LoRA r 128 on q,k,v,o 80.7 M trainable (1.2 GiB
with fp32 gradients and AdamW state); Qwen-Image DiT 20.43 B (38.05 GiB bf16, not ~15 GB as upstream's note says);
VAE 0.13 B (0.24 GiB). `python benchmarks/memory.py --recipe recipes/image_edit_qwen7b.yaml` computes 56.7 GiB per
GPU for the recipe (8 x 80 GB, DeepSpeed ZeRO-2, activation checkpointing) and 69.9 GiB with checkpointing off: both
fit 80 GB, checkpointing buys headroom. The README's memory table ("Memory per GPU") has the other accelerate configs.
--pipeline_cpu_offload is for smaller cards: the DiT and VAE wait in CPU RAM (38 GiB per process) and visit the GPU
once per reward call, for rendering only. Upstream: 8 x H200 141 GB.

Usage (run from the repository root; needs OPENAI_API_KEY for the judge, any value for a local server):
    accelerate launch --config_file recipes/accelerate/zero2.yaml --num_processes 8 grpo_image_edit.py \\
        --config recipes/image_edit_qwen7b.yaml --data my_edits.jsonl      # upstream's run, 8 x 80 GB GPUs
    python grpo_image_edit.py --image in.png "make the sky purple" --model_name_or_path runs/image_edit_qwen7b
    # CPU smoke run (tiny random models, loopback judge, no device flags): tests/test_grpo_image_edit.py
Data: a JSONL of {"image": path, "instruction": str} (paths relative to the file) or a dataset id with those columns.
ModelConfig's --dtype, --attn_implementation, --model_revision and (training only) --load_in_4bit / --load_in_8bit
reach the policy's from_pretrained.
Inference holds the VLM and the DiT on one GPU (53.7 GiB of bf16 weights + activations): an 80 GB card. Expected
result: upstream published none; not run here (no GPU was available to this project).
"""

import asyncio
import base64
import hashlib
import io
import json
import logging
import os
import sys
import time
import zlib
from dataclasses import dataclass, field, fields
from pathlib import Path

# bitsandbytes (imported by peft) logs a missing optional CPU kernel on import; it is not used here
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

MIN_DIFFUSERS = "0.40.0"  # prompt_template_encode / _start_idx and calculate_dimensions as read here (0.42.1); dtype= in from_pretrained (0.40)
DEFAULT_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"  # the text encoder both pipelines ship with
EDIT_PIPELINES = ("QwenImageEditPipeline", "QwenImageEditPlusPipeline")
PLUS_IMAGE_PREFIX = "Picture 1: "  # QwenImageEditPlusPipeline._get_qwen_prompt_embeds, img_prompt_template, one image
JUDGE_SYSTEM = (
    "You evaluate image edits. The first image is the input, the second the edited output. Score instruction "
    "following (0 = ignored, 10 = every requested change made, nothing else changed) and perceptual quality of the "
    "output (0 = broken, 10 = natural and artefact-free). Reason briefly first."
)
# upstream run_8gpu.sh (nickni-canva/trl_qwen_ie) in TRL 1.16 names; LoRA r 128 / alpha 256 on the attention projections
GRPO_DEFAULTS = dict(learning_rate=1e-5, per_device_train_batch_size=2, num_generations=16, generation_batch_size=16,
                     max_completion_length=1024, loss_type="dr_grpo", logging_steps=1, save_steps=50,
                     save_total_limit=10, model_name_or_path=DEFAULT_MODEL, dtype="bfloat16", use_peft=True,
                     lora_r=128, lora_alpha=256, lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])  # fmt: skip


@dataclass
class ScriptArguments:
    data: str | None = field(
        default=None,
        metadata={"help": 'Training edits: JSONL of {"image": path, "instruction": str}, or a dataset id.'},
    )
    pipeline: str = field(
        default="Qwen/Qwen-Image-Edit-2509",
        metadata={"help": "QwenImageEditPipeline or QwenImageEditPlusPipeline id/folder (upstream: -2509)."},
    )
    with_response: bool = field(
        default=True, metadata={"help": "Condition on instruction + completion (false: instruction only; inference)."}
    )
    # rendering
    num_inference_steps: int = field(default=50, metadata={"help": "Denoising steps, >= 2 (upstream 50)."})
    true_cfg_scale: float = field(default=4.0, metadata={"help": "True CFG with a blank negative prompt (<= 1: off)."})
    edit_batch_size: int = field(default=4, metadata={"help": "Edits per pipeline call, >= 1 (-2509: always 1)."})
    pipeline_cpu_offload: bool = field(
        default=False, metadata={"help": "Keep DiT + VAE in CPU RAM; move them to the GPU only to render."}
    )
    log_images_every: int = field(default=10, metadata={"help": "Save a captioned grid every N steps (0: never)."})
    # reward
    judge_model: str = field(default="gpt-4o-2024-11-20", metadata={"help": "OpenAI-compatible VLM judge (upstream's)."})  # fmt: skip
    judge_base_url: str | None = field(default=None, metadata={"help": "Judge base URL (default: OpenAI)."})
    judge_n_evals: int = field(default=1, metadata={"help": "Judge calls averaged per sample, >= 1."})
    judge_temperature: float | None = field(
        default=None, metadata={"help": "Judge sampling temperature (default: 0 for one call, 1.0 when averaging)."}
    )
    judge_timeout: float = field(default=120.0, metadata={"help": "Seconds per judge call (client default: 600)."})
    judge_retries: int = field(default=3, metadata={"help": "Retries per judge call (exponential backoff), >= 0."})
    if_weight: float = field(default=0.6, metadata={"help": "Reward weight of instruction following (upstream 0.6)."})
    quality_weight: float = field(default=0.4, metadata={"help": "Reward weight of perceptual quality (upstream 0.4)."})  # fmt: skip
    # inference
    image: str | None = field(default=None, metadata={"help": "Inference: the source image to edit."})
    output: str = field(default="edited.png", metadata={"help": "Inference: edited image path."})
    max_new_tokens: int = field(default=1024, metadata={"help": "Inference: completion length, >= 1."})
    edit_seed: int = field(default=0, metadata={"help": "Inference: diffusion seed."})


HELP_GROUPS = {"data": "data and models", "num_inference_steps": "rendering", "judge_model": "reward (VLM judge)",
               "image": "inference (give the INSTRUCTION as positional words)"}  # fmt: skip
USAGE = "python grpo_image_edit.py [INSTRUCTION ...] [options]   (an instruction: inference; none: GRPO training)"


def is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"  # launched processes (torchrun sets RANK): only rank 0 prints


def fail(msg: str):
    if is_main():
        print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)  # every rank exits, before any collective


def make_parser():
    """TrlParser over (ScriptArguments, GRPOConfig, ModelConfig): own flags first in HELP_GROUPS, one-line errors."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig), allow_abbrev=False, usage=USAGE)
    parser.error = fail  # argparse's own errors (a bad bool, a missing value) in one line too
    own, groups = {f.name for f in fields(ScriptArguments)}, []
    for action in list(parser._optionals._group_actions):
        if action.dest in HELP_GROUPS:
            groups.append(parser.add_argument_group(HELP_GROUPS[action.dest]))
        if action.dest in own:
            parser._optionals._group_actions.remove(action)
            groups[-1]._group_actions.append(action)
    parser._optionals.title = "trainer options (TRL GRPOConfig / ModelConfig)"
    parser._action_groups = [*groups, *(g for g in parser._action_groups if g not in groups)]
    parser.set_defaults(**GRPO_DEFAULTS)
    return parser


def read_config(path: str) -> dict:
    """The --config YAML as a mapping; ValueError naming the file (and the line of a syntax error) otherwise."""
    import yaml

    if not Path(path).is_file():
        raise ValueError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.MarkedYAMLError as e:
        context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context_mark else ""
        raise ValueError(f"{path}, line {e.problem_mark.line + 1}: invalid YAML: {e.problem}{context}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: must hold a YAML mapping")
    return config


def model_kwargs(model_args) -> dict:
    """ModelConfig -> the policy's from_pretrained kwargs (GRPOTrainer passes model_init_kwargs through unchanged)."""
    from trl import get_quantization_config

    quant = get_quantization_config(model_args)  # None unless --load_in_4bit / --load_in_8bit
    return dict(dtype=model_args.dtype, revision=model_args.model_revision,
                attn_implementation=model_args.attn_implementation, quantization_config=quant)  # fmt: skip


def check_diffusers():
    import diffusers
    from packaging.version import Version

    if Version(diffusers.__version__) < Version(MIN_DIFFUSERS):
        raise ValueError(f"diffusers>={MIN_DIFFUSERS} needed (found {diffusers.__version__}) for its Qwen-Image-Edit internals")  # fmt: skip


def local_folder(path: str, markers: tuple[str, ...]) -> Path | None:
    """The folder if `path` is local (checked for one of `markers`), None for a hub id; ValueError if it can't be."""
    p = Path(path).expanduser()
    if p.exists():
        if not any((p / m).is_file() for m in markers):
            raise ValueError(f"{path} is not a model folder (no {' / '.join(markers)})")
        return p
    if path.startswith(("/", "./", "../", "~")) or path.count("/") > 1:
        raise ValueError(f"no such folder: {path}")
    return None


def pipeline_class(name: str) -> str:
    """`_class_name` of the pipeline's model_index.json (no weights), refused unless it is one of EDIT_PIPELINES."""
    folder = local_folder(name, ("model_index.json",))
    if folder is None:
        from huggingface_hub import hf_hub_download

        try:
            index = Path(hf_hub_download(name, "model_index.json"))
        except Exception as e:  # offline, unknown repo, gated: any hub error means we cannot go on
            raise ValueError(f"cannot read model_index.json of {name} ({type(e).__name__})") from None
    else:
        index = folder / "model_index.json"
    cls = json.loads(index.read_text()).get("_class_name")
    if cls not in EDIT_PIPELINES:
        raise ValueError(f"{name} is a {cls}; this script drives {' or '.join(EDIT_PIPELINES)}")
    return cls


def check_policy(path: str):
    """A model folder or hub id; a LoRA folder's base model is checked too."""
    folder = local_folder(path, ("config.json", "adapter_config.json"))
    if folder is not None and (folder / "adapter_config.json").is_file():
        local_folder(json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"], ("config.json",))  # fmt: skip


def check_args(args: ScriptArguments, model_name: str):
    """Every check that needs no weights (ValueError with a one-line message)."""
    check_diffusers()
    # 1 step: Qwen-Image's scheduler (shift_terminal 0.02) stretches its one sigma by 0 / 0, a NaN
    for name, low in (("num_inference_steps", 2), ("edit_batch_size", 1), ("judge_n_evals", 1), ("judge_retries", 0),
                      ("max_new_tokens", 1), ("log_images_every", 0), ("if_weight", 0), ("quality_weight", 0)):  # fmt: skip
        if getattr(args, name) < low:
            raise ValueError(f"--{name} must be >= {low} (got {getattr(args, name)})")
    if args.judge_timeout <= 0 or (args.judge_temperature or 0) < 0:
        raise ValueError("--judge_timeout must be > 0 and --judge_temperature >= 0")
    check_policy(model_name)
    pipeline_class(args.pipeline)


def open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (FileNotFoundError, IsADirectoryError):
        raise ValueError(f"image not found: {path}") from None
    except UnidentifiedImageError:
        raise ValueError(f"not an image: {path}") from None


def read_rows(data: str | None) -> list[dict]:
    """Records with a PIL `image` and an `instruction`; errors name the file and the 1-based line."""
    if not data:
        raise ValueError("give the training edits with --data (JSONL or a dataset id)")
    p, rows = Path(data).expanduser(), []
    if p.suffix == ".jsonl" or p.exists():
        if not p.is_file():
            raise ValueError(f"data file not found: {p}")
        for n, line in enumerate(p.read_text().splitlines(), 1):
            try:
                r = json.loads(line) if line.strip() else None
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: record {n} is not valid JSON ({e.msg})") from None
            if r is not None and (not isinstance(r, dict) or not isinstance(r.get("image"), str) or not str(r.get("instruction", "")).strip()):  # fmt: skip
                raise ValueError(f'{p}: record {n} needs "image" (a path) and a non-empty "instruction"')
            try:
                rows += [{"image": open_image(str(p.parent / Path(r["image"]).expanduser())), "instruction": r["instruction"]}] if r else []  # fmt: skip
            except ValueError as e:
                raise ValueError(f"{p}: record {n}: {e}") from None
    else:
        from datasets import load_dataset

        ds = load_dataset(data, split="train")
        if missing := {"image", "instruction"} - set(ds.column_names):
            raise ValueError(f"{data} has no column {' / '.join(sorted(missing))}")
        rows = [{"image": r["image"].convert("RGB"), "instruction": r["instruction"]} for r in ds]
    if not rows:
        raise ValueError(f"no records in {data}")
    return rows


########################
# Conditioning: the pipeline's template, view and prefix drop
########################
def is_plus(pipe) -> bool:
    return type(pipe).__name__ == "QwenImageEditPlusPipeline"


def vlm_view(pipe, image):
    """The pixels the pipeline's VLM sees: its VaeImageProcessor resize (lanczos) to ~1024² area (Edit,
    pipeline_qwenimage_edit.__call__) or ~384² (Plus: CONDITION_IMAGE_SIZE), target sizes rounded to 32."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus

    ratio = image.size[0] / image.size[1]
    w, h = plus.calculate_dimensions(plus.CONDITION_IMAGE_SIZE, ratio) if is_plus(pipe) else edit.calculate_dimensions(1024 * 1024, ratio)[:2]  # fmt: skip
    return pipe.image_processor.resize(image, h, w)


def edit_messages(pipe, instruction: str) -> list[dict]:
    """The conversation whose chat-template rendering is the pipeline's encode template (TRL fills the image block)."""
    head = [{"type": "text", "text": PLUS_IMAGE_PREFIX}] if is_plus(pipe) else []
    system = pipe.prompt_template_encode.split("<|im_start|>system\n", 1)[1].split("<|im_end|>", 1)[0]
    return [{"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [*head, {"type": "image"}, {"type": "text", "text": instruction}]}]  # fmt: skip


def edit_texts(pipe, instructions, completions, with_response: bool = True) -> list[str]:
    """Encode template per instruction (+ completion + <|im_end|> as the assistant turn when there is one; a None or
    empty completion, e.g. a CFG negative, gives the pipeline's plain template)."""
    image = PLUS_IMAGE_PREFIX + "<|vision_start|><|image_pad|><|vision_end|>" if is_plus(pipe) else ""
    return [pipe.prompt_template_encode.format(image + i) + (f"{c}<|im_end|>" if with_response and c else "")
            for i, c in zip(instructions, completions, strict=True)]  # fmt: skip


def edit_embeddings(model, processor, pipe, images, instructions, completions, with_response=True):
    """prompt_embeds [B, L, D] and mask [B, L] from ONE batched forward of `model` (LoRA active) over edit_texts with
    `images` (vlm_view of each source); the first `prompt_template_encode_start_idx` tokens of each unpadded row are
    dropped and nothing else, as QwenImageEdit(Plus)Pipeline._get_qwen_prompt_embeds does."""
    import torch

    texts = edit_texts(pipe, instructions, completions, with_response)
    inputs = processor(text=texts, images=list(images), padding=True, return_tensors="pt").to(model.device)
    was_training = model.training
    model.eval()  # no LoRA dropout while conditioning
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA layers stay active
    with torch.no_grad():
        # the pipeline's inputs exactly (the processor's extra mm_token_type_ids would change transformers 5's
        # multimodal RoPE indices); the decoder without the LM head: its last state is hidden_states[-1], and
        # vocabulary logits for ~2,500 tokens per row would cost GBs
        keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")
        hidden = base.model(**{k: inputs[k] for k in keys}).last_hidden_state
    model.train(was_training)
    drop = pipe.prompt_template_encode_start_idx
    rows = [h[m.bool()][drop:] for h, m in zip(hidden, inputs["attention_mask"], strict=True)]
    length = max(len(r) for r in rows)
    embeds = torch.stack([torch.cat([r, r.new_zeros(length - len(r), r.shape[1])]) for r in rows])
    mask = torch.stack([torch.arange(length, device=embeds.device) < len(r) for r in rows]).long()
    return embeds, mask


def edit_conditions(model, processor, pipe, images, instructions, completions, args: ScriptArguments):
    """(embeds, mask, neg, neg_mask): completions and, only when true CFG is on, the blank negative prompts (" ", the
    pipeline's own negative, with the same image), all in the one batched forward of edit_embeddings."""
    n, cfg = len(images), args.true_cfg_scale > 1
    embeds, mask = edit_embeddings(model, processor, pipe, list(images) * (1 + cfg), list(instructions) + [" "] * n * cfg,
                                   list(completions) + [None] * n * cfg, args.with_response)  # fmt: skip
    return embeds[:n], mask[:n], (embeds[n:] if cfg else None), (mask[n:] if cfg else None)


def edit_dataset(pipe, rows: list[dict]):
    """GRPOTrainer rows: the conversation in the pipeline's template; `image` = the VLM's view (TRL puts it into the
    prompt for generation), `source` = the original (the pipeline's VAE path), `record` = the group id for seeding."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": edit_messages(pipe, r["instruction"]), "image": vlm_view(pipe, r["image"]), "source": r["image"],
                               "instruction": r["instruction"], "record": n} for n, r in enumerate(rows)])  # fmt: skip


def render_edits(pipe, sources, embeds, mask, neg, neg_mask, seeds, args: ScriptArguments, device) -> list:
    """Edited images, one generator per edit. Edit: calls of --edit_batch_size equal-size sources (a call is sized from
    its first image); Plus: one edit per call. Sources are the originals: the pipeline resizes them for its VAE exactly
    as vlm_view did for the VLM. With --pipeline_cpu_offload the DiT and VAE visit `device` for this call only."""
    import torch

    size = 1 if is_plus(pipe) else args.edit_batch_size
    chunks, cur = [], []
    for i in sorted(range(len(sources)), key=lambda i: sources[i].size):
        if cur and (len(cur) == size or sources[cur[0]].size != sources[i].size):
            chunks.append(cur)
            cur = []
        cur.append(i)
    chunks += [cur] if cur else []
    out = [None] * len(sources)
    if args.pipeline_cpu_offload:
        pipe.to(device)
    try:
        for idx in chunks:
            kw = dict(true_cfg_scale=args.true_cfg_scale, num_inference_steps=args.num_inference_steps)  # explicit CFG
            for name, e, m in (("prompt_embeds", embeds, mask), ("negative_prompt_embeds", neg, neg_mask)):
                if e is not None:  # padding shared by the whole call is trimmed away
                    keep = int(m[idx].sum(1).max())
                    kw.update({name: e[idx, :keep], f"{name}_mask": m[idx, :keep]})
            # Plus reads a list as several reference images for ONE edit
            image = sources[idx[0]] if is_plus(pipe) else [sources[i] for i in idx]
            generator = [torch.Generator("cpu").manual_seed(seeds[i]) for i in idx]
            with torch.no_grad():
                for i, im in zip(idx, pipe(image=image, generator=generator, **kw).images, strict=True):
                    out[i] = im
    finally:
        if args.pipeline_cpu_offload:
            pipe.to("cpu")
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return out


########################
# Reward: render with the current policy's embeddings, then judge
########################
def data_url(image) -> str:
    image = image.copy()
    image.thumbnail((1024, 1024))  # a 12 MP source is not sent whole (the judge API downsizes anyway)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


async def judge_edit(client, args: ScriptArguments, source, edited, instruction: str) -> tuple[float | None, int]:
    """(mean over the --judge_n_evals calls that succeeded of (w_if IF + w_q Q) / 10, or None if all failed; failures)."""
    from pydantic import BaseModel, Field

    class EditScore(BaseModel):
        reasoning: str
        instruction_following: int = Field(ge=0, le=10)
        perceptual_quality: int = Field(ge=0, le=10)

    content = [{"type": "image_url", "image_url": {"url": data_url(source)}}, {"type": "image_url", "image_url": {"url": data_url(edited)}},
               {"type": "text", "text": f"The edit instruction is:\n{instruction}"}]  # fmt: skip
    fmt = {"type": "json_schema", "json_schema": {"name": "edit_score", "schema": EditScore.model_json_schema()}}
    temperature = args.judge_temperature if args.judge_temperature is not None else float(args.judge_n_evals > 1)

    async def one() -> float | None:
        for attempt in range(args.judge_retries + 1):
            try:
                res = await client.chat.completions.create(model=args.judge_model, response_format=fmt, temperature=temperature, timeout=args.judge_timeout,
                                                           messages=[{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": content}])  # fmt: skip
                s = EditScore.model_validate_json(res.choices[0].message.content)
                return (args.if_weight * s.instruction_following + args.quality_weight * s.perceptual_quality) / 10
            except Exception as e:  # API error, timeout, malformed JSON: retry, then give up on this call
                if attempt == args.judge_retries:
                    print(f"warning: judge call failed: {type(e).__name__}: {str(e)[:100]}", file=sys.stderr)
                    return None
                await asyncio.sleep(0.5 * 2**attempt)

    scores = [s for s in await asyncio.gather(*[one() for _ in range(args.judge_n_evals)]) if s is not None]
    return (sum(scores) / len(scores) if scores else None), args.judge_n_evals - len(scores)


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
        prompts, completions, image, source, instruction, record, trainer_state=None, log_metric=None, **kwargs
    ) -> list[float | None]:
        """Judge reward of the edit rendered under the current policy's embeddings: in [0, 1], higher is better, None
        when every judge call failed. Cost per call: one VLM forward, one pipeline call per --edit_batch_size edits
        (-2509: per edit), --judge_n_evals judge calls per edit. Runs on every rank for its own completions only."""
        from accelerate import PartialState
        from accelerate.utils import gather_object
        from openai import AsyncOpenAI

        dist, step = PartialState(), trainer_state.global_step if trainer_state is not None else 0
        texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
        t0 = time.perf_counter()
        conditions = edit_conditions(state["model"], processor, pipe, image, instruction, texts, args)
        t1 = time.perf_counter()
        # CRUCIAL: the seed comes from (seed, step, record), never from the rank: a group whose members land on
        # different ranks starts from the same noise everywhere, so its images differ only by the completions
        seeds = [zlib.crc32(f"{state['seed']}|{step}|{r}".encode()) for r in record]
        edited = render_edits(pipe, source, *conditions, seeds, args, state["device"])
        t2 = time.perf_counter()

        async def judge_all():
            async with AsyncOpenAI(base_url=args.judge_base_url, max_retries=0, timeout=args.judge_timeout) as client:
                # the judge compares the edit with the ORIGINAL (`image` is only the VLM's view, 448 x 320 for -2509)
                jobs = [judge_edit(client, args, s, e, i) for s, e, i in zip(source, edited, instruction, strict=True)]
                return await asyncio.gather(*jobs)

        judged = asyncio.run(judge_all())
        rewards = [r for r, _ in judged]
        if log_metric is not None:
            # TRL averages log_metric over ranks (total / count): a local count times the rank count averages to the sum
            log_metric("judge/failed_calls", float(sum(f for _, f in judged) * dist.num_processes))
            log_metric("judge/unscored", float(sum(r is None for r in rewards) * dist.num_processes))
            for name, sec in (("time/embed_s", t1 - t0), ("time/render_s", t2 - t1), ("time/judge_s", time.perf_counter() - t2)):  # fmt: skip
                log_metric(name, sec)
        rows = [dict(step=step, rank=dist.process_index, record=r, seed=s, instruction=i, completion=t, reward=w, tokens=int(m.sum()),
                     image_sha=hashlib.sha1(e.tobytes()).hexdigest()[:12])
                for r, s, i, t, w, m, e in zip(record, seeds, instruction, texts, rewards, conditions[1], edited, strict=True)]  # fmt: skip
        rows = gather_object(rows)  # every rank reaches this line: TRL calls reward functions on all ranks in step
        if dist.is_main_process:
            with open(Path(state["output_dir"]) / "traces.jsonl", "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
            if args.log_images_every and step % args.log_images_every == 0:  # the main process's own edits
                captions = [f"{i} | {t[:200]} | reward {r}" for i, t, r in zip(instruction, texts, rewards, strict=True)]  # fmt: skip
                grid = list(zip(source[:8], edited[:8], captions[:8], strict=True))
                save_grid(Path(state["output_dir"]) / "grids" / f"step{step:06d}.png", grid)
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
    pipe.to("cpu" if offload else device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


########################
# Training
########################
def train(args: ScriptArguments, training_args, model_args, rows: list[dict]):
    from accelerate import PartialState
    from transformers import AutoProcessor
    from trl import GRPOTrainer, get_peft_config

    ################
    # Model: the policy VLM doubles as the pipeline's text encoder
    ################
    dist = PartialState()  # GRPOConfig (use_cpu) exists already, so CPU ranks form their gloo group
    pipe = load_pipeline(args.pipeline, dist.device, args.pipeline_cpu_offload)
    training_args.model_init_kwargs = {**model_kwargs(model_args), **(training_args.model_init_kwargs or {})}
    processor = AutoProcessor.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    size = processor.image_processor.size
    if size != pipe.processor.image_processor.size and dist.is_main_process:  # the views would differ
        print(f"warning: the policy's image processor bounds differ from the pipeline's: {size}", file=sys.stderr)

    ################
    # Dataset
    ################
    dataset = edit_dataset(pipe, rows)

    ################
    # Reward and trainer
    ################
    state = {"output_dir": training_args.output_dir, "seed": training_args.seed, "device": dist.device}
    trainer = GRPOTrainer(
        model=model_args.model_name_or_path, reward_funcs=[get_edit_reward(pipe, processor, args, state)], args=training_args,
        train_dataset=dataset, processing_class=processor, peft_config=get_peft_config(model_args),
    )  # fmt: skip
    state["model"] = trainer.model  # LoRA-wrapped policy: embeddings always come from the current weights
    Path(training_args.output_dir).mkdir(parents=True, exist_ok=True)
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    per_step = training_args.per_device_train_batch_size * trainer.accelerator.num_processes * training_args.gradient_accumulation_steps  # fmt: skip
    if dist.is_main_process:
        print(f"{len(rows)} edits with {type(pipe).__name__}; {per_step} completions per optimizer step "
              f"({training_args.num_generations} per group); trainable parameters {trainable:,} "
              f"(LoRA: {model_args.use_peft})")  # fmt: skip
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except KeyboardInterrupt:
        trainer.save_model(str(Path(training_args.output_dir) / "interrupted"))
        raise
    trainer.save_model(training_args.output_dir)


########################
# Inference (no GRPOConfig, no accelerate)
########################
def load_policy(path: str, model_args):
    """(model, processor); a LoRA output folder is its base model + the adapter, merged (peft 0.21 has no Auto class
    for image-text-to-text models, so PeftModel.from_pretrained on the loaded base is the supported way)."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    adapter, kwargs = Path(path).expanduser() / "adapter_config.json", model_kwargs(model_args)
    if not adapter.is_file():
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
        return model, AutoProcessor.from_pretrained(path, revision=kwargs["revision"])
    from peft import PeftModel

    base = json.loads(adapter.read_text())["base_model_name_or_path"]
    kwargs.pop("revision")  # --model_revision names the adapter folder's revision, not its base's
    model = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base, **kwargs), path)
    return model.merge_and_unload(), AutoProcessor.from_pretrained(path)  # the trainer saved the processor with it


def infer(args: ScriptArguments, model_args, instruction: str):
    import torch

    source = open_image(args.image)
    device = torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")  # fmt: skip
    model, processor = load_policy(model_args.model_name_or_path, model_args)  # --dtype: bf16 on CUDA, else fp32
    model = model.to(device).eval()
    pipe = load_pipeline(args.pipeline, device, args.pipeline_cpu_offload)
    view = vlm_view(pipe, source)
    text = processor.apply_chat_template(edit_messages(pipe, instruction), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[view], return_tensors="pt").to(device)
    with torch.no_grad():
        out = model.generate(**inputs, do_sample=False, max_new_tokens=args.max_new_tokens)
    description = processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0].strip()
    conditions = edit_conditions(model, processor, pipe, [view], [instruction], [description], args)
    edited = render_edits(pipe, [source], *conditions, [args.edit_seed], args, device)[0]
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    edited.save(args.output)
    print(f"saved {args.output}", file=sys.stderr)
    print(" ".join(description.split()) or "(empty description)")


def main(argv=None):
    import torch
    from trl import ModelConfig

    parser = make_parser()
    # a bool flag takes an optional value (HfArgumentParser: nargs="?"), so `--pipeline_cpu_offload "make it blue"`
    # would read the instruction as that value: a bare bool flag followed by a word gets an explicit `true`
    argv = sys.argv[1:] if argv is None else list(argv)
    bools = {s for a in parser._actions if a.nargs == "?" for s in a.option_strings}
    values = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}
    bare = [a in bools and i + 1 < len(argv) and argv[i + 1][:1] != "-" and argv[i + 1].lower() not in values
            for i, a in enumerate(argv)]  # fmt: skip
    argv = [w for a, b in zip(argv, bare, strict=True) for w in ((a, "true") if b else (a,))]
    cuda, note = torch.cuda.is_available(), None
    if not cuda or not torch.cuda.is_bf16_supported():  # before parsing, so --config / CLI values still win
        note = "no CUDA device: training on the CPU" if not cuda else "this GPU has no bf16: training"
        note += f" in fp32 (use_cpu={not cuda}, bf16=False, dtype float32)"
        parser.set_defaults(use_cpu=not cuda, bf16=False, dtype="float32")
    # positional words anywhere are the instruction: parse_known_args knows every option of the three dataclasses
    # (so an option's value is never taken for a word) and builds none of them (GRPOConfig's device checks don't run)
    stripped, skip = [], False
    for a in argv:  # --config FILE is TrlParser's own, not an argparse option; read it for the inference path
        if skip:
            try:
                parser.set_defaults_with_config(**{k: v for k, v in read_config(a).items() if k != "env"})
            except ValueError as e:
                fail(str(e))
        elif a != "--config":
            stripped.append(a)
        skip = a == "--config"
    namespace, words = parser.parse_known_args(stripped)
    if any(w.startswith("-") for w in words):
        fail(f"unrecognised arguments: {' '.join(w for w in words if w.startswith('-'))}")
    if words:  # inference
        args = ScriptArguments(**{f.name: getattr(namespace, f.name) for f in fields(ScriptArguments)})
        instruction = " ".join(words).strip()
        try:
            model_args = ModelConfig(**{f.name: getattr(namespace, f.name) for f in fields(ModelConfig) if f.init})
            if model_args.load_in_4bit or model_args.load_in_8bit:
                raise ValueError("--load_in_4bit / --load_in_8bit are for training (inference loads --dtype weights)")
            if not instruction:
                raise ValueError("empty instruction")
            if not args.image:
                raise ValueError("give the source image with --image")
            open_image(args.image)
            check_args(args, model_args.model_name_or_path)
        except ValueError as e:
            fail(str(e))
        return infer(args, model_args, instruction)
    if note and is_main():
        print(f"note: {note}")
    try:  # training: user errors before any model loads
        args, training_args, model_args = parser.parse_args_and_config(argv)
        check_args(args, model_args.model_name_or_path)
        if not args.with_response:  # a group shares its conditioning and seed: identical images, zero advantages
            raise ValueError("--with_response false is for inference: in training it gives a group identical edits")
        if not os.environ.get("OPENAI_API_KEY"):
            raise ValueError("the judge needs OPENAI_API_KEY in the environment (any value for a local server)")
        rows = read_rows(args.data)
    except (ValueError, OSError) as e:
        fail(str(e).strip().splitlines()[0])
    train(args, training_args, model_args, rows)


if __name__ == "__main__":
    main()
