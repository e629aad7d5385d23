# SPDX-License-Identifier: Apache-2.0
"""score.py: every metric equals a hand computation from the same tiny model; weights, batching, CLI, bad input."""

import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import run_command
from PIL import Image
from tiny_scorers import RefImageReward, ref_mps_score, save_pickled_mps
from torchvision import transforms as T

import score

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
PROMPTS = ["a red cube on a blue sphere", "two cats in the rain", "an oil painting of a lighthouse"]


def make_images(sizes=((40, 24), (32, 32), (24, 48))):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]


@pytest.fixture(scope="module")
def images():
    return make_images()


def test_hpsv2_is_cosine_after_hps_preprocessing(tiny_scorers, images):
    scorer = score.load_scorer("hpsv2", **tiny_scorers.paths)
    model = open_clip.create_model("tiny-hps-vit")
    model.load_state_dict(torch.load(tiny_scorers.root / "hps" / "HPS_v2.1_compressed.pt")["state_dict"])
    model.eval()
    expected = []
    for im, prompt in zip(images, PROMPTS, strict=True):
        # HPS preprocess_val by hand: longest side -> 32 (bicubic), zero-pad to a centred square, CLIP normalisation
        w, h = im.size
        nw, nh = round(w * 32 / max(w, h)), round(h * 32 / max(w, h))
        canvas = np.zeros((32, 32, 3), dtype=np.float32)
        top, left = (32 - nh) // 2, (32 - nw) // 2
        canvas[top : top + nh, left : left + nw] = (
            np.asarray(im.resize((nw, nh), Image.BICUBIC), dtype=np.float32) / 255
        )
        px = ((torch.from_numpy(canvas) - torch.tensor(MEAN)) / torch.tensor(STD)).permute(2, 0, 1)[None]
        with torch.no_grad():
            img = F.normalize(model.encode_image(px), dim=-1)
            txt = F.normalize(model.encode_text(open_clip.get_tokenizer("tiny-hps-vit")([prompt])), dim=-1)
        expected.append(float(img @ txt.T))
    assert scorer(images, PROMPTS) == pytest.approx(expected, abs=1e-5)
    assert "v2.1" in scorer.definition


def test_hps_version_selects_checkpoint(tiny_scorers, tmp_path):
    with pytest.raises(FileNotFoundError, match="HPS_v2_compressed.pt"):
        score.load_scorer("hpsv2", **{**tiny_scorers.paths, "hps_checkpoint": str(tmp_path)}, hps_version="v2.0")
    with pytest.raises(ValueError, match="hps_version"):
        score.load_scorer("hpsv2", **tiny_scorers.paths, hps_version="v3")


def clip_embeddings(path, images, prompts):
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    with torch.no_grad():
        out = model(**proc(text=prompts, images=images, return_tensors="pt", padding=True))
    return model, F.normalize(out.image_embeds, dim=-1), F.normalize(out.text_embeds, dim=-1)


def test_clip_pickscore_aesthetic_match_hand_computation(tiny_scorers, images):
    model, img, txt = clip_embeddings(tiny_scorers.paths["clip_model"], images, PROMPTS)
    cos = (img * txt).sum(-1)
    assert score.load_scorer("clip", **tiny_scorers.paths)(images, PROMPTS) == pytest.approx(cos.tolist(), abs=1e-5)
    pick = model.logit_scale.exp().item() * cos
    assert score.load_scorer("pickscore", **tiny_scorers.paths)(images, PROMPTS) == pytest.approx(
        pick.tolist(), rel=1e-5
    )
    sd = torch.load(tiny_scorers.paths["aesthetic_head"])
    x = img
    for i in (0, 2, 4, 6, 7):  # linear layers only: the predictor has no activations, dropout is off in eval
        x = x @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    aesthetic = score.load_scorer("aesthetic", **tiny_scorers.paths)(images, ["ignored"] * 3)
    assert aesthetic == pytest.approx(x.squeeze(-1).tolist(), abs=1e-5)


def test_imagereward_matches_reference_module(tiny_scorers, images):
    from transformers import AutoTokenizer

    med = json.loads((tiny_scorers.root / "imagereward" / "med_config.json").read_text())
    ref = RefImageReward(med["vocab_size"])
    ref.load_state_dict(torch.load(tiny_scorers.root / "imagereward" / "ImageReward.pt"))  # strict
    ref.eval()
    # upstream ImageReward._transform(224) at the tiny size, and its tokenizer call (max_length 35)
    tf = T.Compose(
        [
            T.Resize(32, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(32),
            T.ToTensor(),
            T.Normalize(MEAN, STD),
        ]
    )
    tok = AutoTokenizer.from_pretrained(tiny_scorers.paths["imagereward_tokenizer"])
    enc = tok(PROMPTS, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        expected = ref(torch.stack([tf(im) for im in images]), enc["input_ids"], enc["attention_mask"])
    got = score.load_scorer("imagereward", **tiny_scorers.paths)(images, PROMPTS)
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert len(set(np.round(got, 6))) == 3  # distinct inputs give distinct rewards (the test can tell them apart)


def test_imagereward_checkpoint_maps_every_tensor(tiny_scorers):
    ckpt = torch.load(tiny_scorers.root / "imagereward" / "ImageReward.pt")
    vision, text, proj, mlp = score._imagereward_state_dict(ckpt, num_vision_layers=2)
    # every tensor but MED's persistent position_ids buffer lands in exactly one target module
    assert len(vision) + len(text) + len(proj) + len(mlp) == len(ckpt) - 1
    assert {"vision_proj.weight", "text_proj.bias"} <= set(proj)
    assert sum("crossattention" in k for k in text) == 2 * 10  # 2 layers x (q, k, v, dense, LayerNorm) x (w, b)
    with pytest.raises(KeyError, match="blip.itm_head.weight"):
        score._imagereward_state_dict({**ckpt, "blip.itm_head.weight": torch.zeros(2, 32)}, 2)
    with pytest.raises(KeyError, match="blocks.2"):
        score._imagereward_state_dict({**ckpt, "blip.visual_encoder.blocks.2.norm1.weight": torch.zeros(64)}, 2)


def test_batching_and_tensor_input_do_not_change_scores(tiny_scorers, images):
    square = [im.resize((32, 32)) for im in images]
    one = score.load_scorer("imagereward", batch_size=1, **tiny_scorers.paths)
    many = score.load_scorer("imagereward", batch_size=16, **tiny_scorers.paths)
    assert one(square, PROMPTS) == pytest.approx(many(square, PROMPTS), abs=1e-5)
    tensor = torch.stack([T.ToTensor()(im) for im in square])
    assert many(tensor, PROMPTS) == pytest.approx(many(square, PROMPTS), abs=1e-5)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        many(square, PROMPTS[:2])


def test_multi_scorer_weights_exactly(tiny_scorers, images):
    multi = score.MultiScorer({"clip": 2.0, "hpsv2": -0.5, "aesthetic": 0.25}, **tiny_scorers.paths)
    total, details = multi(images, PROMPTS)
    for i in range(3):
        assert total[i] == 2.0 * details["clip"][i] - 0.5 * details["hpsv2"][i] + 0.25 * details["aesthetic"][i]
    assert details["clip"] == score.load_scorer("clip", **tiny_scorers.paths)(images, PROMPTS)
    assert multi.scorers["clip"].model is multi.scorers["aesthetic"].model  # one CLIP ViT-L/14 serves both


def test_parse_metric_weights_and_unknown_names():
    assert score.parse_metric_weights("imagereward:1,hpsv2:0.5") == {"imagereward": 1.0, "hpsv2": 0.5}
    assert score.parse_metric_weights("clip") == {"clip": 1.0}
    with pytest.raises(ValueError, match="valid names: hpsv2, clip, aesthetic, pickscore, imagereward, mps"):
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


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pngs")
    (d / "sub").mkdir()
    for i, im in enumerate(make_images()):  # the sorted paths: 000.png, 001.png, sub/002.png
        im.save(d / ("sub" if i == 2 else ".") / f"{i:03d}.png")
    (d / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return d


def test_cli_round_trip(tiny_scorers, image_dir, tmp_path):
    out = tmp_path / "scores.json"
    res = run_command(
        ["score.py", "--metrics", "clip,imagereward", "--images", str(image_dir), "--pattern", "**/*.png",
         "--prompts", str(image_dir / "prompts.txt"), "--output-json", str(out), "--batch_size", "2"],
        env=tiny_scorers.env,
    )  # fmt: skip
    data = json.loads(out.read_text())
    assert [str(Path(r["path"]).relative_to(image_dir)) for r in data["images"]] == [
        "000.png",
        "001.png",
        "sub/002.png",
    ]
    imgs = [Image.open(r["path"]).convert("RGB") for r in data["images"]]
    for name in ("clip", "imagereward"):
        expected = score.load_scorer(name, **tiny_scorers.paths)(imgs, PROMPTS)
        assert [r[name] for r in data["images"]] == pytest.approx(expected, abs=1e-5)
        s = data["metrics"][name]
        assert (
            s["count"] == 3
            and s["mean"] == pytest.approx(np.mean(expected))
            and s["std"] == pytest.approx(np.std(expected))
        )
        assert s["min"] == pytest.approx(min(expected)) and s["max"] == pytest.approx(max(expected))
        assert f"{name:<12}      3" in res.stdout  # the printed table


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_cli_prompt_formats(tiny_scorers, image_dir, tmp_path, monkeypatch, suffix):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    path = tmp_path / f"p{suffix}"
    path.write_text('id,text\n1,"a, b"\n2,c\n3,d\n' if suffix == ".csv" else json.dumps(["a, b", "c", "d"]))
    assert score.read_prompts(str(path)) == ["a, b", "c", "d"]
    out = tmp_path / "s.json"
    score.main(["--metrics", "clip", "--images", str(image_dir), "--prompts", str(path), "--output_json", str(out)])
    assert [r["prompt"] for r in json.loads(out.read_text())["images"]] == ["a, b", "c", "d"]


@pytest.mark.parametrize(
    "case, message",
    [
        ("count", "3 images match '**/*.png' but"),
        ("broken", "cannot read image"),
        ("metric", "unknown metric 'hps'; valid names: hpsv2, clip"),
        ("mps", "mps needs MPS_overall_checkpoint.pth: set SCORE_MPS_CHECKPOINT"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(image_dir, tmp_path, capsys, case, message):
    prompts, images, metrics = image_dir / "prompts.txt", image_dir, "clip"
    if case == "count":
        prompts = tmp_path / "two.txt"
        prompts.write_text("a\nb\n")
    elif case == "broken":
        images = tmp_path / "imgs"
        images.mkdir()
        for i in range(2):
            make_images()[i].save(images / f"{i}.png")
        (images / "2.png").write_bytes(b"not a png")
    else:
        metrics = "clip,hps" if case == "metric" else "mps"
    with pytest.raises(SystemExit) as exc:
        score.main(["--metrics", metrics, "--images", str(images), "--prompts", str(prompts)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1
    if case == "count":
        assert "has 2 prompts" in err
    if case == "broken":
        assert "2.png" in err


def test_mps_matches_the_upstream_forward(tiny_scorers, images, tmp_path):
    from transformers import AutoTokenizer, CLIPImageProcessor

    scorer = score.load_scorer("mps", **tiny_scorers.paths)
    ref = save_pickled_mps(tmp_path / "again.pth", tiny_scorers.paths["mps_processor"])  # same seed: same weights
    state = score.load_pickled_state_dict(tiny_scorers.paths["mps_checkpoint"])
    assert all(torch.equal(state[k], v) for k, v in ref.state_dict().items()) and len(state) == len(ref.state_dict())
    proc = CLIPImageProcessor.from_pretrained(tiny_scorers.paths["mps_processor"])
    tok = AutoTokenizer.from_pretrained(tiny_scorers.paths["mps_processor"])

    def ids(text):
        return tok(
            [text], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
        )["input_ids"]

    with torch.no_grad():  # upstream scores one (image, prompt) at a time
        expected = [
            ref_mps_score(ref, proc(im, return_tensors="pt")["pixel_values"], ids(p), ids(score.MPS_CONDITION)).item()
            for im, p in zip(images, PROMPTS, strict=True)
        ]
    assert scorer(images, PROMPTS) == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_pickle_loader_refuses_callables(tmp_path):
    import os as _os
    import pickle

    class Evil:
        def __reduce__(self):
            return (_os.system, ("echo pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth", pickle_module=pickle)
    with pytest.raises(pickle.UnpicklingError, match="refusing posix.system|refusing os.system"):
        score.load_pickled_state_dict(str(tmp_path / "evil.pth"))
