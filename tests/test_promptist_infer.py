# SPDX-License-Identifier: Apache-2.0
"""promptist_infer.py on tiny GPT-2 + tiny SD1.5: the exact recipe, batching, JSON round trip, images, reward, errors."""

import functools
import json

import pytest
import torch
from conftest import run_command
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
    with pytest.raises(ValueError, match="expected a JSON list of strings"):
        promptist_infer.read_prompts(promptist_infer.ScriptArguments(prompt_file=str(tmp_path / "bad.json")), [])


def test_images_grid_and_reward(tiny_gpt2, tiny_sd15, tiny_scorers, tmp_path, monkeypatch):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    d = tmp_path / "out"
    sd = ["--pipeline_name_or_path", tiny_sd15, "--height", "64", "--width", "64", "--num_inference_steps", "2"]
    promptist_infer.main(
        [*PROMPTS[:2], *llm_args(tiny_gpt2), *sd, "--score", "--output_dir", str(d), "--image_batch_size", "1"]
    )
    pairs = json.loads((d / "pairs.json").read_text())
    assert [p["original"] for p in pairs] == PROMPTS[:2]
    for i in range(len(pairs)):
        for kind in ("baseline", "optimized"):
            assert Image.open(d / f"{i:03d}_{kind}.png").size == (64, 64)
    assert Image.open(d / "grid.png").size == (128, 2 * (64 + 92))
    # --score equals the Promptist formula applied to score.py's outputs on the saved images
    base = [Image.open(d / f"{i:03d}_baseline.png").convert("RGB") for i in range(2)]
    opt = [Image.open(d / f"{i:03d}_optimized.png").convert("RGB") for i in range(2)]
    aes, clip = score.load_scorer("aesthetic"), score.load_scorer("clip")
    aes_b, aes_o, cos = aes(base, PROMPTS[:2]), aes(opt, PROMPTS[:2]), clip(opt, PROMPTS[:2])
    for i, p in enumerate(pairs):
        assert p["reward"] == pytest.approx(aes_o[i] - aes_b[i] + min(20 * max(cos[i], 0) - 5.6, 0), abs=1e-5)
        assert p["clip_optimized"] == pytest.approx(cos[i], abs=1e-6)


def test_from_json_renders_without_llm_and_pairs_share_seeds(tiny_sd15, tmp_path):
    pairs = [{"original": "a cat", "optimized": "a cat"}, {"original": "a cat", "optimized": "a dog, 4k"}]
    (tmp_path / "in.json").write_text(json.dumps(pairs))
    d = tmp_path / "out"
    promptist_infer.main([
        "--from_json", str(tmp_path / "in.json"), "--generate_images", "--model_name_or_path", "/no/such/llm",
        "--pipeline_name_or_path", tiny_sd15, "--height", "64", "--width", "64", "--num_inference_steps", "2",
        "--output_dir", str(d),
    ])  # fmt: skip
    px = {
        n: torch.tensor(list(Image.open(d / f"{n}.png").getdata()))
        for n in ("000_baseline", "000_optimized", "001_baseline")
    }
    assert torch.equal(px["000_baseline"], px["000_optimized"])  # same prompt + same seed -> same image
    assert not torch.equal(px["000_baseline"], px["001_baseline"])  # pair 1 uses the next seed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["   "], "empty prompt"),
        ([], "no prompt given"),
        (["--prompt_file", "/no/such/file.txt"], "prompt file not found"),
        (["--prompt_file", "EMPTY"], "prompt file is empty"),
        (["a cat", "--num_beam", "4"], "unrecognised arguments: --num_beam"),
        (["a cat", "--model_name_or_path", "/no/such/model"], "--model_name_or_path: no such folder"),
        (["--from_json", "/no/such.json", "--generate_images"], "pairs JSON not found"),
    ],
)
def test_bad_input_is_one_line_error(argv, message, tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n \n")
    argv = [str(tmp_path / "empty.txt") if a == "EMPTY" else a for a in argv]
    with pytest.raises(SystemExit) as exc:
        promptist_infer.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err == f"error: {err[7:]}" and message in err and err.count("\n") == 1


def test_unknown_hub_id_and_8bit_on_cpu(tiny_gpt2, capsys):
    with pytest.raises(SystemExit) as exc:
        promptist_infer.main(
            ["a cat", "--model_name_or_path", "nobody/no-such-model", "--tokenizer_name_or_path", tiny_gpt2]
        )
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: could not load a model") and err.count("\n") == 1
    promptist_infer.main(["a cat", *llm_args(tiny_gpt2), "--load_in_8bit"])
    assert "need CUDA; ignored on cpu" in capsys.readouterr().err
