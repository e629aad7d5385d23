# SPDX-License-Identifier: Apache-2.0
"""promptist_infer.py on tiny GPT-2 + tiny SD1.5: the exact recipe, batching, JSON round trip, images, reward, errors,
4-bit config, out-of-memory halving and the computed 6 GB render budget."""

import functools
import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, run_command
from PIL import Image

import promptist_infer
import score

PROMPTS = ["a cat in the rain", "two dogs and three birds on a green bench", "an oil painting of a lighthouse"]


@pytest.fixture(scope="module")
def recipe(tiny_gpt2):
    """Independent re-statement of the official snippet (LMOps README / Space app.py), one prompt at a time."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt2)
    tok.pad_token, tok.padding_side = tok.eos_token, "left"
    model = AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval()

    @functools.cache
    def generate(stripped: str, max_new_tokens: int) -> str:
        ids = tok(stripped + " Rephrase:", return_tensors="pt").input_ids
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), do_sample=False, num_beams=8, num_return_sequences=8,
            max_new_tokens=max_new_tokens, length_penalty=-1.0, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )  # fmt: skip
        return tok.batch_decode(out, skip_special_tokens=True)[0]

    def run(plain_text: str, upstream_replace: bool = False, max_new_tokens: int = 75) -> str:
        text = generate(plain_text.strip(), max_new_tokens)
        if upstream_replace:
            return text.replace(plain_text + " Rephrase:", "").strip()
        prefix = plain_text.strip() + " Rephrase:"
        assert text.startswith(prefix)  # the tiny tokenizer round-trips, so a character slice is exact
        return text[len(prefix) :].strip()

    return run


SHORT = 12  # new tokens outside the exact-recipe CLI test: a random tiny model never stops before the limit


def llm_args(path, short: bool = True):
    return ["--model_name_or_path", path, "--tokenizer_name_or_path", path] + (
        ["--max_new_tokens", str(SHORT)] if short else []
    )


def test_single_prompt_cli_prints_recipe_output_last(tiny_gpt2, recipe):
    res = run_command(["promptist_infer.py", "  a cat in the rain \n", *llm_args(tiny_gpt2, short=False)])
    last = res.stdout.splitlines()[-1]
    assert last == recipe("a cat in the rain") and last  # the tiny model writes a non-empty continuation
    assert "Rephrase" not in last
    # upstream's replace on the unstripped input leaks the prefix; slicing the tokens does not
    assert "Rephrase:" in recipe("  a cat in the rain \n", upstream_replace=True)


def test_batched_equals_one_by_one_and_json(tiny_gpt2, recipe, tmp_path, capsys):
    out = tmp_path / "pairs.json"
    promptist_infer.main([*PROMPTS, *llm_args(tiny_gpt2), "--batch_size", "2", "--output_json", str(out)])
    expected = [recipe(p, max_new_tokens=SHORT) for p in PROMPTS]
    assert capsys.readouterr().out.splitlines() == expected
    assert json.loads(out.read_text()) == [
        {"original": p, "optimized": o} for p, o in zip(PROMPTS, expected, strict=True)
    ]


def test_prompt_file_txt_and_json(tmp_path):
    (tmp_path / "p.txt").write_text("a cat in the rain\n\n" + PROMPTS[1] + "\n")
    (tmp_path / "p.json").write_text(json.dumps(PROMPTS[:2]))
    for name in ("p.txt", "p.json"):
        args = promptist_infer.ScriptArguments(prompt_file=str(tmp_path / name))
        assert promptist_infer.read_prompts(args, ["first"]) == ["first", *PROMPTS[:2]]  # positional prompts first
    (tmp_path / "bad.json").write_text(json.dumps({"prompt": "a cat"}))
    with pytest.raises(ValueError, match="expected a non-empty JSON list"):
        promptist_infer.read_prompts(promptist_infer.ScriptArguments(prompt_file=str(tmp_path / "bad.json")), [])


SD = ["--height", "64", "--width", "64", "--num_inference_steps", "2"]


def read_image(path) -> torch.Tensor:
    return torch.tensor(list(Image.open(path).convert("RGB").getdata()))


def test_images_json_and_reward_written_after_scoring(tiny_gpt2, tiny_sd15, tiny_scorers, tmp_path, monkeypatch):
    """Issue 16 (1): --output_json holds the reward and its parts; --from_json keeps every field of its records."""
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    d, out = tmp_path / "out", tmp_path / "json" / "scored.json"
    promptist_infer.main([
        *PROMPTS[:2], *llm_args(tiny_gpt2), "--pipeline_name_or_path", tiny_sd15, *SD, "--score",
        "--output_dir", str(d), "--image_batch_size", "1", "--output_json", str(out),
    ])  # fmt: skip
    pairs = json.loads((d / "pairs.json").read_text())
    assert json.loads(out.read_text()) == pairs
    assert [p["original"] for p in pairs] == PROMPTS[:2]
    for i, p in enumerate(pairs):
        assert (p["baseline_image"], p["optimized_image"]) == (f"{i:03d}_baseline.png", f"{i:03d}_optimized.png")
        assert Image.open(d / p["optimized_image"]).size == (64, 64)
    assert Image.open(d / "grid.png").size == (128, 2 * (64 + 92))
    # the reward equals Promptist's formula applied to score.py's outputs on the saved images
    base = [Image.open(d / p["baseline_image"]).convert("RGB") for p in pairs]
    opt = [Image.open(d / p["optimized_image"]).convert("RGB") for p in pairs]
    aes, clip = score.load_scorer("aesthetic"), score.load_scorer("clip")
    aes_b, aes_o, cos = aes(base, PROMPTS[:2]), aes(opt, PROMPTS[:2]), clip(opt, PROMPTS[:2])
    for i, p in enumerate(pairs):
        assert p["aesthetic_baseline"] == pytest.approx(aes_b[i], abs=1e-5)
        assert p["aesthetic_optimized"] == pytest.approx(aes_o[i], abs=1e-5)
        assert p["clip_optimized"] == pytest.approx(cos[i], abs=1e-6)
        assert p["reward"] == pytest.approx(aes_o[i] - aes_b[i] + min(20 * max(cos[i], 0) - 5.6, 0), abs=1e-5)
    # re-render from that JSON: earlier rewards and a user's own field survive; --score recomputes into --output_json
    pairs[0]["note"] = "mine"
    (tmp_path / "in.json").write_text(json.dumps(pairs))
    again = [
        "--from_json",
        str(tmp_path / "in.json"),
        "--pipeline_name_or_path",
        tiny_sd15,
        *SD,
        "--image_batch_size",
        "1",
    ]
    promptist_infer.main([*again, "--generate_images", "--output_dir", str(tmp_path / "a")])
    kept = json.loads((tmp_path / "a" / "pairs.json").read_text())
    assert kept[0]["note"] == "mine" and [p["reward"] for p in kept] == [p["reward"] for p in pairs]
    assert torch.equal(read_image(tmp_path / "a" / "000_optimized.png"), read_image(d / "000_optimized.png"))
    promptist_infer.main([*again, "--score", "--output_dir", str(tmp_path / "b"), "--output_json", str(out)])
    rescored = json.loads(out.read_text())
    assert rescored[0]["note"] == "mine"
    assert [p["reward"] for p in rescored] == pytest.approx([p["reward"] for p in pairs], abs=1e-5)


def test_from_json_renders_without_llm_and_pairs_share_seeds(tiny_sd15, tmp_path):
    pairs = [{"original": "a cat", "optimized": "a cat"}, {"original": "a cat", "optimized": "a dog, 4k"}]
    (tmp_path / "in.json").write_text(json.dumps(pairs))
    d = tmp_path / "out"
    promptist_infer.main([
        "--from_json", str(tmp_path / "in.json"), "--generate_images", "--model_name_or_path", "/no/such/llm",
        "--pipeline_name_or_path", tiny_sd15, *SD, "--output_dir", str(d), "--image_batch_size", "2",
    ])  # fmt: skip
    px = {n: read_image(d / f"{n}.png") for n in ("000_baseline", "000_optimized", "001_baseline")}
    assert torch.equal(px["000_baseline"], px["000_optimized"])  # same prompt + same seed -> same image
    assert not torch.equal(px["000_baseline"], px["001_baseline"])  # pair 1 uses the next seed


# ---- issue 16 (2): the BitsAndBytesConfig that reaches from_pretrained ----
@pytest.mark.parametrize("bits", [4, 8])
def test_quantization_config_reaching_from_pretrained(bits, tiny_gpt2, monkeypatch, capsys):
    import transformers

    seen = []

    def fake_from_pretrained(cls, path, **kwargs):
        seen.append(kwargs)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(fake_from_pretrained))
    args = promptist_infer.ScriptArguments(
        model_name_or_path=tiny_gpt2, tokenizer_name_or_path=tiny_gpt2, **{f"load_in_{bits}bit": True}
    )
    for device in ("cuda", "cpu"):  # no GPU is needed to build the kwargs; off CUDA the flag is refused with a note
        with pytest.raises(RuntimeError, match="stop before loading"):
            promptist_infer.load_promptist(args, torch.device(device))
    on_gpu, on_cpu = seen
    q = on_gpu["quantization_config"]
    assert on_gpu["dtype"] == torch.float16 and on_gpu["device_map"] == {"": 0}
    if bits == 4:  # NF4 storage with fp16 matmuls, as the help says (bitsandbytes' defaults: FP4, fp32 compute)
        assert q.load_in_4bit and not q.load_in_8bit
        assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_compute_dtype == torch.float16
    else:
        assert q.load_in_8bit and not q.load_in_4bit
    assert "quantization_config" not in on_cpu and on_cpu["dtype"] == torch.float32
    assert "need CUDA; ignored on cpu" in capsys.readouterr().err


# ---- issue 16 (3): out-of-memory halving and the default batch for the 6 GB budget ----
class OOMPipe:
    """Stands in for a diffusers pipeline (the retry logic is under test, not diffusers): raises CUDA out-of-memory
    above `limit` pairs per call, else returns one image per prompt coloured by (seed, prompt length)."""

    def __init__(self, limit: int):
        self.limit, self.calls = limit, []

    def __call__(self, prompt, generator, **kwargs):
        seeds = [g.initial_seed() for g in generator]
        self.calls.append(seeds)
        if len(prompt) // 2 > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return types.SimpleNamespace(
            images=[Image.new("RGB", (8, 8), (s, len(p), 0)) for s, p in zip(seeds, prompt, strict=True)]
        )


def test_render_halves_the_batch_on_out_of_memory(tmp_path, capsys):
    pairs = [{"original": f"cat {i}", "optimized": f"a cat {i}, 4k" + "!" * i} for i in range(5)]
    args = promptist_infer.ScriptArguments(image_batch_size=4, seed=10)
    pipe = OOMPipe(limit=1)
    images = promptist_infer.render(pipe, pairs, args, tmp_path)
    # 4 pairs fail, 2 fail, then one pair per call for the rest of the run; pair i always has seed 10 + i
    assert pipe.calls == [[10, 11, 12, 13] * 2, [10, 11] * 2, [10] * 2, [11] * 2, [12] * 2, [13] * 2, [14] * 2]
    for i, (pair, (base, opt)) in enumerate(zip(pairs, images, strict=True)):
        assert base.getpixel((0, 0)) == (10 + i, len(pair["original"]), 0)
        assert opt.getpixel((0, 0)) == (10 + i, len(pair["optimized"]), 0)
        assert Image.open(tmp_path / pair["optimized_image"]).getpixel((0, 0)) == opt.getpixel((0, 0))
    err = capsys.readouterr().err
    assert err.count("out of memory") == 1 and "halving" in err  # said once
    with pytest.raises(torch.OutOfMemoryError):  # one pair does not fit: nothing left to halve
        promptist_infer.render(OOMPipe(limit=0), pairs, args)


def test_out_of_memory_at_one_pair_is_one_line_and_keeps_the_json(tmp_path, monkeypatch, capsys):
    (tmp_path / "in.json").write_text(json.dumps([{"original": "a cat", "optimized": "a cat, 4k"}]))
    monkeypatch.setattr(promptist_infer, "load_pipeline", lambda args, device: OOMPipe(limit=0))
    d = tmp_path / "out"
    with pytest.raises(SystemExit) as exc:
        promptist_infer.main(["--from_json", str(tmp_path / "in.json"), "--generate_images", "--output_dir", str(d)])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and err[-1].startswith("error: CUDA out of memory rendering one pair")
    assert json.loads((d / "pairs.json").read_text())[0]["optimized"] == "a cat, 4k"  # written before rendering


def test_default_image_batch_fits_the_6gb_budget(tiny_sd15):
    """The default render batch, as the script sets the pipeline up, computed on the real SD1.5 fp16 architecture at
    512² (meta device, benchmarks/promptist_bench.py): weights + activations stay within issue 17's 4.5 GB goal."""
    from diffusers import DiffusionPipeline

    sys.path.insert(0, str(REPO / "benchmarks"))
    from promptist_bench import sd15_render_memory

    args = promptist_infer.ScriptArguments()
    pipe = promptist_infer.setup_pipeline(DiffusionPipeline.from_pretrained(tiny_sd15), args, torch.device("cpu"))
    mem = sd15_render_memory(args.image_batch_size, vae_slicing=pipe.vae.use_slicing)
    assert 2.0e9 < mem["weights"] < 2.2e9  # 1.07 G fp16 parameters: UNet 860 M, VAE 84 M, text encoder 123 M
    assert mem["peak"] <= 4.5e9, mem
    assert sd15_render_memory(4, vae_slicing=False)["peak"] > 4.5e9  # the old default (4 pairs, batched decode)


# ---- the Promptist reward through score.py: both sides of the relevance hinge ----
def clip_at_cosine(src: str, dst, target: float) -> str:
    """A copy of the tiny CLIP whose image and text embeddings sit close to two fixed directions at cosine `target`:
    each tower's final LayerNorm gets a small weight (the input still moves the embedding a little) and a bias whose
    projection is that direction."""
    from transformers import CLIPModel, CLIPProcessor

    torch.manual_seed(1)
    model = CLIPModel.from_pretrained(src).eval()
    vis, txt = model.vision_model.post_layernorm, model.text_model.final_layer_norm
    with torch.no_grad():
        vis.weight.mul_(0.03)
        txt.weight.mul_(0.03)
        vis.bias.copy_(torch.randn_like(vis.bias))
        e_img = model.visual_projection.weight @ vis.bias
        other = torch.randn_like(e_img)
        other -= (other @ e_img) / (e_img @ e_img) * e_img
        e_txt = target * e_img + (1 - target**2) ** 0.5 * other * e_img.norm() / other.norm()
        txt.bias.copy_(torch.linalg.pinv(model.text_projection.weight) @ e_txt)
    model.save_pretrained(dst)
    CLIPProcessor.from_pretrained(src).save_pretrained(dst)
    return str(dst)


CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # openai/CLIP


def reference_parts(clip_dir: str, head_path: str, base, opt, text: str) -> tuple[float, float, float]:
    """(aes baseline, aes optimised, cos) re-stated: CLIP image/text embeddings, L2-normalised; the aesthetic MLP as
    five affine maps without activations (LAION improved-aesthetic-predictor, eval mode). Square images only."""
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    head = torch.load(head_path, weights_only=True)

    def image_embedding(img):  # Promptist's `clip_preprocess` (OpenAI CLIP): bicubic resize (square in), CLIP norm
        size = model.config.vision_config.image_size
        x = torch.tensor(list(img.resize((size, size), Image.BICUBIC).getdata()), dtype=torch.float32) / 255
        px = ((x - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)).T.reshape(1, 3, size, size)
        return F.normalize(model.visual_projection(model.vision_model(pixel_values=px).pooler_output), dim=-1)

    def aesthetic(e):
        for i in (0, 2, 4, 6, 7):
            e = e @ head[f"layers.{i}.weight"].T + head[f"layers.{i}.bias"]
        return e.item()

    with torch.no_grad():
        tok = proc.tokenizer([text], padding=True, truncation=True, max_length=77, return_tensors="pt")
        t = F.normalize(model.text_projection(model.text_model(**tok).pooler_output), dim=-1)
        e_base, e_opt = image_embedding(base), image_embedding(opt)
        return aesthetic(e_base), aesthetic(e_opt), (e_opt * t).sum().item()


@pytest.mark.parametrize("target, branch", [(0.6, "above"), (0.12, "between"), (-0.3, "negative")])
def test_promptist_reward_relevance_hinge(target, branch, tiny_scorers, tmp_path, monkeypatch):
    clip_dir = clip_at_cosine(tiny_scorers.paths["clip_model"], tmp_path / "clip", target)
    head = str(tmp_path / "aesthetic-model.pth")  # the tiny head with a steep first layer: visible aesthetic gaps
    state = torch.load(tiny_scorers.paths["aesthetic_head"], weights_only=True)
    torch.save({k: v * 1e4 if k == "layers.0.weight" else v for k, v in state.items()}, head)
    monkeypatch.setenv("SCORE_CLIP_MODEL", clip_dir)
    monkeypatch.setenv("SCORE_AESTHETIC_HEAD", head)
    g = torch.Generator().manual_seed(0)
    noise = [Image.fromarray(torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8).numpy()) for _ in "ab"]
    pairs = [{"original": "a cat in the rain", "optimized": "a cat in the rain, 4k"}]
    promptist_infer.promptist_scores(pairs, [tuple(noise)], torch.device("cpu"))
    aes_b, aes_o, cos = reference_parts(clip_dir, head, *noise, pairs[0]["original"])
    p = pairs[0]
    # the steep head magnifies fp32 rounding (~1e-4 on scores near 9), so the aesthetic parts get a relative tolerance
    assert (p["aesthetic_baseline"], p["aesthetic_optimized"]) == pytest.approx((aes_b, aes_o), rel=1e-4)
    assert p["clip_optimized"] == pytest.approx(cos, abs=1e-5)
    assert abs(aes_o - aes_b) > 1e-3  # the aesthetic term is not trivially zero
    relevance = p["reward"] - (p["aesthetic_optimized"] - p["aesthetic_baseline"])
    if branch == "above":  # cos >= 0.28: relevance costs nothing
        assert cos > 0.28 and relevance == pytest.approx(0.0, abs=1e-6)
    elif branch == "between":  # 0 < cos < 0.28: 20 per unit below 0.28
        assert 0 < cos < 0.28 and relevance == pytest.approx(20 * cos - 5.6, abs=1e-4)
    else:  # cos <= 0 is clamped to 0: the full -5.6
        assert cos < 0 and relevance == pytest.approx(-5.6, abs=1e-6)


# ---- issue 14: CLI routing, help, one-line errors before any weights load ----
def test_prompts_anywhere_and_after_a_bool_flag(tiny_gpt2, recipe, capsys):
    promptist_infer.main(["--load_in_8bit", "a cat in the rain", *llm_args(tiny_gpt2), PROMPTS[1]])
    assert capsys.readouterr().out.splitlines() == [
        recipe(p, max_new_tokens=SHORT) for p in ("a cat in the rain", PROMPTS[1])
    ]


def test_help_groups_own_flags_and_names_prompt(capsys):
    with pytest.raises(SystemExit) as exc:
        promptist_infer.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith("usage: python promptist_infer.py PROMPT [PROMPT ...]")
    heads = [out.index(f"\n{h}:\n") for h in ("models", "prompts and decoding", "images", "other")]
    assert heads == sorted(heads)
    assert heads[0] < out.index("--load_in_4bit") < heads[1] < out.index("--num_beams") < heads[2]
    assert heads[2] < out.index("--image_batch_size") < heads[3]


@pytest.fixture
def no_weights(no_weights, monkeypatch):
    """conftest's guard, and no tokenizer load either."""
    import transformers

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(no_weights))
    return no_weights


BAD_FILES = {
    "empty.txt": b"\n \n",
    "latin1.txt": "caf\xe9".encode("latin-1"),
    "syntax.json": b'[\n  "a cat",\n  "a dog",\n  "a bird" "a fish"\n]',
    "number.json": b'["a cat", 3]',
    "strings.json": b'["a cat, [1]", "say \\"hi, {there\\"", "a dog" "a fish"]',  # , [ { and \" inside strings
    "pairs_syntax.json": b'[{"original": "a", "optimized": "b"}, {"original": "c", "optimized": "d"}, {"original": }]',
    "pairs_key.json": b'[{"original": "a", "optimized": "b"}, {"original": "c"}]',
    "pairs_dict.json": b'{"original": "a", "optimized": "b"}',
    "pairs_ok.json": b'[{"original": "a", "optimized": "b"}]',
    "a_file": b"",
    "bad.yaml": b": : :\n  - [\n",
}
BAD = [  # (argv, message); {t} is a folder holding BAD_FILES
    (["a cat", "--model_name_or_path", "/tmp"], "--model_name_or_path /tmp: not a model folder (no config.json)"),
    (["a cat", "--tokenizer_name_or_path", "/tmp"], "--tokenizer_name_or_path /tmp: not a model folder"),
    (["a cat", "--model_name_or_path", "/no/such/model"], "--model_name_or_path: no such folder /no/such/model"),
    (["a cat", "--generate_images", "--pipeline_name_or_path", "/tmp"], "(no model_index.json)"),
    (["a cat", "--score", "--pipeline_name_or_path", "./no/pipe"], "--pipeline_name_or_path: no such folder"),
    (["a cat", "--batch_size", "0"], "--batch_size must be >= 1, got 0"),
    (["a cat", "--num_beams", "0"], "--num_beams must be >= 1, got 0"),
    (["a cat", "--image_batch_size", "0"], "--image_batch_size must be >= 1, got 0"),
    (["a cat", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    (["a cat", "--generate_images", "--num_inference_steps", "0"], "--num_inference_steps must be >= 1"),
    (["a cat", "--generate_images", "--height", "500"], "multiples of 8, got 500x512"),
    (["a cat", "--batch_size", "abc"], "invalid int value: 'abc'"),
    (["a cat", "--device", "nonsense"], "--device nonsense: not a device"),
    (["a cat", "--device", "cuda"], "--device cuda: no CUDA device"),
    (["a cat", "--device", "mps"], "--device mps: MPS is not available"),
    (["a cat", "--load_in_8bit", "--load_in_4bit"], "choose one of --load_in_8bit and --load_in_4bit"),
    (["a cat", "--num_beam", "4"], "unrecognised arguments: --num_beam"),
    (["a cat", "--config", "/no/such.yaml"], "--config /no/such.yaml: [Errno 2] No such file"),
    (["a cat", "--config", "{t}/bad.yaml"], "--config {t}/bad.yaml: while parsing a block mapping"),
    (["a cat", "--config"], "--config needs a YAML file"),
    (["   "], "empty prompt"),
    ([], "no prompt given"),
    (["--prompt_file", "/no/such/file.txt"], "prompt file not found: /no/such/file.txt"),
    (["--prompt_file", "{t}/empty.txt"], "prompt file is empty"),
    (["--prompt_file", "{t}/latin1.txt"], "latin1.txt: not UTF-8 text (byte 3)"),
    (["--prompt_file", "{t}/syntax.json"], "syntax.json: record 3: Expecting ',' delimiter (line 4, column 12)"),
    (["--prompt_file", "{t}/number.json"], "number.json: record 2: expected a non-empty string, got 3"),
    (["--prompt_file", "{t}/strings.json"], "strings.json: record 3: Expecting ',' delimiter (line 1, column 46)"),
    (["--from_json", "/no/such.json", "--generate_images"], "pairs JSON not found: /no/such.json"),
    (["--from_json", "{t}/pairs_syntax.json", "--generate_images"], "pairs_syntax.json: record 3: Expecting value"),
    (
        ["--from_json", "{t}/pairs_key.json", "--generate_images"],
        'pairs_key.json: record 2: needs non-empty "original"',
    ),
    (["--from_json", "{t}/pairs_dict.json", "--generate_images"], "pairs_dict.json: expected a non-empty JSON list"),
    (["--from_json", "{t}/pairs_ok.json"], "--from_json only renders images: add --generate_images"),
    (["a cat", "--from_json", "{t}/pairs_ok.json", "--generate_images"], "give prompts or --from_json, not both"),
    (["a cat", "--output_json", "{t}/a_file/out.json"], "cannot write {t}/a_file/out.json: a file or folder is in"),
    (["a cat", "--generate_images", "--output_dir", "{t}/a_file"], "cannot write {t}/a_file: a file is in the way"),
    (["a cat", "--score", "--output_dir", "{t}/out"], "SCORE_CLIP_MODEL: no such file or folder /no/clip"),
]


@pytest.mark.parametrize("argv, message", BAD, ids=[" ".join(a)[:60] or "no-args" for a, _ in BAD])
def test_bad_input_is_one_line_error_before_any_weights(argv, message, tmp_path, no_weights, monkeypatch, capsys):
    here = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if argv[-2:-1] == ["--device"] and here.get(argv[-1]):
        pytest.skip("this machine has that device")
    for name, data in BAD_FILES.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setenv("SCORE_CLIP_MODEL", "/no/clip")
    argv, message = [a.format(t=tmp_path) for a in argv], message.format(t=tmp_path)
    with pytest.raises(SystemExit) as exc:
        promptist_infer.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err


def test_bad_input_on_the_real_cli(tiny_gpt2):
    res = run_command(
        ["promptist_infer.py", "--num_beams", "0", "a cat", "--model_name_or_path", tiny_gpt2], check=False
    )
    assert res.returncode == 2 and res.stderr == "error: --num_beams must be >= 1, got 0\n", res.stderr
    assert "Traceback" not in res.stdout + res.stderr


def test_unknown_hub_id(tiny_gpt2, capsys):
    with pytest.raises(SystemExit) as exc:
        promptist_infer.main(
            ["a cat", "--model_name_or_path", "nobody/no-such-model", "--tokenizer_name_or_path", tiny_gpt2]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: could not load a model") and err.count("\n") == 1
