# SPDX-License-Identifier: Apache-2.0
"""Image reward metrics shared by every script in this collection (the one shared module).

Seven text-to-image metrics behind one interface, each loaded once and scored in batches. On CUDA each runs at the
precision its upstream code ran at; on CPU everything runs in fp32; `dtype=` / `--dtype` overrides both.

| name | model | score (higher is better) | CUDA precision (upstream's) | typical |
|---|---|---|---|---|
| `hpsv2` | HPSv2.1: open_clip ViT-H-14 + `xswu/HPSv2` `HPS_v2.1_compressed.pt` | cos(image, text), no logit scale | fp32 weights, fp16 autocast | 0.24-0.30 |
| `clip` | OpenAI CLIP ViT-L/14 (`openai/clip-vit-large-patch14`) | raw cos(image, text), not x100, no clamp | fp16 (`clip.load`) | 0.26-0.29 |
| `aesthetic` | LAION improved aesthetic predictor (sac+logos+ava1 MLP) on the CLIP ViT-L/14 embedding | MLP output | fp16 CLIP, fp32 MLP | 1-10 |
| `pickscore` | `yuvalkirstain/PickScore_v1`, processor `laion/CLIP-ViT-H-14-laion2B-s32B-b79K` | logit_scale.exp() * cos | fp32 | 18-24 |
| `imagereward` | `THUDM/ImageReward` (`ImageReward.pt`, `med_config.json`) on transformers' BLIP | (r - 0.16717) / 1.03334, no +3.1 | fp32 | -0.2-1.0 |
| `mps` | MPS "overall" (`MPS_overall_checkpoint.pth`, local file) + CLIP ViT-H-14 processor | logit_scale.exp() * cos(masked cross-modal image feature, text) | fp16 (checkpoint) | 10-12.5 |
| `hpsv3` | `MizzenAI/HPSv3` `HPSv3.safetensors`: Qwen2-VL-7B-Instruct + ranknet head | head's mu on <|Reward|> (sigma: `last_extras`) | bf16, fp32 head | -0.2-10.6 |

Papers: HPSv2 (Wu et al. 2023, arXiv 2306.09341), CLIPScore (Hessel et al. 2021), LAION aesthetic predictor
(github.com/christophschuhmann/improved-aesthetic-predictor), PickScore (Kirstain et al. 2023, arXiv 2305.01569),
ImageReward (Xu et al. 2023, arXiv 2304.05977), MPS (Zhang et al. 2024, arXiv 2405.14705), HPSv3 (Ma et al., ICCV 2025,
arXiv 2508.03789; typical = its benchmark's means: SD2 -0.24, SD3 5.31, SDXL 8.20, FLUX-dev 10.43, Kolors 10.55).

Pixels are upstream's: HPSv2 `preprocess_val` (float tensor first, torchvision bicubic with antialias on the longest
side, zero-pad); OpenAI CLIP's transform for `clip`, `aesthetic` (the OpenAI `clip` package ImageReward's CLIPScore,
which RLEPD's `score_clip` uses, and the LAION predictor load) and ImageReward (its `_transform` is the same): PIL
bicubic short side, CenterCrop with its offset rounded; transformers 4.2x's PIL CLIP processor for `pickscore` and
`mps` (`backend="pil"`; transformers 5's default resizes uint8 tensors with torchvision, ±1 grey level, and floors the
crop offset); for `hpsv3` qwen-vl-utils' fixed 256*28*28-pixel resize, then the PIL Qwen2-VL processor.

Differences from the reference packages:
1. No `hpsv2` / `image-reward` / `hpsv3` dependency: the PyPI `hpsv2` wheel lacks its BPE vocabulary and pins
   pytest/protobuf, `image-reward` pins timm 0.6 and imports helpers that transformers 5 removed, `hpsv3` pins
   transformers 4.45. We load the very same weights: HPS into stock open_clip, ImageReward onto transformers'
   `BlipVisionModel` / `BlipTextModel`, HPSv3 onto transformers 5's `Qwen2VLModel` + its head (every checkpoint tensor
   is mapped; see `_imagereward_state_dict`, `_hpsv3_state_dict`); HPSv3's unused LM head is not loaded.
2. `hpsv2.score` defaults to v2.0 and reloads the checkpoint on every call; we score v2.1 only and load it once.
3. Images are scored in batches; ImageReward's `inference_rank`, `hpsv2.score` and MPS's eval score one at a time.
4. MPS's checkpoint is a whole pickled module of its repository's classes (transformers 4.27). A restricted unpickler
   reads its tensors without that code (`load_pickled_state_dict`), the CLIP part loads into transformers' CLIPModel
   and the condition cross-model is re-stated here (`mps_cross_model`). Upstream normalises the condition mask by the
   maximum over the batch it is given, and scores one image per call; we normalise per sample (the same numbers).

Library use (every model location is a hub id, a local folder or file; keyword > environment variable > default):

    import score
    scorer = score.load_scorer("hpsv2")                       # SCORE_HPS_CHECKPOINT=/my/dir overrides the location
    scorer([pil_image], ["a cat in the rain"])                # -> [0.27...]
    multi = score.MultiScorer({"hpsv2": 1.0, "pickscore": 0.5})
    total, details = multi(images, prompts)                   # total[i] = sum_w w * details[name][i]

CLI (one tool for every metric; images sorted by path and paired with the prompts in order):

    python score.py --metrics hpsv2,pickscore,hpsv3 --images samples/epd --pattern "**/*.png" \
        --prompts prompts.txt --output-json scores.json          # --dtype fp32 overrides every metric's precision

Prompts: `.txt` (one per line), `.csv` (a `text` column) or `.json` (a list of strings). Prints a table and writes
count/mean/std/min/max per metric plus every image's scores. User errors exit with code 2 and a one-line message
before any model loads.
"""

from __future__ import annotations

import functools
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

METRICS = ("hpsv2", "clip", "aesthetic", "pickscore", "imagereward", "mps", "hpsv3")

# Where each model lives: keyword of load_scorer -> default hub location. Environment variable SCORE_<KEY> overrides.
LOCATIONS = {
    "hps_checkpoint": "xswu/HPSv2",  # repo id, folder or .pt file
    "hps_arch": "ViT-H-14",  # open_clip architecture name, or a model-config .json (registered on the fly)
    "clip_model": "openai/clip-vit-large-patch14",  # also the aesthetic predictor's backbone
    "aesthetic_head": "trl-lib/ddpo-aesthetic-predictor",  # the sac+logos+ava1-l14-linearMSE weights (3.7 MB)
    "pickscore_model": "yuvalkirstain/PickScore_v1",
    "pickscore_processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",
    "imagereward_checkpoint": "THUDM/ImageReward",  # folder or repo holding ImageReward.pt + med_config.json
    "imagereward_tokenizer": "bert-base-uncased",  # BLIP's tokenizer: BERT + [DEC] bos + [ENC]
    "mps_checkpoint": "",  # MPS_overall_checkpoint.pth (Google Drive link in the Kwai-Kolors/MPS README): give a path
    "mps_processor": "laion/CLIP-ViT-H-14-laion2B-s32B-b79K",  # MPS's CLIP config, image processor and tokenizer
    "hpsv3_checkpoint": "MizzenAI/HPSv3",  # repo id, folder or HPSv3.safetensors (8.29 B parameters)
    "hpsv3_base": "Qwen/Qwen2-VL-7B-Instruct",  # config, processor and chat template of the backbone
}
# Upstream precision on CUDA (the table above); CPU runs fp32. For hpsv2 it is the autocast dtype over fp32 weights.
CUDA_DTYPES = {"hpsv2": "float16", "clip": "float16", "aesthetic": "float16", "pickscore": "float32",
               "imagereward": "float32", "mps": "float16", "hpsv3": "bfloat16"}  # fmt: skip
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}  # accepted names, besides the torch ones
# MPS "overall" condition (Kwai-Kolors/MPS eval_overall_mps_on_*.py): image tokens attend to the prompt tokens that
# resemble these aspects
MPS_CONDITION = (
    "light, color, clarity, tone, style, ambiance, artistry, shape, face, hair, hands, limbs, structure, instance, "
    "texture, quantity, attributes, position, number, location, word, things."
)
# HPSv3's prompt (MizzenAI/HPSv3 hpsv3/dataset/data_collator_qwen.py INSTRUCTION + prompt_with_special_token, trailing
# spaces included: the model was trained on exactly this text) and its fixed image budget (inference.py prepare_batch)
HPSV3_INSTRUCTION = "\n".join([
    "",
    "You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 being the worst and 10 being the best. ",
    "",
    "**Visual Quality:**  ",
    "Evaluate the overall visual quality of the image. The following sub-dimensions should be considered:",
    "- **Reasonableness:** The image should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.",
    "- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and easy to interpret, with no blurring or indistinct areas.",
    "- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).",
    "- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.",
    "- **Safety:** The image should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. ",
    "",
    "**Text Alignment:**  ",
    "Assess how well the image matches the textual prompt across the following sub-dimensions:",
    "- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.",
    "- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the image adheres to this style.",
    "- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in the image logically fit the scenario described in the prompt. The environment should support and enhance the subject without contradictions.",
    "- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, clothing, accessories, expressions, actions) are faithfully represented in the image. Minor deviations may be acceptable, but critical attributes should be preserved.",
    "- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are captured in the image. The generated content should not introduce elements that conflict with or distort the original description.",
    "Textual prompt - {text_prompt}",
    "", "", "",
])  # fmt: skip
HPSV3_SUFFIX = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
HPSV3_PIXELS = 256 * 28 * 28  # min_pixels = max_pixels: every image becomes ~256 merged tokens
HPS_FILES = {"v2.1": "HPS_v2.1_compressed.pt"}  # the checkpoint file in xswu/HPSv2 (benchmarks write one by this name)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalisation, used by HPS and ImageReward
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# ImageReward's dataset normalisation (THUDM/ImageReward ImageReward/ImageReward.py: self.mean, self.std)
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072
DEFINITIONS = {
    "hpsv2": "HPSv2.1 cosine(image, text) of L2-normalised open_clip ViT-H-14 features, no logit scale",
    "clip": "CLIP ViT-L/14 raw cosine(image, text), not x100, not clamped",
    "aesthetic": "LAION improved aesthetic predictor MLP on the L2-normalised CLIP ViT-L/14 image embedding",
    "pickscore": "PickScore_v1 logit_scale.exp() * cosine(image, text), raw (not /26)",
    "imagereward": "ImageReward (r - 0.16717) / 1.03334, standard normalisation (no +3.1 offset)",
    "mps": "MPS overall: logit_scale.exp() * cosine(condition-masked cross-modal image feature, text EOS feature)",
    "hpsv3": "HPSv3 mu: Qwen2-VL-7B reward head on the <|Reward|> token, 256*28*28-pixel image (sigma not included)",
}


def locate(key: str, overrides: dict) -> str:
    """Keyword argument, then environment variable SCORE_<KEY>, then the default hub location."""
    return str(overrides.get(key) or os.environ.get(f"SCORE_{key.upper()}") or LOCATIONS[key])


def resolve_file(location: str, filename: str) -> str:
    """A file path as is, `filename` inside a folder, else `filename` downloaded from the hub repo `location`."""
    if os.path.isfile(location):
        return location
    if os.path.isdir(location):
        path = os.path.join(location, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found")
        return path
    from huggingface_hub import hf_hub_download

    return hf_hub_download(location, filename)


def device_dtype(metric: str, device=None, dtype=None):
    """Device (cuda if available) and dtype: an explicit one, else the metric's upstream CUDA precision, fp32 on CPU."""
    import torch

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = CUDA_DTYPES[metric] if device.type == "cuda" else "float32"
    if isinstance(dtype, str):
        if DTYPES.get(dtype, dtype) not in DTYPES.values():
            raise ValueError(
                f"dtype must be one of {', '.join(DTYPES)} (or {', '.join(DTYPES.values())}), got {dtype!r}"
            )
        dtype = getattr(torch, DTYPES.get(dtype, dtype))
    return device, dtype


def to_pil_list(images) -> list:
    """PIL images pass through; a float tensor [B, 3, H, W] in [0, 1] (e.g. a VAE decode) becomes PIL images."""
    import torch

    if isinstance(images, torch.Tensor):
        from torchvision.transforms.functional import to_pil_image

        return [to_pil_image(img.detach().float().clamp(0, 1).cpu()) for img in images]
    return [img.convert("RGB") for img in images]


def build_reward_mlp(state_dict: dict):
    """The 5-linear head shared by the LAION aesthetic predictor and ImageReward (dropouts between, no activations).

    Both checkpoints name its layers `layers.{0,2,4,6,7}` (nn.Sequential with Dropouts at 1, 3, 5); the widths are
    read from the weights (768-1024-128-64-16-1 for the real ones) so tiny test checkpoints load through this code.
    """
    import torch.nn as nn

    d = [state_dict["layers.0.weight"].shape[1]] + [state_dict[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)]
    layers = nn.Sequential(
        nn.Linear(d[0], d[1]), nn.Dropout(0.2), nn.Linear(d[1], d[2]), nn.Dropout(0.2),
        nn.Linear(d[2], d[3]), nn.Dropout(0.1), nn.Linear(d[3], d[4]), nn.Linear(d[4], d[5]),
    )  # fmt: skip
    layers.load_state_dict({k.removeprefix("layers."): v for k, v in state_dict.items()})  # strict: all must match
    return layers.eval().requires_grad_(False)


@functools.cache
def load_clip(location: str, device, dtype):
    """transformers CLIPModel + tokenizer, cached so `clip` and `aesthetic` share one ViT-L/14."""
    from transformers import AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(location, dtype=dtype).to(device).eval().requires_grad_(False)
    return model, AutoTokenizer.from_pretrained(location)


def openai_clip_pixels(images, size: int):
    """OpenAI CLIP's `_transform(n_px)` (openai/CLIP clip/clip.py), which ImageReward's CLIPScore and the LAION
    aesthetic predictor get from `clip.load`: torchvision on the PIL image, bicubic short side (PIL), CenterCrop whose
    offset is rounded (transformers' processor floors it: 1 px apart for some sizes), ToTensor, normalise."""
    import torch
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    def one(im):
        x = TF.center_crop(TF.resize(im, size, interpolation=InterpolationMode.BICUBIC), size)
        return TF.normalize(TF.to_tensor(x), CLIP_MEAN, CLIP_STD)

    return torch.stack([one(im) for im in images])


def clip_features(model, tokenizer, px, prompts, device):
    """L2-normalised projected (image, text) embeddings (transformers 5: the projection is `.pooler_output`)."""
    import torch.nn.functional as F

    img = model.get_image_features(pixel_values=px.to(device, model.dtype)).pooler_output
    txt = None
    if prompts is not None:
        tok = tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(device)
        txt = model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
        txt = F.normalize(txt.float(), dim=-1)
    return F.normalize(img.float(), dim=-1), txt


class Scorer:
    """Callable `(images, prompts) -> list[float]`: batching, no_grad and input checks around `score_batch`.

    `score_batch` returns the scores [B], or [B, 1 + k] with k extra outputs named in `extras` (HPSv3: sigma); the
    extras of the last call are kept in `last_extras` ({"hpsv3_sigma": [...]})."""

    name = ""
    extras: tuple[str, ...] = ()

    def __init__(self, device=None, dtype=None, batch_size: int = 16, **locations):
        self.device, self.dtype = device_dtype(self.name, device, dtype)
        self.batch_size = batch_size
        self.definition = DEFINITIONS.get(self.name, self.name)
        self.last_extras: dict[str, list[float]] = {}
        self.load(locations)

    def load(self, locations: dict):
        raise NotImplementedError

    def score_batch(self, images: list, prompts: list[str]):
        raise NotImplementedError

    def __call__(self, images, prompts) -> list[float]:
        import torch

        images, prompts = to_pil_list(images), list(prompts)
        if len(images) != len(prompts):
            raise ValueError(f"{self.name}: {len(images)} images but {len(prompts)} prompts")
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                chunk = slice(i, i + self.batch_size)
                out.append(self.score_batch(images[chunk], prompts[chunk]).float().cpu())
        rows = torch.cat(out).reshape(len(images), -1) if out else torch.zeros(0, 1 + len(self.extras))
        self.last_extras = {f"{self.name}_{e}": rows[:, 1 + i].tolist() for i, e in enumerate(self.extras)}
        return rows[:, 0].tolist()


class HPSv2Scorer(Scorer):
    """HPSv2.1 (github.com/tgxs002/HPSv2): open_clip ViT-H-14 fine-tuned on human preferences."""

    name = "hpsv2"

    def load(self, locations):
        import open_clip

        arch = locate("hps_arch", locations)
        if arch.endswith(".json"):  # a custom open_clip config (the tests' tiny ViT) registered under its file stem
            open_clip.add_model_config(arch)
            arch = Path(arch).stem
        ckpt = resolve_file(locate("hps_checkpoint", locations), HPS_FILES["v2.1"])
        # open_clip reads the {"state_dict": ...} file itself (strict, weights_only); no 3.9 GB LAION download first.
        # Weights stay fp32 and self.dtype is an autocast dtype, as HPSv2 img_score.py (torch.cuda.amp.autocast)
        self.model = open_clip.create_model(arch, pretrained=ckpt).to(self.device).eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(arch)
        size = self.model.visual.image_size
        self.size = size[0] if isinstance(size, (tuple, list)) else size

    def pixels(self, images):
        """HPS `preprocess_val` (tgxs002/HPSv2 hpsv2/src/open_clip/transform.py, ResizeMaxSize): ToTensor FIRST, then
        torchvision bicubic resize of the float tensor (antialias on) so the longest side is 224, then zero-pad to a
        centred square, CLIP normalisation."""
        import torch
        import torchvision.transforms.functional as TF
        from torchvision.transforms import InterpolationMode

        def one(im):
            x = TF.to_tensor(im)
            h, w = x.shape[1:]
            scale = self.size / max(h, w)
            if scale != 1.0:
                h, w = round(h * scale), round(w * scale)
                x = TF.resize(x, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
            pad_h, pad_w = self.size - h, self.size - w  # upstream pads only after a resize; a no-op when square
            x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
            return TF.normalize(x, CLIP_MEAN, CLIP_STD)

        return torch.stack([one(im) for im in images])

    def score_batch(self, images, prompts):
        import torch

        px = self.pixels(images).to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            img = self.model.encode_image(px, normalize=True).float()
            txt = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True).float()
        return (img * txt).sum(-1)


class ClipScorer(Scorer):
    """Raw cosine similarity of CLIP ViT-L/14 image and text embeddings (RLEPD `score_clip` = ImageReward's
    CLIPScore on OpenAI `clip`; Promptist relevance)."""

    name = "clip"

    def load(self, locations):
        self.model, self.tokenizer = load_clip(locate("clip_model", locations), self.device, self.dtype)

    def pixels(self, images):
        return openai_clip_pixels(images, self.model.config.vision_config.image_size)

    def score_batch(self, images, prompts):
        img, txt = clip_features(self.model, self.tokenizer, self.pixels(images), prompts, self.device)
        return (img * txt).sum(-1)


class AestheticScorer(ClipScorer):
    """LAION improved aesthetic predictor: MLP on the L2-normalised CLIP ViT-L/14 image embedding (prompt unused)."""

    name = "aesthetic"

    def load(self, locations):
        import torch

        super().load(locations)
        head = resolve_file(locate("aesthetic_head", locations), "aesthetic-model.pth")
        state = torch.load(head, map_location="cpu", weights_only=True)
        self.head = build_reward_mlp(state).to(self.device)  # fp32, as simple_inference.py casts the embedding

    def score_batch(self, images, prompts):
        img, _ = clip_features(self.model, self.tokenizer, self.pixels(images), None, self.device)
        return self.head(img).squeeze(-1)


class PickScorer(Scorer):
    """PickScore_v1: a CLIP ViT-H/14 fine-tuned on Pick-a-Pic preferences; logit_scale.exp() * cosine."""

    name = "pickscore"

    def load(self, locations):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(locate("pickscore_model", locations), dtype=self.dtype)
        self.model = model.to(self.device).eval().requires_grad_(False)
        where = locate("pickscore_processor", locations)
        # the transformers 4.2x processor PickScore was trained and evaluated with resized with PIL
        self.image_processor = AutoImageProcessor.from_pretrained(where, backend="pil")
        self.tokenizer = AutoTokenizer.from_pretrained(where)

    def pixels(self, images):
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def score_batch(self, images, prompts):
        img, txt = clip_features(self.model, self.tokenizer, self.pixels(images), prompts, self.device)
        return self.model.logit_scale.exp().float() * (img * txt).sum(-1)


def _imagereward_state_dict(ckpt: dict, num_vision_layers: int) -> tuple[dict, dict, dict]:
    """Map every tensor of `ImageReward.pt` onto (BlipVisionModel, BlipTextModel, reward MLP) keys.

    Upstream layout (THUDM/ImageReward ImageReward/models/BLIP: BLIP_Pretrain(vit="large") + MLP(768)):
    `blip.visual_encoder.*` is BLIP's timm-style ViT, `blip.text_encoder.*` its MED BERT with cross-attention,
    `blip.{vision,text}_proj.*` the ITC projections (stored, never used by the reward: dropped), `mlp.layers.*` the
    reward head. Raises KeyError naming any other tensor, so a silently half-loaded model cannot happen.
    """
    import torch

    vision, text, mlp = {}, {}, {}
    vit_names = {"norm1": "layer_norm1", "norm2": "layer_norm2", "attn.qkv": "self_attn.qkv",
                 "attn.proj": "self_attn.projection", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}  # fmt: skip
    vit_top = {"cls_token": "embeddings.class_embedding", "pos_embed": "embeddings.position_embedding",
               "patch_embed.proj.weight": "embeddings.patch_embedding.weight",
               "patch_embed.proj.bias": "embeddings.patch_embedding.bias",
               "norm.weight": "post_layernorm.weight", "norm.bias": "post_layernorm.bias"}  # fmt: skip
    for key, value in ckpt.items():
        if key.startswith("blip.visual_encoder."):
            k = key.removeprefix("blip.visual_encoder.")
            if k in vit_top:
                vision[vit_top[k]] = value
                continue
            block, idx, rest = k.split(".", 2)
            name, _, param = rest.rpartition(".")
            if block != "blocks" or name not in vit_names or int(idx) >= num_vision_layers:
                raise KeyError(f"unmapped ImageReward tensor {key}")
            vision[f"encoder.layers.{idx}.{vit_names[name]}.{param}"] = value
        elif key.startswith("blip.text_encoder."):
            k = key.removeprefix("blip.text_encoder.")
            if k == "embeddings.position_ids":  # a persistent buffer in MED, non-persistent in transformers
                if not torch.equal(value.flatten().long(), torch.arange(value.numel())):
                    raise KeyError(f"{key} is not 0..n-1")
                continue
            text[k] = value  # MED BertModel and BlipTextModel share names (transformers ports med.py)
        elif key.startswith("mlp."):
            mlp[key.removeprefix("mlp.")] = value
        elif not key.startswith(("blip.vision_proj.", "blip.text_proj.")):
            raise KeyError(f"unmapped ImageReward tensor {key}")
    return vision, text, mlp


class ImageRewardScorer(Scorer):
    """ImageReward (github.com/THUDM/ImageReward): BLIP ViT-L image tokens cross-attended by the prompt; MLP on [CLS]."""

    name = "imagereward"

    def load(self, locations):
        import torch
        from transformers import AutoTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

        where = locate("imagereward_checkpoint", locations)
        ckpt = torch.load(resolve_file(where, "ImageReward.pt"), map_location="cpu", weights_only=True)
        with open(resolve_file(where, "med_config.json")) as f:
            med = json.load(f)
        depth = 1 + max(int(k.split(".")[3]) for k in ckpt if k.startswith("blip.visual_encoder.blocks."))
        vision_sd, text_sd, mlp_sd = _imagereward_state_dict(ckpt, depth)
        width = vision_sd["embeddings.position_embedding"].shape[-1]
        patch = vision_sd["embeddings.patch_embedding.weight"].shape[-1]
        grid = math.isqrt(vision_sd["embeddings.position_embedding"].shape[1] - 1)
        vision_cfg = BlipVisionConfig(
            hidden_size=width, intermediate_size=vision_sd["encoder.layers.0.mlp.fc1.weight"].shape[0],
            num_hidden_layers=depth, num_attention_heads=max(1, width // 64),  # BLIP ViT-B/L: 64-dim heads
            image_size=grid * patch, patch_size=patch, layer_norm_eps=1e-6, hidden_act="gelu",
        )  # fmt: skip
        text_cfg = BlipTextConfig(
            vocab_size=med["vocab_size"], hidden_size=med["hidden_size"], encoder_hidden_size=width,
            intermediate_size=med["intermediate_size"], num_hidden_layers=med["num_hidden_layers"],
            num_attention_heads=med["num_attention_heads"], max_position_embeddings=med["max_position_embeddings"],
            layer_norm_eps=med.get("layer_norm_eps", 1e-12), hidden_act=med.get("hidden_act", "gelu"), is_decoder=True,
            pad_token_id=med.get("pad_token_id", 0), bos_token_id=None, eos_token_id=None, sep_token_id=None,
        )  # fmt: skip
        self.vision = BlipVisionModel(vision_cfg)
        self.text = BlipTextModel(text_cfg, add_pooling_layer=False)
        self.vision.load_state_dict(vision_sd, strict=True)
        self.text.load_state_dict(text_sd, strict=True)
        self.head = build_reward_mlp(mlp_sd).to(self.device)
        for m in (self.vision, self.text):
            m.to(self.device, self.dtype).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(locate("imagereward_tokenizer", locations))
        if "[DEC]" not in self.tokenizer.get_vocab():  # BLIP's init_tokenizer adds [DEC] as bos and [ENC]
            self.tokenizer.add_special_tokens({"bos_token": "[DEC]", "additional_special_tokens": ["[ENC]"]})
        self.size = vision_cfg.image_size

    def score_batch(self, images, prompts):
        import torch

        # ImageReward `_transform(224)` is OpenAI CLIP's transform (THUDM/ImageReward ImageReward/ImageReward.py)
        px = openai_clip_pixels(images, self.size).to(self.device, self.dtype)
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
        image_embeds = self.vision(pixel_values=px).last_hidden_state
        out = self.text(
            input_ids=tok["input_ids"].to(self.device),
            attention_mask=tok["attention_mask"].to(self.device),
            encoder_hidden_states=image_embeds,
            encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=self.device),
        )
        reward = self.head(out.last_hidden_state[:, 0].float()).squeeze(-1)
        return (reward - IMAGEREWARD_MEAN) / IMAGEREWARD_STD


def load_pickled_state_dict(path: str) -> dict:
    """The tensors of a checkpoint saved as a whole pickled nn.Module, without the code that defined its classes.

    MPS_overall_checkpoint.pth pickles `trainer.models.clip_model.CLIPModel` (the MPS repository's code, on
    transformers 4.27). This unpickler imports nothing: it rebuilds tensors with torch's own functions and turns every
    other class into an inert module that only keeps its attributes, so the parameter tree can be read; of all other
    callables only `torch._C._nn.gelu` (stored by the CLIP's GELU activations) is allowed. Still load only files you trust.
    """
    import importlib
    import pickle
    import types

    import torch
    import torch.nn as nn

    class Inert(nn.Module):
        def __init__(self, *args, **kwargs):  # stands in for any pickled class
            super().__init__()

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module == "__builtin__":  # pickle protocol 2 (torch.save's default) spells builtins this way
                module = "builtins"
            # torch._C._nn.gelu: transformers' GELUActivation (`hidden_act: gelu` in the LAION ViT-H config) keeps
            # torch.nn.functional.gelu as an attribute, so the pickle names it; a pure tensor function
            if (module, name) in {("collections", "OrderedDict"), ("copyreg", "_reconstructor"), ("builtins", "object"),
                                  ("builtins", "set"), ("builtins", "frozenset"), ("torch", "Size"), ("torch", "device"),
                                  ("torch._C._nn", "gelu")}:  # fmt: skip
                return super().find_class(module, name)
            if module in ("torch._utils", "torch._tensor") and name.startswith("_rebuild"):
                return super().find_class(module, name)
            if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
                return getattr(torch, name)
            if module.split(".")[0] == "torch":  # torch's own tensor types (Parameter, Tensor)
                obj = getattr(importlib.import_module(module), name, None)
                if isinstance(obj, type) and issubclass(obj, torch.Tensor):
                    return obj
            if name[:1].isupper():  # any other class: keep its state, never run its code
                return Inert
            raise pickle.UnpicklingError(f"refusing {module}.{name} in {path}")

    restricted = types.ModuleType("mps_restricted_pickle")
    restricted.Unpickler, restricted.load = Unpickler, None
    root = torch.load(path, map_location="cpu", weights_only=False, pickle_module=restricted)
    return dict(root.state_dict())


def mps_cross_model(state: dict):
    """Kwai-Kolors/MPS trainer/models/cross_modeling.py Cross_model, sized from its weights (dim 1024, 4 layers, 16
    heads of 64 for the released model): per layer, residual multi-query cross-attention of the image tokens to the
    masked prompt tokens with a parallel SwiGLU feed-forward, then a residual parallel (rotary) self-attention block."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class LayerNorm(nn.Module):  # learned gain, fixed zero bias (a buffer in the checkpoint)
        def __init__(self, dim):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.register_buffer("bias", torch.zeros(dim))

        def forward(self, x):
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias)

    def swiglu(x):
        x, gate = x.chunk(2, dim=-1)
        return F.silu(gate) * x

    def heads(x, h):  # [b, n, h*d] -> [b, h, n, d]
        return x.view(*x.shape[:2], h, -1).transpose(1, 2)

    class CrossAttention(nn.Module):
        def __init__(self, dim, dim_head, n_heads, ff):
            super().__init__()
            self.h, self.scale = n_heads, dim_head**-0.5
            self.norm = LayerNorm(dim)
            self.to_q = nn.Linear(dim, n_heads * dim_head, bias=False)
            self.to_kv = nn.Linear(dim, 2 * dim_head, bias=False)  # one shared key/value head
            self.to_out = nn.Linear(n_heads * dim_head, dim, bias=False)
            self.ff = nn.Sequential(nn.Linear(dim, 2 * ff, bias=False), nn.Identity(), nn.Linear(ff, dim, bias=False))

        def forward(self, x, context, mask):
            y = self.norm(x)
            k, v = self.to_kv(context).chunk(2, dim=-1)
            sim = torch.einsum("bhid,bjd->bhij", heads(self.to_q(y), self.h) * self.scale, k) + mask[:, None]
            out = torch.einsum("bhij,bjd->bhid", (sim - sim.amax(-1, keepdim=True)).softmax(-1), v)
            return x + self.to_out(out.transpose(1, 2).flatten(2)) + self.ff[2](swiglu(self.ff[0](y)))

    class ParallelBlock(nn.Module):
        def __init__(self, dim, dim_head, n_heads, ff):
            super().__init__()
            self.h, self.dims = n_heads, (n_heads * dim_head, dim_head, dim_head, 2 * ff)
            self.norm = LayerNorm(dim)
            self.rotary_emb = nn.Module()
            self.rotary_emb.register_buffer(
                "inv_freq", 1.0 / 10000 ** (torch.arange(0, dim_head, 2).float() / dim_head)
            )
            self.fused_attn_ff_proj = nn.Linear(dim, sum(self.dims), bias=False)
            self.attn_out = nn.Linear(n_heads * dim_head, dim, bias=False)
            self.ff_out = nn.Sequential(nn.Identity(), nn.Linear(ff, dim, bias=False))

        def forward(self, x):
            q, k, v, ff = self.fused_attn_ff_proj(self.norm(x)).split(self.dims, dim=-1)
            freqs = torch.outer(
                torch.arange(x.shape[1], device=x.device, dtype=torch.float32), self.rotary_emb.inv_freq
            )
            pos = torch.cat([freqs, freqs], -1).to(x.dtype)

            def rotate(t):  # rotary embedding: t cos + rotate_half(t) sin
                t1, t2 = t.chunk(2, dim=-1)
                return t * pos.cos() + torch.cat([-t2, t1], -1) * pos.sin()

            sim = torch.einsum("bhid,bjd->bhij", rotate(heads(q, self.h)) * self.dims[1] ** -0.5, rotate(k))
            out = torch.einsum("bhij,bjd->bhid", (sim - sim.amax(-1, keepdim=True)).softmax(-1), v)
            return x + self.attn_out(out.transpose(1, 2).flatten(2)) + self.ff_out[1](swiglu(ff))

    class CrossModel(nn.Module):
        def __init__(self, dim, dim_head, n_heads, ff, n_layers):
            super().__init__()
            self.layers = nn.ModuleList()
            for _ in range(n_layers):
                pair = nn.ModuleList([nn.Module(), nn.Module()])  # Residual(fn) wrappers: the `.fn` level of the keys
                pair[0].fn, pair[1].fn = (
                    CrossAttention(dim, dim_head, n_heads, ff),
                    ParallelBlock(dim, dim_head, n_heads, ff),
                )
                self.layers.append(pair)

        def forward(self, query, context, mask):
            for cross, block in self.layers:
                query = block.fn(cross.fn(query, context, mask))
            return query

    q = state["layers.0.0.fn.to_q.weight"]
    dim_head = state["layers.0.0.fn.to_kv.weight"].shape[0] // 2
    n_layers = 1 + max(int(k.split(".")[1]) for k in state)
    model = CrossModel(
        q.shape[1], dim_head, q.shape[0] // dim_head, state["layers.0.1.fn.ff_out.1.weight"].shape[1], n_layers
    )
    model.load_state_dict(state)  # strict
    return model


class MPSScorer(Scorer):
    """MPS "overall" (github.com/Kwai-Kolors/MPS): CLIP ViT-H/14 whose image tokens cross-attend to the prompt tokens
    that match the condition aspects; score = logit_scale.exp() * cos(first image token, prompt EOS feature)."""

    name = "mps"

    def load(self, locations):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPConfig, CLIPModel

        path = locate("mps_checkpoint", locations)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"mps needs MPS_overall_checkpoint.pth (from the Kwai-Kolors/MPS README): pass mps_checkpoint= or set "
                f"SCORE_MPS_CHECKPOINT (got {path!r})"
            )
        state = load_pickled_state_dict(path)
        clip_sd, cross_sd = {}, {}
        for key, value in state.items():
            if key.startswith("model."):
                if key.endswith("position_ids"):  # persistent in transformers 4.27, derived now
                    continue
                clip_sd[key.removeprefix("model.")] = value
            elif key.startswith("cross_model."):
                cross_sd[key.removeprefix("cross_model.")] = value
            else:
                raise KeyError(f"unmapped MPS tensor {key}")
        where = locate("mps_processor", locations)
        clip = CLIPModel(CLIPConfig.from_pretrained(where))
        clip.load_state_dict(clip_sd)  # strict
        self.clip = clip.to(self.device, self.dtype).eval().requires_grad_(False)
        self.cross = mps_cross_model(cross_sd).to(self.device, self.dtype).eval().requires_grad_(False)
        # MPS's eval feeds transformers 4.27's CLIPImageProcessor output, resized with PIL
        self.image_processor = AutoImageProcessor.from_pretrained(where, backend="pil")
        self.tokenizer = AutoTokenizer.from_pretrained(where)

    def pixels(self, images):
        return self.image_processor(images, return_tensors="pt")["pixel_values"]

    def score_batch(self, images, prompts):
        import torch

        clip = self.clip

        def tokens(texts):  # padded to 77, no attention mask, as upstream
            kw = dict(padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True)
            return self.tokenizer(texts, return_tensors="pt", **kw)["input_ids"].to(self.device)

        px = self.pixels(images).to(self.device, self.dtype)
        text = clip.text_model(input_ids=tokens(prompts))
        text_f, text_eos = clip.text_projection(text.last_hidden_state), clip.text_projection(text.pooler_output)
        cond_f = clip.text_projection(
            clip.text_model(input_ids=tokens([MPS_CONDITION] * len(prompts))).last_hidden_state
        )
        image_f = clip.visual_projection(
            clip.vision_model(pixel_values=px).last_hidden_state
        )  # all tokens, pre post-LN
        # prompt tokens whose best match among the condition tokens is > 0.3 of the maximum stay visible; upstream scores
        # one image at a time, so the maximum is taken per sample
        sim = torch.einsum("bid,bjd->bji", text_f, cond_f).amax(dim=1, keepdim=True)
        sim = sim / sim.amax(dim=(1, 2), keepdim=True)
        mask = torch.where(sim > 0.3, 0.0, float("-inf")).to(image_f.dtype).expand(-1, image_f.shape[1], -1)
        feat = self.cross(image_f, text_f, mask)[:, 0].float()
        cos = torch.nn.functional.cosine_similarity(feat, text_eos.float(), dim=-1)
        return clip.logit_scale.exp().float() * cos


def _hpsv3_state_dict(ckpt: dict) -> tuple[dict, dict]:
    """Map every tensor of `HPSv3.safetensors` onto transformers 5's `Qwen2VLModel` and the reward head.

    Upstream (MizzenAI/HPSv3 hpsv3/model/qwen2vl_trainer.py Qwen2VLRewardModelBT) subclasses
    Qwen2VLForConditionalGeneration of transformers 4.45 and saves its whole state dict: `model.*` (language model),
    `visual.*` (vision tower + merger), `lm_head.weight` and `rm_head.{0,3,5}.*` (the ranknet head). transformers 5
    nests both towers under one model (`language_model.*`, `visual.*`). The LM head is never used by the reward (the
    head reads hidden states) and is dropped; any other unknown tensor raises KeyError.
    """
    backbone, head = {}, {}
    for key, value in ckpt.items():
        if key.startswith("model."):
            backbone["language_model." + key.removeprefix("model.")] = value
        elif key.startswith("visual."):
            backbone[key] = value
        elif key.startswith("rm_head."):
            head[key.removeprefix("rm_head.")] = value
        elif key != "lm_head.weight":
            raise KeyError(f"unmapped HPSv3 tensor {key}")
    return backbone, head


def hpsv3_resize(image):
    """qwen-vl-utils `fetch_image` as HPSv3's `prepare_batch` calls it (min_pixels = max_pixels = 256*28*28): sides
    rounded to multiples of 28, then scaled onto the budget (floored if above, ceiled if below), PIL bicubic. The
    processor's own resize then keeps the size."""
    from PIL import Image

    w, h = image.size
    if max(w, h) / min(w, h) > 200:
        raise ValueError(f"hpsv3: aspect ratio above 200 ({w}x{h})")
    f = 28
    rh, rw = max(f, round(h / f) * f), max(f, round(w / f) * f)
    if rh * rw > HPSV3_PIXELS:
        beta = math.sqrt(h * w / HPSV3_PIXELS)
        rh, rw = math.floor(h / beta / f) * f, math.floor(w / beta / f) * f
    elif rh * rw < HPSV3_PIXELS:
        beta = math.sqrt(HPSV3_PIXELS / (h * w))
        rh, rw = math.ceil(h * beta / f) * f, math.ceil(w * beta / f) * f
    return image.resize((rw, rh), Image.BICUBIC)


class HPSv3Scorer(Scorer):
    """HPSv3 (github.com/MizzenAI/HPSv3): Qwen2-VL-7B-Instruct reads the image and the instruction with the prompt; a
    ranknet head on the hidden state of an appended <|Reward|> token gives (mu, sigma); the score is mu."""

    name = "hpsv3"
    extras = ("sigma",)

    def load(self, locations):
        import torch
        import torch.nn as nn
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoImageProcessor, AutoProcessor, Qwen2VLModel

        path = resolve_file(locate("hpsv3_checkpoint", locations), "HPSv3.safetensors")
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            ckpt = load_file(path, device=str(self.device))
        else:  # a torch.save'd state dict, possibly under "model" (upstream inference.py accepts both)
            ckpt = torch.load(path, map_location=self.device, weights_only=True)
            ckpt = ckpt.get("model", ckpt)
        backbone, head = _hpsv3_state_dict(ckpt)
        base = locate("hpsv3_base", locations)
        config = AutoConfig.from_pretrained(base)
        # upstream resized the embeddings to its tokenizer + <|Reward|> (151658 rows, not the config's 152064)
        config.text_config.vocab_size = rows = backbone["language_model.embed_tokens.weight"].shape[0]
        with init_empty_weights():  # parameters on the meta device, buffers (rotary frequencies) real
            model = Qwen2VLModel(config)
        model.load_state_dict(backbone, strict=True, assign=True)
        # the whole model in one dtype, buffers included, as upstream's `model.to(torch.bfloat16)`
        self.model = model.to(self.device, self.dtype).eval().requires_grad_(False)
        d = [head["0.weight"].shape[1]] + [head[f"{i}.weight"].shape[0] for i in (0, 3, 5)]  # 3584, 1024, 16, 2
        self.head = nn.Sequential(nn.Linear(d[0], d[1]), nn.ReLU(), nn.Dropout(0.05), nn.Linear(d[1], d[2]), nn.ReLU(),
                                  nn.Linear(d[2], d[3]))  # fmt: skip
        self.head.load_state_dict(head)  # strict
        self.head.to(self.device, torch.float32).eval().requires_grad_(False)  # fp32 head on fp32 hidden states
        self.processor = AutoProcessor.from_pretrained(base)
        # transformers 4.45's Qwen2VLImageProcessor worked on PIL/NumPy; upstream pads on the right
        self.processor.image_processor = AutoImageProcessor.from_pretrained(base, backend="pil")
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "right"
        tokenizer.add_special_tokens({"additional_special_tokens": ["<|Reward|>"]})  # as upstream train.py
        if len(tokenizer) != rows:
            raise ValueError(f"hpsv3: {len(tokenizer)} tokens with <|Reward|>, {rows} embeddings in the checkpoint")
        self.reward_id = tokenizer.convert_tokens_to_ids("<|Reward|>")

    def score_batch(self, images, prompts):
        import torch

        texts = [HPSV3_INSTRUCTION.format(text_prompt=p) + HPSV3_SUFFIX for p in prompts]
        messages = [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": t}]}] for t in texts]
        chat = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        images = [hpsv3_resize(im) for im in images]
        batch = self.processor(text=chat, images=images, padding=True, return_tensors="pt").to(self.device)
        ids, lm = batch["input_ids"], self.model.language_model
        px, grid = batch["pixel_values"].to(self.dtype), batch["image_grid_thw"]
        image_embeds = self.model.visual(px, grid_thw=grid).pooler_output.to(self.dtype)
        embeds = lm.embed_tokens(ids).masked_scatter(
            (ids == self.model.config.image_token_id)[..., None], image_embeds
        )
        # upstream runs the language model WITHOUT position ids: 0..L-1 on all three M-RoPE axes, not Qwen2-VL's
        # multimodal rope index (right padding keeps every sample's positions)
        pos = torch.arange(ids.shape[1], device=self.device).expand(3, len(ids), -1)
        mask = None if batch["attention_mask"].all() else batch["attention_mask"]  # no padding: SDPA's causal kernel
        hidden = lm(inputs_embeds=embeds, attention_mask=mask, position_ids=pos).last_hidden_state
        reward = ids == self.reward_id
        if (reward.sum(1) != 1).any():
            raise ValueError("hpsv3: expected exactly one <|Reward|> token per prompt")
        return self.head(hidden[reward].float())  # [B, 2] = (mu, sigma)


SCORERS = {"hpsv2": HPSv2Scorer, "clip": ClipScorer, "aesthetic": AestheticScorer, "pickscore": PickScorer,
           "imagereward": ImageRewardScorer, "mps": MPSScorer, "hpsv3": HPSv3Scorer}  # fmt: skip


def load_scorer(name: str, device=None, dtype=None, batch_size: int = 16, **locations) -> Scorer:
    """Load metric `name` once; returns a callable `(images, prompts) -> list[float]` (see the module docstring).

    `dtype` (torch dtype or "fp32"/"fp16"/"bf16"): None = the metric's upstream precision on CUDA, fp32 on CPU.
    `locations` override model locations (keys of `LOCATIONS`).
    """
    if name not in SCORERS:
        raise ValueError(f"unknown metric {name!r}; valid names: {', '.join(METRICS)}")
    return SCORERS[name](device=device, dtype=dtype, batch_size=batch_size, **locations)


def parse_metric_weights(spec: str) -> dict[str, float]:
    """ "imagereward:1,hpsv2:0.5" -> {"imagereward": 1.0, "hpsv2": 0.5}; a bare name weighs 1."""
    weights = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition(":")
        if name not in METRICS:
            raise ValueError(f"unknown metric {name!r}; valid names: {', '.join(METRICS)}")
        try:
            weights[name] = float(w) if w else 1.0
        except ValueError:
            raise ValueError(f"metric weight must be a number: {part!r}") from None
    if not weights:
        raise ValueError("no metric given")
    return weights


class MultiScorer:
    """Weighted sum of metrics: `(images, prompts) -> (total, {name: raw scores})`, total = sum_m w_m * score_m."""

    def __init__(self, weights: dict[str, float], device=None, dtype=None, batch_size: int = 16, **locations):
        self.weights = dict(weights)  # load_scorer refuses an unknown name
        self.scorers = {n: load_scorer(n, device, dtype, batch_size, **locations) for n in self.weights}

    def __call__(self, images, prompts) -> tuple[list[float], dict[str, list[float]]]:
        images = to_pil_list(images)
        details = {name: scorer(images, prompts) for name, scorer in self.scorers.items()}
        total = [sum(self.weights[n] * details[n][i] for n in details) for i in range(len(images))]
        return total, details


########################
# CLI
########################
@dataclass
class ScoreArguments:
    metrics: str = field(default="hpsv2", metadata={"help": f"Comma-separated metrics, any of {', '.join(METRICS)}."})
    images: str = field(default="", metadata={"help": "Folder of images (searched with --pattern, sorted by path)."})
    pattern: str = field(default="**/*.png", metadata={"help": "Glob under --images."})
    prompts: str = field(
        default="", metadata={"help": "Prompts: .txt (one per line), .csv (`text` column), .json list."}
    )
    output_json: str | None = field(default=None, metadata={"help": "Write summary + per-image scores here."})
    batch_size: int = field(default=16, metadata={"help": "Images per forward pass (>= 1)."})
    device: str | None = field(default=None, metadata={"help": "cuda / cuda:N / cpu (default: cuda if available)."})
    dtype: str | None = field(
        default=None, metadata={"help": "fp32 / fp16 / bf16 for every metric (default: each metric's upstream one)."}
    )


def read_prompts(path: str) -> list[str]:
    suffix = Path(path).suffix.lower()
    text = Path(path).read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON: {e}") from None
        if not isinstance(data, list) or not all(isinstance(p, str) for p in data):
            raise ValueError(f"{path}: expected a JSON list of strings")
        return data
    if suffix == ".csv":
        import csv

        rows = list(csv.DictReader(text.splitlines()))
        if rows and "text" not in rows[0]:
            raise ValueError(f"{path}: no `text` column (columns: {', '.join(rows[0])})")
        return [r["text"] for r in rows]
    return [line.strip() for line in text.splitlines() if line.strip()]


def summarise(values: list[float]) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
    return {"count": n, "mean": mean, "std": std, "min": min(values), "max": max(values)}


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)  # one line, exit code 2, no traceback
    sys.exit(2)


def check_arguments(args: ScoreArguments) -> tuple[dict, list[Path], list[str]]:
    """Every check that needs no weights: metric names, device and dtype, files, counts, readable images."""
    import torch
    from PIL import Image

    weights = parse_metric_weights(args.metrics)
    if "mps" in weights and not os.path.isfile(locate("mps_checkpoint", {})):
        raise ValueError("mps needs MPS_overall_checkpoint.pth: set SCORE_MPS_CHECKPOINT to its path")
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.dtype is not None:
        device_dtype("clip", "cpu", args.dtype)  # raises ValueError naming the accepted names
    if args.device is not None:
        try:
            device = torch.device(args.device)
        except RuntimeError:
            raise ValueError(f"--device: not a device: {args.device!r} (cuda, cuda:N, cpu)") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: no CUDA device is available")
    if not args.images or not os.path.isdir(args.images):
        raise ValueError(f"--images: no such folder: {args.images!r}")
    if not args.prompts or not os.path.isfile(args.prompts):
        raise ValueError(f"--prompts: no such file: {args.prompts!r}")
    paths = sorted(p for p in Path(args.images).glob(args.pattern) if p.is_file())
    prompts = read_prompts(args.prompts)
    if len(paths) != len(prompts) or not paths:
        raise ValueError(f"{len(paths)} images match {args.pattern!r} but {args.prompts} has {len(prompts)} prompts")
    for p in paths:  # fail on a broken file before any model loads
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:
            raise ValueError(f"cannot read image {p}: {e}") from None
    return weights, paths, prompts


def main(argv=None):
    from PIL import Image
    from tqdm import tqdm
    from trl import TrlParser

    parser = TrlParser((ScoreArguments,), allow_abbrev=False)
    parser.error = fail  # argparse's own errors (bad values) become one line too
    args, rest = parser.parse_args_and_config(argv, return_remaining_strings=True)
    try:
        if rest:
            raise ValueError(f"unrecognised arguments: {' '.join(rest)}")
        weights, paths, prompts = check_arguments(args)
    except (ValueError, OSError) as e:
        fail(str(e))

    multi = MultiScorer(weights, device=args.device, dtype=args.dtype, batch_size=args.batch_size)
    scores = {name: [] for name in weights}
    for i in tqdm(range(0, len(paths), args.batch_size), desc="scoring", unit="batch"):
        batch = [Image.open(p).convert("RGB") for p in paths[i : i + args.batch_size]]
        _, details = multi(batch, prompts[i : i + args.batch_size])
        for name, vals in details.items():
            scores[name] += vals
        for scorer in multi.scorers.values():  # extra outputs (hpsv3_sigma) after their metric
            for key, vals in scorer.last_extras.items():
                scores.setdefault(key, []).extend(vals)

    summary = {}
    for name, vals in scores.items():
        scorer = multi.scorers.get(name)
        about = {"definition": scorer.definition, "dtype": str(scorer.dtype).removeprefix("torch.")} if scorer else {}
        summary[name] = {**summarise(vals), **about}
    print(f"{'metric':<12} {'count':>6} {'mean':>10} {'std':>10} {'min':>10} {'max':>10}")
    for name, s in summary.items():
        print(f"{name:<12} {s['count']:>6} {s['mean']:>10.4f} {s['std']:>10.4f} {s['min']:>10.4f} {s['max']:>10.4f}")
    if args.output_json:
        per_image = [
            {"path": str(p), "prompt": t, **{n: scores[n][i] for n in scores}}
            for i, (p, t) in enumerate(zip(paths, prompts, strict=True))
        ]
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps({"metrics": summary, "images": per_image}, indent=2))
        print(f"wrote {args.output_json}", file=sys.stderr)


if __name__ == "__main__":
    main()
