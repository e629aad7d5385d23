# SPDX-License-Identifier: Apache-2.0
"""Offline test harness: tiny random-weight models built from configs, saved with save_pretrained to temp folders, so
scripts load them by path exactly as they load hub ids; plus a loopback OpenAI-compatible server for judges and
video APIs. Nothing here touches the network. Configs follow diffusers' own fast tests (see each builder).

Tests import helpers with `from conftest import REPO, run_command`.
"""

import base64
import io
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
    cmd = args if args[0] in ("accelerate", sys.executable) else [sys.executable, *args]
    res = subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {res.returncode}\n--- stdout\n{res.stdout}\n--- stderr\n{res.stderr}")
    return res


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
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False, **suffix
    )
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


QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
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
    cfg = GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
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
    vision = dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=text_hidden, fullatt_block_indexes=[1], window_size=112)
    cfg = Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = tok.eos_token_id, tok.pad_token_id
    image_proc = Qwen2VLImageProcessor(min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28)
    proc = Qwen2_5_VLProcessor(image_processor=image_proc, video_processor=Qwen2VLVideoProcessor(), tokenizer=tok, chat_template=QWEN_CHAT_TEMPLATE)
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
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8)
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
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    _eval(unet, vae, text_encoder)
    pipe = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tok, scheduler=sched, safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_flux(tmp_path_factory):
    """FluxPipeline: 1+1-layer transformer, CLIP + T5 text encoders, 1-channel VAE; 64 px works."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    path = tmp_path_factory.mktemp("tiny_flux")
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
    )  # fmt: skip
    text_encoder, tok = _clip_text_encoder()
    t5, t5_tok = _t5_encoder()
    vae = AutoencoderKL(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1, latent_channels=1,
        norm_num_groups=1, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035,
    )  # fmt: skip
    _eval(transformer, text_encoder, t5, vae)
    pipe = FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder, tokenizer=tok,
        text_encoder_2=t5, tokenizer_2=t5_tok, transformer=transformer,
    )  # fmt: skip
    pipe.save_pretrained(path)
    return str(path)
