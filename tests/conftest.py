# SPDX-License-Identifier: Apache-2.0
"""Offline test harness: tiny random-weight models built from configs, saved with save_pretrained to temp folders, so
scripts load them by path exactly as they load hub ids; plus a loopback OpenAI-compatible server for judges and
video APIs. Nothing here touches the network. Configs follow diffusers' own fast tests (see each builder).

Tests import helpers with `from conftest import REPO, run_command`.
"""

import base64
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
pytest_plugins = ["tiny_scorers"]

CORPUS = (
    "a cat in the rain . a red cube on top of a blue sphere . two dogs and three birds on a green bench . "
    "an oil painting of a lighthouse at sunset , highly detailed , trending on artstation , 4k , sharp focus . "
    "a photo of a woman with long hair wearing a yellow dress , cinematic lighting , bokeh . make the sky purple . "
    "a small white boat left of a tall black tower . the image shows an old man reading a book by the window . "
    "think answer reasoning prompt image video dog surfing at sunset wave ocean camera slowly pans , "
    "<think> </think> <answer> </answer> Rephrase : 0 1 2 3 4 5 6 7 8 9 ! ? ' \" ( ) - ."
)


def run_command(args: list[str], env: dict | None = None, timeout: float = 300, check: bool = True):
    """Run `python *args` from the repo root, offline; on failure raise with the full output (diffusers' run_command)."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    if args[0] == "accelerate":  # the launcher of this interpreter's environment, whether or not it is activated
        cmd = [str(Path(sys.executable).with_name("accelerate")), *args[1:]]
    else:
        cmd = args if args[0] == sys.executable else [sys.executable, *args]
    res = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}"
        )
    return res


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: str, *args, num_processes: int = 1) -> list[str]:
    """`accelerate launch` command for a script on this CPU-only machine, for run_command.

    One process: `--cpu`. Two or more: accelerate's torchrun-based launcher (`--multi_gpu`), which on a machine without
    CUDA runs gloo ranks (MULTI_CPU) as soon as the script asks for the CPU (GRPOConfig/SFTConfig use_cpu=True, which
    the scripts pick themselves without CUDA; Accelerator(cpu=True) in epd_ppo.py). `--cpu --num_processes 2` would
    silently run ONE process: accelerate's plain launcher ignores the count without mpirun.
    """
    common = ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if num_processes == 1:
        head = ["--cpu", "--num_processes", "1"]
    else:
        head = ["--multi_gpu", "--num_processes", str(num_processes), "--main_process_port", str(free_port())]
    return ["accelerate", "launch", *head, *common, script, *map(str, args)]


@pytest.fixture
def no_weights(monkeypatch):
    """Bad input must be rejected before anything loads: any from_pretrained of a model, pipeline or adapter fails the
    test. Returns the refusing function, for tests that guard more loaders."""
    import diffusers
    import peft
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded")

    for cls in (transformers.PreTrainedModel, diffusers.DiffusionPipeline, diffusers.ModelMixin, peft.PeftModel):
        monkeypatch.setattr(cls, "from_pretrained", classmethod(refuse))
    return refuse


########################
# tokenizers (testing.md §2: a small byte-level BPE fed to the real transformers classes)
########################
def _train_bpe(vocab_size: int, clip: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    suffix = {"end_of_word_suffix": "</w>"} if clip else {}
    tok = Tokenizer(models.BPE(**suffix))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not clip)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), byte_level]) if clip else byte_level
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False, **suffix)
    tok.train_from_iterator([CORPUS.lower() if clip else CORPUS] * 3, trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges, sorted(alphabet)


def make_gpt2_tokenizer():
    from transformers import GPT2Tokenizer

    vocab, merges, _ = _train_bpe(400)
    vocab["<|endoftext|>"] = len(vocab)
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def make_clip_tokenizer():
    from transformers import CLIPTokenizer

    learned, merges, alphabet = _train_bpe(500, clip=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}  # bos 0, eos = pad 1 (the text configs say so)
    for piece in [*alphabet, *(c + "</w>" for c in alphabet), *learned]:
        vocab.setdefault(piece, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' or 'image' in part %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_qwen2_tokenizer():
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab, merges, _ = _train_bpe(400)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS], special_tokens=True)
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.chat_template = QWEN_CHAT_TEMPLATE
    return tok


def make_t5_tokenizer():
    from transformers import T5Tokenizer

    chars = sorted(set(CORPUS + CORPUS.upper()) - {" "})
    words = sorted(set(CORPUS.split()))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in chars] + [("▁" + c, -4.0) for c in chars] + [("▁" + w, -3.0) for w in words]
    return T5Tokenizer(vocab=pieces, extra_ids=0)


def make_bert_tokenizer():
    from transformers import BertTokenizer

    words = sorted(set(CORPUS.lower().split()) | set("abcdefghijklmnopqrstuvwxyz0123456789"))
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    return BertTokenizer(vocab=vocab)


def _eval(*modules):
    for m in modules:
        if m is not None:
            m.eval()  # configs build in train mode; dropout would make two equal paths differ (testing.md §4)


########################
# language models
########################
@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """GPT2LMHeadModel (2 layers, width 64) + its tokenizer in one folder (Promptist's architecture)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path_factory.mktemp("tiny_gpt2")
    tok = make_gpt2_tokenizer()
    torch.manual_seed(0)
    eos = tok.eos_token_id
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=256,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    GPT2LMHeadModel(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory):
    """Qwen2ForCausalLM (2 layers, width 64, tied embeddings) + Qwen2 tokenizer with a chat template."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("tiny_qwen2")
    tok = make_qwen2_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


# Qwen/Qwen2.5-VL-7B-Instruct chat_template.json, verbatim (a fact the models were trained with): default system turn,
# image blocks matched by type or key, optional "Picture N: " ids (add_vision_id)
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in content"
    " or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture "
    "{{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'video'"
    " or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)


def make_qwen25_vl(text_hidden: int = 16):
    """Tiny Qwen2_5_VLForConditionalGeneration + Qwen2_5_VLProcessor (testing.md §3)."""
    import torch
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    tok = make_qwen2_tokenizer()
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    torch.manual_seed(0)
    text = dict(
        vocab_size=len(tok), hidden_size=text_hidden, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
        tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    vision = dict(
        depth=2,
        hidden_size=16,
        intermediate_size=32,
        num_heads=2,
        out_hidden_size=text_hidden,
        fullatt_block_indexes=[1],
        window_size=112,
    )
    cfg = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    # the real bounds (Qwen2.5-VL-7B-Instruct preprocessor_config.json): a ~1 MP view is ~1,350 image tokens, and code
    # that caps or slices the sequence must be tested at that length (testing.md §9); the tiny width keeps it cheap
    image_proc = Qwen2VLImageProcessor(min_pixels=3136, max_pixels=12845056)
    tok.chat_template = QWEN25_VL_CHAT_TEMPLATE
    proc = Qwen2_5_VLProcessor(
        image_processor=image_proc,
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=tok,
        chat_template=QWEN25_VL_CHAT_TEMPLATE,
    )
    return model, proc


@pytest.fixture(scope="session")
def tiny_qwen25_vl(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen25_vl")
    model, proc = make_qwen25_vl()
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return str(path)


########################
# diffusers pipelines (testing.md §4-5, after diffusers' get_dummy_components)
########################
def _clip_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = make_clip_tokenizer()
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1, projection_dim=32,
    )  # fmt: skip
    return CLIPTextModel(cfg), tok


def _t5_encoder():
    from transformers import T5Config, T5EncoderModel

    tok = make_t5_tokenizer()
    cfg = T5Config(
        vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8
    )
    return T5EncoderModel(cfg), tok


@pytest.fixture(scope="session")
def tiny_sd15(tmp_path_factory):
    """StableDiffusionPipeline: UNet (32, 64), 2-block VAE, 2-layer CLIP text encoder, DDIM; 64 px works."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    path = tmp_path_factory.mktemp("tiny_sd15")
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )  # fmt: skip
    text_encoder, tok = _clip_text_encoder()
    sched = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    _eval(unet, vae, text_encoder)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok, scheduler=sched, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """FluxPipeline as FLUX.1-dev (the repo's FLUX): guidance embeddings and dev's scheduler config (dynamic shifting);
    1+1-layer transformer, CLIP + T5 text encoders, 1-channel VAE; 64 px works."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    path = tmp_path_factory.mktemp("tiny_flux")
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8], guidance_embeds=True,
    )  # fmt: skip
    text_encoder, tok = _clip_text_encoder()
    t5, t5_tok = _t5_encoder()
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    _eval(transformer, text_encoder, t5, vae)
    sched = FlowMatchEulerDiscreteScheduler(  # black-forest-labs/FLUX.1-dev scheduler_config.json
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    pipe = FluxPipeline(
        scheduler=sched, vae=vae, text_encoder=text_encoder, tokenizer=tok, text_encoder_2=t5, tokenizer_2=t5_tok,
        transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_qwen_image_edit(tmp_path_factory):
    """QwenImageEditPipeline whose text encoder is the tiny Qwen2.5-VL (joint_attention_dim = its width, 16)."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageEditPipeline,
        QwenImageTransformer2DModel,
    )

    path = tmp_path_factory.mktemp("tiny_qwen_image_edit")
    text_encoder, proc = make_qwen25_vl(text_hidden=16)
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4),
    )  # fmt: skip
    vae = AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1, temperal_downsample=[False, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    _eval(transformer, vae, text_encoder)
    pipe = QwenImageEditPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=proc.tokenizer,
        processor=proc, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return str(path)


QWEN_EDIT_AREA = 64 * 64  # the real pipeline resizes every input to ~1024² (a 50 s CPU call); tests use 64²


@pytest.fixture
def qwen_edit_small_resize(monkeypatch):
    """In-process: make QwenImageEditPipeline resize inputs to a 64² area instead of 1024² (testing.md §4)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as mod

    original = mod.calculate_dimensions
    monkeypatch.setattr(mod, "calculate_dimensions", lambda area, ratio: original(QWEN_EDIT_AREA, ratio))


@pytest.fixture(scope="session")
def qwen_edit_patch_env():
    """Env for a subprocess: tests/sitecustomize_qwen/sitecustomize.py applies the same 64² patch at start-up."""
    path = str(REPO / "tests" / "sitecustomize_qwen")
    return {
        "PYTHONPATH": os.pathsep.join(filter(None, [path, os.environ.get("PYTHONPATH")])),
        "QWEN_EDIT_AREA": str(QWEN_EDIT_AREA),
    }


@pytest.fixture(scope="session")
def tiny_wan(tmp_path_factory):
    """WanPipeline: 2-layer 3D transformer, T5 text encoder, tiny Wan VAE; num_frames = 4k + 1."""
    import torch
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    path = tmp_path_factory.mktemp("tiny_wan")
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16, out_channels=16,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        rope_max_seq_len=32,
    )  # fmt: skip
    t5, t5_tok = _t5_encoder()
    _eval(vae, transformer, t5)
    pipe = WanPipeline(
        tokenizer=t5_tok, text_encoder=t5, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), transformer_2=None,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_cogvideox(tmp_path_factory):
    """CogVideoXPipeline: 1-layer transformer, 4-block 3D VAE, T5 text encoder."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )

    path = tmp_path_factory.mktemp("tiny_cogvideox")
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=4, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2, text_embed_dim=32,
        num_layers=1, sample_width=2, sample_height=2, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=16,
    )  # fmt: skip
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=["CogVideoXDownBlock3D"] * 4,
        up_block_types=["CogVideoXUpBlock3D"] * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )  # fmt: skip
    t5, t5_tok = _t5_encoder()
    _eval(transformer, vae, t5)
    pipe = CogVideoXPipeline(
        tokenizer=t5_tok, text_encoder=t5, vae=vae, transformer=transformer, scheduler=CogVideoXDDIMScheduler()
    )
    pipe.save_pretrained(path)
    return str(path)


########################
# loopback OpenAI-compatible server (judges, video APIs), driven by the real `openai` client in tests
########################
def _fill_schema(schema: dict, defs: dict | None = None):
    """An instance of a JSON schema: numbers 7, strings "ok", booleans true (the default judge answer)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return _fill_schema(defs[schema["$ref"].split("/")[-1]], defs)
    if "anyOf" in schema:
        return _fill_schema(schema["anyOf"][0], defs)
    kind = schema.get("type")
    if kind == "object":
        return {k: _fill_schema(v, defs) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        return [_fill_schema(schema.get("items", {}), defs)]
    return {"integer": 7, "number": 7, "boolean": True}.get(kind, "ok")


def tiny_mp4(prompt: str, frames: int = 8, size: int = 64) -> bytes:
    """A real H.264 mp4 whose colour depends on the prompt (different prompts give different videos)."""
    import hashlib

    import imageio.v3 as iio
    import numpy as np

    rgb = np.frombuffer(hashlib.sha256(prompt.encode()).digest()[:3], dtype=np.uint8)
    video = np.broadcast_to(rgb, (frames, size, size, 3)).copy()
    video[:, : size // 4] = np.arange(frames, dtype=np.uint8)[:, None, None, None] * 16  # motion across frames
    return iio.imwrite("<bytes>", video, extension=".mp4", fps=8, codec="libx264")


class OpenAIServer:
    """State of the loopback server; tests set `chat_handler`, `fail_next`, `video_polls` (10**6: a job that never
    finishes), `fail_video_next` (with the failed job's error text); DELETE /videos/{id} removes a job."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.requests, self.chat_handler, self.failures = [], None, []
        self.timeout_sleep, self.video_polls, self.video_fail_count, self.videos = 3.0, 1, 0, {}
        self.video_fail_message = "injected failure"

    def fail_next(self, n: int, mode: str = "500"):
        if mode not in ("500", "timeout", "malformed"):
            raise ValueError(mode)
        self.failures += [mode] * n

    def fail_video_next(self, n: int = 1, message: str = "injected failure"):
        self.video_fail_count, self.video_fail_message = self.video_fail_count + n, message

    def images_in(self, request_json: dict) -> list[bytes]:
        """Decoded base64 images (data URLs) of a chat request."""
        out = []
        for msg in request_json.get("messages", []):
            for part in msg.get("content") if isinstance(msg.get("content"), list) else []:
                url = (part.get("image_url") or {}).get("url", "") if isinstance(part, dict) else ""
                if url.startswith("data:"):
                    out.append(base64.b64decode(url.split(",", 1)[1]))
        return out


def _make_handler(state: OpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code: int, body, content_type="application/json"):
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                from email.parser import BytesParser

                msg = BytesParser().parsebytes(f"Content-Type: {ctype}\r\n\r\n".encode() + raw)
                return {
                    p.get_param("name", header="content-disposition"): p.get_payload(decode=True).decode()
                    for p in msg.get_payload()
                }
            return json.loads(raw or b"{}")

        def _failure(self) -> str | None:
            mode = state.failures.pop(0) if state.failures else None
            if mode == "timeout":
                time.sleep(state.timeout_sleep)
            if mode == "500":
                self._send(500, {"error": {"message": "injected failure", "type": "server_error"}})
            return mode

        def _video(self, vid: str) -> dict:
            v = state.videos[vid]
            return {
                "id": vid, "object": "video", "created_at": v["created"], "model": v["model"], "prompt": v["prompt"],
                "progress": 100 if v["status"] == "completed" else 0, "seconds": v["seconds"], "size": v["size"],
                "status": v["status"], "completed_at": None, "expires_at": None, "remixed_from_video_id": None,
                "error": {"code": "injected", "message": v["error"]} if v["status"] == "failed" else None,
            }  # fmt: skip

        def do_POST(self):
            body = self._body()
            state.requests.append(("POST", self.path, body))
            mode = self._failure()
            if mode == "500":
                return
            if self.path.endswith("/chat/completions"):
                fmt = body.get("response_format") or {}
                if mode == "malformed":
                    content = "this is not JSON {"
                elif state.chat_handler is not None:
                    content = state.chat_handler(body)
                elif fmt.get("type") == "json_schema":
                    content = json.dumps(_fill_schema(fmt["json_schema"]["schema"]))
                else:
                    content = "ok"
                self._send(200, {
                    "id": f"chatcmpl-{uuid.uuid4().hex[:8]}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "test"),
                    "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                                 "message": {"role": "assistant", "content": content, "refusal": None}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })  # fmt: skip
            elif self.path.endswith("/videos"):
                vid = f"video_{uuid.uuid4().hex[:12]}"
                failed = state.video_fail_count > 0
                state.video_fail_count -= failed
                state.videos[vid] = {
                    "prompt": body.get("prompt", ""), "model": body.get("model", "sora-2"), "created": int(time.time()),
                    "seconds": body.get("seconds", "4"), "size": body.get("size", "720x1280"), "status": "queued",
                    "polls": 0, "fail": failed, "error": state.video_fail_message,
                }  # fmt: skip
                self._send(200, self._video(vid))
            else:
                self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_GET(self):
            state.requests.append(("GET", self.path, None))
            if self._failure() == "500":
                return
            parts = self.path.rstrip("/").split("/")
            if "videos" in parts and parts[-1] == "content" and parts[-2] in state.videos:
                v = state.videos[parts[-2]]
                if v["status"] != "completed":
                    return self._send(400, {"error": {"message": "video not ready"}})
                return self._send(200, tiny_mp4(v["prompt"]), "video/mp4")
            if "videos" in parts and parts[-1] in state.videos:
                v = state.videos[parts[-1]]
                v["polls"] += 1
                if v["status"] in ("queued", "in_progress"):
                    done = v["polls"] >= state.video_polls
                    v["status"] = ("failed" if v["fail"] else "completed") if done else "in_progress"
                return self._send(200, self._video(parts[-1]))
            self._send(404, {"error": {"message": f"no route {self.path}"}})

        def do_DELETE(self):  # the /videos API's way to cancel a job
            state.requests.append(("DELETE", self.path, None))
            vid = self.path.rstrip("/").split("/")[-1]
            if state.videos.pop(vid, None) is None:
                return self._send(404, {"error": {"message": f"no video {vid}"}})
            self._send(200, {"id": vid, "deleted": True, "object": "video.deleted"})

    return Handler


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the default listen backlog of 5 drops (and delays) the 6th concurrent judge call


@pytest.fixture(scope="session")
def _openai_server_session():
    state = OpenAIServer()
    server = LoopbackServer(("127.0.0.1", 0), _make_handler(state))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()


@pytest.fixture
def openai_server(_openai_server_session):
    """The loopback server, reset for each test (no queued failures, default handler, empty request log)."""
    _openai_server_session.reset()
    yield _openai_server_session
    _openai_server_session.reset()
