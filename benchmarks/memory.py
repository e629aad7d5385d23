# SPDX-License-Identifier: Apache-2.0
"""Per-GPU memory of every training recipe, COMPUTED (not measured): parameters counted on the meta device from the
real architectures' configs (written below; no hub, no weights), times the bytes each part costs under each accelerate
config, plus activation estimates from the recipe's own batch and sequence settings.

    python benchmarks/memory.py                      # every recipe x accelerate config, and the verdicts
    python benchmarks/memory.py --recipe recipes/image_edit_qwen7b.yaml --counts

Each recipe states its hardware on a header line that this script reads and checks:
    # hardware: 8 x 80GB, recipes/accelerate/zero2.yaml
"fits" means the computed peak is at most 90 % of the card (>= 10 % headroom).

What is counted, per GPU (bytes per parameter; N = number of GPUs):
- trainable, full fine-tune: DDP / FSDP2 hold weights + grads + two AdamW moments in the load dtype (FSDP2 / ZeRO-3
  shard all of it by N); DeepSpeed ZeRO-2/3 keep bf16 weights + bf16 grads + fp32 master + two fp32 moments
  (2 + 2 + 12), ZeRO-2 shards grads and optimizer state, ZeRO-3 also the weights.
- trainable LoRA adapters: peft keeps adapters in fp32 (autocast_adapter_dtype): 4 + 4 + 8 bytes, same sharding.
- frozen parts (LoRA base, pipelines, reward models): their dtype, replicated (ZeRO-3/FSDP2 shard only the policy).
- reference model (beta > 0): a copy of the policy in its dtype; none with LoRA (TRL disables the adapter instead).
Activations are ESTIMATES (formulas in `activations_*`): LLM blocks save 2*(8H + 4I) bytes per token per layer
(norms, q/k/v/o, gated MLP; SDPA attention keeps no S^2 term); with gradient checkpointing only the layer inputs
(2H bytes per token per layer) plus one layer's full set; completion logits 6*V bytes per token (bf16 logits, fp32
log-softmax, grad); diffusion blocks peak at 32H bytes per token (one block alive at inference); UNet and VAE costs
per image are per-pixel rules stated below. The largest phase (generation, training step, rendering) counts, plus
every resident weight. A GPU run of benchmarks/gpu_check.py measures what this estimates.
"""

import argparse
import functools
import logging
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)  # optional-kernel notice on import
GIB = 1024**3
CARDS = {"80GB": 79.6, "141GB": 139.8, "48GB": 47.5, "24GB": 23.6, "6GB": 5.8}  # usable GiB (nvidia-smi totals)
CONFIGS = {
    "single": "one GPU, no sharding",
    "recipes/accelerate/multi_gpu.yaml": "DDP",
    "recipes/accelerate/zero2.yaml": "DeepSpeed ZeRO-2",
    "recipes/accelerate/zero3.yaml": "DeepSpeed ZeRO-3",
    "recipes/accelerate/fsdp2.yaml": "FSDP2",
}


########################
# real architectures: hub configs written out (sizes as released); built on the meta device here, and with random
# weights on a GPU by benchmarks/gpu_check.py (which keeps tiny twins of these entries under the same names)
########################
QWEN_TEXT = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                 num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)  # fmt: skip
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
T5_XXL = dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")
KL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4)  # fmt: skip
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True])
# name -> (model class, config class or None for diffusers models, keyword arguments)
ARCHS = {
    "qwen2.5-3b": ("transformers.Qwen2ForCausalLM", "transformers.Qwen2Config",
                   dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                        num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)),
    "qwen2.5-7b": ("transformers.Qwen2ForCausalLM", "transformers.Qwen2Config", QWEN_TEXT),
    "qwen2.5-14b": ("transformers.Qwen2ForCausalLM", "transformers.Qwen2Config",
                    dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=48, num_attention_heads=40,
                         num_key_value_heads=8, vocab_size=152064, tie_word_embeddings=False)),
    "qwen2.5-vl-7b": ("transformers.Qwen2_5_VLForConditionalGeneration", "transformers.Qwen2_5_VLConfig",
                      dict(text_config=QWEN_TEXT,
                           vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                                              out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                                              temporal_patch_size=2, window_size=112,
                                              fullatt_block_indexes=[7, 15, 23, 31]))),
    "flux-dit": ("diffusers.FluxTransformer2DModel", None,
                 dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                      num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                      guidance_embeds=True, axes_dims_rope=(16, 56, 56))),
    "t5-xxl": ("transformers.T5EncoderModel", "transformers.T5Config", dict(vocab_size=32128, **T5_XXL)),
    "umt5-xxl": ("transformers.UMT5EncoderModel", "transformers.UMT5Config", dict(vocab_size=256384, **T5_XXL)),
    "clip-text-l": ("transformers.CLIPTextModel", "transformers.CLIPTextConfig", dict(projection_dim=768, **CLIP_L_TEXT)),
    "clip-text-l-proj": ("transformers.CLIPTextModelWithProjection", "transformers.CLIPTextConfig",
                         dict(projection_dim=768, **CLIP_L_TEXT)),
    "flux-vae": ("diffusers.AutoencoderKL", None,
                 dict(latent_channels=16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159,
                      scaling_factor=0.3611, **KL_VAE)),
    # UNet2DConditionModel's defaults are SD1.x's (320/640/1280/1280, cross-attention 768)
    "sd15-unet": ("diffusers.UNet2DConditionModel", None, dict(sample_size=64, cross_attention_dim=768)),
    "sd-vae": ("diffusers.AutoencoderKL", None, dict(latent_channels=4, sample_size=512, **KL_VAE)),
    "qwen-image-dit": ("diffusers.QwenImageTransformer2DModel", None,
                       dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                            axes_dims_rope=(16, 56, 56))),
    "qwen-image-vae": ("diffusers.AutoencoderKLQwenImage", None, WAN_VAE),
    "wan-1.3b-dit": ("diffusers.WanTransformer3DModel", None,
                     dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                          out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                          cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6)),
    "wan-vae": ("diffusers.AutoencoderKLWan", None, WAN_VAE),
    # HPSv2 / PickScore / MPS backbone (LAION ViT-H-14, gelu)
    "clip-vit-h-14": ("transformers.CLIPModel", "transformers.CLIPConfig",
                      dict(projection_dim=1024,
                           vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                              num_attention_heads=16, patch_size=14, hidden_act="gelu"),
                           text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, hidden_act="gelu"))),
    # CLIPScore / LAION aesthetic backbone (openai/clip-vit-large-patch14)
    "clip-vit-l-14": ("transformers.CLIPModel", "transformers.CLIPConfig",
                      dict(projection_dim=768, text_config=CLIP_L_TEXT,
                           vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              num_attention_heads=16, patch_size=14))),
    # BLIP ViT-L/16 + BERT-base with cross-attention (ImageReward's MED)
    "imagereward-blip": ("transformers.BlipForImageTextRetrieval", "transformers.BlipConfig",
                         dict(vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                                 num_attention_heads=16, patch_size=16, image_size=224),
                              text_config=dict(vocab_size=30524, hidden_size=768, intermediate_size=3072,
                                               num_hidden_layers=12, num_attention_heads=12,
                                               encoder_hidden_size=1024))),
    # HPSv3's backbone: Qwen2-VL-7B-Instruct without the LM head (score.py loads Qwen2VLModel + a small head)
    "qwen2-vl-7b-reward": ("transformers.Qwen2VLModel", "transformers.Qwen2VLConfig",
                           dict(text_config=QWEN_TEXT,
                                vision_config=dict(depth=32, embed_dim=1280, hidden_size=3584, mlp_ratio=4,
                                                   num_heads=16, patch_size=14, spatial_merge_size=2))),
    "gpt2": ("transformers.GPT2LMHeadModel", "transformers.GPT2Config", dict()),  # GPT-2 small (Promptist)
}  # fmt: skip


def build(name: str, archs: dict = ARCHS):
    """An architecture from its written-out config (random init; call under torch.device("meta") to count only)."""
    import importlib

    def load(path):
        module, cls = path.rsplit(".", 1)
        return getattr(importlib.import_module(module), cls)

    model_cls, config_cls, kwargs = archs[name]
    return load(model_cls)(load(config_cls)(**kwargs)) if config_cls else load(model_cls)(**kwargs)


def build_on(name: str, device, dtype, archs: dict = ARCHS):
    """Random weights built directly on `device` in `dtype` (no fp32 copy of a 20 B model on the way), frozen, eval
    mode; the modules diffusers' from_pretrained(dtype=...) keeps in fp32 (`_keep_in_fp32_modules`) are fp32 again."""
    import diffusers
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = build(name, archs)
    finally:
        torch.set_default_dtype(previous)
    keep = (
        set(getattr(model, "_keep_in_fp32_modules", None) or ()) if isinstance(model, diffusers.ModelMixin) else set()
    )
    for pname, p in model.named_parameters():
        if keep & set(pname.split(".")):
            p.data = p.data.float()
    return model.eval().requires_grad_(False)


@functools.cache
def params(name: str) -> int:
    """Parameter count of a real architecture, built on the meta device (no memory, no weights)."""
    import torch

    with torch.device("meta"):
        model = build(name)
    return sum(p.numel() for p in model.parameters())


PIPELINES = {  # hub id -> (component, dtype bytes on CUDA as the scripts load it)
    "black-forest-labs/FLUX.1-dev": [("flux-dit", 2), ("t5-xxl", 2), ("clip-text-l", 2), ("flux-vae", 2)],
    "runwayml/stable-diffusion-v1-5": [("sd15-unet", 2), ("sd-vae", 2), ("clip-text-l", 2)],
    "stable-diffusion-v1-5/stable-diffusion-v1-5": [("sd15-unet", 2), ("sd-vae", 2), ("clip-text-l", 2)],
    # the Edit pipeline is loaded WITHOUT its text encoder: the policy VLM is that encoder
    "Qwen/Qwen-Image-Edit": [("qwen-image-dit", 2), ("qwen-image-vae", 2)],
    "Qwen/Qwen-Image-Edit-2509": [("qwen-image-dit", 2), ("qwen-image-vae", 2)],
    # Wan: transformer + UMT5 bf16, VAE fp32 (diffusers' Wan example)
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": [("wan-1.3b-dit", 2), ("umt5-xxl", 2), ("wan-vae", 4)],
}
POLICIES = {
    "Qwen/Qwen2.5-3B-Instruct": "qwen2.5-3b",
    "Qwen/Qwen2.5-7B-Instruct": "qwen2.5-7b",
    "Qwen/Qwen2.5-14B-Instruct": "qwen2.5-14b",
    "Qwen/Qwen2.5-VL-7B-Instruct": "qwen2.5-vl-7b",
}
LLM_SHAPES = {  # (layers, hidden, intermediate, kv heads * head dim, vocab) of the language model
    "qwen2.5-3b": (36, 2048, 11008, 256, 151936),
    "qwen2.5-7b": (28, 3584, 18944, 512, 152064),
    "qwen2.5-14b": (48, 5120, 13824, 1024, 152064),
    "qwen2.5-vl-7b": (28, 3584, 18944, 512, 152064),
}
SCORERS = {  # score.py metric -> (architecture, bytes per parameter at its upstream precision)
    "imagereward": ("imagereward-blip", 4),
    "hpsv2": ("clip-vit-h-14", 4),  # fp32 weights, fp16 autocast (upstream)
    "pickscore": ("clip-vit-h-14", 4),
    "mps": ("clip-vit-h-14", 2),
    "hpsv3": ("qwen2-vl-7b-reward", 2),  # Qwen2-VL-7B without its LM head + reward head, bf16
    "clip": ("clip-vit-l-14", 2),
    "aesthetic": ("clip-vit-l-14", 2),
}


def lora_params(arch: str, r: int, targets: list[str]) -> int:
    """LoRA adapter parameters: r * (in + out) per targeted linear of the language model."""
    layers, h, inter, kv, _ = LLM_SHAPES[arch]
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, inter),
              "up_proj": (h, inter), "down_proj": (inter, h)}  # fmt: skip
    return layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets)


########################
# activation estimates (bytes)
########################
def activations_llm_train(arch, batch, seq, completion, checkpointing) -> float:
    layers, h, inter, _, vocab = LLM_SHAPES[arch]
    per_layer = 2 * (8 * h + 4 * inter) * batch * seq
    saved = layers * 2 * h * batch * seq + per_layer if checkpointing else layers * per_layer
    return saved + 6 * vocab * batch * completion


def activations_llm_generate(arch, batch, seq) -> float:
    layers, h, _, kv, vocab = LLM_SHAPES[arch]
    return 2 * layers * batch * seq * kv * 2 + 4 * vocab * batch  # KV cache (bf16) + one step's fp32 logits


def activations_dit(hidden, batch, tokens) -> float:
    return 32 * hidden * batch * tokens  # one block's working set; blocks run one after another at inference


# SD1.5 fp16 UNet, one CFG row at 512², flash/SDPA attention: 0.25 GiB per pair of images (two rows each), counted
# on the meta device by benchmarks/promptist_bench.py --memory; doubled here for allocator and workspace slack
UNET_PER_ROW_512 = 2 * 0.25 / 4 * GIB
VAE_PER_MP = 2.0 * GIB  # KL/Qwen-Image VAE decode, per megapixel of output (estimate)


########################
# recipes
########################
@dataclass
class Row:
    part: str
    gib: float
    note: str


def _hardware(path: Path) -> tuple[int, str, str]:
    m = re.search(r"^# hardware: (\d+) x (\S+), (\S+)", path.read_text(), re.M)
    if not m:
        raise ValueError(f"{path}: no '# hardware: N x CARD, CONFIG' header line")
    return int(m[1]), m[2], m[3]


def policy_rows(arch, cfg, n, config, ref_needed) -> list[Row]:
    """Weights, gradients, optimizer state and reference model of the policy, per GPU."""
    total = params(arch)
    dtype_b = 2 if cfg.get("dtype", "bfloat16") in ("bfloat16", "float16", "auto") else 4
    zero = "zero" in config
    shard_w = n if any(k in config for k in ("zero3", "fsdp2")) else 1
    shard_o = n if any(k in config for k in ("zero2", "zero3", "fsdp2")) else 1
    rows = []
    if cfg.get("use_peft"):
        lp = lora_params(arch, cfg.get("lora_r", 16), cfg.get("lora_target_modules", ["q_proj", "v_proj"]))
        rows.append(Row("policy weights (frozen base)", total * dtype_b / GIB, f"{total / 1e9:.2f} B x {dtype_b} B"))
        rows.append(Row("LoRA weights+grads+AdamW", lp * 16 / shard_o / GIB, f"{lp / 1e6:.1f} M x 16 B / {shard_o}"))
    else:
        w_b = 2 if zero else dtype_b
        opt_b = 2 + 12 if zero else 3 * dtype_b  # grads + (master + moments) vs grads + moments in the load dtype
        rows.append(Row("policy weights", total * w_b / shard_w / GIB, f"{total / 1e9:.2f} B x {w_b} B / {shard_w}"))
        rows.append(Row("grads + optimizer", total * opt_b / shard_o / GIB, f"{opt_b} B/param / {shard_o}"))
        if ref_needed:
            rows.append(Row("reference model (beta > 0)", total * w_b / shard_w / GIB, "a frozen policy copy"))
    return rows


def frozen_rows(components, label: str = "frozen") -> list[Row]:
    return [
        Row(f"{label} {name}", params(name) * b / GIB, f"{params(name) / 1e9:.2f} B x {b} B") for name, b in components
    ]


def scorer_rows(spec: str) -> list[Row]:
    """One reward model per metric name in a score.py spec such as "imagereward:1,clip:0.5" (each loads its own)."""
    metrics = dict.fromkeys(m.split(":")[0].strip() for m in spec.split(",") if m.strip())
    return [row for m in metrics for row in frozen_rows([SCORERS[m]], f"reward {m}:")]


def recipe_rows(path: Path, config: str, n: int) -> tuple[list[Row], dict]:
    """Rows (weights and the largest activation phase) for one recipe under one accelerate config."""
    import yaml

    cfg = yaml.safe_load(path.read_text())
    name = path.name
    # TRL's GRPOConfig / SFTConfig default to activation (gradient) checkpointing; either name may turn it off
    ckpt = cfg.get("activation_checkpointing", cfg.get("gradient_checkpointing", True)) is not False
    b = cfg.get("per_device_train_batch_size", 8)
    if name.startswith("r1_"):
        arch = POLICIES[cfg.get("gpt_path", "Qwen/Qwen2.5-3B-Instruct")]
        # r1_prompter.py without a dtype: bf16 weights under DeepSpeed (fp32 master there), else fp32 + bf16 autocast
        cfg.setdefault("dtype", "bfloat16" if "zero" in config else "float32")
    if name.startswith("r1_") and cfg.get("stage") == "sft":
        seq = cfg.get("max_length", 1024)
        rows = policy_rows(arch, cfg, n, config, False)
        phases = {"training step": activations_llm_train(arch, b, seq, seq, ckpt)}
    elif name.startswith("r1_"):
        comp = cfg.get("max_completion_length", 256)
        seq = 200 + comp  # system prompt + user prompt (~200 tokens) + completion
        rows = policy_rows(arch, cfg, n, config, cfg.get("beta", 0.0) > 0)
        rows += frozen_rows(PIPELINES[cfg["sdmodel_name"]])
        rows += scorer_rows(str(cfg.get("image_metrics", "imagereward:1")))
        px = cfg.get("height", 512) * cfg.get("width", 512)
        ib = cfg.get("image_batch_size", 8)
        if "flux" in cfg["sdmodel_name"].lower():
            render = activations_dit(3072, ib, px / 256 + 512) + ib * VAE_PER_MP * px / 1e6
        else:
            render = 2 * ib * UNET_PER_ROW_512 * px / 512**2 + ib * VAE_PER_MP * px / 1e6
        phases = {
            "generation (KV cache)": activations_llm_generate(arch, b, seq),
            "training step": activations_llm_train(arch, b, seq, comp, ckpt),
            "rendering": render,
        }
    elif name.startswith("image_edit"):
        arch = POLICIES[cfg["model_name_or_path"]]
        comp = cfg.get("max_completion_length", 1024)
        pipeline = cfg.get("pipeline", "Qwen/Qwen-Image-Edit-2509")
        plus = pipeline.endswith("2509")  # Plus: the VLM sees a 384² view, one edit per pipeline call
        seq = (190 if plus else 1536) + 100 + comp  # image tokens of the VLM view + template + completion
        eb = 1 if plus else cfg.get("edit_batch_size", 4)
        rows = policy_rows(arch, cfg, n, config, False)
        pipe_rows = frozen_rows(PIPELINES[pipeline])
        # target + condition latents (2 x 4,096 tokens at 1 MP) + the conditioning text; VAE decode at 1 MP
        render = activations_dit(3072, eb, 2 * 4096 + seq - 100) + eb * VAE_PER_MP
        if cfg.get("pipeline_cpu_offload"):  # DiT + VAE live in CPU RAM and visit the GPU only to render
            render += sum(r.gib for r in pipe_rows) * GIB
            rows.append(Row("DiT + VAE (offloaded; counted while rendering)", 0.0, "CPU RAM between renders"))
        else:
            rows += pipe_rows
        phases = {
            "generation (KV cache)": activations_llm_generate(arch, b, seq),
            "training step": activations_llm_train(arch, b, seq, comp, ckpt),
            "rendering": render,
        }
    elif name.startswith("video_"):
        arch = POLICIES[cfg.get("model_name_or_path", "Qwen/Qwen2.5-14B-Instruct")]
        cfg = {**cfg, "use_peft": True, "lora_r": cfg.get("lora_r", 16),
               "lora_target_modules": cfg.get("lora_target_modules", ["q_proj", "k_proj", "v_proj", "o_proj",
                                                                      "gate_proj", "up_proj", "down_proj"])}  # fmt: skip
        rows = policy_rows(arch, cfg, n, config, False)
        if cfg.get("stage") == "rl" and cfg.get("beta", 0.0) > 0:  # TRL keeps the SFT adapter as a frozen "ref" copy
            lp = lora_params(arch, cfg["lora_r"], cfg["lora_target_modules"])
            rows.append(Row("reference adapter (beta > 0)", lp * 4 / GIB, f"{lp / 1e6:.1f} M x 4 B"))
        if cfg.get("stage") == "rl":
            comp = cfg.get("max_completion_length", 256)
            rows += frozen_rows(PIPELINES[cfg["video_model"]])
            rows += scorer_rows(str(cfg.get("reward_metrics", "clip:1")))
            frames, h, w = cfg.get("num_frames", 33), cfg.get("height", 480), cfg.get("width", 832)
            tokens = ((frames - 1) // 4 + 1) * (h // 16) * (w // 16)  # VAE 4x8x8, patch 1x2x2
            vb = cfg.get("video_batch_size", 4)
            phases = {
                "generation (KV cache)": activations_llm_generate(arch, b, 200 + comp),
                "training step": activations_llm_train(arch, b, 200 + comp, comp, ckpt),
                "rendering": activations_dit(1536, vb, tokens + 512) + vb * 2.0 * GIB,  # fp32 VAE, ~2 GiB/video
            }
        else:
            seq = cfg.get("max_length", 1024)
            phases = {"training step": activations_llm_train(arch, b, seq, seq, ckpt)}
    elif name.startswith("epd_"):  # a few thousand policy parameters; everything else is frozen and under no_grad
        rows = frozen_rows(PIPELINES[cfg["model_id"]]) + scorer_rows(str(cfg.get("reward", "hpsv2")))
        px, rb, k = cfg.get("height", 512) * cfg.get("width", 512), cfg.get("rollout_batch_size", 8), cfg["num_points"]
        phases = {  # the largest UNet call: rollout x K points x 2 CFG rows; then one decode of the whole rollout
            "rollout (UNet)": 2 * k * rb * UNET_PER_ROW_512 * px / 512**2,
            "decode (VAE)": rb * VAE_PER_MP * px / 1e6,
        }
    else:
        raise ValueError(f"{path}: no memory model for this recipe")
    phase, act = max(phases.items(), key=lambda kv: kv[1])
    rows.append(Row(f"activations, largest phase: {phase}", act / GIB, "estimate"))
    return rows, cfg


def totals(path: Path) -> dict[str, float]:
    """Computed peak GiB per GPU of one recipe under each accelerate config that applies to its GPU count."""
    n = _hardware(path)[0]
    return {c: sum(r.gib for r in recipe_rows(path, c, n)[0]) for c in CONFIGS if (c == "single") == (n == 1)}


def report(path: Path, show_all: bool = True) -> tuple[float, float, bool]:
    """Print the rows of a recipe (under every applicable config, or the stated one); return the stated verdict."""
    n, card, stated = _hardware(path)
    for config in CONFIGS if show_all else [stated]:
        if (config == "single") != (n == 1):  # one GPU: no accelerate config; several: each config
            continue
        rows, _ = recipe_rows(path, config, n)
        total = sum(r.gib for r in rows)
        mark = "  <- the recipe's config" if config == stated else ""
        print(f"\n{path.relative_to(REPO)} | {n} x {card} | {CONFIGS.get(config, config)}{mark}")
        for r in rows:
            print(f"  {r.part:<44} {r.gib:7.1f} GiB   {r.note}")
        print(f"  {'total per GPU':<44} {total:7.1f} GiB   {'fits' if total <= 0.9 * CARDS[card] else 'DOES NOT FIT'} "
              f"(90 % of {CARDS[card]} GiB = {0.9 * CARDS[card]:.1f})")  # fmt: skip
    total = totals(path)[stated]
    return total, CARDS[card], total <= 0.9 * CARDS[card]


RECIPES = [
    "r1_sft.yaml",
    "r1_prompter.yaml",
    "image_edit_qwen7b.yaml",
    "video_sft.yaml",
    "video_rl.yaml",
    "epd_ppo_sd15.yaml",
]


def markdown(paths: list[Path]) -> str:
    """One table: recipe -> GPUs -> computed peak per GPU under each config (the recipe's own config in bold)."""
    multi = [c for c in CONFIGS if c != "single"]
    out = ["| recipe | GPUs | one GPU | " + " | ".join(CONFIGS[c] for c in multi) + " | fits with >= 10 % headroom |",
           "|---|---|---|" + "---|" * len(multi) + "---|"]  # fmt: skip
    for p in paths:
        n, card, stated = _hardware(p)
        t = totals(p)
        cells = [(f"**{t[c]:.1f}**" if c == stated else f"{t[c]:.1f}") if c in t else "—" for c in CONFIGS]
        fits = t[stated] <= 0.9 * CARDS[card]
        out.append(f"| `{p.relative_to(REPO)}` | {n} x {card} | " + " | ".join(cells) + f" | {'yes' if fits else 'NO'} "
                   f"({t[stated]:.1f} of {0.9 * CARDS[card]:.1f} GiB) |")  # fmt: skip
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", action="append", help="recipe YAML (default: every full-run recipe)")
    parser.add_argument("--counts", action="store_true", help="print the parameter count of every architecture")
    parser.add_argument("--stated_only", action="store_true", help="only the accelerate config each recipe names")
    parser.add_argument("--markdown", action="store_true", help="only the README table (GiB per GPU per config)")
    args = parser.parse_args(argv)
    if args.counts:
        for name in ARCHS:
            print(f"{name:<18} {params(name) / 1e9:8.3f} B parameters")
    paths = [REPO / "recipes" / r for r in RECIPES]
    paths = [Path(p).resolve() for p in args.recipe] if args.recipe else paths
    if not args.markdown:
        for p in paths:
            report(p, show_all=not args.stated_only)
        print()
    print(markdown(paths))
    return 0 if all(totals(p)[_hardware(p)[2]] <= 0.9 * CARDS[_hardware(p)[1]] for p in paths) else 1


if __name__ == "__main__":
    sys.exit(main())
