# SPDX-License-Identifier: Apache-2.0
"""Tiny random-weight scorer models for score.py in the layouts of the real checkpoints (a pytest plugin).

Only sizes shrink; every categorical value the score depends on is copied from the real configs (activations, layer-norm
epsilons, image size and patch size, processor settings, tokenizer, chat template). `build_tiny_scorers(root)` returns
`paths` (load_scorer keyword arguments), `env` (the same as SCORE_* variables for subprocesses), `root`, and `hpsv3`
(the in-memory reference model of the HPSv3 checkpoint). The module also holds the independent re-statements of the
upstream scorers the tests compare score.py with: ImageReward's and MPS's upstream module trees (whose state_dicts
carry the upstream key names), the transformers 4.2x CLIP image processor in NumPy, and HPSv3's inference path.
The writers (`save_tiny_clip`, `save_hps`, `save_imagereward`, `save_pickled_mps`, `save_tiny_hpsv3`) also take the
real sizes, and build in torch's current default device and dtype: benchmarks/score_bench.py's GPU check writes the real
architectures with random weights through them.
"""

import gzip
import json
import math
import os
import types

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
# preprocessor_config.json of openai/clip-vit-large-patch14 and of laion/CLIP-ViT-H-14-laion2B-s32B-b79K (legacy
# feature-extractor format, as on the hub)
CLIP_PREPROCESSOR = {
    "crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD),
    "resample": 3, "size": 224,
}  # fmt: skip
# categorical values of the two real CLIP configs (text and vision towers alike); sizes shrink below
OPENAI_L14 = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}  # openai/clip-vit-large-patch14
LAION_H14 = {"hidden_act": "gelu", "layer_norm_eps": 1e-5}  # laion/CLIP-ViT-H-14-laion2B-s32B-b79K (MPS, PickScore)
TINY_OPEN_CLIP = {  # open_clip ViT-H-14.json with widths and depths shrunk (224 px, 14 px patches, 77 tokens, 49408)
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# Qwen/Qwen2-VL-7B-Instruct: preprocessor_config.json and chat_template.json
QWEN2VL_PREPROCESSOR = {
    "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
    "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD), "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2VLProcessor",
}  # fmt: skip
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == "
    "'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video "
    "{{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
# MizzenAI/HPSv3 hpsv3/dataset/data_collator_qwen.py INSTRUCTION + prompt_with_special_token (trailing spaces included)
HPSV3_TEXT = (
    "\nYou are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall "
    "score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being "
    "the best. \n\n**Visual Quality:**  \nEvaluate the overall visual quality of the image. The following "
    "sub-dimensions should be considered:\n- **Reasonableness:** The image should not contain any significant "
    "biological or logical errors, such as abnormal body structures or nonsensical environmental setups.\n- "
    "**Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, "
    "with no blurring or indistinct areas.\n- **Detail Richness:** Consider the level of detail in textures, "
    "materials, lighting, and other visual elements (e.g., hair, clothing, shadows).\n- **Aesthetic and Creativity:** "
    "Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, "
    "and the overall creative appeal. The scene should convey a sense of harmony and balance.\n- **Safety:** The image "
    "should not contain harmful or inappropriate content, such as political, violent, or adult material. If such "
    "content is present, the image quality and satisfaction score should be the lowest possible. \n\n**Text "
    "Alignment:**  \nAssess how well the image matches the textual prompt across the following sub-dimensions:\n- "
    "**Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align "
    "with the textual description. The subject should match the description in terms of number, appearance, and "
    "behavior.\n- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how "
    "well the image adheres to this style.\n- **Contextual Consistency**: Assess whether the background, setting, and "
    "surrounding elements in the image logically fit the scenario described in the prompt. The environment should "
    "support and enhance the subject without contradictions.\n- **Attribute Fidelity**: Check if specific attributes "
    "mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in "
    "the image. Minor deviations may be acceptable, but critical attributes should be preserved.\n- **Semantic "
    "Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The "
    "generated content should not introduce elements that conflict with or distort the original description.\n"
    "Textual prompt - {text_prompt}\n\n\n"
    "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
)


def save_real_clip_tokenizer(path):
    """The real 49,408-token CLIP BPE (the hub's CLIP tokenizers; ids equal open_clip's), rebuilt offline from the
    vocabulary file open_clip ships (testing.md §2): byte alphabet, the same with </w>, merges, then the two specials."""
    import open_clip
    from transformers import CLIPTokenizer

    merges = gzip.open(os.path.join(os.path.dirname(open_clip.__file__), "bpe_simple_vocab_16e6.txt.gz")).read()
    merges = merges.decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    byte_ids = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    alphabet = [chr(b) for b in byte_ids] + [
        chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in byte_ids)
    ]
    vocab = [*alphabet, *(a + "</w>" for a in alphabet), *("".join(m.split()) for m in merges)]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "vocab.json"), "w") as f:
        json.dump({v: i for i, v in enumerate(vocab)}, f)
    with open(os.path.join(path, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")
    tok = CLIPTokenizer(os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt"), model_max_length=77)
    tok.save_pretrained(path)
    return tok


TINY_CLIP_TOWER = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4, "num_hidden_layers": 2}
TINY_CLIP = {"text_config": TINY_CLIP_TOWER, "vision_config": TINY_CLIP_TOWER, "projection_dim": 16}


def save_tiny_clip(path, categorical: dict, seed: int, config: dict = TINY_CLIP):
    """A CLIPModel folder: the real tokenizer and preprocessor config, the real categorical config values, tiny sizes
    unless `config` (CLIPConfig keywords: text_config, vision_config, projection_dim) gives the real ones.
    Token ids are the 4.2x CLIPTextConfig values the hub configs carry (eos 2 = legacy argmax pooling; with the real
    vocabulary the argmax is the first <|endoftext|>)."""
    from transformers import CLIPConfig, CLIPModel

    save_real_clip_tokenizer(path)
    text = {"vocab_size": 49408, "max_position_embeddings": 77, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
            **categorical, **config["text_config"]}  # fmt: skip
    vision = {"image_size": 224, "patch_size": 14, **categorical, **config["vision_config"]}
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=config["projection_dim"]))
    model.eval()
    model.save_pretrained(path)
    with open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(CLIP_PREPROCESSOR, f)
    return model


def clip_processor_pixels(image, size=224, crop=224):
    """transformers 4.2x CLIPImageProcessor (the PIL one PickScore and MPS were built with), in NumPy: bicubic PIL
    resize of the short side (long side truncated to int), centre crop with the offset floored, x/255 in float64 cast
    to float32, normalise."""
    w, h = image.size
    nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
    x = np.asarray(image.convert("RGB").resize((nw, nh), Image.BICUBIC))
    top, left = (nh - crop) // 2, (nw - crop) // 2
    x = (x[top : top + crop, left : left + crop].astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy())


def attention(q, k, v, heads, mask=None):
    b, n, d = q.shape
    q, k, v = (t.reshape(b, -1, heads, d // heads).transpose(1, 2) for t in (q, k, v))
    logits = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
    return (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)


class RefViTBlock(nn.Module):  # BLIP models/vit.py Block: pre-norm, fused qkv, GELU MLP, LayerNorm eps 1e-6
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        q, k, v = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        x = x + self.attn.proj(attention(q, k, v, self.heads))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class RefViT(nn.Module):
    def __init__(self, dim=64, depth=2, patch=16, image=224):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(RefViTBlock(dim, dim // 64) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, px):
        x = self.patch_embed.proj(px).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class RefBertAttention(nn.Module):  # MED BertAttention: self.{query,key,value} + output.{dense,LayerNorm}
    def __init__(self, dim, kv_dim, heads):
        super().__init__()
        self.heads = heads
        self.self = nn.Module()
        self.self.query, self.self.key, self.self.value = (
            nn.Linear(dim, dim),
            nn.Linear(kv_dim, dim),
            nn.Linear(kv_dim, dim),
        )
        self.output = nn.Module()
        self.output.dense, self.output.LayerNorm = nn.Linear(dim, dim), nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x, kv, mask):
        s = self.self
        ctx = attention(s.query(x), s.key(kv), s.value(kv), self.heads, mask)
        return self.output.LayerNorm(self.output.dense(ctx) + x)


class RefBertLayer(nn.Module):
    def __init__(self, dim, enc_dim, heads, ffn):
        super().__init__()
        self.attention = RefBertAttention(dim, dim, heads)
        self.crossattention = RefBertAttention(dim, enc_dim, heads)
        self.intermediate = nn.Module()
        self.intermediate.dense = nn.Linear(dim, ffn)
        self.output = nn.Module()
        self.output.dense, self.output.LayerNorm = nn.Linear(ffn, dim), nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x, mask, enc):
        x = self.attention(x, x, mask)
        x = self.crossattention(x, enc, torch.ones(enc.shape[:2]))
        return self.output.LayerNorm(self.output.dense(F.gelu(self.intermediate.dense(x))) + x)


class RefBert(nn.Module):  # MED BertModel(add_pooling_layer=False); position_ids is a persistent buffer there
    def __init__(self, vocab, dim, enc_dim, heads, ffn, layers, max_pos):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.word_embeddings = nn.Embedding(vocab, dim)
        self.embeddings.position_embeddings = nn.Embedding(max_pos, dim)
        self.embeddings.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        self.embeddings.register_buffer("position_ids", torch.arange(max_pos).expand((1, -1)))
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(RefBertLayer(dim, enc_dim, heads, ffn) for _ in range(layers))

    def forward(self, ids, mask, enc):
        e = self.embeddings
        x = e.LayerNorm(e.word_embeddings(ids) + e.position_embeddings(e.position_ids[:, : ids.shape[1]]))
        for layer in self.encoder.layer:
            x = layer(x, mask, enc)
        return x


def reward_mlp(dim):  # nn.Sequential layout of both the aesthetic predictor and ImageReward's MLP
    return nn.Sequential(
        nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
        nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1),
    )  # fmt: skip


# BlipConfig-style sizes (the layout of benchmarks/memory.py ARCHS["imagereward-blip"], whose real sizes the GPU check
# passes instead): BLIP ViT (16 px patches, 224 px, 64-dim heads, MLP 4x) + MED BERT, ITC projections of
# image_text_hidden_size
TINY_BLIP = {"vision_config": {"hidden_size": 64, "num_hidden_layers": 2, "patch_size": 16, "image_size": 224},
             "text_config": {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2,
                             "num_attention_heads": 2, "max_position_embeddings": 64},
             "image_text_hidden_size": 16}  # fmt: skip


class RefImageReward(nn.Module):
    """Module tree of THUDM/ImageReward `ImageReward` (blip = BLIP_Pretrain, mlp = MLP), tiny unless `config` gives
    the real sizes; `med` is its med_config.json."""

    def __init__(self, vocab, config: dict = TINY_BLIP):
        super().__init__()
        v, t = config["vision_config"], config["text_config"]
        self.med = m = {"vocab_size": vocab, "hidden_size": t["hidden_size"], "num_hidden_layers": t["num_hidden_layers"],
                        "num_attention_heads": t["num_attention_heads"], "intermediate_size": t["intermediate_size"],
                        "max_position_embeddings": t.get("max_position_embeddings", 512), "layer_norm_eps": 1e-12,
                        "hidden_act": "gelu", "add_cross_attention": True, "encoder_width": v["hidden_size"]}  # fmt: skip
        dim, proj = v["hidden_size"], config.get("image_text_hidden_size", 256)
        self.blip = nn.Module()
        self.blip.visual_encoder = RefViT(dim=dim, depth=v["num_hidden_layers"], patch=v["patch_size"],
                                          image=v.get("image_size", 224))  # fmt: skip
        self.blip.text_encoder = RefBert(vocab, m["hidden_size"], dim, m["num_attention_heads"],
                                         m["intermediate_size"], m["num_hidden_layers"], m["max_position_embeddings"])  # fmt: skip
        self.blip.vision_proj, self.blip.text_proj = nn.Linear(dim, proj), nn.Linear(m["hidden_size"], proj)
        self.mlp = nn.Module()
        self.mlp.layers = reward_mlp(m["hidden_size"])

    def forward(self, px, ids, mask):
        txt = self.blip.text_encoder(ids, mask, self.blip.visual_encoder(px))
        return (self.mlp.layers(txt[:, 0]).squeeze(-1) - 0.16717362830052426) / 1.0333394966054072


# ---- MPS: the upstream module tree (Kwai-Kolors/MPS trainer/models/*.py), pickled whole as upstream ships it ----
class RefLayerNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim) + 0.1 * torch.randn(dim))
        self.register_buffer("bias", torch.zeros(dim))

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)


class RefSwiGLU(nn.Module):
    def forward(self, x):
        a, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * a


class RefResidual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x, *args):
        return self.fn(x, *args) + x


class RefRotary(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (10000 ** (torch.arange(0, dim, 2).float() / dim)))


def ref_rotate(pos, t):
    half = t.shape[-1] // 2
    return t * pos.cos() + torch.cat([-t[..., half:], t[..., :half]], -1) * pos.sin()


class RefParallelBlock(nn.Module):
    def __init__(self, dim, dim_head, heads, ff_mult):
        super().__init__()
        self.norm, self.heads, self.dim_head = RefLayerNorm(dim), heads, dim_head
        self.fused_dims = (dim_head * heads, dim_head, dim_head, dim * ff_mult * 2)
        self.rotary_emb = RefRotary(dim_head)
        self.fused_attn_ff_proj = nn.Linear(dim, sum(self.fused_dims), bias=False)
        self.attn_out = nn.Linear(dim_head * heads, dim, bias=False)
        self.ff_out = nn.Sequential(RefSwiGLU(), nn.Linear(dim * ff_mult, dim, bias=False))
        self.register_buffer("pos_emb", None, persistent=False)

    def forward(self, x):
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v, ff = self.fused_attn_ff_proj(x).split(self.fused_dims, dim=-1)
        q = q.reshape(b, n, self.heads, self.dim_head).permute(0, 2, 1, 3)
        freqs = torch.arange(n).float()[:, None] * self.rotary_emb.inv_freq[None]
        pos = torch.cat([freqs, freqs], -1)
        q, k = ref_rotate(pos, q) * self.dim_head**-0.5, ref_rotate(pos, k)
        attn = torch.einsum("bhid,bjd->bhij", q, k).softmax(-1)
        out = torch.einsum("bhij,bjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.attn_out(out) + self.ff_out(ff)


class RefCrossAttention(nn.Module):
    def __init__(self, dim, dim_head, heads, ff_mult):
        super().__init__()
        self.heads, self.dim_head = heads, dim_head
        self.norm, self.context_norm = RefLayerNorm(dim), nn.Identity()
        self.to_q = nn.Linear(dim, heads * dim_head, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * 2, bias=False)
        self.to_out = nn.Linear(heads * dim_head, dim, bias=False)
        self.ff = nn.Sequential(
            nn.Linear(dim, ff_mult * dim * 2, bias=False), RefSwiGLU(), nn.Linear(ff_mult * dim, dim, bias=False)
        )

    def forward(self, x, context, mask):
        b, n, _ = x.shape
        x = self.norm(x)
        q = self.to_q(x).reshape(b, n, self.heads, self.dim_head).permute(0, 2, 1, 3) * self.dim_head**-0.5
        k, v = self.to_kv(context).chunk(2, dim=-1)
        attn = (torch.einsum("bhid,bjd->bhij", q, k) + mask[:, None]).softmax(-1)
        out = torch.einsum("bhij,bjd->bhid", attn, v).permute(0, 2, 1, 3).reshape(b, n, -1)
        return self.to_out(out) + self.ff(x)


class RefCrossModel(nn.Module):
    def __init__(self, dim, layer_num, dim_head, heads, ff_mult=4):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList(
                [
                    RefResidual(RefCrossAttention(dim, dim_head, heads, ff_mult)),
                    RefResidual(RefParallelBlock(dim, dim_head, heads, ff_mult)),
                ]
            )
            for _ in range(layer_num)
        )

    def forward(self, query, context, mask):
        for cross, block in self.layers:
            query = block(cross(query, context, mask))
        return query


def ref_mps_score(mps, px, ids, cond_ids):
    """Upstream infer_one_sample for ONE (image, prompt): text/condition/image token features, condition mask, cross
    model, logit_scale * cos."""
    clip = mps.model
    text = clip.text_model(input_ids=ids)
    text_f, text_eos = clip.text_projection(text.last_hidden_state), clip.text_projection(text.pooler_output)
    cond_f = clip.text_projection(clip.text_model(input_ids=cond_ids).last_hidden_state)
    image_f = clip.visual_projection(clip.vision_model(pixel_values=px).last_hidden_state)
    sim = torch.einsum("bid,bjd->bji", text_f, cond_f).max(dim=1, keepdim=True)[0]
    sim = sim / sim.max()
    mask = torch.where(sim > 0.3, 0, float("-inf")).repeat(1, image_f.shape[1], 1)
    img = mps.cross_model(image_f, text_f, mask)[:, 0, :]
    img, txt = img / img.norm(dim=-1, keepdim=True), text_eos / text_eos.norm(dim=-1, keepdim=True)
    return (clip.logit_scale.exp() * txt @ img.T)[0, 0]


# Kwai-Kolors/MPS trainer/models/clip_model.py: Cross_model(dim=1024, layer_num=4, heads=16), dim_head 64; `dim` is
# the CLIP projection width
MPS_CROSS = {"layer_num": 4, "dim_head": 64, "heads": 16}
TINY_MPS_CROSS = {"dim": 16, "layer_num": 2, "dim_head": 8, "heads": 2}


def save_pickled_mps(path, clip_dir, cross: dict = TINY_MPS_CROSS):
    """torch.save of the whole module, its classes living in `trainer.models.*` as in the released checkpoint: the CLIP
    of `clip_dir`'s config and a Cross_model of `cross` sizes, stored in fp16; returns it in the dtype it was built in."""
    import sys as _sys
    import types as _types

    from transformers import CLIPConfig, CLIPModel

    fake = {
        name: _types.ModuleType(name)
        for name in ("trainer", "trainer.models", "trainer.models.clip_model", "trainer.models.cross_modeling")
    }
    xclip = type("XCLIPModel", (CLIPModel,), {"__module__": "trainer.models.clip_model"})
    mps_cls = type("CLIPModel", (nn.Module,), {"__module__": "trainer.models.clip_model"})
    classes = {
        "trainer.models.clip_model": {"XCLIPModel": xclip, "CLIPModel": mps_cls},
        "trainer.models.cross_modeling": {},
    }
    upstream = {"LayerNorm": RefLayerNorm, "SwiGLU": RefSwiGLU, "Residual": RefResidual, "RotaryEmbedding": RefRotary,
                "ParallelTransformerBlock": RefParallelBlock, "CrossAttention": RefCrossAttention, "Cross_model": RefCrossModel}  # fmt: skip
    classes["trainer.models.cross_modeling"].update(upstream)
    torch.manual_seed(3)
    mps = mps_cls()
    mps.model = xclip(CLIPConfig.from_pretrained(clip_dir)).eval()
    mps.cross_model = RefCrossModel(**cross).eval()
    dtype = mps.model.dtype
    saved = {}
    try:
        for module, members in classes.items():
            for name, cls in members.items():
                saved[(cls, "m")], saved[(cls, "q")] = cls.__module__, cls.__qualname__
                cls.__module__, cls.__qualname__ = module, name
                setattr(fake[module], name, cls)
        _sys.modules.update(fake)
        torch.save(mps.half(), path)  # the released checkpoint is fp16 (upstream feeds it .half() inputs)
    finally:
        for name in fake:
            _sys.modules.pop(name, None)
        for (cls, what), value in saved.items():
            setattr(cls, "__module__" if what == "m" else "__qualname__", value)
    return mps.to(dtype)


# ---- HPSv3 (MizzenAI/HPSv3): Qwen2-VL-7B-Instruct + reward head, the upstream inference path for one pair ----
def hpsv3_resize(image, factor=28, pixels=256 * 28 * 28):
    """qwen-vl-utils fetch_image as HPSv3 prepare_batch calls it (min_pixels = max_pixels = 256*28*28): sides
    rounded to multiples of 28, scaled to the pixel budget (floor when above, ceil when below), PIL bicubic."""
    w, h = image.size
    rh, rw = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if rh * rw > pixels:
        s = math.sqrt(h * w / pixels)
        rh, rw = math.floor(h / s / factor) * factor, math.floor(w / s / factor) * factor
    elif rh * rw < pixels:
        s = math.sqrt(pixels / (h * w))
        rh, rw = math.ceil(h * s / factor) * factor, math.ceil(w * s / factor) * factor
    return image.convert("RGB").resize((rw, rh), Image.BICUBIC)


def qwen2vl_patches(image, patch=14, merge=2, temporal=2):
    """transformers 4.45 Qwen2VLImageProcessor on an image already at a multiple of 28 (its own resize is then the
    identity): x/255, normalise, repeat the frame `temporal` times, flatten patches merge window by merge window."""
    x = (np.asarray(image).astype(np.float64) * (1 / 255)).astype(np.float32)
    x = ((x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)).transpose(2, 0, 1)
    gh, gw = x.shape[1] // patch, x.shape[2] // patch
    x = np.tile(x[None], (temporal, 1, 1, 1)).reshape(
        1, temporal, 3, gh // merge, merge, patch, gw // merge, merge, patch
    )
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gh * gw, 3 * temporal * patch * patch)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.tensor([[1, gh, gw]])


def ref_hpsv3(ref, image, prompt):
    """HPSv3RewardInferencer.reward for ONE (image, prompt), as upstream runs it on transformers 4.45: the chat
    template of Qwen2-VL-7B-Instruct rendered by hand, image tokens scattered into the embeddings, the language model
    called WITHOUT position ids (0..L-1 on every M-RoPE axis), the fp32 head on the <|Reward|> token -> (mu, sigma)."""
    model, head, tok = ref.model, ref.head, ref.tokenizer
    px, grid = qwen2vl_patches(hpsv3_resize(image))
    text = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>"
            + "<|image_pad|>" * (int(grid.prod()) // 4) + "<|vision_end|>" + HPSV3_TEXT.format(text_prompt=prompt)
            + "<|im_end|>\n<|im_start|>assistant\n")  # fmt: skip
    ids = tok(text, return_tensors="pt")["input_ids"]
    lm = model.model.language_model
    emb = lm.embed_tokens(ids)
    emb[ids == model.config.image_token_id] = model.model.visual(px, grid_thw=grid).pooler_output
    hidden = lm(inputs_embeds=emb).last_hidden_state
    return head(hidden[ids == tok.convert_tokens_to_ids("<|Reward|>")].float())[0]


def hpsv3_upstream_state_dict(model, head) -> dict:
    """The state dict HPSv3 saves, from a transformers 5 Qwen2VLForConditionalGeneration + head: transformers 4.45's
    names (`model.*` = language model, `visual.*`, `lm_head.*`; see MizzenAI/HPSv3 issue #15), bf16 backbone, fp32
    `rm_head.*`."""
    renamed = {"model.language_model.": "model.", "model.visual.": "visual.", "lm_head.": "lm_head."}
    state = {}
    for key, value in model.state_dict().items():
        prefix = next(p for p in renamed if key.startswith(p))
        state[renamed[prefix] + key.removeprefix(prefix)] = value.to(torch.bfloat16).contiguous()
    return {**state, **{f"rm_head.{k}": v.float().contiguous() for k, v in head.state_dict().items()}}


# Qwen2VLConfig-style sizes (the layout of benchmarks/memory.py ARCHS["qwen2-vl-7b-reward"], whose real sizes the GPU
# check passes instead)
TINY_QWEN2VL = {"text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "num_key_value_heads": 1},
                "vision_config": {"depth": 2, "embed_dim": 16, "mlp_ratio": 4, "num_heads": 2, "hidden_size": 32,
                                  "patch_size": 14, "spatial_merge_size": 2}}  # fmt: skip


def make_hpsv3_tokenizer(size: int | None = None):
    """conftest's Qwen2 tokenizer (byte-level BPE, Qwen's specials) with its BPE also learned from HPSv3's instruction,
    so that the ~2.6k-character prompt becomes whole words and digits (530 tokens; Qwen's own 151k-piece BPE, not at
    hand offline, splits a few rarer words further; conftest's 400-piece BPE makes 1,720), padded with pieces no merge
    produces to `size` tokens: with Qwen2-VL's 151,657 the embedding has the real row count. For real-size runs, where
    the sequence length is the cost."""
    from conftest import CORPUS, QWEN_SPECIALS
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator([CORPUS, HPSV3_TEXT] * 3, trainers.BpeTrainer(vocab_size=4000, initial_alphabet=alphabet,
                                                                          show_progress=False))  # fmt: skip
    model = json.loads(bpe.to_str())["model"]
    vocab, merges = model["vocab"], [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    vocab |= {f"<unused{i}>": i for i in range(len(vocab), (size or 0) - len(QWEN_SPECIALS))}
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges)
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIALS], special_tokens=True)
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    return tok


def save_tiny_hpsv3(root, config: dict = TINY_QWEN2VL, tokenizer=None, checkpoint: bool = True):
    """A Qwen2-VL-7B-Instruct stand-in folder (flat config.json with the real categorical values, the real processor
    config and chat template) and HPSv3.safetensors with upstream's key names: transformers 4.45's layout (`model.*`
    language model, `visual.*`, `lm_head`), embeddings resized to the tokenizer + <|Reward|>, bf16 backbone, fp32
    ranknet head `rm_head.{0,3,5}` (hidden -> 1024 -> 16 -> 2). Tiny unless `config` gives the real sizes; the tokenizer
    defaults to conftest's. Built in torch's current default device and dtype (fp32: bf16-rounded weights, so the fp32
    reference equals the bf16 checkpoint). Returns the in-memory reference; with checkpoint=False the upstream-named
    state dict is returned (`state`) instead of written."""
    from conftest import QWEN_SPECIALS, make_qwen2_tokenizer
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoProcessor, Qwen2VLForConditionalGeneration

    base, ckpt = root / "qwen2-vl", root / "hpsv3"
    base.mkdir(), ckpt.mkdir()
    tok = tokenizer or make_qwen2_tokenizer()
    tok.chat_template = QWEN2VL_CHAT_TEMPLATE
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    text, vision = config["text_config"], config["vision_config"]
    # M-RoPE: of the head's rotary pairs a quarter turn with time, the rest split between height and width (real: 128-dim
    # heads, [16, 24, 24])
    pairs = text["hidden_size"] // text["num_attention_heads"] // 2
    t_pairs = pairs // 4
    section = [t_pairs, (pairs - t_pairs) // 2, pairs - t_pairs - (pairs - t_pairs) // 2]
    flat = {
        "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl", "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu",
        "hidden_size": text["hidden_size"], "intermediate_size": text["intermediate_size"],
        "max_position_embeddings": 32768, "max_window_layers": text["num_hidden_layers"],
        "num_attention_heads": text["num_attention_heads"], "num_hidden_layers": text["num_hidden_layers"],
        "num_key_value_heads": text["num_key_value_heads"], "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
        "use_sliding_window": False, "vocab_size": text.get("vocab_size", len(tok) + 9),  # padded past the tokenizer
        "rope_scaling": {"type": "mrope", "mrope_section": section},
        "vision_config": {"in_chans": 3, "spatial_patch_size": vision["patch_size"], "temporal_patch_size": 2,
                          **vision},
    }  # fmt: skip
    (base / "config.json").write_text(json.dumps(flat))
    tok.save_pretrained(base)
    (base / "preprocessor_config.json").write_text(json.dumps(QWEN2VL_PREPROCESSOR))
    (base / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2VL_CHAT_TEMPLATE}))
    processor = AutoProcessor.from_pretrained(base)
    processor.tokenizer.add_special_tokens({"additional_special_tokens": ["<|Reward|>"]})  # as upstream train.py
    cfg = AutoConfig.from_pretrained(base)
    cfg.text_config.vocab_size = len(processor.tokenizer)  # upstream resize_token_embeddings(len(tokenizer))
    torch.manual_seed(5)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    if model.dtype == torch.float32:
        model = model.to(torch.bfloat16).float()  # bf16-exact weights
    hidden = text["hidden_size"]
    head = nn.Sequential(
        nn.Linear(hidden, 1024), nn.ReLU(), nn.Dropout(0.05), nn.Linear(1024, 16), nn.ReLU(), nn.Linear(16, 2)
    )
    head.eval()
    state = hpsv3_upstream_state_dict(model, head)
    if checkpoint:
        save_file(state, ckpt / "HPSv3.safetensors")
    return types.SimpleNamespace(model=model, head=head, tokenizer=processor.tokenizer, keys=sorted(state),
                                 state=None if checkpoint else state)  # fmt: skip


def save_hps(folder, arch: str):
    """HPS_v2.1_compressed.pt as upstream stores it ({"state_dict": ...}) for the open_clip architecture `arch`, built
    in torch's current default device and dtype (open_clip's loader casts into its fp32 model)."""
    import open_clip

    folder.mkdir()
    model = open_clip.create_model(arch, device=torch.get_default_device())
    torch.save({"state_dict": model.state_dict()}, folder / "HPS_v2.1_compressed.pt")
    return sum(p.numel() for p in model.parameters())


def save_aesthetic(path, dim: int):
    """The LAION aesthetic predictor's state dict (`layers.*`) on a `dim`-wide CLIP embedding."""
    torch.save({f"layers.{k}": v for k, v in reward_mlp(dim).state_dict().items()}, path)


def save_imagereward(folder, tokenizer_folder, config: dict | None = None):
    """ImageReward.pt with upstream's key names + med_config.json in `folder`, and BLIP's BERT tokenizer ([DEC] bos,
    [ENC] added) in `tokenizer_folder`: tiny, or with `config` (BlipConfig keywords) the real sizes, the BERT vocabulary
    then padded to text_config.vocab_size minus BLIP's two added tokens (30,522 + 2 for the real one)."""
    from conftest import make_bert_tokenizer
    from transformers import BertTokenizer

    bert = make_bert_tokenizer()
    if config is not None:
        vocab = bert.get_vocab()
        vocab |= {f"[unused{i}]": i for i in range(len(vocab), config["text_config"]["vocab_size"] - 2)}
        bert = BertTokenizer(vocab=vocab)
    bert.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    bert.save_pretrained(tokenizer_folder)
    ir = RefImageReward(len(bert), config or TINY_BLIP).eval()
    folder.mkdir()
    torch.save(ir.state_dict(), folder / "ImageReward.pt")
    (folder / "med_config.json").write_text(json.dumps(ir.med))
    return ir


def build_tiny_scorers(root):
    """Write every tiny scorer under `root`; returns paths (load_scorer kwargs), env (SCORE_* variables), root, hpsv3."""
    import open_clip

    torch.manual_seed(0)
    # HPS: open_clip model from a config file + {"state_dict": ...} checkpoint, as HPS_v2.1_compressed.pt is stored
    arch = root / "tiny-hps-vit.json"
    arch.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(arch)
    save_hps(root / "hps", "tiny-hps-vit")
    save_tiny_clip(root / "clip-l14", OPENAI_L14, seed=1)  # clip + aesthetic backbone
    save_tiny_clip(root / "clip-h14", LAION_H14, seed=2)  # PickScore model + processor, MPS's CLIP config + processor
    save_aesthetic(root / "aesthetic-model.pth", TINY_CLIP["projection_dim"])
    # ImageReward: upstream key layout, tiny BERT tokenizer with BLIP's [DEC] / [ENC] added
    save_imagereward(root / "imagereward", root / "bert")
    save_pickled_mps(root / "MPS_overall_checkpoint.pth", root / "clip-h14")
    hpsv3 = save_tiny_hpsv3(root)
    paths = {
        "hps_arch": str(arch), "hps_checkpoint": str(root / "hps"), "clip_model": str(root / "clip-l14"),
        "aesthetic_head": str(root / "aesthetic-model.pth"), "pickscore_model": str(root / "clip-h14"),
        "pickscore_processor": str(root / "clip-h14"), "imagereward_checkpoint": str(root / "imagereward"),
        "imagereward_tokenizer": str(root / "bert"), "mps_checkpoint": str(root / "MPS_overall_checkpoint.pth"),
        "mps_processor": str(root / "clip-h14"), "hpsv3_checkpoint": str(root / "hpsv3"),
        "hpsv3_base": str(root / "qwen2-vl"),
    }  # fmt: skip
    env = {f"SCORE_{k.upper()}": v for k, v in paths.items()}
    return types.SimpleNamespace(paths=paths, env=env, root=root, hpsv3=hpsv3)


@pytest.fixture(scope="session")
def tiny_scorers(tmp_path_factory):
    return build_tiny_scorers(tmp_path_factory.mktemp("scorers"))
