# SPDX-License-Identifier: Apache-2.0
# /// script
# requires-python = ">=3.10"
# dependencies = ["torch", "transformers>=5.0", "diffusers>=0.40", "trl>=1.16", "peft>=0.17", "accelerate>=1.10",
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
   any compatible server (a job that outlives --video_timeout is deleted before the retry, so it is never paid twice).
4. Reward = score.py metrics on --reward_frames sampled frames, averaged (default CLIP alignment + 0.1 x aesthetic),
   plus an optional checklist judge in VisionReward's spirit (weighted yes/no questions, any OpenAI-compatible VLM;
   questions and weights in the recipe). Each reward is normalised within its group before the weighted sum
   (GRPOConfig multi_objective_aggregation="normalize_then_sum", GDPO), so the judge's +-1 cannot drown the frame score.
   VisionReward-Video itself needs transformers 4.42 and remote code: run it as a separate server if wanted.
5. A failed video or judge call gives None for that sample (TRL skips it) and is counted; upstream dropped the batch.

Usage (run from the repository root; bf16 LLM weights and autocast on CUDA, fp32 on CPU, picked by the script):
    python video_enhancer.py --config recipes/video_sft.yaml                 # stage 1 -> runs/video_sft
    accelerate launch video_enhancer.py --config recipes/video_rl.yaml       # stage 2 from runs/video_sft -> runs/video
    python video_enhancer.py "a dog surfing at sunset" --model_name_or_path runs/video --generate_video out.mp4
    # 8 GPUs (DDP: each rank holds the policy, Wan and the scorer and renders its own completions)
    accelerate launch --config_file recipes/accelerate/multi_gpu.yaml --num_processes 8 video_enhancer.py \\
        --config recipes/video_rl.yaml
    # generation with vLLM (pip install vllm; optional). colocate: inside the training process, which then holds a
    # second bf16 copy of the 14B, so one 141 GB H200 (memory.py: 54.7 GiB for the recipe + 0.35 x 141 GB; an estimate)
    accelerate launch video_enhancer.py --config recipes/video_rl.yaml --use_vllm true --vllm_mode colocate \\
        --vllm_gpu_memory_utilization 0.35
    # server: vLLM on its own GPU (80 GB holds the 14B in bf16), training on another; TRL pushes the merged LoRA
    CUDA_VISIBLE_DEVICES=0 trl vllm-serve --model Qwen/Qwen2.5-14B-Instruct
    CUDA_VISIBLE_DEVICES=1 accelerate launch video_enhancer.py --config recipes/video_rl.yaml \\
        --use_vllm true --vllm_mode server
    # CPU smoke run (no device flags: without CUDA the script trains on the CPU in fp32) with small local models,
    # e.g. the tiny ones tests/conftest.py builds; tests/test_video_enhancer.py runs both stages this way
    python video_enhancer.py --config recipes/video_rl.yaml --sft_adapter <small LoRA> --video_model <small T2V> \\
        --num_frames 5 --height 32 --width 32 --num_inference_steps 2 --max_steps 2 --max_completion_length 16
Expected: SFT loss falls within the first epoch; stage-2 reward is noisy (upstream saw no clear trend in 50 steps).
Hardware (recipes' headers): one 80 GB GPU per stage. `python benchmarks/memory.py --recipe recipes/video_sft.yaml`
(and video_rl.yaml) computes 30.1 GiB for SFT and 54.7 GiB for RL on that GPU (weights counted on the meta device,
activations estimated; not measured: no GPU was available); the README's "Memory per GPU" table has the other configs.
ModelConfig's --dtype, --attn_implementation, --model_revision and (training only) --load_in_4bit / --load_in_8bit
reach the LLM's from_pretrained.
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

# bitsandbytes' CPU backend logs "Failed to load CPU gemm_4bit_forward" when peft imports it; nothing here uses it
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

SYSTEM_PROMPT = (
    "You turn short video ideas into detailed prompts for a text-to-video model. Keep the idea and any style it names "
    "(anime, pixel art, 3D, cartoon, ...). Describe the subject, action and motion, setting, camera movement, "
    "lighting, colour and mood in concrete visual terms, in one paragraph. Reply with the prompt only."
)
JUDGE_QUESTIONS = [  # about the simple prompt / the video; alignment first, as VisionReward weighs it
    "Does the video show everything the prompt '{prompt}' asks for?",
    "Does the video match the main subject and action of '{prompt}'?",
    "Is the style of the video the one the prompt asks for (or photographic if none is named)?",
    "Are the objects and people well formed, without distorted shapes?",
    "Is the scene consistent from frame to frame?",
    "Is there visible, natural motion?",
    "Are lighting and colours pleasing?",
    "Is the video free of artefacts such as noise, blur or garbled text?",
]
JUDGE_WEIGHTS = [1.0, 0.5, 0.5, 0.5, 0.5, 0.3, 0.3, 0.3]
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SFT_MODEL, SFT_OUTPUT = "Qwen/Qwen2.5-14B-Instruct", "runs/video_sft"  # upstream's base; the SFT recipe's output_dir
USAGE = "python video_enhancer.py [PROMPT ...] [options]   (PROMPT: inference; none: training, --stage sft | rl)"


@dataclass
class ScriptArguments:
    stage: str = field(default="sft", metadata={"help": "sft (stage 1) or rl (stage 2)."})
    data: str | None = field(
        default=None, metadata={"help": 'JSON/JSONL {"simple", "detailed"}, seed layout, prompts.'}
    )
    sft_adapter: str | None = field(default=None, metadata={"help": f"rl: stage-1 LoRA (unset: {SFT_OUTPUT})."})
    # video generation
    video_backend: str = field(default="diffusers", metadata={"help": "diffusers (local) or openai (/videos API)."})
    video_model: str = field(default="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", metadata={"help": "Pipeline or API model."})
    num_frames: int = field(default=33, metadata={"help": "Frames (Wan: 4k+1)."})
    height: int = field(default=480, metadata={"help": "Video height (px)."})
    width: int = field(default=832, metadata={"help": "Video width (px)."})
    num_inference_steps: int = field(default=30, metadata={"help": "Denoising steps."})
    guidance_scale: float = field(default=5.0, metadata={"help": "Classifier-free guidance (Wan default 5)."})
    fps: int = field(default=16, metadata={"help": "Frames per second of written mp4 files."})
    video_batch_size: int = field(default=4, metadata={"help": "Videos per pipeline call (a group)."})
    video_base_url: str | None = field(default=None, metadata={"help": "openai: base URL (key from OPENAI_API_KEY)."})
    video_seconds: str = field(default="4", metadata={"help": "openai: clip length."})
    video_size: str = field(default="720x1280", metadata={"help": "openai: size."})
    poll_interval: float = field(default=10.0, metadata={"help": "openai: seconds between status polls."})
    video_timeout: float = field(default=1800.0, metadata={"help": "openai: delete a job after this many seconds."})
    video_retries: int = field(default=2, metadata={"help": "openai: retries per video."})
    cache_dir: str | None = field(default=None, metadata={"help": "Video cache (default <output_dir>/video_cache)."})
    # reward
    reward_metrics: str = field(default="clip:1,aesthetic:0.1", metadata={"help": "score.py metrics:weights."})
    reward_frames: int = field(default=4, metadata={"help": "Frames sampled evenly per video for scoring."})
    judge_model: str | None = field(default=None, metadata={"help": "Checklist VLM judge; enables the judge reward."})
    judge_base_url: str | None = field(default=None, metadata={"help": "OpenAI-compatible base URL for the judge."})
    judge_questions: list[str] = field(default_factory=lambda: list(JUDGE_QUESTIONS), metadata={"help": "Yes/no questions ({prompt} = simple prompt)."})  # fmt: skip
    judge_weights: list[float] = field(default_factory=lambda: list(JUDGE_WEIGHTS), metadata={"help": "A weight >= 0 per question."})  # fmt: skip
    judge_retries: int = field(default=3, metadata={"help": "Retries per judge call."})
    judge_timeout: float = field(default=60.0, metadata={"help": "Seconds per judge request before it is retried."})
    # inference
    generate_video: str | None = field(default=None, metadata={"help": "Render the last enhanced prompt to this mp4."})
    max_new_tokens: int = field(default=256, metadata={"help": "New tokens (upstream 256)."})
    video_seed: int = field(default=0, metadata={"help": "Video seed."})


HELP_GROUPS = {"stage": "data and models", "video_backend": "video generation", "reward_metrics": "rewards",
               "generate_video": "inference"}  # fmt: skip
POSITIVE = ["num_frames", "height", "width", "num_inference_steps", "fps", "video_batch_size", "video_timeout",
            "reward_frames", "judge_timeout", "max_new_tokens"]  # fmt: skip
NON_NEGATIVE = ["guidance_scale", "poll_interval", "video_retries", "judge_retries", "video_seed"]


def warn(msg: str, e: Exception | None = None):
    print(f"warning: {msg}" + (f": {type(e).__name__}: {str(e)[:200]}" if e else ""), file=sys.stderr)


def fail(msg: str):
    if os.environ.get("RANK", "0") == "0":  # launched processes (torchrun sets RANK): only the main process prints
        print(f"error: {' '.join(str(msg).split())}", file=sys.stderr)  # exactly one line
    sys.exit(2)  # every rank exits, before any collective


def model_kwargs(model_args) -> dict:
    """ModelConfig -> the LLM's from_pretrained kwargs (the trainers pass model_init_kwargs through unchanged)."""
    from trl import get_quantization_config

    quant = get_quantization_config(model_args)  # None unless --load_in_4bit / --load_in_8bit
    return dict(dtype=model_args.dtype, revision=model_args.model_revision,
                attn_implementation=model_args.attn_implementation, quantization_config=quant)  # fmt: skip


def build_messages(simple: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": simple.strip()}]


def json_record(text: str, pos: int) -> int:
    """1-based number of the top-level record (array item / object member) in which character `pos` lies."""
    depth, n, in_str, escaped = 0, 1, False, False
    for ch in text[:pos]:
        if escaped:
            escaped = False
        elif in_str:
            escaped, in_str = ch == "\\", ch != '"'
        elif ch in '"[{]},':
            in_str = ch == '"'
            depth += (ch in "[{") - (ch in "]}")
            n += ch == "," and depth == 1
    return n


def load_pairs(path: str | None, need_detailed: bool = True) -> list[dict]:
    """{"simple", "detailed"} records from JSON / JSONL, the seed's {"pair_N": {"lay", "elaborate"}} layout, or (rl) a
    JSON list / .txt of simple prompts. Raises ValueError naming the file and the first bad record (1-based)."""
    p = Path(path or "")
    if not path or not p.is_file():
        raise ValueError(f"data file not found: {path}" if path else "give --data (a pairs JSON / JSONL file)")
    text, records = p.read_text(encoding="utf-8"), []
    if p.suffix == ".txt":
        records = [line for line in text.splitlines() if line.strip()]
    elif p.suffix == ".jsonl":
        for line_no, line in enumerate(text.splitlines(), 1):
            try:
                records += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}: record {len(records) + 1} (line {line_no}): invalid JSON: {e.msg}") from None
    else:
        try:
            data = json.loads(text or "[]")
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{p}: record {json_record(text, e.pos)} (line {e.lineno}): invalid JSON: {e.msg}"
            ) from None
        records = list(data.values()) if isinstance(data, dict) else data  # file order, as json_record counts
    pairs = []
    for i, r in enumerate(records if isinstance(records, list) else [records], 1):
        r = {"simple": r} if isinstance(r, str) and not need_detailed else r
        r = {"simple": r.get("simple", r.get("lay")), "detailed": r.get("detailed", r.get("elaborate"))} if isinstance(r, dict) else {}  # fmt: skip
        if not isinstance(r.get("simple"), str) or not r["simple"].strip():
            raise ValueError(f"{p}: record {i} has no simple prompt")
        if need_detailed and (not isinstance(r["detailed"], str) or not r["detailed"].strip()):
            raise ValueError(f"{p}: record {i} has no detailed prompt")
        pairs.append(r)
    if not pairs:
        raise ValueError(f"{p}: no records")
    return pairs


def check_model(name: str, files: tuple[str, ...], flag: str, local: bool = False):
    """Weight-free check: a folder must hold one of `files`; a path that looks local must exist; a hub id must be in
    the local cache when the hub is offline."""
    p = Path(name).expanduser()
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1 or str(p.parent) != "." and p.parent.is_dir()  # fmt: skip
    if p.is_dir():
        if not any((p / f).is_file() for f in files):
            raise ValueError(f"{flag} {name}: not a model folder (no {' or '.join(files)})")
    elif local or p.exists() or looks_local:
        raise ValueError(f"{flag}: no such folder: {name}")
    else:
        from huggingface_hub import constants, try_to_load_from_cache

        offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        if offline and not any(isinstance(try_to_load_from_cache(name, f), str) for f in files):
            raise ValueError(f"{flag} {name}: not a folder, and not in the Hugging Face cache while offline")


def check_policy(path: str, flag: str, files=("config.json", "adapter_config.json")):
    """A model folder / hub id, or a LoRA folder whose base model is checked too."""
    check_model(path, files, flag)
    if (Path(path).expanduser() / "adapter_config.json").is_file():
        base = json.loads((Path(path).expanduser() / "adapter_config.json").read_text())["base_model_name_or_path"]
        check_model(base, ("config.json",), f"the base model of {path}")


def check_video(args: "ScriptArguments"):
    if args.video_backend not in ("diffusers", "openai"):
        raise ValueError(f"unknown --video_backend {args.video_backend!r}: diffusers or openai")
    if args.video_backend == "openai" and not os.environ.get("OPENAI_API_KEY"):
        raise ValueError("--video_backend openai needs OPENAI_API_KEY in the environment")
    if args.video_backend == "diffusers":
        check_model(args.video_model, ("model_index.json",), "--video_model")
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:
        raise ValueError(f"no mp4 writer available (pip install imageio-ffmpeg): {e}") from None


def video_dtype(pipeline_class: str, device):
    """bf16 on CUDA, with the Wan VAE in fp32 as diffusers documents it (docs/source/en/api/models/autoencoder_kl_wan.md
    loads AutoencoderKLWan with float32; the Wan pipeline examples pass it beside a bf16 pipeline, and WanPipeline
    casts the latents to vae.dtype before decoding). fp32 on CPU."""
    import torch

    if device.type != "cuda":
        return torch.float32
    return {"default": torch.bfloat16, "vae": torch.float32} if pipeline_class.startswith("Wan") else torch.bfloat16


def render_videos(pipe, prompts: list[str], seeds: list[int], args: "ScriptArguments") -> list:
    """uint8 (frames, H, W, 3) arrays; --video_batch_size prompts per pipeline call, one CPU generator per video."""
    import numpy as np
    import torch

    out, bs = [], args.video_batch_size
    for i in range(0, len(prompts), bs):
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds[i : i + bs]]
        with torch.no_grad():
            frames = pipe(prompt=prompts[i : i + bs], generator=gens, num_frames=args.num_frames, height=args.height,
                          width=args.width, num_inference_steps=args.num_inference_steps,
                          guidance_scale=args.guidance_scale, output_type="np").frames  # fmt: skip
        out += [(np.asarray(v) * 255).round().clip(0, 255).astype("uint8") for v in frames]
    return out


def write_atomic(path: Path, write):
    """write(tmp) then rename: an interrupted write never leaves a partial file under the cache key."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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

            device = device or torch.device("cpu")
            dtype = video_dtype(DiffusionPipeline.load_config(args.video_model).get("_class_name", ""), device)
            self.pipe = DiffusionPipeline.from_pretrained(args.video_model, dtype=dtype).to(device)
            self.pipe.set_progress_bar_config(disable=True)

    def path(self, prompt: str, seed: int) -> Path:
        key = hashlib.sha256(json.dumps([prompt, seed, *self.settings]).encode()).hexdigest()
        return self.cache / f"{key}.mp4"

    def cached(self, path: Path) -> bool:
        """A hit only if the file decodes; a broken entry (e.g. left by a crash of an older version) is a miss."""
        import imageio.v3 as iio

        if not path.exists():
            return False
        try:
            return len(iio.imread(path, extension=".mp4")) > 0
        except Exception as e:
            warn(f"cache entry {path.name} cannot be decoded, regenerating it", e)
            path.unlink(missing_ok=True)  # another rank may have removed the same entry already
            return False

    def __call__(self, prompts: list[str], seeds: list[int]) -> list[str | None]:
        paths = [self.path(p, s) for p, s in zip(prompts, seeds, strict=True)]
        todo = [i for i, p in enumerate(paths) if not self.cached(p)]
        self.hits += len(paths) - len(todo)
        self.misses += len(todo)
        if todo:
            make = self._diffusers if self.args.video_backend == "diffusers" else self._openai
            ok = make([prompts[i] for i in todo], [seeds[i] for i in todo], [paths[i] for i in todo])
            self.failures += sum(not o for o in ok)
        return [str(p) if p.exists() else None for p in paths]

    def _diffusers(self, prompts, seeds, paths) -> list[bool]:
        import imageio.v3 as iio

        for video, path in zip(render_videos(self.pipe, prompts, seeds, self.args), paths, strict=True):
            write_atomic(path, lambda tmp, v=video: iio.imwrite(tmp, v, fps=self.args.fps, codec="libx264"))
        return [True] * len(prompts)

    def _openai(self, prompts, seeds, paths) -> list[bool]:
        """Create the jobs, poll until done or --video_timeout, download; a job still running then is deleted (once)
        before the retry, so no video is paid twice. A failed job's error text is logged; the video ends as None."""
        from openai import OpenAI

        a, client = self.args, OpenAI(base_url=self.args.video_base_url, max_retries=0, timeout=60.0)
        for attempt in range(a.video_retries + 1):
            jobs, t0 = {}, time.monotonic()
            try:
                for i in (
                    i for i, p in enumerate(paths) if not p.exists()
                ):  # Sora has no seed: it only keys the cache
                    try:
                        jobs[i] = client.videos.create(model=a.video_model, prompt=prompts[i], seconds=a.video_seconds, size=a.video_size).id  # fmt: skip
                    except Exception as e:
                        warn("video create failed", e)
                while jobs and time.monotonic() - t0 < a.video_timeout:
                    jobs = {i: job for i, job in jobs.items() if not self._poll(client, job, paths[i])}
                    time.sleep(a.poll_interval if jobs else 0)
            finally:  # timed out (or interrupted): delete the jobs still running, exactly once each
                for job in jobs.values():
                    try:
                        client.videos.delete(job)
                        warn(f"video job {job} unfinished after {time.monotonic() - t0:.0f} s: deleted")
                    except Exception as e:
                        warn(f"video job {job} unfinished and could not be deleted", e)
            if all(p.exists() for p in paths):
                break
            time.sleep(min(0.5 * 2**attempt, 10.0) if attempt < a.video_retries else 0)
        return [p.exists() for p in paths]

    @staticmethod
    def _poll(client, job: str, path: Path) -> bool:
        """True once the job is over: completed and saved, or failed (its error text logged). A poll or download
        error keeps the job: it is tried again at the next poll."""
        try:
            video = client.videos.retrieve(job)
            if video.status == "completed":
                data = client.videos.download_content(job).read()
                write_atomic(path, lambda tmp: tmp.write_bytes(data))
            elif video.status == "failed":
                warn(f"video job {job} failed: {video.error.message if video.error else 'no error text'}")
            return video.status in ("completed", "failed")
        except Exception as e:
            warn(f"video job {job}: poll or download failed", e)
            return False


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
def get_video_reward(videos: Videos, scorer, args: ScriptArguments, seed: int, state: dict, num_processes: int = 1):
    def video_reward(
        prompts, completions, simple, trainer_state=None, log_metric=None, log_extra=None, **kwargs
    ) -> list[float | None]:
        """Mean over --reward_frames frames of the weighted score.py metrics vs the SIMPLE prompt (higher is better);
        None if the video failed or the completion is empty. Each rank renders and scores only its own completions."""
        flush_traces(state)  # the previous step's rows (judge included); every rank calls this, it gathers
        step = trainer_state.global_step if trainer_state is not None else 0
        detailed = [(c if isinstance(c, str) else c[-1]["content"]).strip() for c in completions]
        # CRUCIAL: the seed comes from (seed, step, simple prompt), never from the rank, so a group split over ranks
        # shares one seed and its members differ only by their detailed prompt
        seeds = [zlib.crc32(f"{seed}|{step}|{s}".encode()) for s in simple]
        hits, misses, failures, t0 = videos.hits, videos.misses, videos.failures, time.perf_counter()
        # an empty completion is not rendered (rendering the simple prompt instead would be a free copy-the-input
        # action): its reward is None, which TRL skips, and it is counted
        todo, paths = [i for i, d in enumerate(detailed) if d], [None] * len(detailed)
        for i, path in zip(todo, videos([detailed[i] for i in todo], [seeds[i] for i in todo]), strict=True):
            paths[i] = path
        frames = [sample_frames(p, args.reward_frames) if p else [] for p in paths]
        flat = [f for fs in frames for f in fs]
        total, details = (
            scorer(flat, [s for s, fs in zip(simple, frames, strict=True) for _ in fs]) if flat else ([], {})
        )
        rewards, k = [], 0
        for fs in frames:
            rewards.append(sum(total[k : k + len(fs)]) / len(fs) if fs else None)
            k += len(fs)
        rank = state.get("rank", 0)
        state.update(frames=frames, simple=list(simple), records=[
            {"step": step, "rank": rank, "simple_prompt": s, "detailed_prompt": d, "seed": sd, "video_path": p,
             "video_reward": r} for s, d, sd, p, r in zip(simple, detailed, seeds, paths, rewards, strict=True)])  # fmt: skip
        if log_extra is not None:
            log_extra("seed", seeds)
            log_extra("video_path", paths)
        if log_metric is not None:
            # TRL averages a log_metric value over ranks: a count times the number of processes averages to the sum
            log_metric("video/generated", float((videos.misses - misses) * num_processes))
            log_metric("video/cache_hits", float((videos.hits - hits) * num_processes))
            log_metric("video/failures", float((videos.failures - failures) * num_processes))
            log_metric("video/empty_completions", float((len(detailed) - len(todo)) * num_processes))
            log_metric("time/video_s", time.perf_counter() - t0)  # mean over ranks
            for name, vals in details.items():  # mean of rank means (equal per-rank counts unless a video failed)
                log_metric(f"video/{name}", sum(vals) / len(vals))
        return rewards

    return video_reward


def flush_traces(state: dict, gather: bool = True):
    """The main process appends all ranks' pending per-sample rows to traces.jsonl. gather=False on error paths (a
    collective there can hang): the main process then writes only its own rows."""
    from accelerate import PartialState
    from accelerate.utils import gather_object

    rows, ps = state.pop("records", []), PartialState()
    if gather and ps.num_processes > 1:
        rows = gather_object(rows)
    if ps.is_main_process and rows:
        with open(state["trace_path"], "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


async def judge_one(client, model: str, frames: list, prompt: str, retries: int, questions=None, weights=None):
    """Checklist score sum_i w_i a_i / sum_i w_i with a_i = +1 (yes) / -1 (no); None after the last failed retry."""
    from pydantic import BaseModel

    class Answers(BaseModel):
        answers: list[bool]

    questions, weights = questions or JUDGE_QUESTIONS, weights or JUDGE_WEIGHTS
    listed = "\n".join(f"{i + 1}. {q.replace('{prompt}', prompt)}" for i, q in enumerate(questions))
    content = [{"type": "text", "text": f"These are frames of one video made for the prompt '{prompt}'. Answer each "
                                        f"question with true (yes) or false (no), in order:\n{listed}"}]  # fmt: skip
    for im in frames:
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        content.append({"type": "image_url", "image_url": {"url": url, "detail": "low"}})
    fmt = {"type": "json_schema", "json_schema": {"name": "checklist", "schema": Answers.model_json_schema()}}
    for attempt in range(retries + 1):
        try:
            res = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": content}], response_format=fmt
            )
            answers = Answers.model_validate_json(res.choices[0].message.content).answers
            if len(answers) != len(questions):
                raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
            return sum(w * (1 if a else -1) for w, a in zip(weights, answers, strict=True)) / sum(weights)
        except Exception as e:  # API errors, timeouts, malformed JSON: retried, then None
            if attempt == retries:
                return warn(f"judge failed after {retries + 1} tries", e)  # None
            await asyncio.sleep(0.5 * 2**attempt)


def get_judge_reward(args: ScriptArguments, state: dict, num_processes: int = 1):
    async def judge_reward(prompts, completions, log_metric=None, **kwargs) -> list[float | None]:
        """VLM checklist on the frames video_reward sampled (async: TRL runs it after the sync rewards); in [-1, 1]."""
        from openai import AsyncOpenAI

        async with AsyncOpenAI(base_url=args.judge_base_url, max_retries=0, timeout=args.judge_timeout) as client:
            jobs = [
                judge_one(client, args.judge_model, f, s, args.judge_retries, args.judge_questions, args.judge_weights)
                if f else asyncio.sleep(0)
                for f, s in zip(state["frames"], state["simple"], strict=True)
            ]  # fmt: skip
            scores = list(await asyncio.gather(*jobs))
        for record, s in zip(state["records"], scores, strict=True):
            record["judge_reward"] = s
        if log_metric is not None:  # a count: times the number of processes, as in video_reward
            failed = sum(s is None for s, f in zip(scores, state["frames"], strict=True) if f)
            log_metric("judge/failures", float(failed * num_processes))
        return scores

    return judge_reward


########################
# Stage 1: SFT
########################
def sft_trainer(args: ScriptArguments, training_args, model_args):
    from datasets import Dataset
    from trl import SFTTrainer, get_peft_config

    # conversational prompt/completion: SFTTrainer puts the loss on the completion (+ end of turn) only
    dataset = Dataset.from_list([
        {"prompt": build_messages(p["simple"]), "completion": [{"role": "assistant", "content": p["detailed"].strip()}]}
        for p in load_pairs(args.data)])  # fmt: skip
    training_args.model_init_kwargs = {**model_kwargs(model_args), **(training_args.model_init_kwargs or {})}
    peft_config = get_peft_config(model_args)
    return SFTTrainer(
        model_args.model_name_or_path, args=training_args, train_dataset=dataset, peft_config=peft_config
    )


def sft(args: ScriptArguments, training_args, model_args):
    trainer = sft_trainer(args, training_args, model_args)
    ta, n = training_args, trainer.accelerator.num_processes
    if trainer.accelerator.is_main_process:
        print(f"{len(trainer.train_dataset)} pairs; effective batch {ta.per_device_train_batch_size * ta.gradient_accumulation_steps * n} "
          f"({ta.per_device_train_batch_size} x {ta.gradient_accumulation_steps} accumulation x {n} processes)")  # fmt: skip
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except KeyboardInterrupt:
        trainer.save_model(str(Path(training_args.output_dir) / "interrupted"))
        raise
    trainer.save_model(training_args.output_dir)


########################
# Stage 2: online RL (GRPO)
########################
def load_policy(adapter: str, model_args):
    """The stage-1 LoRA, trainable, on its base model loaded with the ModelConfig flags (--dtype: bf16 on CUDA by
    default); --model_revision is the adapter's revision (the base's is in adapter_config.json)."""
    from peft import AutoPeftModelForCausalLM

    return AutoPeftModelForCausalLM.from_pretrained(adapter, is_trainable=True, **model_kwargs(model_args))


def rl(args: ScriptArguments, training_args, model_args):
    from accelerate import PartialState
    from datasets import Dataset
    from trl import GRPOTrainer, get_peft_config

    import score

    ################
    # Model: continue the stage-1 adapter (trainable), or start a LoRA on --model_name_or_path
    ################
    model, peft_config = model_args.model_name_or_path, get_peft_config(model_args)
    training_args.model_init_kwargs = {**model_kwargs(model_args), **(training_args.model_init_kwargs or {})}
    if args.sft_adapter:
        model, peft_config = load_policy(args.sft_adapter, model_args), None

    ################
    # Dataset and rewards
    ################
    simple = list(dict.fromkeys(p["simple"].strip() for p in load_pairs(args.data, need_detailed=False)))
    dataset = Dataset.from_dict({"prompt": [build_messages(s) for s in simple], "simple": simple})
    ps = PartialState()  # after GRPOConfig: it set up the (gloo / nccl) process group
    state = {"trace_path": Path(training_args.output_dir) / "traces.jsonl", "rank": ps.process_index}
    state["trace_path"].parent.mkdir(parents=True, exist_ok=True)
    videos = Videos(args, args.cache_dir or str(Path(training_args.output_dir) / "video_cache"), ps.device)
    scorer = score.MultiScorer(score.parse_metric_weights(args.reward_metrics), device=ps.device)
    reward_funcs = [get_video_reward(videos, scorer, args, training_args.seed, state, ps.num_processes)]
    if args.judge_model:
        reward_funcs.append(get_judge_reward(args, state, ps.num_processes))

    ################
    # Trainer
    ################
    trainer = GRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=training_args, train_dataset=dataset, peft_config=peft_config
    )
    n = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps * ps.num_processes
    if ps.is_main_process:
        print(f"{len(simple)} prompts; {n} completions per optimizer step = {n // training_args.num_generations} groups "
              f"x {training_args.num_generations}, {training_args.per_device_train_batch_size} per process x {ps.num_processes}")  # fmt: skip
    try:
        trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    except BaseException as e:
        flush_traces(state, gather=False)
        if isinstance(e, KeyboardInterrupt):
            trainer.save_model(str(Path(training_args.output_dir) / "interrupted"))
        raise
    finally:
        print(f"videos: {videos.hits} cache hits, {videos.misses} generated, {videos.failures} failed", file=sys.stderr)  # fmt: skip
    flush_traces(state)
    trainer.save_model(training_args.output_dir)


########################
# Inference (no trainer config, no accelerate)
########################
def infer(args: ScriptArguments, model_args, prompts: list[str]):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu")  # fmt: skip
    path, kwargs = model_args.model_name_or_path, model_kwargs(model_args)  # --dtype: bf16 on CUDA, else fp32
    if (Path(path) / "adapter_config.json").is_file():  # a LoRA folder from either stage
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model, tok = model.to(device).eval(), AutoTokenizer.from_pretrained(path, revision=kwargs["revision"])
    tok.padding_side = "left"
    texts = [tok.apply_chat_template(build_messages(p), tokenize=False, add_generation_prompt=True) for p in prompts]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    with torch.no_grad():
        out = model.generate(**enc, do_sample=False, max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id)
    new = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    enhanced = [t.strip() or p for t, p in zip(new, prompts, strict=True)]
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


########################
# Command line: one parser for every path; prompts anywhere select inference; every check before any weights load
########################
STAGE_DEFAULTS = {
    "sft": dict(learning_rate=2e-4, num_train_epochs=3, per_device_train_batch_size=1, gradient_accumulation_steps=8,
                lr_scheduler_type="cosine", warmup_steps=13, logging_steps=10, save_steps=200, save_total_limit=3,
                seed=42, max_length=1024, gradient_checkpointing=True),
    "rl": dict(learning_rate=5e-6, num_generations=4, per_device_train_batch_size=8, gradient_accumulation_steps=1,
               num_train_epochs=1, temperature=0.7, top_p=0.95, max_completion_length=256, beta=0.04, logging_steps=1,
               save_steps=10, seed=42, multi_objective_aggregation="normalize_then_sum"),
}  # fmt: skip
PEFT_DEFAULTS = dict(use_peft=True, lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target_modules=LORA_TARGETS)


def make_parser(stage: str):
    """TrlParser over (ScriptArguments, SFTConfig | GRPOConfig, ModelConfig): our flags first in --help, grouped, then
    the trainer's; stage defaults; bf16 on CUDA with bf16 support, else fp32 (and the CPU without CUDA)."""
    import torch
    from trl import GRPOConfig, ModelConfig, SFTConfig, TrlParser

    parser = TrlParser((ScriptArguments, SFTConfig if stage == "sft" else GRPOConfig, ModelConfig), allow_abbrev=False, usage=USAGE)  # fmt: skip
    parser.error = fail  # argparse errors in one line too
    own, groups = {f.name for f in fields(ScriptArguments)}, []
    for action in list(parser._optionals._group_actions):
        if action.dest in HELP_GROUPS:
            groups.append(parser.add_argument_group(HELP_GROUPS[action.dest]))
        if action.dest in own:
            parser._optionals._group_actions.remove(action)
            groups[-1]._group_actions.append(action)
    parser._optionals.title = f"trainer options (TRL {'SFTConfig' if stage == 'sft' else 'GRPOConfig'} / ModelConfig)"
    parser._action_groups = [*groups, *(g for g in parser._action_groups if g not in groups)]
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    parser.set_defaults(**STAGE_DEFAULTS[stage], **PEFT_DEFAULTS, dtype="bfloat16" if bf16 else "float32")
    if not bf16:  # set before parsing: a value from the recipe or the command line still wins
        parser.set_defaults(bf16=False, **({} if cuda else {"use_cpu": True}))
    return parser


def validate(stage: str, args: ScriptArguments, model_args, reward_weights, prompts: list[str]):
    """Every check that needs no weights (raises ValueError); fills in the model defaults."""
    for name in POSITIVE + NON_NEGATIVE:
        if getattr(args, name) < 0 or (name in POSITIVE and getattr(args, name) == 0):
            raise ValueError(f"--{name} must be {'> 0' if name in POSITIVE else '>= 0'} (got {getattr(args, name)})")
    if prompts:  # inference
        if not all(p.strip() for p in prompts) or not model_args.model_name_or_path:
            raise ValueError("give non-empty prompts and --model_name_or_path (a folder from either stage)")
        if model_args.load_in_4bit or model_args.load_in_8bit:
            raise ValueError("--load_in_4bit / --load_in_8bit are for training (inference loads --dtype weights)")
        check_policy(model_args.model_name_or_path, "--model_name_or_path")
        return check_video(args) if args.generate_video else None
    if stage == "sft":
        load_pairs(args.data)
        model_args.model_name_or_path = model_args.model_name_or_path or SFT_MODEL
        return check_policy(model_args.model_name_or_path, "--model_name_or_path")
    load_pairs(args.data, need_detailed=False)
    if not (args.sft_adapter or model_args.model_name_or_path):
        args.sft_adapter = SFT_OUTPUT
        check_model(SFT_OUTPUT, ("adapter_config.json",), "--sft_adapter (default; run --stage sft first)", local=True)
    if args.sft_adapter:
        check_policy(args.sft_adapter, "--sft_adapter", ("adapter_config.json",))
    else:
        check_policy(model_args.model_name_or_path, "--model_name_or_path")
    check_video(args)
    import score

    score.parse_metric_weights(args.reward_metrics)
    if args.judge_model and not os.environ.get("OPENAI_API_KEY"):
        raise ValueError("--judge_model needs OPENAI_API_KEY in the environment (any value for a local server)")
    qs, ws, n = args.judge_questions, args.judge_weights, 1 + bool(args.judge_model)
    if len(qs) != len(ws) or not qs or min(ws) < 0 or sum(ws) <= 0:
        raise ValueError(
            f"--judge_questions ({len(qs)}) and --judge_weights ({len(ws)}): one weight >= 0 each, sum > 0"
        )
    if reward_weights is not None and len(reward_weights) != n:
        raise ValueError(f"--reward_weights has {len(reward_weights)} values for {n} rewards (video[, judge])")


def parse(argv: list[str] | None = None):
    """-> (stage, args, training_args | None, model_args, prompts). Exits with one `error:` line on bad input."""
    import argparse

    import torch
    import yaml
    from trl import GRPOConfig, ModelConfig, SFTConfig

    argv, config = sys.argv[1:] if argv is None else list(argv), {}
    while "--config" in argv:  # TrlParser's own flag, read here so that the recipe can pick the stage
        i = argv.index("--config")
        path = argv[i + 1] if i + 1 < len(argv) else ""
        if not Path(path).is_file():
            fail(f"config file not found: {path}")
        try:
            config = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.MarkedYAMLError as e:
            context = f" ({e.context} at line {e.context_mark.line + 1})" if e.context_mark else ""
            fail(f"{path}, line {e.problem_mark.line + 1}: invalid YAML: {e.problem}{context}")
        if not isinstance(config, dict):
            fail(f"{path}: must hold a YAML mapping")
        del argv[i : i + 2]
    for key, value in config.pop("env", {}).items():
        os.environ[key] = str(value)
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--stage")
    stage = pre.parse_known_args(argv)[0].stage or config.get("stage") or "sft"
    if stage not in STAGE_DEFAULTS:
        fail(f"unknown --stage {stage!r}: sft or rl")
    parser = make_parser(stage)
    unknown = parser.set_defaults_with_config(**config)
    if unknown:
        fail(f"unknown keys in the config file: {' '.join(unknown[::2])}")
    # a bool flag takes an optional value (HfArgumentParser: nargs="?"), so `--use_peft "a dog"` would read the prompt
    # as that value: a bare bool flag followed by a word gets an explicit `true`
    bools = {s for a in parser._actions if a.nargs == "?" for s in a.option_strings}
    values = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}
    bare = [a in bools and i + 1 < len(argv) and argv[i + 1][:1] != "-" and argv[i + 1].lower() not in values
            for i, a in enumerate(argv)]  # fmt: skip
    argv = [w for a, b in zip(argv, bare, strict=True) for w in ((a, "true") if b else (a,))]
    ns, prompts = parser.parse_known_args(argv)  # every option consumes its value: the leftovers are the prompts
    if any(p.startswith("-") for p in prompts):
        fail(f"unrecognised arguments: {' '.join(p for p in prompts if p.startswith('-'))}")

    def build(cls):  # what HfArgumentParser does, one dataclass at a time (inference never builds GRPOConfig)
        return cls(**{f.name: getattr(ns, f.name) for f in fields(cls) if f.init and hasattr(ns, f.name)})

    try:
        args, model_args = build(ScriptArguments), build(ModelConfig)
        validate(stage, args, model_args, getattr(ns, "reward_weights", None), prompts)
        training_args = None if prompts else build(SFTConfig if stage == "sft" else GRPOConfig)
    except ValueError as e:
        fail(str(e))
    if training_args and model_args.dtype != "bfloat16" and training_args.process_index == 0:
        where = "no bf16 support on this GPU" if torch.cuda.is_available() else "no CUDA device"
        print(f"note: {where}: use_cpu={training_args.use_cpu}, bf16={training_args.bf16}, dtype={model_args.dtype}")
    return stage, args, training_args, model_args, prompts


def main(argv: list[str] | None = None):
    stage, args, training_args, model_args, prompts = parse(argv)
    if prompts:
        return infer(args, model_args, prompts)
    (sft if stage == "sft" else rl)(args, training_args, model_args)


if __name__ == "__main__":
    main()
