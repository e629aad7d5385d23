# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.35", "trl>=1.0", "peft>=0.17", "accelerate>=1.10",
#                 "openai>=1.60", "pydantic>=2.0", "datasets>=3.0", "imageio>=2.34", "imageio-ffmpeg>=0.5", "open_clip_torch>=3.0"]
# ///
"""Video prompt enhancer: an LLM learns to expand a simple video prompt into a detailed one, first by SFT on
(simple, detailed) pairs, then online against a real video generator whose videos are scored against the SIMPLE prompt.

README section: "video_enhancer.py". Reference: dariakryvosheieva/video-prompt-enhancer (MIT 6.7920 project, technical
report in the repo): Qwen2.5-14B-Instruct + LoRA (r 16, alpha 32, dropout 0.05, all attention/MLP projections);
stage 1 next-token SFT on 1,140 synthetic pairs (lr 2e-4, 3 epochs, batch 8, ~20 min on one H200); stage 2 online PPO
(trl 0.8.6): the model writes a detailed prompt, Sora renders a 4 s video, VisionReward-Video (29 weighted yes/no
questions answered by CogVLM2-Video) scores it against the simple prompt; 50 PPO steps (~8 h). The report found the
stage-2 reward curve flat to slightly declining and could not tell whether either stage helped.

Differences from the reference:
1. Prompts use the model's chat template (system instruction in our own words + the simple prompt as the user turn);
   upstream concatenated raw strings and dropped the spaces between its sentences.
2. Stage 2 is GRPO (TRL 1.16 has no PPOTrainer): a group of --num_generations detailed prompts per simple prompt with
   the group mean as baseline replaces PPO's value head; clipped surrogate, explicit beta (KL to the stage-1 adapter)
   instead of upstream's adaptive KL (init 0.2, target 6).
3. Videos come from a local diffusers text-to-video pipeline by default (Wan2.1-T2V-1.3B, batched per group, seeded);
   OpenAI's Sora API (upstream) was shut down on 2026-09-24. `--video_backend openai` still speaks the `/videos` API to
   any compatible server.
4. Reward = score.py metrics on --reward_frames sampled frames, averaged (default CLIP alignment + 0.1 x aesthetic),
   plus an optional checklist judge in VisionReward's spirit (weighted yes/no questions, any OpenAI-compatible VLM).
   VisionReward-Video itself needs transformers 4.42 and remote code: run it as a separate server if wanted.
5. A failed video or judge call gives None for that sample (TRL skips it) and is counted; upstream dropped the batch.

Usage (run from the repository root):
    python video_enhancer.py --stage sft --data recipes/video_pairs.json --model_name_or_path Qwen/Qwen2.5-14B-Instruct \\
        --output_dir runs/video_sft
    accelerate launch video_enhancer.py --stage rl --data recipes/video_pairs.json --sft_adapter runs/video_sft \\
        --output_dir runs/video --video_model Wan-AI/Wan2.1-T2V-1.3B-Diffusers [--judge_model gpt-4o]
    python video_enhancer.py "a dog surfing at sunset" --model_name_or_path runs/video --generate_video out.mp4
    # the same settings as recipes: --config recipes/video_sft.yaml / --config recipes/video_rl.yaml (holds the stage)
    # CPU smoke runs: tests/test_video_enhancer.py (tiny Qwen2, tiny Wan, tiny scorers, loopback API server)
Expected: SFT loss falls within the first epoch; stage-2 reward is noisy (upstream saw no clear trend in 50 steps).
Hardware: 14B + LoRA in bf16 and Wan 1.3B (33 frames 480p) fit one 80 GB GPU; not measured here (no GPU available).
"""

import asyncio
import base64
import hashlib
import io
import json
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

SYSTEM_PROMPT = (
    "You turn short video ideas into detailed prompts for a text-to-video model. Keep the idea and any style it names "
    "(anime, pixel art, 3D, cartoon, ...). Describe the subject, action and motion, setting, camera movement, "
    "lighting, colour and mood in concrete visual terms, in one paragraph. Reply with the prompt only."
)
CHECKLIST = [  # (question about the simple prompt / the video, weight): alignment first, as in VisionReward
    ("Does the video show everything the prompt '{prompt}' asks for?", 1.0),
    ("Does the video match the main subject and action of '{prompt}'?", 0.5),
    ("Is the style of the video the one the prompt asks for (or photographic if none is named)?", 0.5),
    ("Are the objects and people well formed, without distorted shapes?", 0.5),
    ("Is the scene consistent from frame to frame?", 0.5),
    ("Is there visible, natural motion?", 0.3),
    ("Are lighting and colours pleasing?", 0.3),
    ("Is the video free of artefacts such as noise, blur or garbled text?", 0.3),
]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class ScriptArguments:
    stage: str = field(default="sft", metadata={"help": "sft (stage 1) or rl (stage 2)."})
    data: str | None = field(
        default=None,
        metadata={
            "help": 'Pairs JSON/JSONL {"simple", "detailed"} (or the seed layout); rl also takes a list of strings.'
        },
    )
    sft_adapter: str | None = field(default=None, metadata={"help": "rl: stage-1 LoRA folder to continue from."})
    # video generation
    video_backend: str = field(
        default="diffusers", metadata={"help": "diffusers (local pipeline) or openai (/videos API)."}
    )
    video_model: str = field(
        default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", metadata={"help": "Pipeline id, or the API model name."}
    )
    num_frames: int = field(default=33, metadata={"help": "Frames (Wan: 4k+1)."})
    height: int = field(default=480, metadata={"help": "Video height."})
    width: int = field(default=832, metadata={"help": "Video width."})
    num_inference_steps: int = field(default=30, metadata={"help": "Denoising steps."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Classifier-free guidance (Wan default 5)."})
    fps: int = field(default=16, metadata={"help": "Frames per second of written mp4 files."})
    video_batch_size: int = field(default=4, metadata={"help": "Videos per pipeline call (a group)."})
    video_base_url: str | None = field(
        default=None, metadata={"help": "openai backend: base URL (key from OPENAI_API_KEY)."}
    )
    video_seconds: str = field(default="4", metadata={"help": "openai backend: clip length."})
    video_size: str = field(default="720x1280", metadata={"help": "openai backend: size."})
    poll_interval: float = field(default=10.0, metadata={"help": "openai backend: seconds between status polls."})
    video_timeout: float = field(
        default=1800.0, metadata={"help": "openai backend: give up on a job after this long."}
    )
    video_retries: int = field(default=2, metadata={"help": "openai backend: retries per video."})
    cache_dir: str | None = field(default=None, metadata={"help": "Video cache (default <output_dir>/video_cache)."})
    # reward
    reward_metrics: str = field(
        default="clip:1,aesthetic:0.1", metadata={"help": "score.py metrics:weights on frames."}
    )
    reward_frames: int = field(default=4, metadata={"help": "Frames sampled evenly per video for scoring."})
    judge_model: str | None = field(default=None, metadata={"help": "Checklist VLM judge; enables the judge reward."})
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL for the judge."})
    judge_retries: int = field(default=3, metadata={"help": "Retries per judge call."})
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per judge request before it is retried."})
    # inference
    generate_video: str | None = field(
        default=None, metadata={"help": "Inference: render the enhanced prompt to this mp4."}
    )
    max_new_tokens: int = field(default=256, metadata={"help": "Inference: new tokens (upstream 256)."})
    video_seed: int = field(default=0, metadata={"help": "Inference: video seed."})


def fail(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def build_messages(simple: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": simple.strip()}]


def load_pairs(path: str, need_detailed: bool = True) -> list[dict]:
    """{"simple", "detailed"} records from JSON / JSONL, the seed's {"pair_N": {"lay", "elaborate"}} layout, or (rl) a
    JSON list / .txt of simple prompts. Raises ValueError naming the first bad record (1-based)."""
    p = Path(path or "")
    if not path or not p.is_file():
        raise ValueError(f"data file not found: {path}")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".txt":
        records = [line for line in text.splitlines() if line.strip()]
    elif p.suffix == ".jsonl":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        data = json.loads(text or "[]")
        records = [data[k] for k in sorted(data)] if isinstance(data, dict) else data
    pairs = []
    for i, r in enumerate(records, 1):
        if isinstance(r, str) and not need_detailed:
            r = {"simple": r}
        r = (
            {"simple": r.get("simple", r.get("lay")), "detailed": r.get("detailed", r.get("elaborate"))}
            if isinstance(r, dict)
            else None
        )
        if r is None or not isinstance(r["simple"], str) or not r["simple"].strip():
            raise ValueError(f"{p}: record {i} has no simple prompt")
        if need_detailed and (not isinstance(r["detailed"], str) or not r["detailed"].strip()):
            raise ValueError(f"{p}: record {i} has no detailed prompt")
        pairs.append(r)
    if not pairs:
        raise ValueError(f"{p}: no records")
    return pairs


def check_mp4_writer():
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:
        raise ValueError(f"no mp4 writer available (pip install imageio-ffmpeg): {e}") from None


########################
# Videos: local diffusers pipeline or an OpenAI-compatible /videos API, behind a content-hash cache
########################
class Videos:
    """`videos(prompts, seeds) -> list[path | None]`: cached by sha256(prompt, seed, backend, model, settings)."""

    def __init__(self, args: ScriptArguments, cache_dir: str, device=None):
        self.args, self.cache = args, Path(cache_dir)
        self.cache.mkdir(parents=True, exist_ok=True)
        self.hits = self.misses = self.failures = 0
        settings = (args.num_frames, args.height, args.width, args.num_inference_steps, args.guidance_scale, args.fps)
        if args.video_backend == "openai":
            settings = (args.video_seconds, args.video_size)
        self.settings = [args.video_backend, args.video_model, *settings]
        if args.video_backend == "diffusers":
            import torch
            from diffusers import DiffusionPipeline

            dtype = torch.bfloat16 if device is not None and device.type == "cuda" else torch.float32
            self.pipe = DiffusionPipeline.from_pretrained(args.video_model, dtype=dtype).to(device or "cpu")
            self.pipe.set_progress_bar_config(disable=True)

    def path(self, prompt: str, seed: int) -> Path:
        key = hashlib.sha256(json.dumps([prompt, seed, *self.settings]).encode()).hexdigest()
        return self.cache / f"{key}.mp4"

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[str | None]:
        paths = [self.path(p, s) for p, s in zip(prompts, seeds, strict=True)]
        todo = [i for i, p in enumerate(paths) if not p.exists()]
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        if todo:
            make = self._diffusers if self.args.video_backend == "diffusers" else self._openai
            ok = make([prompts[i] for i in todo], [seeds[i] for i in todo], [paths[i] for i in todo])
            self.failures += sum(not o for o in ok)
        return [str(p) if p.exists() else None for p in paths]

    def _diffusers(self, prompts, seeds, paths) -> list[bool]:
        import imageio.v3 as iio
        import numpy as np
        import torch

        a = self.args
        for i in range(0, len(prompts), a.video_batch_size):
            gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + a.video_batch_size]]
            with torch.no_grad():
                frames = self.pipe(prompt=prompts[i : i + a.video_batch_size], generator=gens, num_frames=a.num_frames, height=a.height,
                                   width=a.width, num_inference_steps=a.num_inference_steps, guidance_scale=a.guidance_scale, output_type="np").frames  # fmt: skip
            for video, path in zip(frames, paths[i : i + a.video_batch_size], strict=True):
                iio.imwrite(
                    path, (np.asarray(video) * 255).round().clip(0, 255).astype("uint8"), fps=a.fps, codec="libx264"
                )
        return [True] * len(prompts)

    def _openai(self, prompts, seeds, paths) -> list[bool]:
        """Create all jobs, poll until done or timeout, download; each video retried, then left as a failure (None)."""
        from openai import OpenAI

        a, client = self.args, OpenAI(base_url=self.args.video_base_url, max_retries=0, timeout=60.0)
        ok = [False] * len(prompts)
        for attempt in range(a.video_retries + 1):
            jobs = {}
            for i in (i for i in range(len(prompts)) if not ok[i]):  # Sora has no seed: it only keys the cache
                try:
                    jobs[i] = client.videos.create(
                        model=a.video_model, prompt=prompts[i], seconds=a.video_seconds, size=a.video_size
                    ).id
                except Exception as e:
                    print(f"warning: video create failed: {type(e).__name__}: {str(e)[:100]}", file=sys.stderr)
            deadline = time.monotonic() + a.video_timeout
            while jobs and time.monotonic() < deadline:
                for i, job in list(jobs.items()):
                    try:
                        status = client.videos.retrieve(job).status
                        if status == "completed":
                            paths[i].write_bytes(client.videos.download_content(job).read())
                            ok[i] = True
                        if status in ("completed", "failed"):
                            del jobs[i]
                    except Exception as e:
                        print(f"warning: video poll failed: {type(e).__name__}: {str(e)[:100]}", file=sys.stderr)
                        del jobs[i]
                if jobs:
                    time.sleep(a.poll_interval)
            if all(ok):
                break
            time.sleep(min(0.5 * 2**attempt, 10.0))
        return ok


def sample_frames(path: str, n: int) -> list:
    """n frames evenly spaced over the clip, as PIL images."""
    import imageio.v3 as iio
    from PIL import Image

    video = iio.imread(path, extension=".mp4")
    idx = [round(i * (len(video) - 1) / max(n - 1, 1)) for i in range(n)]
    return [Image.fromarray(video[i]) for i in idx]


########################
# Rewards
########################
def get_video_reward(videos: Videos, scorer, args: ScriptArguments, seed: int, state: dict):
    def video_reward(
        prompts, completions, simple, trainer_state=None, log_metric=None, **kwargs
    ) -> list[float | None]:
        """Mean over --reward_frames frames of the weighted score.py metrics vs the SIMPLE prompt; None if no video."""
        flush_traces(state)
        step = trainer_state.global_step if trainer_state is not None else 0
        detailed = [
            (c if isinstance(c, str) else c[-1]["content"]).strip() or s
            for c, s in zip(completions, simple, strict=True)
        ]
        seeds = [
            zlib.crc32(f"{seed}|{step}|{s}".encode()) for s in simple
        ]  # one seed per group: members differ by prompt
        hits, t0 = videos.hits, time.perf_counter()
        paths = videos(detailed, seeds)
        frames = [sample_frames(p, args.reward_frames) if p else [] for p in paths]
        flat = [f for fs in frames for f in fs]
        total, details = (
            scorer(flat, [s for s, fs in zip(simple, frames, strict=True) for _ in fs]) if flat else ([], {})
        )
        rewards, k = [], 0
        for fs in frames:
            rewards.append(sum(total[k : k + len(fs)]) / len(fs) if fs else None)
            k += len(fs)
        state.update(step=step, frames=frames, simple=list(simple), records=[
            {"step": step, "simple_prompt": s, "detailed_prompt": d, "seed": sd, "video_path": p, "video_reward": r}
            for s, d, sd, p, r in zip(simple, detailed, seeds, paths, rewards, strict=True)])  # fmt: skip
        if log_metric is not None:
            log_metric("video/cache_hits", float(videos.hits - hits))
            log_metric("video/failures", float(sum(p is None for p in paths)))
            log_metric("time/video_s", time.perf_counter() - t0)
            for name, vals in details.items():
                log_metric(f"video/{name}", sum(vals) / len(vals))
        return rewards

    return video_reward


def flush_traces(state: dict):
    """Append the previous step's per-sample records (with every reward, judge included) to traces.jsonl."""
    if state.get("records"):
        with open(state["trace_path"], "a") as f:
            for r in state.pop("records"):
                f.write(json.dumps(r) + "\n")


async def judge_one(client, model: str, frames: list, prompt: str, retries: int) -> float | None:
    """Checklist score sum_i w_i a_i / sum_i w_i with a_i = +1 (yes) / -1 (no); None after the last failed retry."""
    from pydantic import BaseModel

    class Answers(BaseModel):
        answers: list[bool]

    questions = "\n".join(f"{i + 1}. {q.format(prompt=prompt)}" for i, (q, _) in enumerate(CHECKLIST))
    content = [{"type": "text", "text": f"These are frames of one video made for the prompt '{prompt}'. Answer each "
                                        f"question with true (yes) or false (no), in order:\n{questions}"}]  # fmt: skip
    for im in frames:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        content.append(
            {
                "type": "image_url",
                "image_url": {
                    "url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode(),
                    "detail": "low",
                },
            }
        )
    fmt = {"type": "json_schema", "json_schema": {"name": "checklist", "schema": Answers.model_json_schema()}}
    for attempt in range(retries + 1):
        try:
            res = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": content}], response_format=fmt
            )
            answers = Answers.model_validate_json(res.choices[0].message.content).answers
            if len(answers) != len(CHECKLIST):
                raise ValueError(f"{len(answers)} answers for {len(CHECKLIST)} questions")
            return sum(w * (1 if a else -1) for (_, w), a in zip(CHECKLIST, answers, strict=True)) / sum(
                w for _, w in CHECKLIST
            )
        except Exception as e:  # API errors, timeouts, malformed JSON: retried, then None
            if attempt == retries:
                print(
                    f"warning: judge failed after {retries + 1} tries: {type(e).__name__}: {str(e)[:100]}",
                    file=sys.stderr,
                )
                return None
            await asyncio.sleep(0.5 * 2**attempt)


def get_judge_reward(args: ScriptArguments, state: dict):
    async def judge_reward(prompts, completions, log_metric=None, **kwargs) -> list[float | None]:
        """VLM checklist on the frames video_reward sampled (async: TRL runs it after the sync rewards); in [-1, 1]."""
        from openai import AsyncOpenAI

        async with AsyncOpenAI(base_url=args.judge_base_url, max_retries=0, timeout=args.judge_timeout) as client:
            jobs = [
                judge_one(client, args.judge_model, f, s, args.judge_retries) if f else asyncio.sleep(0)
                for f, s in zip(state["frames"], state["simple"], strict=True)
            ]
            scores = list(await asyncio.gather(*jobs))
        for record, s in zip(state["records"], scores, strict=True):
            record["judge_reward"] = s
        if log_metric is not None:
            log_metric(
                "judge/failures", float(sum(s is None for s, f in zip(scores, state["frames"], strict=True) if f))
            )
        return scores

    return judge_reward


########################
# Stage 1: SFT
########################
def sft(args: ScriptArguments, training_args, model_args):
    from datasets import Dataset
    from trl import SFTTrainer, get_peft_config

    try:
        pairs = load_pairs(args.data)
    except (ValueError, json.JSONDecodeError) as e:
        fail(str(e))
    # conversational prompt/completion: SFTTrainer puts the loss on the completion (+ EOS) only
    dataset = Dataset.from_list(
        [
            {
                "prompt": build_messages(p["simple"]),
                "completion": [{"role": "assistant", "content": p["detailed"].strip()}],
            }
            for p in pairs
        ]
    )
    if model_args.dtype not in (None, "auto"):
        training_args.model_init_kwargs = {**(training_args.model_init_kwargs or {}), "dtype": model_args.dtype}
    trainer = SFTTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset,
        peft_config=get_peft_config(model_args),
    )
    print(
        f"{len(pairs)} pairs; effective batch {training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * trainer.accelerator.num_processes}"
    )
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except KeyboardInterrupt:
        trainer.save_model(str(Path(training_args.output_dir) / "interrupted"))
        raise
    trainer.save_model(training_args.output_dir)


########################
# Stage 2: online RL (GRPO)
########################
def rl(args: ScriptArguments, training_args, model_args):
    from accelerate import PartialState
    from datasets import Dataset
    from trl import GRPOTrainer, get_peft_config

    import score

    try:
        pairs = load_pairs(args.data, need_detailed=False)
        weights = score.parse_metric_weights(args.reward_metrics)
        check_mp4_writer()
        if args.judge_model and not os.environ.get("OPENAI_API_KEY"):
            raise ValueError("--judge_model needs OPENAI_API_KEY in the environment (any value for a local server)")
        if args.video_backend not in ("diffusers", "openai"):
            raise ValueError(f"unknown --video_backend {args.video_backend!r}: diffusers or openai")
        if args.video_backend == "openai" and not os.environ.get("OPENAI_API_KEY"):
            raise ValueError("--video_backend openai needs OPENAI_API_KEY in the environment")
    except (ValueError, json.JSONDecodeError) as e:
        fail(str(e))

    ################
    # Model: continue the stage-1 adapter (trainable), or start LoRA from --model_name_or_path
    ################
    model, peft_config = model_args.model_name_or_path, get_peft_config(model_args)
    if args.sft_adapter:
        from peft import AutoPeftModelForCausalLM

        model, peft_config = AutoPeftModelForCausalLM.from_pretrained(args.sft_adapter, is_trainable=True), None

    ################
    # Dataset and reward
    ################
    simple = list(dict.fromkeys(p["simple"].strip() for p in pairs))
    dataset = Dataset.from_dict({"prompt": [build_messages(s) for s in simple], "simple": simple})
    device = PartialState().device
    state = {"trace_path": Path(training_args.output_dir) / "traces.jsonl"}
    state["trace_path"].parent.mkdir(parents=True, exist_ok=True)
    videos = Videos(args, args.cache_dir or str(Path(training_args.output_dir) / "video_cache"), device)
    reward_funcs = [
        get_video_reward(videos, score.MultiScorer(weights, device=device), args, training_args.seed, state)
    ]
    if args.judge_model:
        reward_funcs.append(get_judge_reward(args, state))

    ################
    # Trainer
    ################
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=dataset, peft_config=peft_config
    )
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except KeyboardInterrupt:
        trainer.save_model(str(Path(training_args.output_dir) / "interrupted"))
        raise
    finally:
        flush_traces(state)
        print(
            f"videos: {videos.hits} cache hits, {videos.misses} generated, {videos.failures} failed", file=sys.stderr
        )
    trainer.save_model(training_args.output_dir)


########################
# Inference (no trainer config, no accelerate)
########################
def infer(args: ScriptArguments, model_args, prompts: list[str]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    path = model_args.model_name_or_path
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if (Path(path) / "adapter_config.json").is_file():  # a LoRA folder from either stage
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model, tok = model.to(device).eval(), AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(build_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=False,
            max_new_tokens=args.max_new_tokens,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )
    enhanced = [
        t.strip() or p
        for t, p in zip(
            tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True), prompts, strict=True
        )
    ]
    if args.generate_video:
        del model
        videos = Videos(args, str(Path(args.generate_video).parent / ".video_cache"), device)
        video = videos(enhanced[-1:], [args.video_seed])[0]
        if video is None:
            fail("video generation failed")
        Path(args.generate_video).write_bytes(Path(video).read_bytes())
        print(f"saved {args.generate_video}", file=sys.stderr)
    for e in enhanced:
        print(" ".join(e.split()))  # one line per prompt: the last stdout line is the (last) enhanced prompt


STAGE_DEFAULTS = {
    "sft": dict(learning_rate=2e-4, num_train_epochs=3, per_device_train_batch_size=1, gradient_accumulation_steps=8,
                lr_scheduler_type="cosine", warmup_steps=13, logging_steps=10, save_steps=200, save_total_limit=3,
                seed=42, max_length=1024, gradient_checkpointing=True),
    "rl": dict(learning_rate=5e-6, num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=1,
               num_train_epochs=1, temperature=0.7, top_p=0.95, max_completion_length=256, beta=0.04, logging_steps=1,
               save_steps=10, seed=42),
}  # fmt: skip
PEFT_DEFAULTS = dict(use_peft=True, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target_modules=LORA_TARGETS)


def main(argv=None):
    import argparse

    from trl import ModelConfig, TrlParser

    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and not argv[0].startswith("-"):  # inference: prompts first
        parser = TrlParser((ScriptArguments, ModelConfig), allow_abbrev=False)
        args, model_args, prompts = parser.parse_args_and_config(argv, return_remaining_strings=True)
        if any(p.startswith("-") for p in prompts):
            fail(f"unrecognised arguments: {' '.join(p for p in prompts if p.startswith('-'))}")
        if any(not p.strip() for p in prompts) or not model_args.model_name_or_path:
            fail("give non-empty prompts and --model_name_or_path")
        if args.generate_video:
            try:
                check_mp4_writer()
            except ValueError as e:
                fail(str(e))
            if args.video_backend not in ("diffusers", "openai"):
                fail(f"unknown --video_backend {args.video_backend!r}: diffusers or openai")
            if args.video_backend == "openai" and not os.environ.get("OPENAI_API_KEY"):
                fail("--video_backend openai needs OPENAI_API_KEY in the environment")
        return infer(args, model_args, prompts)
    stage = argparse.ArgumentParser(add_help=False)
    stage.add_argument("--stage", default=None)
    stage.add_argument("--config", default=None)
    known = stage.parse_known_args(argv)[0]
    name = known.stage
    if name is None and known.config:  # the stage picks the config class, so read it from the recipe first
        import yaml

        if not Path(known.config).is_file():
            fail(f"config file not found: {known.config}")
        name = (yaml.safe_load(Path(known.config).read_text()) or {}).get("stage")
    name = name or "sft"
    if name not in STAGE_DEFAULTS:
        fail(f"unknown --stage {name!r}: sft or rl")
    if name == "sft":
        from trl import SFTConfig as Config
    else:
        from trl import GRPOConfig as Config
    parser = TrlParser((ScriptArguments, Config, ModelConfig))
    parser.set_defaults(**STAGE_DEFAULTS[name], **PEFT_DEFAULTS)
    args, training_args, model_args = parser.parse_args_and_config(argv)
    if name == "sft":
        sft(args, training_args, model_args)
    else:
        rl(args, training_args, model_args)


if __name__ == "__main__":
    main()
