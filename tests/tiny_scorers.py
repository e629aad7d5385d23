# SPDX-License-Identifier: Apache-2.0
"""Tiny random-weight scorer models for score.py, saved in the layouts the real checkpoints use (pytest plugin).

`tiny_scorers.paths` are load_scorer keyword arguments; `tiny_scorers.env` the same as SCORE_* environment variables
for subprocesses. ImageReward's checkpoint is produced by `RefImageReward`, an independent re-statement of the upstream
module tree (BLIP's timm-style ViT, MED BERT with cross-attention, the reward MLP), so its state_dict has the upstream
key names and its forward is the hand computation the tests compare score.py against.
"""

import json
import math
import types

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

TINY_OPEN_CLIP = {  # testing.md §6: the real 49,408-token vocab so open_clip's bundled tokenizer works
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


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
    def __init__(self, dim=64, depth=2, patch=8, image=32):
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


class RefImageReward(nn.Module):
    """Module tree of THUDM/ImageReward `ImageReward` (blip = BLIP_Pretrain, mlp = MLP) at tiny width."""

    MED = {"vocab_size": None, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
           "intermediate_size": 37, "max_position_embeddings": 64, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
           "add_cross_attention": True, "encoder_width": 64}  # fmt: skip

    def __init__(self, vocab):
        super().__init__()
        m = self.MED
        self.blip = nn.Module()
        self.blip.visual_encoder = RefViT(dim=64, depth=2, patch=8, image=32)
        self.blip.text_encoder = RefBert(vocab, m["hidden_size"], 64, m["num_attention_heads"],
                                         m["intermediate_size"], m["num_hidden_layers"], m["max_position_embeddings"])  # fmt: skip
        self.blip.vision_proj, self.blip.text_proj = nn.Linear(64, 16), nn.Linear(32, 16)
        self.mlp = nn.Module()
        self.mlp.layers = reward_mlp(32)

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


def save_pickled_mps(path, clip_dir):
    """torch.save of the whole module, its classes living in `trainer.models.*` as in the released checkpoint."""
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
    mps.cross_model = RefCrossModel(dim=16, layer_num=2, dim_head=8, heads=2).eval()
    saved = {}
    try:
        for module, members in classes.items():
            for name, cls in members.items():
                saved[(cls, "m")], saved[(cls, "q")] = cls.__module__, cls.__qualname__
                cls.__module__, cls.__qualname__ = module, name
                setattr(fake[module], name, cls)
        _sys.modules.update(fake)
        torch.save(mps, path)
    finally:
        for name in fake:
            _sys.modules.pop(name, None)
        for (cls, what), value in saved.items():
            setattr(cls, "__module__" if what == "m" else "__qualname__", value)
    return mps


def build_tiny_scorers(root):
    """Write every tiny scorer under `root`; returns paths (load_scorer kwargs) and env (SCORE_* variables)."""
    import open_clip
    from conftest import make_bert_tokenizer, make_clip_tokenizer
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(0)
    # HPS: open_clip model from a config file + {"state_dict": ...} checkpoint, as HPS_v2.1_compressed.pt is stored
    arch = root / "tiny-hps-vit.json"
    arch.write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(arch)
    (root / "hps").mkdir()
    torch.save(
        {"state_dict": open_clip.create_model("tiny-hps-vit").state_dict()}, root / "hps" / "HPS_v2.1_compressed.pt"
    )
    # CLIP ViT-L/14 stand-in (clip, aesthetic backbone, PickScore model + processor)
    tok = make_clip_tokenizer()
    text = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    vision = dict(
        image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4
    )
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    clip.save_pretrained(root / "clip")
    image_proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_proc, tokenizer=tok).save_pretrained(root / "clip")
    torch.save({f"layers.{k}": v for k, v in reward_mlp(16).state_dict().items()}, root / "aesthetic-model.pth")
    # ImageReward: upstream key layout, tiny BERT tokenizer with BLIP's [DEC] / [ENC] added
    bert = make_bert_tokenizer()
    bert.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
    bert.save_pretrained(root / "bert")
    ir = RefImageReward(len(bert)).eval()
    (root / "imagereward").mkdir()
    torch.save(ir.state_dict(), root / "imagereward" / "ImageReward.pt")
    (root / "imagereward" / "med_config.json").write_text(json.dumps({**RefImageReward.MED, "vocab_size": len(bert)}))

    save_pickled_mps(root / "MPS_overall_checkpoint.pth", root / "clip")
    paths = {
        "hps_arch": str(arch), "hps_checkpoint": str(root / "hps"), "clip_model": str(root / "clip"),
        "aesthetic_head": str(root / "aesthetic-model.pth"), "pickscore_model": str(root / "clip"),
        "pickscore_processor": str(root / "clip"), "imagereward_checkpoint": str(root / "imagereward"),
        "imagereward_tokenizer": str(root / "bert"), "mps_checkpoint": str(root / "MPS_overall_checkpoint.pth"),
        "mps_processor": str(root / "clip"),
    }  # fmt: skip
    env = {f"SCORE_{k.upper()}": v for k, v in paths.items()}
    return types.SimpleNamespace(paths=paths, env=env, root=root)


@pytest.fixture(scope="session")
def tiny_scorers(tmp_path_factory):
    return build_tiny_scorers(tmp_path_factory.mktemp("scorers"))
