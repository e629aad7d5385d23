# SPDX-License-Identifier: Apache-2.0
"""r1_prompter.py: rewards on strings (format edge cases), data shapes, batched group-seeded rendering, the encoder
limit, neutral judge failures, ModelConfig flags, the SFT cold start (teacher data -> SFT -> inference -> GRPO where
the image reward alone separates a group), GRPO runs (FLUX via accelerate, SD1.5 in process, 2 gloo processes with
resume), inference, evaluation, --help and bad input."""

import ast
import itertools
import json
import re
import shutil
import zlib

import pytest
import torch
from conftest import REPO, launch, run_command
from PIL import Image
from safetensors.torch import load_file

import r1_prompter as r1

PROMPTS = str(REPO / "recipes" / "r1_prompts.txt")
GOOD = "<think>two objects,\nred above blue</think>\n<answer>a glossy red cube resting on top of a matte blue sphere</answer>"


def loss_logs(stdout: str) -> list[dict]:
    return [ast.literal_eval(line[line.index("{'loss'") :]) for line in stdout.splitlines() if "{'loss'" in line]


########################
# rewards and parsing (issue 16 item 1)
########################
@pytest.mark.parametrize(
    "text, answer",
    [
        (GOOD, "a glossy red cube resting on top of a matte blue sphere"),
        ("  <think>x</think><answer>a\nb</answer>  ", "a b"),  # multi-line bodies, outer whitespace
        ("<think>x</think><answer> </answer>", None),  # whitespace-only answer: was format +1, length 0
        ("<think> </think><answer>y</answer>", None),  # empty reasoning
        ("<think>x</think><answer>a</answer><answer>b</answer>", None),  # two answers: was +1
        ("<think>x</think><think>y</think><answer>z</answer>", None),  # two thoughts
        # a real model's output: answer nested in the reasoning; was +1 and rendered "a black laptop... </think> <answer>A..."
        ("<think>plan <answer>a black laptop on a desk</think> <answer>A coffee mug on a desk</answer>", None),
        ("<think>x</think><answer>a </answer> b</answer>", None),  # closing tag inside the answer
        ("<think>x</think><answer>a <think> b</answer>", None),  # opening tag inside the answer
        ("<think>x</think>", None),
        ("<answer>y</answer>", None),
        ("<think>x</think><answer>y</answer> trailing words", None),
        ("preamble <think>x</think><answer>y</answer>", None),
    ],
)
def test_format_edge_cases_exact_rewards_and_rendered_answer(text, answer, tmp_path):
    assert r1.extract_answer(text) == answer
    assert r1.format_reward([text]) == [1.0 if answer else -1.0]
    assert r1.get_length_reward(1, 76)([text]) == [1.0 if answer else -1.0]  # no valid answer = 0 words
    assert r1.format_reward([[{"role": "assistant", "content": text}]]) == [1.0 if answer else -1.0]
    # the image reward renders exactly the answer the format check accepted, else the original prompt
    pipe = RecordingPipe()
    args = r1.ScriptArguments(image_batch_size=4, log_images_every=0)
    reward = r1.get_image_reward(pipe, lambda im, p: ([0.0], {}), args, 0, 1, str(tmp_path), {})
    reward(None, [text], ["the original"])
    assert pipe.calls[0][0] == [answer or "the original"]


def test_length_reward_window_is_inclusive():
    reward = r1.get_length_reward(16, 76)
    words = lambda n: f"<think>t</think><answer>{' '.join(['w'] * n)}</answer>"  # noqa: E731
    assert reward([words(15), words(16), words(76), words(77), "no answer"]) == [-1.0, 1.0, 1.0, -1.0, -1.0]
    assert r1.extract_answer("<think>t</think><answer>\n  a  red\ncube </answer>") == "a red cube"


########################
# data (issue 16 item 4, issue 14)
########################
def test_read_prompts_shapes(tmp_path):
    (tmp_path / "p.txt").write_text("a cat\n\n  two dogs  \n")
    (tmp_path / "p.json").write_text(json.dumps(["a cat", {"prompt": "two dogs"}]))
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n\n{"prompt": "two dogs", "id": 3}\n')
    (tmp_path / "obj.json").write_text(json.dumps({"prompt": ["a cat", "two dogs"]}))  # was the one prompt "prompt"
    for name in ("p.txt", "p.json", "p.jsonl", "obj.json"):
        assert r1.read_prompts(str(tmp_path / name)) == ["a cat", "two dogs"]
    assert len(r1.read_prompts(PROMPTS)) == 40


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("bad.json", json.dumps(["a cat", 3]), "bad.json: record 2: expected a string prompt"),  # was AttributeError
        ("bad.json", json.dumps({"prompts": ["a"]}), 'expected a JSON list of records or {"prompt": [...]}'),
        ("bad.jsonl", '{"prompt": "a"}\n{"prompt": ["b"]}\n', "bad.jsonl: record 2: expected a string prompt"),
        ("bad.jsonl", '{"prompt": "a"}\n\n{"prompt": \n', "bad.jsonl: record 3: invalid JSON"),
        ("bad.json", '[\n "a",\n ]', "bad.json: record 2 (line 3 column 2): invalid JSON"),
        ("bad.json", '{"prompt": ["a, [b", "c\\", {d", "e" "f"]}', "bad.json: record 3 (line 1 column 37): invalid"),
    ],
)
def test_read_prompts_refuses_in_one_line(name, content, message, tmp_path):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        r1.read_prompts(str(tmp_path / name))


########################
# rendering (issue 16 items 5, 6, 7)
########################
class RecordingPipe:
    """Stands in for a diffusers pipeline: records prompts and seeds, returns a colour per seed."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompt, generator, **kwargs):
        seeds = [g.initial_seed() for g in generator]
        self.calls.append((list(prompt), seeds))
        return type("Out", (), {"images": [Image.new("RGB", (8, 8), (s % 256, 0, 0)) for s in seeds]})()


def test_image_reward_batches_shares_group_seeds_traces_and_grid(tmp_path):
    pipe, metrics = RecordingPipe(), []

    def scorer(images, prompts):
        vals = [float(im.getpixel((0, 0))[0]) for im in images]
        return vals, {"fake": vals}

    args = r1.ScriptArguments(image_batch_size=3, log_images_every=1)
    reward = r1.get_image_reward(pipe, scorer, args, seed=0, num_generations=2, output_dir=str(tmp_path), cache={})
    originals = ["a cat", "a cat", "a dog", "a dog"]
    completions = [GOOD, "no tags at all", GOOD, "<think>t</think><answer>a dog, 4k</answer>"]
    state = type("S", (), {"global_step": 3})()
    out = reward(None, completions, originals, trainer_state=state, log_metric=lambda k, v: metrics.append((k, v)))
    prompts = [p for call in pipe.calls for p in call[0]]
    seeds = [s for call in pipe.calls for s in call[1]]
    assert [len(c[0]) for c in pipe.calls] == [3, 1]  # batched by image_batch_size
    assert prompts == [r1.extract_answer(GOOD), "a cat", r1.extract_answer(GOOD), "a dog, 4k"]  # no answer -> original
    assert seeds[0] == seeds[1] != seeds[2] == seeds[3] == zlib.crc32(b"0|3|a dog")
    assert out == [float(s % 256) for s in seeds]
    assert ("image/no_answer_frac", 0.25) in metrics and ("image/fake", sum(out) / 4) in metrics
    assert Image.open(tmp_path / "grids" / "step000003.png").size[0] == 8
    rows = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert [(r["rank"], r["seed"], r["prompt"], r["image_reward"]) for r in rows] == list(
        zip([0] * 4, seeds, originals, out, strict=True)
    )


def test_long_prompt_warning_uses_the_encoder_that_truncates(tiny_sd15, tiny_flux, capsys):
    from diffusers import DiffusionPipeline

    sd, flux = DiffusionPipeline.from_pretrained(tiny_sd15), DiffusionPipeline.from_pretrained(tiny_flux)
    assert type(r1.text_limit(sd)[0]).__name__.startswith("CLIP") and r1.text_limit(sd)[1] == 77
    assert type(r1.text_limit(flux)[0]).__name__.startswith("T5") and r1.text_limit(flux)[1] == 512  # FLUX reads 512
    long = " ".join(["a red cube on top of a blue sphere"] * 12)  # 96 words: > 77 CLIP tokens, < 512 T5 tokens
    assert len(sd.tokenizer(long)["input_ids"]) > 77 and len(flux.tokenizer_2(long)["input_ids"]) < 512
    args = r1.ScriptArguments(image_batch_size=2, height=64, width=64, num_inference_steps=1)
    for pipe, warns in ((flux, False), (sd, True)):
        r1.render.warned = False
        r1.render(pipe, [long, "short"], [1, 2], args)
        assert capsys.readouterr().err.count("exceeds the text encoder's 77 tokens") == int(warns)
    r1.render.warned = False


def test_long_prompt_warns_once_on_the_main_process(capsys, monkeypatch):
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
    r1.render.warned = False
    monkeypatch.setenv("RANK", "1")  # under a launcher only rank 0 prints
    r1.render(pipe, ["one two three four five six"], [1], args)
    assert capsys.readouterr().err == ""
    r1.render.warned = False


def test_diffusers_lower_bound_accepts_dtype():
    """`DiffusionPipeline.from_pretrained(..., dtype=)` exists from diffusers 0.40.0 (huggingface/diffusers#14162,
    first tag v0.40.0); older releases drop the unknown kwarg and load fp32."""
    req = re.search(r"^diffusers>=([\d.]+)", (REPO / "requirements.txt").read_text(), re.M)
    header = re.search(r'"diffusers>=([\d.]+)"', (REPO / "r1_prompter.py").read_text())
    for bound in (req.group(1), header.group(1)):
        assert tuple(map(int, bound.split("."))) >= (0, 40)


########################
# judge (issue 16 item 2)
########################
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


def trl_advantages(total: torch.Tensor, g: int) -> torch.Tensor:
    """TRL's default (sum_then_normalize, scale_rewards="group"): (r - group mean) / (group std, unbiased, + 1e-4)."""
    grouped = total.view(-1, g)
    return ((grouped - grouped.mean(1, keepdim=True)) / (grouped.std(1, keepdim=True) + 1e-4)).flatten()


def capture_trainers(monkeypatch) -> list:
    import trl

    trainers, original = [], trl.GRPOTrainer.train

    def train(self, *args, **kwargs):
        trainers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(trl.GRPOTrainer, "train", train)
    return trainers


def assert_trained(initial: str, out):
    before, after = load_file(f"{initial}/model.safetensors"), load_file(f"{out}/model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_grpo_sd15_in_process_failed_judge_is_neutral(
    tiny_qwen2, tiny_sd15, tiny_scorers, openai_server, monkeypatch, tmp_path, capsys
):
    for k, v in {**tiny_scorers.env, "OPENAI_API_KEY": "test"}.items():
        monkeypatch.setenv(k, v)
    counter = itertools.count()

    def judge(body):  # step 2's four calls: 0, bad JSON (fails: no retries), 10, 3
        k = next(counter)
        return "not json {" if k == 5 else json.dumps({"reasoning": "ok", "score": [0, 5, 10, 3][k % 4]})

    openai_server.chat_handler = judge
    trainers, out = capture_trainers(monkeypatch), tmp_path / "run"
    smoke = str(REPO / "recipes" / "r1_prompter_smoke.yaml")
    r1.main(["--config", smoke, "--gpt_path", tiny_qwen2, "--data", PROMPTS, "--sdmodel_name", tiny_sd15, "--outdir", str(out),
             "--judge_model", "j", "--judge_base_url", openai_server.base_url, "--judge_retries", "0"])  # fmt: skip
    assert_trained(tiny_qwen2, out)
    assert sorted(p.name for p in (out / "grids").iterdir()) == ["step000000.png", "step000001.png"]
    assert [float(log["judge/failures"]) for log in loss_logs(capsys.readouterr().out)] == [0.0, 1.0]
    logs = trainers[0]._logs  # the last generation batch (step 2): one group of 4
    raw = list(logs["extra"]["judge_raw"])
    assert sorted(raw, key=str) == sorted([-1.0, None, 1.0, -0.4], key=str)
    ok = [s for s in raw if s is not None]
    filled = torch.tensor([s if s is not None else sum(ok) / len(ok) for s in raw])  # the group-mean judge score
    assert torch.allclose(torch.tensor(list(logs["rewards"]["judge_reward"])), filled)
    parts = [torch.tensor(list(logs["rewards"][f])) for f in ("format_reward", "length_reward", "image_reward")]
    total = parts[0] + parts[1] + parts[2] + 0.5 * filled  # reward weights 1, 1, 1, 0.5
    expected = trl_advantages(total, 4)
    assert torch.allclose(torch.tensor(list(logs["advantages"])), expected, atol=1e-5)
    # the same group with None -> 0 (the old behaviour) would move every advantage
    assert not torch.allclose(
        trl_advantages(total - 0.5 * filled * torch.tensor([s is None for s in raw]), 4), expected
    )


########################
# ModelConfig flags (issue 16 item 3)
########################
class Stop(Exception):
    pass


@pytest.mark.parametrize(
    "stage, flags, expected",
    [
        ("grpo", ["--attn_implementation", "eager", "--model_revision", "v1.0", "--trust_remote_code", "true",
                  "--load_in_4bit", "true", "--use_peft", "true", "--dtype", "bfloat16"],
         dict(attn_implementation="eager", revision="v1.0", trust_remote_code=True, dtype=torch.bfloat16, quant="4bit")),
        ("sft", ["--load_in_8bit", "true", "--use_peft", "true", "--attn_implementation", "sdpa", "--bf16", "true",
                 "--warmup_steps", "0"],  # a quantized, frozen base in bf16 with bf16 training (was fp32)
         dict(attn_implementation="sdpa", revision="main", trust_remote_code=False, dtype=torch.bfloat16, quant="8bit")),
    ],
)  # fmt: skip
def test_model_flags_reach_from_pretrained(
    stage, flags, expected, tiny_qwen2, tiny_sd15, tiny_scorers, monkeypatch, tmp_path
):
    from transformers import PreTrainedModel

    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    calls, original = [], PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, path, *args, **kwargs):
        if str(path) == tiny_qwen2:
            calls.append(kwargs)
            raise Stop
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))
    data = tmp_path / "sft.jsonl"
    data.write_text(
        json.dumps({"prompt": "a cat", "completion": f"<think>t</think><answer>{'w ' * 20}</answer>"}) + "\n"
    )
    argv = ["--stage", stage, "--gpt_path", tiny_qwen2, "--outdir", str(tmp_path / "o"), "--report_to", "none", *flags]
    argv += (
        ["--data", str(data)]
        if stage == "sft"
        else ["--data", PROMPTS, "--sdmodel_name", tiny_sd15, "--image_metrics", "clip"]
    )
    with pytest.raises(Stop):
        r1.main(argv)
    kw = calls[0]
    quant = kw.pop("quantization_config")
    assert (quant.load_in_4bit, quant.load_in_8bit) == (expected["quant"] == "4bit", expected["quant"] == "8bit")
    assert {k: kw[k] for k in ("attn_implementation", "revision", "trust_remote_code", "dtype")} == {
        k: v for k, v in expected.items() if k != "quant"
    }


def test_policy_dtype_bf16_only_where_no_trained_weight_is_bf16():
    """bf16 weights under DeepSpeed (fp32 master copy) or for a quantized frozen base (QLoRA: bnb compute dtype bf16,
    was fp32); fp32 otherwise."""
    from trl import ModelConfig

    cases = [("DEEPSPEED", True, False, "bfloat16"), ("MULTI_GPU", True, False, "float32"),
             ("DEEPSPEED", False, False, "float32"), ("MULTI_GPU", True, True, "bfloat16"), ("NO", False, True, "float32")]  # fmt: skip
    for kind, bf16, four_bit, dtype in cases:
        ta = type("TA", (), dict(bf16=bf16, trust_remote_code=False, model_init_kwargs=None,
                                 distributed_state=type("S", (), {"distributed_type": kind})()))()  # fmt: skip
        kwargs = r1.model_init_kwargs(ModelConfig(dtype=None, load_in_4bit=four_bit, use_peft=four_bit), ta)
        assert kwargs["dtype"] == dtype
        if four_bit:
            assert kwargs["quantization_config"].bnb_4bit_compute_dtype == getattr(torch, dtype)


@pytest.mark.parametrize(
    "argv", [["--stage", "sft"], ["--config", "recipes/r1_sft.yaml"], ["--config", "recipes/r1_prompter.yaml"], []]
)
def test_stage_defaults_and_recipes_are_upstream(argv, monkeypatch):
    """RePrompt qwen25-3b-full-sft.yaml (full SFT) and train_reprompt.py + vendored trl 0.16 (GRPO), both stage defaults
    and recipes; the stage of a recipe comes from the yaml."""
    seen = []
    monkeypatch.setattr(r1, "train", lambda s, t, m: seen.append((s, t, m)))
    monkeypatch.chdir(REPO)
    r1.main(argv)
    script, ta, model = seen[0]
    sft = "sft" in " ".join(argv)
    assert type(ta).__name__ == ("SFTConfig" if sft else "GRPOConfig") and script.stage == ("sft" if sft else "grpo")
    assert not model.use_peft and ta.use_cpu  # full fine-tuning; no CUDA here: the CPU, picked by the script
    if sft:
        expected = dict(learning_rate=1e-5, num_train_epochs=1, lr_scheduler_type="cosine", warmup_steps=0.1,
                        max_length=1024, per_device_train_batch_size=4, gradient_accumulation_steps=4)  # fmt: skip
    else:
        expected = dict(num_generations=4, learning_rate=2e-6, gradient_accumulation_steps=2, num_train_epochs=3,
                        temperature=0.9, max_completion_length=256, beta=0.04)  # fmt: skip
    assert {k: getattr(ta, k) for k in expected} == expected


########################
# SFT cold start (issue 16 item 8): teacher data -> SFT -> greedy inference -> GRPO
########################
CUBE = "a red cube on top of a blue sphere"
TEACHER = ("<think>the request names one cube and one sphere ; keep both</think>\n<answer>a {} cube on top of a blue sphere , "
           "two dogs and three birds on a green bench , cinematic lighting , highly detailed , sharp focus</answer>")  # fmt: skip


def completion_nll(model_dir: str, records: list[dict]) -> float:
    """Mean NLL of the completion tokens (+ <|im_end|>) after the chat prompt, computed here from the chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir)
    losses = []
    for r in records:
        msgs = [{"role": "system", "content": r1.SYSTEM_PROMPT}, {"role": "user", "content": r["prompt"]}]
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(msgs + [{"role": "assistant", "content": r["completion"]}], tokenize=False)
        assert full.startswith(prompt) and full[len(prompt) :].startswith(r["completion"] + "<|im_end|>")
        p_ids, ids = tok(prompt)["input_ids"], tok(full, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, len(p_ids) - 1 : -1]
        losses.append(torch.nn.functional.cross_entropy(logits, ids[0, len(p_ids) :]).item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def sft_chain(tiny_qwen2, _openai_server_session, tmp_path_factory):
    """--make_sft_data against the loopback teacher (4 prompts x 3 samples = 12 calls: 1 fails, 1 malformed, 1 too
    short, 9 kept, three colours), then --stage sft on what was kept (in process; tiny, so lr 5e-3 for 80 epochs of one
    step instead of 1e-5 x 1 epoch)."""
    server, tmp = _openai_server_session, tmp_path_factory.mktemp("sft_chain")
    server.reset()
    counter = itertools.count()

    def teacher(body):
        k = next(counter)
        if k == 3:
            return "<think>plan <answer>a cube</think><answer>a red cube, two dogs</answer>"
        return (
            "<think>short</think><answer>a cube</answer>"
            if k == 7
            else TEACHER.format(["red", "purple", "yellow"][k % 3])
        )

    server.chat_handler = teacher
    server.fail_next(1, "500")
    (tmp / "prompts.txt").write_text(f"{CUBE}\n" * 4)
    env = {"OPENAI_API_KEY": "test"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            r1.main(["--make_sft_data", str(tmp / "sft.jsonl"), "--data", str(tmp / "prompts.txt"), "--teacher_model", "t",
                     "--teacher_base_url", server.base_url, "--judge_retries", "0", "--teacher_samples", "3"])  # fmt: skip
        requests = list(server.requests)
        server.reset()
        import trl

        trainers, original = [], trl.SFTTrainer.train
        mp.setattr(trl.SFTTrainer, "train", lambda self, **kw: trainers.append(self) or original(self, **kw))
        with contextlib.redirect_stdout(out):
            r1.main(["--stage", "sft", "--gpt_path", tiny_qwen2, "--data", str(tmp / "sft.jsonl"), "--outdir", str(tmp / "sft"),
                     "--num_train_epochs", "80", "--learning_rate", "5e-3", "--lr_scheduler_type", "constant", "--warmup_steps",
                     "0", "--per_device_train_batch_size", "9", "--gradient_accumulation_steps", "1", "--report_to", "none",
                     "--save_strategy", "no", "--gradient_checkpointing", "false"])  # fmt: skip
    row = trainers[0].train_dataset[0]
    tok = trainers[0].processing_class
    trained = tok.decode([label for label in row["labels"] if label != -100])  # the tokens the loss sees
    return dict(dir=tmp, report=out.getvalue(), requests=requests, model=str(tmp / "sft"), trained=trained,
                completion_only=trainers[0].args.completion_only_loss, max_steps=trainers[0].state.max_steps)  # fmt: skip


def test_sft_chain_data_loss_inference(sft_chain, tiny_qwen2, capsys):
    report = sft_chain["report"]
    assert (
        f"kept 9 of 12 (1 calls failed, 1 malformed, 1 outside 16-76 words) -> {sft_chain['dir'] / 'sft.jsonl'}"
        in report
    )
    # the step count the script checks before loading is the Trainer's: 9 records in one batch x 80 epochs
    assert sft_chain["max_steps"] == 80 and "on 1 process(es), 80 steps" in report
    teacher_msgs = sft_chain["requests"][0][2]["messages"]
    assert teacher_msgs[0]["content"].startswith(r1.SYSTEM_PROMPT) and teacher_msgs[1] == {
        "role": "user",
        "content": CUBE,
    }
    records = [json.loads(line) for line in (sft_chain["dir"] / "sft.jsonl").read_text().splitlines()]
    assert len(records) == 9 and r1.format_reward([r["completion"] for r in records]) == [1.0] * 9
    assert {r["completion"] for r in records} == {TEACHER.format(c) for c in ("red", "purple", "yellow")}
    # the loss covers exactly the completion and the end-of-turn token after the training chat prompt
    assert (
        sft_chain["completion_only"] is not False and sft_chain["trained"] == records[0]["completion"] + "<|im_end|>\n"
    )
    before, after = completion_nll(tiny_qwen2, records), completion_nll(sft_chain["model"], records)
    assert after < 0.1 < 5 < before  # ~log(vocab) before; only the colour (log 3 over ~60 tokens) remains after
    r1.main([CUBE, "--gpt_path", sft_chain["model"], "--max_new_tokens", "120"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == "reasoning: the request names one cube and one sphere ; keep both"
    assert lines[-1] in {r1.extract_answer(TEACHER.format(c)) for c in ("red", "purple", "yellow")}


def test_make_sft_data_keeps_each_record_as_it_arrives(openai_server, monkeypatch, tmp_path):
    """Ctrl-C after the 4th teacher reply: the 3 records kept before it are on disk (were written only at the end)."""
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    openai_server.chat_handler = lambda body: TEACHER.format("red")
    real, replies = r1.ask, itertools.count(1)

    async def ask(*args, **kwargs):
        reply = await real(*args, **kwargs)
        if next(replies) == 4:
            raise KeyboardInterrupt
        return reply

    monkeypatch.setattr(r1, "ask", ask)
    (tmp_path / "p.txt").write_text(f"{CUBE}\ntwo dogs\n")
    with pytest.raises(KeyboardInterrupt):
        r1.main(["--make_sft_data", str(tmp_path / "sft.jsonl"), "--data", str(tmp_path / "p.txt"), "--teacher_model", "t",
                 "--teacher_base_url", openai_server.base_url, "--teacher_samples", "4"])  # fmt: skip
    records = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert len(records) == 3 and {r["completion"] for r in records} == {TEACHER.format("red")}


def test_optimizer_steps_as_the_trainer_counts():
    """By hand, from transformers' Trainer.set_initial_training_values and TRL's RepeatSampler: SFT recipe on 8 GPUs
    (4 x 4 per GPU = 128 records per step, warmup 0.1), GRPO recipe (8 x 8 x 2 = 128 completions = 32 prompts)."""
    from types import SimpleNamespace

    sft = SimpleNamespace(per_device_train_batch_size=4, world_size=8, gradient_accumulation_steps=4, max_steps=-1,
                          num_train_epochs=1)  # fmt: skip
    grpo = SimpleNamespace(generation_batch_size=128, num_generations=4, steps_per_generation=2, num_iterations=1,
                           gradient_accumulation_steps=2, max_steps=-1, num_train_epochs=3)  # fmt: skip
    # 8,864 records: ceil(8864 / 32) = 277 batches, ceil(277 / 4) = 70 steps; 40 records: 2 batches, 1 step
    assert [r1.optimizer_steps(n, sft, True) for n in (8864, 320, 40)] == [70, 3, 1]
    # 1,108 prompts: 34 whole batches of 32 -> 102 steps in 3 epochs; the 40-prompt demo set: 3; fewer than 32: none
    assert [r1.optimizer_steps(n, grpo, False) for n in (1108, 40, 31)] == [102, 3, 0]
    grpo.max_steps = 5
    assert [r1.optimizer_steps(n, grpo, False) for n in (40, 31)] == [5, 0]


def test_grpo_image_reward_alone_separates_a_group(sft_chain, tiny_sd15, tiny_scorers, monkeypatch, tmp_path):
    """From the SFT model, completions differ only in the colour they write: format and length are equal in a group,
    so the tiny SD1.5 + tiny CLIP image reward (a score that depends on the rendered prompt) alone sets the advantages."""
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "p.txt").write_text(f"{CUBE}\n{CUBE}\n")  # two groups per step
    trainers = capture_trainers(monkeypatch)
    r1.main(["--gpt_path", sft_chain["model"], "--data", str(tmp_path / "p.txt"), "--sdmodel_name", tiny_sd15, "--outdir",
             str(tmp_path / "run"), "--max_steps", "1", "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "1",
             "--max_completion_length", "128", "--height", "64", "--width", "64", "--num_inference_steps", "2",
             "--image_metrics", "clip", "--log_images_every", "0", "--report_to", "none", "--save_strategy", "no",
             "--gradient_checkpointing", "false"])  # fmt: skip
    logs = trainers[0]._logs
    fmt, length, image = (
        torch.tensor(list(logs["rewards"][f])) for f in ("format_reward", "length_reward", "image_reward")
    )
    adv = torch.tensor(list(logs["advantages"]))
    assert torch.allclose(adv, trl_advantages(fmt + length + image, 4), atol=1e-5)
    groups = [slice(4 * g, 4 * g + 4) for g in range(2)]
    separated = [s for s in groups if fmt[s].unique().numel() == length[s].unique().numel() == 1]
    assert any(image[s].max() - image[s].min() > 1e-5 for s in separated)  # the image reward alone sets them


########################
# GRPO runs (issue 14 CPU smoke without device flags; issue 15 two processes)
########################
def train_args(pipe, out, extra=()):
    return [
        "--data", PROMPTS, "--sdmodel_name", pipe, "--outdir", str(out), "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--num_generations", "4", "--gradient_accumulation_steps", "1",
        "--max_completion_length", "12", "--report_to", "none", "--save_strategy", "no", "--height", "64", "--width", "64",
        "--num_inference_steps", "2", "--image_metrics", "imagereward:1,clip:0.5", "--log_images_every", "1",
        "--logging_steps", "1", "--learning_rate", "1e-3", "--gradient_checkpointing", "false", *extra,
    ]  # fmt: skip


def cycling_judge(server):
    """Judge answers 0, 5, 10, 0, ... so a group's rewards differ (the tiny policy writes no answers: its images, one
    per group seed, are identical, and GRPO would see zero advantage without a judge that varies)."""
    counter = itertools.count()
    server.chat_handler = lambda body: json.dumps({"reasoning": "ok", "score": 5 * (next(counter) % 3)})


def test_grpo_flux_cpu_smoke_no_device_flags(tiny_qwen2, tiny_flux, tiny_scorers, openai_server, tmp_path):
    cycling_judge(openai_server)
    openai_server.fail_next(1, "500")  # one judge call fails (no retries): it takes its group's mean
    out = tmp_path / "run"
    extra = ["--judge_model", "judge", "--judge_base_url", openai_server.base_url, "--judge_retries", "0"]
    cmd = launch("r1_prompter.py", "--gpt_path", tiny_qwen2, *train_args(tiny_flux, out, extra))
    res = run_command(cmd, env={**tiny_scorers.env, "OPENAI_API_KEY": "test"})
    assert "note: no CUDA device: training on the CPU in fp32 (use_cpu=True, bf16=False)" in res.stderr
    assert_trained(tiny_qwen2, out)
    logs = loss_logs(res.stdout)
    assert len(logs) == 2 and "rewards/image_reward/mean" in logs[0] and "image/imagereward" in logs[0]
    assert [float(log["judge/failures"]) for log in logs] == [1.0, 0.0]
    judged = [r for r in openai_server.requests if r[1].endswith("/chat/completions")]
    assert len(judged) == 8 and len(openai_server.images_in(judged[0][2])) == 1
    # step 1: the others score 0, 5, 10 -> -1, 0, 1 and the failed one their mean 0; step 2: 0, 5, 10, 0 -> -0.25
    assert [float(log["rewards/judge_reward/mean"]) for log in logs] == pytest.approx([0.0, -0.25])


def test_two_processes_and_resume(tiny_qwen2, tiny_sd15, tiny_scorers, openai_server, tmp_path):
    """2 gloo ranks x 2 completions: one group of 4 spans both ranks at every step. A constant learning rate: a linear
    schedule ends at 0 after step 2, and the resumed step 3 would run at the checkpoint's lr 0 and change nothing."""
    cycling_judge(openai_server)
    openai_server.fail_next(2, "500")  # two of step 1's four judge calls fail, whichever rank sent them
    out, env = tmp_path / "run", {**tiny_scorers.env, "OPENAI_API_KEY": "test"}
    args = ["--gpt_path", tiny_qwen2, *train_args(tiny_sd15, out), "--per_device_train_batch_size", "2", "--image_metrics",
            "clip", "--judge_model", "j", "--judge_base_url", openai_server.base_url, "--judge_retries", "0",
            "--save_strategy", "steps", "--save_steps", "2", "--lr_scheduler_type", "constant"]  # fmt: skip
    res = run_command(launch("r1_prompter.py", *args, num_processes=2), env=env)
    assert "2 process(es)" in res.stdout and res.stderr.count("note: no CUDA device") == 1
    logs = loss_logs(res.stdout)
    assert [float(log["judge/failures"]) for log in logs] == [2.0, 0.0]  # a count over both ranks, not a mean
    rows = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert [(r["step"], r["rank"]) for r in rows] == [(0, 0), (0, 0), (0, 1), (0, 1), (1, 0), (1, 0), (1, 1), (1, 1)]
    for step, log in enumerate(logs):
        group = [r for r in rows if r["step"] == step]
        assert len({r["prompt"] for r in group}) == 1  # one group, rendered half by each rank ...
        assert {r["seed"] for r in group} == {zlib.crc32(f"42|{step}|{group[0]['prompt']}".encode())}  # ... same seed
        # TRL's logged reward mean is over both ranks' rows
        assert float(log["rewards/image_reward/mean"]) == pytest.approx(
            sum(r["image_reward"] for r in group) / 4, abs=1e-4
        )
    grid = Image.open(out / "grids" / "step000001.png")  # both ranks' images in the main process's grid
    assert grid.size == (64, 4 * (64 + 92))
    assert [p.name for p in out.iterdir() if p.name.startswith("checkpoint")] == ["checkpoint-2"]
    # resume with 2 processes: step 3 only, then the final model
    res = run_command(launch("r1_prompter.py", *args, "--max_steps", "3", "--resume_from_checkpoint", str(out / "checkpoint-2"), num_processes=2), env=env)  # fmt: skip
    rows = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0] * 4 + [1] * 4 + [2] * 4 and len(loss_logs(res.stdout)) == 1
    assert_trained(str(out / "checkpoint-2"), out)  # step 3 moved the weights the first run saved


########################
# inference and evaluation
########################
def test_inference_prompts_anywhere_each_rendered(tiny_qwen2, tiny_sd15, tmp_path):
    from diffusers import DiffusionPipeline
    from transformers import AutoModelForCausalLM, AutoTokenizer

    png, prompts = tmp_path / "out.png", ["a red cube on top of a blue sphere", "two dogs"]
    # a bare bool flag before a prompt does not swallow it
    res = run_command(["r1_prompter.py", "--gpt_path", tiny_qwen2, prompts[0], "--max_new_tokens", "8", "--sdmodel_name",
                       tiny_sd15, "--pipeline_cpu_offload", prompts[1], "--generate_image", str(png), "--height", "64",
                       "--width", "64", "--num_inference_steps", "2"])  # fmt: skip
    tok, model = AutoTokenizer.from_pretrained(tiny_qwen2), AutoModelForCausalLM.from_pretrained(tiny_qwen2)
    ids = tok.apply_chat_template(r1.build_messages(prompts[0]), add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    text = tok.decode(
        model.generate(ids, do_sample=False, max_new_tokens=8)[0, ids.shape[1] :], skip_special_tokens=True
    )
    lines = res.stdout.splitlines()
    assert lines[0] == f"reasoning: {' '.join(text.split())}"
    assert lines[-2:] == prompts  # the tiny model writes no answer: each prompt is kept
    pipe = DiffusionPipeline.from_pretrained(tiny_sd15)  # every prompt rendered with image_seed, in one batched call
    gens = [torch.Generator().manual_seed(42) for _ in prompts]
    refs = pipe(prompts, generator=gens, height=64, width=64, num_inference_steps=2, guidance_scale=3.5).images
    for i, ref in enumerate(refs):
        got = Image.open(tmp_path / f"out_{i}.png")
        assert got.size == (64, 64) and list(got.getdata()) == list(ref.getdata())


def test_eval_json_is_written_after_every_prompt(tiny_qwen2, tiny_sd15, tiny_scorers, monkeypatch, tmp_path):
    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    import score

    calls = itertools.count(1)

    class Scorer(score.MultiScorer):
        def __call__(self, *args):
            if next(calls) == 2:
                raise KeyboardInterrupt
            return super().__call__(*args)

    monkeypatch.setattr(score, "MultiScorer", Scorer)
    (tmp_path / "p.txt").write_text("a cat in the rain\ntwo dogs\n")
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the second prompt is scored
        r1.main(["--eval_prompts", str(tmp_path / "p.txt"), "--gpt_path", tiny_qwen2, "--sdmodel_name", tiny_sd15,
                 "--outdir", str(tmp_path / "ev"), "--n_images", "1", "--image_metrics", "clip", "--height", "64",
                 "--width", "64", "--num_inference_steps", "2", "--max_new_tokens", "2"])  # fmt: skip
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert [r["prompt"] for r in data["prompts"]] == ["a cat in the rain"]
    assert data["means"]["clip"]["original"] == pytest.approx(data["prompts"][0]["original"]["clip"][0])


def test_eval_renders_the_reprompt(tiny_qwen2, tiny_sd15, tiny_scorers, monkeypatch, tmp_path, capsys):
    import score

    for k, v in tiny_scorers.env.items():
        monkeypatch.setenv(k, v)
    answer = "a small white boat left of a tall black tower"
    monkeypatch.setattr(r1, "reprompt", lambda m, t, ps, n: [f"<think>t</think><answer>{answer}</answer>"] * len(ps))
    (tmp_path / "p.txt").write_text("a cat in the rain\ntwo dogs\n")
    r1.main(["--eval_prompts", str(tmp_path / "p.txt"), "--gpt_path", tiny_qwen2, "--sdmodel_name", tiny_sd15,
             "--outdir", str(tmp_path / "ev"), "--n_images", "2", "--image_metrics", "clip",
             "--height", "64", "--width", "64", "--num_inference_steps", "2"])  # fmt: skip
    data = json.loads((tmp_path / "ev" / "eval.json").read_text())
    from diffusers import DiffusionPipeline

    pipe, scorer = DiffusionPipeline.from_pretrained(tiny_sd15), score.load_scorer("clip")
    for rec in data["prompts"]:  # one plain pipeline call per prompt, as the script batches them, same seeds
        assert rec["reprompt"] == answer and rec["seeds"] == [42, 43]
        gens = [torch.Generator().manual_seed(s) for s in (42, 43, 42, 43)]
        images = pipe([rec["prompt"]] * 2 + [answer] * 2, generator=gens, height=64, width=64, num_inference_steps=2,
                      guidance_scale=3.5).images  # fmt: skip
        assert rec["original"]["clip"] == pytest.approx(scorer(images[:2], [rec["prompt"]] * 2), abs=1e-5)
        assert rec["reprompted"]["clip"] == pytest.approx(
            scorer(images[2:], [rec["prompt"]] * 2), abs=1e-5
        )  # vs original
        assert rec["reprompted"]["clip"] != pytest.approx(rec["original"]["clip"], abs=1e-4)
    mean = sum(v for r in data["prompts"] for v in r["reprompted"]["clip"]) / 4
    assert data["means"]["clip"]["reprompted"] == pytest.approx(mean)
    assert Image.open(tmp_path / "ev" / "eval_grid.png").size == (4 * 64, 2 * (64 + 92))
    assert "clip" in capsys.readouterr().out


########################
# CLI: --help, bad input in one line before any weights load (issue 14)
########################
def test_inference_reads_a_training_recipe(tiny_qwen2, capsys):
    """A recipe's trainer keys are not prompts: inference with the smoke recipe keeps the command line's prompt."""
    r1.main(["--config", str(REPO / "recipes" / "r1_prompter_smoke.yaml"), "a cat", "--gpt_path", tiny_qwen2, "--max_new_tokens", "2"])  # fmt: skip
    assert capsys.readouterr().out.splitlines()[-1] == "a cat"


def test_help_lists_own_flags_first_grouped(capsys):
    with pytest.raises(SystemExit) as exc:
        r1.main(["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith("usage: python r1_prompter.py [PROMPT ...]")
    titles = ["data and models:", "rewards:", "SFT cold start:", "inference and evaluation:", "trainer options (TRL GRPOConfig"]  # fmt: skip
    assert [out.index(t) for t in titles] == sorted(out.index(t) for t in titles)
    assert (
        out.index("--gpt_path") < out.index("--judge_model") < out.index("--n_images") < out.index("--learning_rate")
    )


BAD = {  # case -> (argv, expected message); {qwen} {sd} {tmp} {prompts} filled in
    "gpt_missing": (["--gpt_path", "/no/such/model", "--data", "{prompts}", "--sdmodel_name", "{sd}"], "--gpt_path: no such folder: /no/such/model"),
    "gpt_not_model": (["--gpt_path", "{tmp}", "--data", "{prompts}", "--sdmodel_name", "{sd}"], "is not a model folder"),
    "infer_prompt_after_option": (["--gpt_path", "./no/such", "a prompt"], "--gpt_path: no such folder: ./no/such"),
    "infer_prompt_after_bool_flag": (["--gpt_path", "./nope", "--pipeline_cpu_offload", "a cat"], "--gpt_path: no such folder: ./nope"),
    "gpt_lora_adapter": (["--gpt_path", "{tmp}/adapter", "--data", "{prompts}", "--sdmodel_name", "{sd}"], "is a LoRA adapter: merge it first"),
    "infer_bad_flag": (["--gpt_path", "{qwen}", "a cat", "--max_new_token", "3"], "unrecognised arguments: --max_new_token"),
    "infer_max_new_tokens": (["a cat", "--gpt_path", "{qwen}", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
    "infer_sd_missing": (["a cat", "--gpt_path", "{qwen}", "--generate_image", "{tmp}/o.png", "--sdmodel_name", "./nope"], "no such folder: ./nope"),
    "eval_n_images": (["--eval_prompts", "{prompts}", "--gpt_path", "{qwen}", "--sdmodel_name", "{sd}", "--n_images", "0"], "--n_images must be >= 1"),
    "eval_bad_int": (["--eval_prompts", "{prompts}", "--gpt_path", "{qwen}", "--n_images", "two"], "invalid int value: 'two'"),
    "image_batch_size": (["--image_batch_size", "0"], "--image_batch_size must be >= 1"),
    "words": (["--min_words", "10", "--max_words", "5"], "need --max_words >= --min_words"),
    "metric": (["--image_metrics", "imagereward,nope"], "unknown metric 'nope'"),
    "data_missing": (["--data", "{tmp}/nope.txt"], "data file not found"),
    "data_empty": (["--data", "{tmp}/empty.txt"], "no prompts in"),
    "data_json_syntax": (["--data", "{tmp}/bad.json"], "bad.json: record 1 (line 1 column 10): invalid JSON"),
    "data_record": (["--data", "{tmp}/bad.jsonl"], "bad.jsonl: record 2: expected a string prompt"),
    "judge_key": (["--judge_model", "gpt-4o"], "OPENAI_API_KEY"),
    "not_t2i": (["--sdmodel_name", "{tmp}/img2img"], "is a StableDiffusionImg2ImgPipeline, not a text-to-image pipeline"),
    "stage": (["--stage", "rl"], "unknown --stage 'rl'"),
    "sft_record": (["--stage", "sft", "--data", "{tmp}/bad_sft.jsonl"], "bad_sft.jsonl: record 1: completion fails the format or length reward"),
    "teacher": (["--make_sft_data", "{tmp}/o.jsonl", "--data", "{prompts}"], "--make_sft_data needs --teacher_model"),
    "teacher_samples": (["--make_sft_data", "{tmp}/o.jsonl", "--data", "{prompts}", "--teacher_model", "t", "--teacher_samples", "0"], "--teacher_samples must be >= 1"),
    "sft_data_exists": (["--make_sft_data", "{tmp}/empty.txt", "--data", "{prompts}", "--teacher_model", "t"], "empty.txt exists: choose a new file"),
    "sft_one_step_in_warmup": (["--stage", "sft", "--data", "{tmp}/one_sft.jsonl"], "1 records make 1 optimizer step(s), 1 of them warmup"),
    "grpo_no_whole_batch": (["--data", "{tmp}/one.txt"], "1 prompts make 0 optimizer step(s)"),
    "vllm": (["--use_vllm", "true"], "--use_vllm needs vLLM"),
    "quant_no_peft": (["--load_in_4bit", "true"], "add --use_peft true"),
    "generations": (["--num_generations", "3"], "num_generations"),
    "config_missing": (["--config", "{tmp}/nope.yaml"], "nope.yaml"),
    "infer_config_missing": (["a cat", "--gpt_path", "{qwen}", "--config", "{tmp}/nope.yaml"], "nope.yaml"),
    "config_bad_yaml": (["--config", "{tmp}/bad.yaml"], "bad.yaml, line 2: invalid YAML: mapping values are not allowed here"),
    "infer_config_bad_yaml": (["a cat", "--gpt_path", "{qwen}", "--config", "{tmp}/bad.yaml"], "bad.yaml, line 2: invalid YAML"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_one_line_before_weights(case, tiny_qwen2, tiny_sd15, tmp_path, capsys, monkeypatch, no_weights):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "bad.json").write_text('["a cat" "two dogs"]')
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{"text": "b"}\n')
    (tmp_path / "bad_sft.jsonl").write_text(json.dumps({"prompt": "a", "completion": "<answer>a cat</answer>"}) + "\n")
    (tmp_path / "one_sft.jsonl").write_text(json.dumps({"prompt": "a", "completion": TEACHER.format("red")}) + "\n")
    (tmp_path / "one.txt").write_text("a cat\n")
    (tmp_path / "bad.yaml").write_text("learning_rate: 1\n bf16: [\n")
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    shutil.copytree(tiny_sd15, tmp_path / "img2img")
    index = json.loads((tmp_path / "img2img" / "model_index.json").read_text())
    (tmp_path / "img2img" / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableDiffusionImg2ImgPipeline"}))  # fmt: skip
    argv, expected = BAD[case]
    if not any(
        a in argv for a in ("--gpt_path", "--eval_prompts", "--make_sft_data")
    ):  # a training run otherwise fine
        argv = ["--gpt_path", "{qwen}", "--data", "{prompts}", "--sdmodel_name", "{sd}", "--image_metrics", "clip",
                "--per_device_train_batch_size", "4", "--outdir", "{tmp}/out", *argv]  # fmt: skip
    fill = dict(qwen=tiny_qwen2, sd=tiny_sd15, tmp=str(tmp_path), prompts=PROMPTS)
    with pytest.raises(SystemExit) as exc:
        r1.main([a.format(**fill) for a in argv])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_error_printed_by_the_main_process_only(monkeypatch, capsys, no_weights):
    """Under a launcher every rank validates and exits 2; only rank 0 (RANK, set by torchrun) prints the line."""
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            r1.main(["--gpt_path", "/no/such/model", "--data", PROMPTS])
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err == (
            "error: --gpt_path: no such folder: /no/such/model\n" if printed else ""
        )


def test_bad_input_subprocess():
    res = run_command(["r1_prompter.py", "--gpt_path", "/no/such/model", "--data", PROMPTS], check=False)
    assert res.returncode == 2 and res.stderr == "error: --gpt_path: no such folder: /no/such/model\n"
    assert "Traceback" not in res.stdout + res.stderr
