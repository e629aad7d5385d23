# SPDX-License-Identifier: Apache-2.0
"""score.py: every metric equals an independent re-statement of its upstream pipeline (pixels as upstream made them,
upstream's model calls) on tiny checkpoints in the real layouts, at batch sizes 1 and 4 and through the CLI; checkpoint
layouts, precision defaults, weighting, bad input."""

import json
import pickle
import pickletools
import zipfile

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from conftest import run_command
from PIL import Image
from tiny_scorers import (
    CLIP_MEAN,
    CLIP_STD,
    HPSV3_TEXT,
    RefImageReward,
    clip_processor_pixels,
    hpsv3_resize,
    ref_hpsv3,
    ref_mps_score,
    save_pickled_mps,
)
from torchvision import transforms as T

import score

PROMPTS = ["a red cube on a blue sphere", "two cats in the rain", "an oil painting of a lighthouse",
           "a small white boat left of a tall black tower", "a photo of a woman with long hair"]  # fmt: skip
# non-square and square sizes; 301x97 and 227x224 put the short-side resize at an odd centre-crop margin of 3 (mod 4),
# where torchvision's CenterCrop (rounded offset) and transformers' processor (floored) pick different pixels
SIZES = ((301, 97), (224, 224), (150, 400), (227, 224), (640, 480))
# 1e-5 of each metric's scale (typical magnitude: cosines ~1, ImageReward ~1, aesthetic/MPS/HPSv3 ~10, PickScore ~20);
# the issue asks for 1e-4, the re-statements agree to ~1e-7 of it, and 1e-5 still sees one grey level on 0.3 % of pixels
SCALE = {"hpsv2": 1, "clip": 1, "aesthetic": 10, "pickscore": 20, "imagereward": 1, "mps": 10, "hpsv3": 10}
TOL = {metric: 1e-5 * scale for metric, scale in SCALE.items()}


def make_images(sizes=SIZES):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def images():
    return make_images()


########################
# independent re-statements of the upstream pipelines, one (image, prompt) at a time
########################
def hps_preprocess_val(image, size=224):
    """tgxs002/HPSv2 image_transform(is_train=False, resize_longest_max=True): ToTensor, ResizeMaxSize, Normalize."""
    x = T.ToTensor()(image)
    scale = size / float(max(x.shape[1:]))
    new = tuple(round(d * scale) for d in x.shape[1:])
    x = TF.resize(x, new, T.InterpolationMode.BICUBIC)  # torchvision's default antialias on tensors (True)
    ph, pw = size - new[0], size - new[1]
    return T.Normalize(CLIP_MEAN, CLIP_STD)(TF.pad(x, [pw // 2, ph // 2, pw - pw // 2, ph - ph // 2], fill=0))


# openai/CLIP clip/clip.py _transform(224): what ImageReward's CLIPScore and the LAION aesthetic predictor get
OPENAI_TRANSFORM = T.Compose(
    [T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(), T.Normalize(CLIP_MEAN, CLIP_STD)]
)  # fmt: skip


def clip_model(path):
    from transformers import AutoTokenizer, CLIPModel

    return CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def expected(tiny_scorers, images):
    """Reference scores of every metric, computed as each upstream computes them."""
    paths, out = tiny_scorers.paths, {}
    with torch.no_grad():
        # HPSv2 img_score.py: model(image, text) with output_dict, diag(image_features @ text_features.T)
        hps = open_clip.create_model("tiny-hps-vit", output_dict=True).eval()
        hps.load_state_dict(torch.load(tiny_scorers.root / "hps" / "HPS_v2.1_compressed.pt")["state_dict"])
        tok = open_clip.get_tokenizer("tiny-hps-vit")
        o = [hps(hps_preprocess_val(im)[None], tok([p])) for im, p in zip(images, PROMPTS, strict=True)]
        out["hpsv2"] = [(d["image_features"] @ d["text_features"].T).item() for d in o]
        # ImageReward CLIPScore (OpenAI clip): normalised encode_text / encode_image, sum of the product
        model, tok = clip_model(paths["clip_model"])
        cos, emb = [], []
        for im, p in zip(images, PROMPTS, strict=True):
            ids = tok([p], padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
            r = model(input_ids=ids, pixel_values=OPENAI_TRANSFORM(im)[None])
            emb.append(F.normalize(r.image_embeds, dim=-1))
            cos.append((F.normalize(r.text_embeds, dim=-1) * emb[-1]).sum().item())
        out["clip"] = cos
        # LAION simple_inference.py: normalized(image embedding) through the linear MLP (no activations)
        sd = torch.load(paths["aesthetic_head"])
        x = torch.cat(emb)
        for i in (0, 2, 4, 6, 7):
            x = x @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
        out["aesthetic"] = x.squeeze(-1).tolist()
        # PickScore model card calc_probs (transformers 4.2x PIL processor): logit_scale.exp() * text_embs @ image_embs.T
        model, tok = clip_model(paths["pickscore_model"])
        pick = []
        for im, p in zip(images, PROMPTS, strict=True):
            t = tok([p], padding=True, truncation=True, max_length=77, return_tensors="pt")
            img = model.get_image_features(pixel_values=clip_processor_pixels(im)[None]).pooler_output
            txt = model.get_text_features(**t).pooler_output
            img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
            pick.append((model.logit_scale.exp() * txt @ img.T).item())
        out["pickscore"] = pick
        # ImageReward.score: the upstream module tree + its _transform(224) + BLIP tokenizer at 35 tokens
        from transformers import AutoTokenizer

        med = json.loads((tiny_scorers.root / "imagereward" / "med_config.json").read_text())
        ir = RefImageReward(med["vocab_size"])
        ir.load_state_dict(torch.load(tiny_scorers.root / "imagereward" / "ImageReward.pt"))  # strict
        tok = AutoTokenizer.from_pretrained(paths["imagereward_tokenizer"])
        enc = [tok([p], padding="max_length", truncation=True, max_length=35, return_tensors="pt") for p in PROMPTS]
        out["imagereward"] = [
            ir.eval()(OPENAI_TRANSFORM(im)[None], e["input_ids"], e["attention_mask"]).item()
            for im, e in zip(images, enc, strict=True)
        ]
        # MPS infer_one_sample on the pickled model (same seed: same weights), 4.2x PIL processor pixels
        mps = save_pickled_mps(tiny_scorers.root / "again.pth", paths["mps_processor"])
        tok = AutoTokenizer.from_pretrained(paths["mps_processor"])

        def ids(text):
            return tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]

        out["mps"] = [
            ref_mps_score(mps, clip_processor_pixels(im)[None], ids(p), ids(score.MPS_CONDITION)).item()
            for im, p in zip(images, PROMPTS, strict=True)
        ]
        # HPSv3RewardInferencer.reward: (mu, sigma) per pair
        mu_sigma = torch.stack([ref_hpsv3(tiny_scorers.hpsv3, im, p) for im, p in zip(images, PROMPTS, strict=True)])
        out["hpsv3"], out["hpsv3_sigma"] = mu_sigma[:, 0].tolist(), mu_sigma[:, 1].tolist()
    return out


@pytest.mark.parametrize("metric", score.METRICS)
def test_every_metric_equals_upstream_restatement(tiny_scorers, images, expected, metric):
    scorer = score.load_scorer(metric, batch_size=1, **tiny_scorers.paths)
    one = scorer(images, PROMPTS)
    scorer.batch_size = 4  # a batch of 4 (mixed sizes, padded prompts) and a batch of 1
    four = scorer(images, PROMPTS)
    assert one == pytest.approx(expected[metric], abs=TOL[metric])
    assert four == pytest.approx(expected[metric], abs=TOL[metric])
    assert len(set(np.round(four, 6))) == len(images)  # distinct inputs, distinct scores: the test can tell
    if metric == "hpsv3":
        assert scorer.last_extras["hpsv3_sigma"] == pytest.approx(expected["hpsv3_sigma"], abs=TOL[metric])


def test_pixels_equal_upstream(tiny_scorers, images):
    """Pixel tensors: HPS preprocess_val, OpenAI CLIP transform (clip, aesthetic, ImageReward), transformers 4.2x PIL
    processor (PickScore, MPS). A resize with PIL instead of torchvision, or a floored crop offset, moves whole grey
    levels (4e-3 after normalisation) on some pixels."""
    paths = tiny_scorers.paths
    hps = score.load_scorer("hpsv2", **paths)
    assert torch.allclose(hps.pixels(images), torch.stack([hps_preprocess_val(im) for im in images]), atol=1e-6)
    openai = torch.stack([OPENAI_TRANSFORM(im) for im in images])
    assert torch.allclose(score.load_scorer("clip", **paths).pixels(images), openai, atol=1e-6)
    assert torch.allclose(score.openai_clip_pixels(images, 224), openai, atol=1e-6)  # ImageReward's _transform
    four_2x = torch.stack([clip_processor_pixels(im) for im in images])
    assert torch.allclose(score.load_scorer("pickscore", **paths).pixels(images), four_2x, atol=1e-6)
    assert torch.allclose(score.load_scorer("mps", **paths).pixels(images), four_2x, atol=1e-6)
    assert [score.hpsv3_resize(im).size for im in images] == [hpsv3_resize(im).size for im in images]
    sizes = [(812, 280), (448, 448), (280, 756), (476, 448), (504, 364)]  # by hand: the ceil and floor branches
    assert [hpsv3_resize(im).size for im in images] == sizes


def test_hpsv3_checkpoint_layout_and_prompt(tiny_scorers):
    from safetensors.torch import load_file
    from transformers import AutoConfig, Qwen2VLModel

    ckpt = load_file(tiny_scorers.root / "hpsv3" / "HPSv3.safetensors")
    # upstream's names (transformers 4.45 Qwen2VLForConditionalGeneration + rm_head), as in MizzenAI/HPSv3 issue #15
    assert {"model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "visual.merger.mlp.2.weight",
            "visual.blocks.1.attn.qkv.weight", "lm_head.weight", "rm_head.0.weight", "rm_head.5.weight"} <= set(ckpt)  # fmt: skip
    backbone, head = score._hpsv3_state_dict(ckpt)
    cfg = AutoConfig.from_pretrained(tiny_scorers.paths["hpsv3_base"])
    cfg.text_config.vocab_size = ckpt["model.embed_tokens.weight"].shape[0]
    assert set(backbone) == set(Qwen2VLModel(cfg).state_dict())  # every backbone tensor lands, none missing
    assert set(head) == {f"{i}.{p}" for i in (0, 3, 5) for p in ("weight", "bias")}
    assert len(backbone) + len(head) == len(ckpt) - 1  # only lm_head.weight is dropped
    with pytest.raises(KeyError, match="value_head.weight"):
        score._hpsv3_state_dict({**ckpt, "value_head.weight": torch.zeros(1)})
    text = score.HPSV3_INSTRUCTION.format(text_prompt="a cat") + score.HPSV3_SUFFIX
    assert text == HPSV3_TEXT.format(text_prompt="a cat")  # upstream's template, trailing spaces and all
    bad = {**ckpt, "model.embed_tokens.weight": ckpt["model.embed_tokens.weight"][:-1].clone()}  # no <|Reward|> row
    path = tiny_scorers.root / "bad.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in bad.items()}, path)
    with pytest.raises(ValueError, match="<|Reward|>"):
        score.load_scorer("hpsv3", **{**tiny_scorers.paths, "hpsv3_checkpoint": str(path)})


def test_precision_defaults_and_override():
    f16, f32, bf16 = torch.float16, torch.float32, torch.bfloat16
    cuda = {
        "hpsv2": f16,
        "clip": f16,
        "aesthetic": f16,
        "pickscore": f32,
        "imagereward": f32,
        "mps": f16,
        "hpsv3": bf16,
    }
    for metric, dtype in cuda.items():  # torch.device("cuda") needs no GPU to construct
        assert score.device_dtype(metric, "cuda") == (torch.device("cuda"), dtype)
        assert score.device_dtype(metric, "cpu") == (torch.device("cpu"), f32)
        assert (
            score.device_dtype(metric, "cuda", "fp32")[1] == f32 and score.device_dtype(metric, "cpu", bf16)[1] == bf16
        )
    with pytest.raises(ValueError, match="dtype must be one of"):
        score.device_dtype("clip", "cpu", "half")


def test_hpsv2_autocast_keeps_fp32_weights(tiny_scorers, images, expected):
    scorer = score.load_scorer("hpsv2", dtype="bf16", **tiny_scorers.paths)
    assert scorer.dtype == torch.bfloat16 and next(scorer.model.parameters()).dtype == torch.float32
    assert scorer(images, PROMPTS) == pytest.approx(expected["hpsv2"], abs=2e-2)  # bf16 autocast, not fp32


def test_mps_loads_a_gelu_clip_and_refuses_other_callables(tiny_scorers, tmp_path):
    import os as _os

    path = tiny_scorers.paths["mps_checkpoint"]
    with zipfile.ZipFile(path) as z:  # the tiny checkpoint pickles GELUActivation's function, as the released one
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert ("GLOBAL", "torch._C._nn gelu") in [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    state = score.load_pickled_state_dict(path)
    assert state["model.text_model.encoder.layers.0.mlp.fc1.weight"].dtype == torch.float16  # released as fp16

    class Evil:
        def __init__(self, fn, *args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return (self.fn, self.args)

    for fn, args, name in [(_os.system, ("echo pwned",), "system"), (eval, ("1",), "eval"),
                           (torch._C._nn.linear, (torch.zeros(1), torch.zeros(1, 1)), "linear")]:  # fmt: skip
        torch.save({"x": Evil(fn, *args)}, tmp_path / "evil.pth", pickle_module=pickle)
        with pytest.raises(pickle.UnpicklingError, match=f"refusing .*{name}"):
            score.load_pickled_state_dict(str(tmp_path / "evil.pth"))


def test_imagereward_checkpoint_maps_every_tensor(tiny_scorers):
    ckpt = torch.load(tiny_scorers.root / "imagereward" / "ImageReward.pt")
    vision, text, mlp = score._imagereward_state_dict(ckpt, num_vision_layers=2)
    # every tensor lands in exactly one module but MED's persistent position_ids buffer and the 4 ITC projection
    # tensors, which the reward never uses (mapped and dropped)
    dropped = {"blip.text_encoder.embeddings.position_ids"} | {f"blip.{m}_proj.{p}" for m in ("vision", "text")
                                                               for p in ("weight", "bias")}  # fmt: skip
    assert dropped <= set(ckpt) and len(vision) + len(text) + len(mlp) == len(ckpt) - len(dropped)
    assert sum("crossattention" in k for k in text) == 2 * 10  # 2 layers x (q, k, v, dense, LayerNorm) x (w, b)
    with pytest.raises(KeyError, match="blip.itm_head.weight"):
        score._imagereward_state_dict({**ckpt, "blip.itm_head.weight": torch.zeros(2, 32)}, 2)
    with pytest.raises(KeyError, match="blocks.2"):
        score._imagereward_state_dict({**ckpt, "blip.visual_encoder.blocks.2.norm1.weight": torch.zeros(64)}, 2)


def test_tensor_input_and_count_check(tiny_scorers, images):
    square = [im.resize((224, 224)) for im in images]
    scorer = score.load_scorer("imagereward", **tiny_scorers.paths)
    tensor = torch.stack([T.ToTensor()(im) for im in square])
    assert scorer(tensor, PROMPTS) == pytest.approx(scorer(square, PROMPTS), abs=1e-6)
    with pytest.raises(ValueError, match="5 images but 2 prompts"):
        scorer(square, PROMPTS[:2])
    assert scorer([], []) == []


def test_multi_scorer_weights_exactly(tiny_scorers, images):
    multi = score.MultiScorer({"clip": 2.0, "hpsv2": -0.5, "aesthetic": 0.25}, **tiny_scorers.paths)
    total, details = multi(images, PROMPTS)
    for i in range(len(images)):
        assert total[i] == 2.0 * details["clip"][i] - 0.5 * details["hpsv2"][i] + 0.25 * details["aesthetic"][i]
    assert multi.scorers["clip"].model is multi.scorers["aesthetic"].model  # one CLIP ViT-L/14 serves both


def test_parse_metric_weights_and_unknown_names():
    assert score.parse_metric_weights("imagereward:1,hpsv3:0.5") == {"imagereward": 1.0, "hpsv3": 0.5}
    assert score.parse_metric_weights("clip") == {"clip": 1.0}
    with pytest.raises(ValueError, match="valid names: hpsv2, clip, aesthetic, pickscore, imagereward, mps, hpsv3"):
        score.parse_metric_weights("hps")
    with pytest.raises(ValueError, match="must be a number"):
        score.parse_metric_weights("clip:high")
    with pytest.raises(ValueError, match="valid names"):
        score.load_scorer("blip")


def test_env_vars_locate_models(tiny_scorers, monkeypatch, images):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    assert score.load_scorer("clip")(images, PROMPTS) == score.load_scorer("clip", **tiny_scorers.paths)(
        images, PROMPTS
    )


########################
# CLI
########################
@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs")
    (d / "sub").mkdir()
    for i, im in enumerate(make_images()):  # the sorted paths: 000.png ... 003.png, sub/004.png
        im.save(d / ("sub" if i == 4 else ".") / f"{i:03d}.png")
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return d


def test_cli_all_metrics_equal_upstream(tiny_scorers, image_dir, expected, tmp_path):
    out = tmp_path / "scores.json"
    res = run_command(
        ["score.py", "--metrics", ",".join(score.METRICS), "--images", str(image_dir), "--pattern", "**/*.png",
         "--prompts", str(image_dir / "prompts.txt"), "--output-json", str(out), "--batch_size", "4"],
        env=tiny_scorers.env,
    )  # fmt: skip
    data = json.loads(out.read_text())
    rel = [r["path"].removeprefix(str(image_dir) + "/") for r in data["images"]]
    assert rel == ["000.png", "001.png", "002.png", "003.png", "sub/004.png"]
    for name in (*score.METRICS, "hpsv3_sigma"):
        tol = TOL[name.removesuffix("_sigma")]
        assert [r[name] for r in data["images"]] == pytest.approx(expected[name], abs=tol)
        s = data["metrics"][name]
        assert s["count"] == 5 and s["mean"] == pytest.approx(np.mean(expected[name]), abs=tol)
        assert s["std"] == pytest.approx(np.std(expected[name]), abs=tol)
        assert f"{name:<12}      5" in res.stdout  # the printed table
    assert data["metrics"]["hpsv3"]["dtype"] == "float32" and "v2.1" in data["metrics"]["hpsv2"]["definition"]


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_cli_prompt_formats(tiny_scorers, image_dir, tmp_path, monkeypatch, suffix):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / f"p{suffix}"
    prompts = ["a, b", "c", "d", "e", "f"]
    path.write_text("id,text\n" + "".join(f'{i},"{p}"\n' for i, p in enumerate(prompts)) if suffix == ".csv" else json.dumps(prompts))  # fmt: skip
    assert score.read_prompts(str(path)) == prompts
    out = tmp_path / "s.json"
    score.main(["--metrics", "clip", "--images", str(image_dir), "--prompts", str(path), "--output_json", str(out)])
    assert [r["prompt"] for r in json.loads(out.read_text())["images"]] == prompts


@pytest.fixture
def no_weights(no_weights, monkeypatch):
    """conftest's guard, plus open_clip and every scorer's own loader."""
    monkeypatch.setattr(open_clip, "create_model", no_weights)
    monkeypatch.setattr(score.Scorer, "load", no_weights)
    return no_weights


BAD_INPUTS = {  # case: (argv changes, message)
    "metric": ({"--metrics": "clip,hps"}, "unknown metric 'hps'; valid names: hpsv2, clip"),
    "mps": ({"--metrics": "mps"}, "mps needs MPS_overall_checkpoint.pth: set SCORE_MPS_CHECKPOINT"),
    "no_images": ({"--images": "/no/such/dir"}, "--images: no such folder: '/no/such/dir'"),
    "images_file": ({"--images": "PROMPTS"}, "--images: no such folder"),
    "no_prompts": ({"--prompts": "/no/such.txt"}, "--prompts: no such file: '/no/such.txt'"),
    "json": ({"--prompts": "BADJSON"}, "bad.json: invalid JSON: Expecting"),
    "csv": ({"--prompts": "BADCSV"}, "no `text` column (columns: id, prompt)"),
    "count": ({"--prompts": "TWO"}, "5 images match '**/*.png' but"),
    "no_match": ({"--pattern": "*.jpg"}, "0 images match '*.jpg'"),
    "broken": ({"--images": "BROKEN"}, "cannot read image"),
    "dtype": ({"--dtype": "half"}, "dtype must be one of fp32, fp16, bf16 (or float32, float16, bfloat16)"),
    "device": ({"--device": "nonsense"}, "--device: not a device: 'nonsense'"),
    "cuda": ({"--device": "cuda"}, "--device cuda: no CUDA device is available"),
    "batch": ({"--batch_size": "0"}, "--batch_size must be >= 1, got 0"),
    "batch_type": ({"--batch_size": "two"}, "invalid int value: 'two'"),
    "unknown_flag": ({"--metric": "clip"}, "unrecognised arguments: --metric clip"),
}


def bad_argv(case, image_dir, tmp_path):
    changes, _ = BAD_INPUTS[case]
    files = {"PROMPTS": str(image_dir / "prompts.txt"), "BADJSON": tmp_path / "bad.json", "BADCSV": tmp_path / "p.csv",
             "TWO": tmp_path / "two.txt", "BROKEN": tmp_path / "imgs"}  # fmt: skip
    files["BADJSON"].write_text('["a", "b",]')
    files["BADCSV"].write_text("id,prompt\n1,a\n")
    files["TWO"].write_text("a\nb\n")
    files["BROKEN"].mkdir(exist_ok=True)
    for i in range(4):
        make_images()[i].save(files["BROKEN"] / f"{i}.png")
    (files["BROKEN"] / "4.png").write_bytes(b"not a png")
    argv = {"--metrics": "clip", "--images": str(image_dir), "--prompts": str(image_dir / "prompts.txt")}
    argv.update({k: str(files.get(v, v)) for k, v in changes.items()})
    return [x for kv in argv.items() for x in kv]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_cli_bad_input_one_line_exit_2_before_loading(case, image_dir, tmp_path, capsys, no_weights, monkeypatch):
    monkeypatch.delenv("SCORE_MPS_CHECKPOINT", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as exc:
        score.main(bad_argv(case, image_dir, tmp_path))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert BAD_INPUTS[case][1] in err


def test_cli_bad_input_subprocess(image_dir, tmp_path):
    res = run_command(["score.py", *bad_argv("no_images", image_dir, tmp_path)], check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == ["error: --images: no such folder: '/no/such/dir'"]
