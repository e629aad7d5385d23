# SPDX-License-Identifier: Apache-2.0
"""r1_prompter.py: rewards on strings, batched group-seeded rendering, GRPO runs (FLUX via accelerate, SD1.5 in
process) with the loopback judge, inference, evaluation and bad input."""

import ast
import itertools
import json
import shutil

import pytest
import torch
from conftest import run_command
from PIL import Image
from safetensors.torch import load_file

import r1_prompter as r1

GOOD = "<think>two objects,\nred above blue</think>\n<answer>a glossy red cube resting on top of a matte blue sphere</answer>"


def test_format_reward_allows_multiline_and_rejects_the_rest():
    completions = [
        GOOD,
        "<think>x</think><answer>a\nb</answer>  ",
        "<think>x</think>",
        "<answer>y</answer>",
        "<think>x</think><answer>y</answer> trailing words",
        "<think></think><answer>y</answer>",
    ]
    assert r1.format_reward(completions) == [1.0, 1.0, -1.0, -1.0, -1.0, -1.0]
    assert r1.format_reward([[{"role": "assistant", "content": GOOD}]]) == [1.0]  # conversational completions


def test_length_reward_window_is_inclusive():
    reward = r1.get_length_reward(16, 76)
    words = lambda n: f"<think>t</think><answer>{' '.join(['w'] * n)}</answer>"  # noqa: E731
    assert reward([words(15), words(16), words(76), words(77), "no answer", "<answer> </answer>"]) == [
        -1.0,
        1.0,
        1.0,
        -1.0,
        0.0,
        0.0,
    ]
    assert r1.extract_answer("<answer>\n  a  red\ncube </answer>") == "a red cube"


def test_read_prompts_txt_json_jsonl(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  two dogs  \n")
    (tmp_path / "p.json").write_text(json.dumps(["a cat", {"prompt": "two dogs"}]))
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n\n{"prompt": "two dogs", "id": 3}\n')
    for ext in ("txt", "json", "jsonl"):
        assert r1.read_prompts(str(tmp_path / f"p.{ext}")) == ["a cat", "two dogs"]
    assert len(r1.read_prompts(str(r1.Path(__file__).resolve().parents[1] / "recipes" / "r1_prompts.txt"))) == 40


def test_judge_retries_then_none(openai_server, capsys):
    from openai import AsyncOpenAI

    image = Image.new("RGB", (8, 8))

    async def judge(url, retries):
        async with AsyncOpenAI(base_url=url, api_key="test", max_retries=0, timeout=5) as client:
            return await r1.judge_one(client, "j", image, "a cat", retries)

    openai_server.fail_next(1, "malformed")  # bad JSON once, then the default answer: score 7 -> (7 - 5) / 5
    assert r1.asyncio.run(judge(openai_server.base_url, 1)) == pytest.approx(0.4)
    assert len(openai_server.requests) == 2
    assert r1.asyncio.run(judge("http://127.0.0.1:9/v1", 1)) is None  # unreachable: 2 tries, then None + warning
    assert capsys.readouterr().err.count("judge failed after 2 tries: APIConnectionError") == 1


class RecordingPipe:
    """Stands in for a diffusers pipeline: records prompts and seeds, returns a colour per seed."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, generator, **kwargs):
        seeds = [g.initial_seed() for g in generator]
        self.calls.append((list(prompt), seeds))
        return type("Out", (), {"images": [Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in seeds]})()


def test_image_reward_batches_shares_group_seeds_and_falls_back_to_original(tmp_path):
    pipe, metrics = RecordingPipe(), []

    def scorer(images, prompts):
        vals = [float(im.getpixel((0, 0))[0]) for im in images]
        return vals, {"fake": vals}

    args = r1.ScriptArguments(image_batch_size=3, log_images_every=1)
    reward = r1.get_image_reward(pipe, scorer, args, seed=0, num_generations=2, output_dir=str(tmp_path), cache={})
    originals = ["a cat", "a cat", "a dog", "a dog"]
    completions = [GOOD, "no tags at all", GOOD, "<answer>a dog, 4k</answer>"]
    state = type("S", (), {"global_step": 3})()
    out = reward(None, completions, originals, trainer_state=state, log_metric=lambda k, v: metrics.append((k, v)))
    prompts = [p for call in pipe.calls for p in call[0]]
    seeds = [s for call in pipe.calls for s in call[1]]
    assert [len(c[0]) for c in pipe.calls] == [3, 1]  # batched by image_batch_size
    assert prompts == [r1.extract_answer(GOOD), "a cat", r1.extract_answer(GOOD), "a dog, 4k"]  # no answer -> original
    assert seeds[0] == seeds[1] != seeds[2] == seeds[3] == r1.group_seed(0, 3, "a dog")
    assert out == [float(s % 256) for s in seeds]
    assert ("image/no_answer_frac", 0.25) in metrics and ("image/fake", sum(out) / 4) in metrics
    assert Image.open(tmp_path / "grids" / "step000003.png").size[0] == 8


def train_args(pipe, out, extra=()):
    return [
        "--data", str(r1.Path(__file__).resolve().parents[1] / "recipes" / "r1_prompts.txt"), "--sdmodel_name", pipe,
        "--outdir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4",
        "--gradient_accumulation_steps", "1", "--max_completion_length", "12", "--report_to", "none", "--use_cpu", "true",
        "--bf16", "false", "--save_strategy", "no", "--height", "64", "--width", "64", "--num_inference_steps", "2",
        "--image_metrics", "imagereward:1,clip:0.5", "--log_images_every", "1", "--logging_steps", "1", "--learning_rate", "1e-3",
        "--gradient_checkpointing", "false", *extra,
    ]  # fmt: skip


def assert_trained(initial: str, out):
    before = load_file(f"{initial}/model.safetensors")
    after = load_file(f"{out}/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert sorted(p.name for p in (out / "grids").iterdir())[:2] == ["step000000.png", "step000001.png"]


def cycling_judge(server):
    """Judge answers 0, 5, 10, 0, ... so a group's rewards differ (the tiny policy writes no answers: its images, one
    per group seed, are identical, and GRPO would see zero advantage without a judge that varies)."""
    counter = itertools.count()
    server.chat_handler = lambda body: json.dumps({"reasoning": "ok", "score": 5 * (next(counter) % 3)})


def test_grpo_flux_with_judge_via_accelerate(tiny_qwen2, tiny_flux, tiny_scorers, openai_server, tmp_path):
    cycling_judge(openai_server)
    openai_server.fail_next(1, "500")  # one judge call fails (no retries): that sample's judge reward is None, not 0
    out = tmp_path / "run"
    cmd = ["accelerate", "launch", "--cpu", "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "r1_prompter.py", "--gpt_path", tiny_qwen2]  # fmt: skip
    extra = ["--judge_model", "judge", "--judge_base_url", openai_server.base_url, "--judge_retries", "0"]
    res = run_command(cmd + train_args(tiny_flux, out, extra), env={**tiny_scorers.env, "OPENAI_API_KEY": "test"})
    assert_trained(tiny_qwen2, out)
    logs = [ast.literal_eval(line) for line in res.stdout.splitlines() if line.startswith("{'loss'")]
    assert len(logs) == 2 and "rewards/image_reward/mean" in logs[0] and "image/imagereward" in logs[0]
    assert [float(log["judge/failures"]) for log in logs] == [1.0, 0.0]
    judged = [r for r in openai_server.requests if r[1].endswith("/chat/completions")]
    assert len(judged) == 8 and len(openai_server.images_in(judged[0][2])) == 1
    # step 1: the failed sample is skipped, the others score 0, 5, 10 -> -1, 0, 1; step 2: 0, 5, 10, 0 -> mean -0.25
    assert [float(log["rewards/judge_reward/mean"]) for log in logs] == pytest.approx([0.0, -0.25])


def test_grpo_sd15_in_process(tiny_qwen2, tiny_sd15, tiny_scorers, openai_server, monkeypatch, tmp_path):
    for k, v in {**tiny_scorers.env, "OPENAI_API_KEY": "test"}.items():
        monkeypatch.setenv(k, v)
    cycling_judge(openai_server)
    out = tmp_path / "run"
    data = str(r1.Path(__file__).resolve().parents[1] / "recipes" / "r1_prompts.txt")
    smoke = str(r1.Path(__file__).resolve().parents[1] / "recipes" / "r1_prompter_smoke.yaml")
    r1.main(["--config", smoke, "--gpt_path", tiny_qwen2, "--data", data, "--sdmodel_name", tiny_sd15, "--outdir", str(out),
             "--judge_model", "j", "--judge_base_url", openai_server.base_url])  # fmt: skip
    assert_trained(tiny_qwen2, out)


def test_inference_prints_reasoning_then_prompt(tiny_qwen2, tiny_sd15, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    png = tmp_path / "out.png"
    res = run_command(["r1_prompter.py", "a red cube on top of a blue sphere", "--gpt_path", tiny_qwen2, "--max_new_tokens", "8",
                       "--sdmodel_name", tiny_sd15, "--generate_image", str(png), "--height", "64", "--width", "64",
                       "--num_inference_steps", "2"])  # fmt: skip
    tok, model = AutoTokenizer.from_pretrained(tiny_qwen2), AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    ids = tok.apply_chat_template(
        r1.build_messages("a red cube on top of a blue sphere"), add_generation_prompt=True, return_tensors="pt"
    )
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    text = tok.decode(
        model.generate(ids, do_sample=False, max_new_tokens=8)[0, ids.shape[1] :], skip_special_tokens=True
    )
    lines = res.stdout.splitlines()
    assert lines[0] == f"reasoning: {' '.join(text.split())}"
    assert lines[-1] == (r1.extract_answer(text) or "a red cube on top of a blue sphere")
    assert Image.open(png).size == (64, 64)


def test_eval_same_seeds_and_means(tiny_qwen2, tiny_sd15, tiny_scorers, monkeypatch, tmp_path, capsys):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "p.txt").write_text("a cat in the rain\ntwo dogs\n")
    r1.main(["--eval_prompts", str(tmp_path / "p.txt"), "--gpt_path", tiny_qwen2, "--sdmodel_name", tiny_sd15,
             "--outdir", str(tmp_path / "ev"), "--n_images", "2", "--image_metrics", "clip", "--max_new_tokens", "4",
             "--height", "64", "--width", "64", "--num_inference_steps", "2"])  # fmt: skip
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    rec = data["prompts"][0]
    assert rec["seeds"] == [42, 43] and len(rec["original"]["clip"]) == 2
    # the tiny model writes no <answer>: the reprompt falls back to the prompt, and the same seeds give the same scores
    assert rec["reprompt"] == rec["prompt"]
    assert rec["original"]["clip"] == pytest.approx(rec["reprompted"]["clip"], abs=1e-4)
    mean = sum(v for r in data["prompts"] for v in r["original"]["clip"]) / 4
    assert data["means"]["clip"]["original"] == pytest.approx(mean)
    assert Image.open(tmp_path / "ev" / "eval_grid.png").size == (4 * 64, 2 * (64 + 92))
    assert "clip" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["missing", "empty", "judge_key", "not_t2i", "flag"])
def test_bad_input(case, tiny_sd15, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "empty.txt").write_text("\n  \n")
    data, pipe, extra = str(tmp_path / "empty.txt"), tiny_sd15, []
    if case == "missing":
        data = str(tmp_path / "nope.txt")
    elif case in ("judge_key", "not_t2i"):
        data = str(r1.Path(__file__).resolve().parents[1] / "recipes" / "r1_prompts.txt")
        extra = ["--judge_model", "gpt-4o"] if case == "judge_key" else []
    if case == "not_t2i":
        pipe = str(tmp_path / "img2img")
        shutil.copytree(tiny_sd15, pipe)
        index = json.loads((tmp_path / "img2img" / "model_index.json").read_text())
        (tmp_path / "img2img" / "model_index.json").write_text(
            json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"})
        )
    argv = (
        ["a cat", "--gpt_path", "x", "--max_new_token", "3"]
        if case == "flag"
        else ["--gpt_path", "/no/model", "--data", data, "--sdmodel_name", pipe, "--use_cpu", "true", *extra]
    )
    with pytest.raises(SystemExit) as exc:
        r1.main(argv)
    err = capsys.readouterr().err
    expected = {"missing": "data file not found", "empty": "no prompts in", "judge_key": "OPENAI_API_KEY",
                "not_t2i": "is a StableDiffusionImg2ImgPipeline, not a text-to-image pipeline", "flag": "unrecognised arguments: --max_new_token"}  # fmt: skip
    assert exc.value.code == 2 and expected[case] in err and err.count("\n") == 1


def test_long_prompt_warns_once(capsys):
    class Tok:
        model_max_length = 5

        def __call__(self, text):
            return {"input_ids": text.split()}

    pipe = RecordingPipe()
    pipe.tokenizer = Tok()
    r1.render.warned = False
    args = r1.ScriptArguments(image_batch_size=4)
    r1.render(pipe, ["one two three four five six", "short"], [1, 2], args)
    r1.render(pipe, ["one two three four five six seven"], [3], args)
    err = capsys.readouterr().err
    assert (
        err.count("exceeds the text encoder's 5 tokens") == 1 and pipe.calls[0][0][0] == "one two three four five six"
    )
