# SPDX-License-Identifier: Apache-2.0
"""video_enhancer.py on tiny models (a tiny Qwen2 with the real Qwen2.5 chat template, tiny Wan, tiny scorers, the
loopback /videos + chat server): SFT masking and LoRA, GRPO with traces and judge, the video cache, the /videos
backend's deletes and error texts, precision and model defaults, the README's commands end to end, bad input before
any weights load, and 2-process SFT / GRPO (with resume)."""

import asyncio
import itertools
import json
import shlex
import shutil

import imageio.v3 as iio
import pytest
import torch
import yaml
from conftest import REPO, launch, run_command
from safetensors.torch import load_file

import video_enhancer as V

PAIRS = str(REPO / "recipes" / "video_pairs.json")
COMMON = ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--max_steps", "2",
          "--gradient_checkpointing", "false"]  # fmt: skip  # no --use_cpu / --bf16: the script picks them (issue 14)
VIDEO = ["--num_frames", "5", "--height", "32", "--width", "32", "--num_inference_steps", "2", "--reward_frames", "2",
         "--fps", "4"]  # fmt: skip
TINY = dict(num_frames=5, height=32, width=32, num_inference_steps=2, fps=4, reward_frames=2)


@pytest.fixture(scope="module")
def qwen25(tiny_qwen2, tmp_path_factory):
    """The tiny Qwen2 with Qwen2.5-Instruct's real chat template (TRL ships it verbatim): masking depends on it."""
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen2_5_chat_template

    path = tmp_path_factory.mktemp("qwen25")
    shutil.copytree(tiny_qwen2, path, dirs_exist_ok=True)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = qwen2_5_chat_template
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def sft_adapter(qwen25, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    V.main(["--stage", "sft", "--data", PAIRS, "--model_name_or_path", qwen25, "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-2", *COMMON])  # fmt: skip
    return out


@pytest.fixture
def scorer_env(tiny_scorers, monkeypatch):
    for k, v in {**tiny_scorers.env, "OPENAI_API_KEY": "test"}.items():
        monkeypatch.setenv(k, v)


def logged(out: str) -> list[dict]:
    return [eval(line) for line in out.splitlines() if line.startswith("{'loss'")]  # noqa: S307 - the trainer's dict


########################
# stage 1
########################
def test_sft_trains_lora_on_completions(sft_adapter):
    weights = load_file(sft_adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 7 and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every target moved
    cfg = json.loads((sft_adapter / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (16, 32, 0.05)
    assert set(cfg["target_modules"]) == set(V.LORA_TARGETS)


def test_sft_on_cpu_without_device_flags_logs_loss(qwen25, tmp_path, capsys):
    V.main(["--stage", "sft", "--data", PAIRS, "--model_name_or_path", qwen25, "--output_dir", str(tmp_path),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", *COMMON])  # fmt: skip
    out = capsys.readouterr().out
    assert "note: no CUDA device: use_cpu=True, bf16=False, dtype=float32" in out
    logs = logged(out)
    assert len(logs) == 2 and float(logs[0]["loss"]) > 0


def test_sft_masks_the_prompt_and_trains_completion_plus_end_of_turn(qwen25, tmp_path):
    """Labels are -100 on every prompt token (system + user + assistant header) and equal the input ids on the
    completion and the end-of-turn token, re-derived here from the chat template alone."""
    from transformers import AutoTokenizer

    pair = {"simple": "a dog surfing at sunset", "detailed": "A golden retriever rides a wave, camera slowly pans."}
    (tmp_path / "one.json").write_text(json.dumps([pair]))
    _, args, training_args, model_args, _ = V.parse(["--stage", "sft", "--data", str(tmp_path / "one.json"),
                                                     "--model_name_or_path", qwen25, "--output_dir", str(tmp_path / "o"), *COMMON])  # fmt: skip
    batch = next(iter(V.sft_trainer(args, training_args, model_args).get_train_dataloader()))
    tok = AutoTokenizer.from_pretrained(qwen25)
    messages = [{"role": "system", "content": V.SYSTEM_PROMPT}, {"role": "user", "content": pair["simple"]}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*messages, {"role": "assistant", "content": pair["detailed"]}], tokenize=False)
    prompt_ids, full_ids = tok(prompt).input_ids, tok(full).input_ids
    assert full.startswith(prompt) and full_ids[: len(prompt_ids)] == prompt_ids
    assert batch["input_ids"][0].tolist() == full_ids
    labels = batch["labels"][0].tolist()
    assert labels == [-100] * len(prompt_ids) + full_ids[len(prompt_ids) :]
    assert tok.decode(full_ids[len(prompt_ids) :]) == pair["detailed"] + "<|im_end|>\n"  # trained: text + end of turn


def test_data_layouts(tmp_path):
    seed = {"pair_02": {"lay": "b", "elaborate": "B long"}, "pair_01": {"lay": "a", "elaborate": "A long"}}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    assert V.load_pairs(str(tmp_path / "seed.json")) == [  # file order: a record number is a position in the file
        {"simple": "b", "detailed": "B long"},
        {"simple": "a", "detailed": "A long"},
    ]
    (tmp_path / "bad.json").write_text(json.dumps({"pair_02": {"lay": ""}, "pair_01": {"lay": "a", "elaborate": "x"}}))
    with pytest.raises(ValueError, match="record 1 has no simple prompt"):  # pair_02 is the first record in the file
        V.load_pairs(str(tmp_path / "bad.json"))
    (tmp_path / "p.jsonl").write_text('{"simple": "a", "detailed": "x"}\n{"simple": "b"}\n')
    assert [p["simple"] for p in V.load_pairs(str(tmp_path / "p.jsonl"), need_detailed=False)] == ["a", "b"]


########################
# precision and model defaults (issue 13.1, 13.2)
########################
@pytest.mark.parametrize(
    "cuda,bf16,expected",  # (dtype, bf16, use_cpu); bf16 None = TRL's default, which resolves to True
    [(True, True, ("bfloat16", None, False)), (True, False, ("float32", False, False)), (False, False, ("float32", False, True))],
)  # fmt: skip
def test_recipes_train_in_bf16_on_cuda_fp32_on_cpu(cuda, bf16, expected, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    for stage in ("sft", "rl"):
        parser = V.make_parser(stage)
        assert (
            parser.set_defaults_with_config(**yaml.safe_load((REPO / f"recipes/video_{stage}.yaml").read_text())) == []
        )
        ns = parser.parse_known_args([])[0]
        assert (ns.dtype, ns.bf16, ns.use_cpu) == expected


def test_rl_policy_loads_in_the_chosen_dtype(sft_adapter):
    from trl import ModelConfig

    model = V.load_policy(str(sft_adapter), ModelConfig(dtype="bfloat16"))
    base = [p for n, p in model.named_parameters() if "lora_" not in n]
    assert base and all(p.dtype == torch.bfloat16 for p in base)


def test_wan_vae_stays_fp32_beside_a_bf16_pipeline_on_cuda(tiny_wan):
    from diffusers import DiffusionPipeline

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert (
        V.video_dtype("WanPipeline", cpu) == torch.float32
        and V.video_dtype("CogVideoXPipeline", cuda) == torch.bfloat16
    )
    pipe = DiffusionPipeline.from_pretrained(tiny_wan, dtype=V.video_dtype("WanPipeline", cuda))  # weights stay on CPU
    assert pipe.vae.dtype == torch.float32
    assert pipe.transformer.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
    pipe.set_progress_bar_config(disable=True)
    (video,) = V.render_videos(pipe, ["a dog"], [0], V.ScriptArguments(**TINY))  # the pipeline casts for the VAE
    assert video.shape == (5, 32, 32, 3) and video.dtype.name == "uint8"


def test_model_defaults_sft_base_and_rl_adapter(qwen25, sft_adapter, tiny_wan, tmp_path, monkeypatch, no_weights):
    import huggingface_hub.constants as hub

    repo = tmp_path / "hub" / "models--Qwen--Qwen2.5-14B-Instruct"  # a local hub cache holding only the config
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    stage, _, _, model_args, _ = V.parse(["--data", PAIRS, "--output_dir", str(tmp_path / "o")])
    assert (stage, model_args.model_name_or_path) == ("sft", "Qwen/Qwen2.5-14B-Instruct")
    monkeypatch.chdir(tmp_path)  # rl without a model: the SFT recipe's output folder, relative to where it runs
    shutil.copytree(sft_adapter, tmp_path / "runs" / "video_sft")
    _, args, _, _, _ = V.parse(["--stage", "rl", "--data", PAIRS, "--video_model", tiny_wan, "--output_dir", "o"])
    assert args.sft_adapter == "runs/video_sft"


########################
# videos: cache and backends (issue 13.3, 13.4)
########################
def test_cache_hits_on_repeat(tiny_wan, tmp_path):
    args = V.ScriptArguments(video_model=tiny_wan, **TINY)
    videos = V.Videos(args, str(tmp_path), torch.device("cpu"))
    calls = []
    original = videos.pipe.__class__.__call__
    videos.pipe.__class__.__call__ = lambda self, **kw: calls.append(len(kw["prompt"])) or original(self, **kw)
    try:
        first = videos(["a dog", "a cat", "a dog"], [1, 1, 2])
        again = videos(["a dog", "a cat"], [1, 1])
    finally:
        videos.pipe.__class__.__call__ = original
    assert (
        calls == [3] and again == first[:2] and (videos.hits, videos.misses) == (2, 3)
    )  # one batched call, then hits
    assert iio.imread(first[0], extension=".mp4").shape == (5, 32, 32, 3)
    assert first[0] != first[2]  # the seed is part of the key


def test_interrupted_cache_write_leaves_no_entry(tiny_wan, tmp_path, monkeypatch):
    videos = V.Videos(V.ScriptArguments(video_model=tiny_wan, **TINY), str(tmp_path), torch.device("cpu"))
    real = iio.imwrite

    def half_then_interrupt(uri, video, **kwargs):  # the process dies half-way through writing the mp4
        data = real("<bytes>", video, extension=".mp4", **kwargs)
        open(uri, "wb").write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(iio, "imwrite", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        videos(["a dog"], [1])
    monkeypatch.setattr(iio, "imwrite", real)
    assert list(tmp_path.iterdir()) == []  # neither a partial entry nor a temp file
    (path,) = videos(["a dog"], [1])
    assert (videos.hits, videos.misses) == (0, 2) and iio.imread(path, extension=".mp4").shape == (5, 32, 32, 3)


def test_broken_entry_removed_by_another_rank_is_still_a_miss(tiny_wan, tmp_path, monkeypatch, capsys):
    videos = V.Videos(V.ScriptArguments(video_model=tiny_wan, **TINY), str(tmp_path), torch.device("cpu"))
    path = videos.path("a dog", 1)
    path.write_bytes(b"not an mp4")

    def other_rank_unlinks_first(uri, **kwargs):  # both ranks saw the broken entry; the other one removed it
        path.unlink()
        raise OSError("cannot decode")

    monkeypatch.setattr(iio, "imread", other_rank_unlinks_first)
    assert videos.cached(path) is False and "cannot be decoded" in capsys.readouterr().err


def test_undecodable_cache_entry_is_a_logged_miss(tiny_wan, tmp_path, capsys):
    videos = V.Videos(V.ScriptArguments(video_model=tiny_wan, **TINY), str(tmp_path), torch.device("cpu"))
    (path,) = videos(["a dog"], [1])
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])  # e.g. left by an older version's crash
    assert videos(["a dog"], [1]) == [path] and (videos.hits, videos.misses) == (0, 2)
    assert "cannot be decoded" in capsys.readouterr().err
    assert iio.imread(path, extension=".mp4").shape == (5, 32, 32, 3)
    assert videos(["a dog"], [1]) == [path] and videos.hits == 1


def openai_videos(server, tmp_path, **kw):
    args = V.ScriptArguments(video_backend="openai", video_base_url=server.base_url, video_model="sora-2",
                             poll_interval=0.02, **kw)  # fmt: skip
    return V.Videos(args, str(tmp_path))


def test_openai_timed_out_job_is_deleted_once_per_attempt(openai_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    videos = openai_videos(openai_server, tmp_path, video_timeout=0.2, video_retries=1)
    monkeypatch.setattr(openai_server, "video_polls", 10**6)  # the job never finishes
    assert videos(["a dog"], [0]) == [None] and videos.failures == 1
    calls = [(m, p) for m, p, _ in openai_server.requests]
    creates = [i for i, (m, p) in enumerate(calls) if m == "POST" and p.endswith("/videos")]
    deletes = [i for i, (m, p) in enumerate(calls) if m == "DELETE"]
    assert len(creates) == 2 and len(deletes) == 2 and len({calls[i][1] for i in deletes}) == 2
    assert creates[0] < deletes[0] < creates[1] < deletes[1]  # deleted before the retry creates the next job
    assert openai_server.videos == {}  # every job created was deleted
    assert capsys.readouterr().err.count("unfinished after") == 2
    monkeypatch.setattr(openai_server, "video_polls", 1)
    (first,) = videos(["a dog"], [0])
    assert first is not None and videos(["a dog"], [0]) == [first] and videos.hits == 1


def test_openai_failed_job_logs_the_servers_error_text(openai_server, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    videos = openai_videos(openai_server, tmp_path, video_retries=0)
    openai_server.fail_video_next(1, "Your request was blocked by our moderation system.")
    assert videos(["a dog", "a cat"], [0, 0])[0] is None and videos.failures == 1
    err = capsys.readouterr().err
    assert "failed: Your request was blocked by our moderation system." in err
    assert not any(m == "DELETE" for m, _, _ in openai_server.requests)  # finished jobs are not deleted


########################
# rewards (issue 13.5, 13.7)
########################
def test_video_reward_scores_frames_against_the_simple_prompt(tiny_wan, scorer_env, tmp_path):
    import score

    real, seen = score.MultiScorer({"clip": 1.0}), []

    def recording(images, prompts):
        seen.append(list(prompts))
        return real(images, prompts)

    args = V.ScriptArguments(video_model=tiny_wan, **TINY)
    videos = V.Videos(args, str(tmp_path / "cache"), torch.device("cpu"))
    state = {"trace_path": tmp_path / "traces.jsonl"}
    simple = ["a dog", "a dog", "a cat"]
    detailed = ["a dog surfing a wave, camera pans", "a dog at sunset", "a cat in the rain, close up"]
    rewards = V.get_video_reward(videos, recording, args, 42, state)(
        prompts=simple, completions=detailed, simple=simple
    )
    assert seen == [["a dog"] * 4 + ["a cat"] * 2]  # 2 frames per video, each scored against its SIMPLE prompt
    assert [r["detailed_prompt"] for r in state["records"]] == detailed  # ... of the video of the DETAILED prompt
    for r, record in zip(rewards, state["records"], strict=True):
        frames = V.sample_frames(record["video_path"], 2)
        assert r == pytest.approx(sum(real(frames, [record["simple_prompt"]] * 2)[0]) / 2)


def test_empty_completion_is_none_not_the_simple_prompts_video(tiny_wan, scorer_env, tmp_path):
    import score

    args, metrics = V.ScriptArguments(video_model=tiny_wan, **TINY), {}
    videos = V.Videos(args, str(tmp_path / "cache"), torch.device("cpu"))
    reward = V.get_video_reward(videos, score.MultiScorer({"clip": 1.0}), args, 42, {"trace_path": tmp_path / "t"}, 2)
    rewards = reward(prompts=["a dog"] * 3, completions=["", "a dog surfing, camera pans", " \n"],
                     simple=["a dog"] * 3,
                     log_metric=lambda name, value: metrics.setdefault(name, value))  # fmt: skip
    assert rewards[0] is None and rewards[2] is None and isinstance(rewards[1], float)  # TRL skips None
    assert videos.misses == 1 and len(list((tmp_path / "cache").glob("*.mp4"))) == 1  # only the non-empty one rendered
    assert metrics["video/empty_completions"] == 4.0  # 2 empty here, times 2 processes (TRL averages over ranks)


def test_reward_normalisation_and_checklist_from_the_recipe(
    sft_adapter, tiny_wan, openai_server, monkeypatch, tmp_path
):
    from openai import AsyncOpenAI
    from PIL import Image

    monkeypatch.setenv("OPENAI_API_KEY", "test")
    base = ["--sft_adapter", str(sft_adapter), "--video_model", tiny_wan, "--output_dir", str(tmp_path / "o")]
    _, _, training_args, _, _ = V.parse(["--stage", "rl", "--data", PAIRS, *base])  # the script's default ...
    assert training_args.multi_objective_aggregation == "normalize_then_sum"  # each reward z-scored in its group
    _, args, training_args, _, _ = V.parse(
        ["--config", str(REPO / "recipes/video_rl.yaml"), *base]
    )  # ... and recipe's
    assert training_args.multi_objective_aggregation == "normalize_then_sum"
    assert args.judge_questions == V.JUDGE_QUESTIONS and args.judge_weights == V.JUDGE_WEIGHTS  # written out in full
    recipe = {**yaml.safe_load((REPO / "recipes/video_rl.yaml").read_text()), "judge_model": "j",
              "judge_questions": ["Is '{prompt}' visible?", "Is it sharp?"], "judge_weights": [2.0, 1.0],
              "reward_weights": [1.0, 0.5]}  # fmt: skip
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    _, args, training_args, _, _ = V.parse(["--config", str(tmp_path / "r.yaml"), *base])
    assert training_args.reward_weights == [1.0, 0.5] and args.judge_weights == [2.0, 1.0]
    monkeypatch.setattr(openai_server, "chat_handler", lambda body: json.dumps({"answers": [True, False]}))

    async def judge():
        async with AsyncOpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0) as client:
            frames = [Image.new("RGB", (16, 16), "red")]
            return await V.judge_one(client, "j", frames, "a red square", 0, args.judge_questions, args.judge_weights)

    assert asyncio.run(judge()) == pytest.approx((2.0 - 1.0) / 3.0)
    text = openai_server.requests[-1][2]["messages"][0]["content"][0]["text"]
    assert text.endswith("\n1. Is 'a red square' visible?\n2. Is it sharp?")


def test_judge_timeout_retried_and_malformed_becomes_none(openai_server, monkeypatch):
    from openai import AsyncOpenAI
    from PIL import Image

    answer = lambda body: json.dumps({"answers": [True] * (len(V.JUDGE_QUESTIONS) - 1) + [False]})  # noqa: E731
    monkeypatch.setattr(openai_server, "chat_handler", answer)
    frames = [Image.new("RGB", (16, 16), "red")]
    expected = (sum(V.JUDGE_WEIGHTS) - 2 * V.JUDGE_WEIGHTS[-1]) / sum(V.JUDGE_WEIGHTS)

    async def judge(fail_mode, retries):
        openai_server.fail_next(2 if fail_mode == "malformed" else 1, fail_mode)
        async with AsyncOpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0, timeout=0.5) as c:
            return await V.judge_one(c, "j", frames, "a red square", retries)

    assert asyncio.run(judge("timeout", 1)) == pytest.approx(expected)  # timed out once, answered on the retry
    assert asyncio.run(judge("malformed", 1)) is None  # both tries malformed: None, not a made-up score


########################
# stage 2, in process
########################
def train_rl(sft_adapter, out, extra):
    V.main(["--stage", "rl", "--data", PAIRS, "--sft_adapter", str(sft_adapter), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
            "--learning_rate", "1e-2", *COMMON, *VIDEO, *extra])  # fmt: skip
    return [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]


def test_rl_diffusers_backend_with_judge(
    sft_adapter, tiny_wan, scorer_env, openai_server, monkeypatch, tmp_path, capsys
):
    counter = itertools.count()  # alternate all-yes / all-no checklists so a group's rewards differ
    answer = lambda body: json.dumps({"answers": [next(counter) % 2 == 0] * len(V.JUDGE_QUESTIONS)})  # noqa: E731
    monkeypatch.setattr(openai_server, "chat_handler", answer)
    openai_server.fail_next(1, "500")  # one judge call fails (no retries): None for that sample
    out = tmp_path / "rl"
    traces = train_rl(sft_adapter, out, ["--video_model", tiny_wan, "--judge_model", "j", "--judge_base_url",
                                         openai_server.base_url, "--judge_retries", "0"])  # fmt: skip
    assert len(traces) == 8 and [t["step"] for t in traces] == [0] * 4 + [1] * 4 and {t["rank"] for t in traces} == {0}
    assert {"simple_prompt", "detailed_prompt", "seed", "video_path", "video_reward", "judge_reward"} <= set(traces[0])
    assert sum(t["judge_reward"] is None for t in traces) == 1
    assert {t["judge_reward"] for t in traces} - {None} == {1.0, -1.0}
    assert len({t["seed"] for t in traces[:4]}) == 1 and all(isinstance(t["video_reward"], float) for t in traces)
    before = load_file(sft_adapter / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logs = logged(capsys.readouterr().out)
    assert [float(log["judge/failures"]) for log in logs] == [1.0, 0.0] and "video/clip" in logs[0]
    assert [float(log["video/generated"]) + float(log["video/cache_hits"]) for log in logs] == [4.0, 4.0]


def test_rl_openai_backend_counts_a_failed_video(sft_adapter, scorer_env, openai_server, tmp_path, capsys):
    openai_server.fail_video_next(1)  # one job ends "failed" and no retry is allowed: that sample's reward is None
    traces = train_rl(sft_adapter, tmp_path / "rl", ["--video_backend", "openai", "--video_base_url",
                                                     openai_server.base_url, "--video_model", "sora-2",
                                                     "--poll_interval", "0.01", "--video_retries", "0",
                                                     "--max_steps", "1"])  # fmt: skip
    created = [r for r in openai_server.requests if r[0] == "POST" and r[1].endswith("/videos")]
    assert len(created) == 4 and created[0][2]["model"] == "sora-2" and created[0][2]["seconds"] == "4"
    assert sum(t["video_path"] is None for t in traces) == 1 and sum(t["video_reward"] is None for t in traces) == 1
    captured = capsys.readouterr()
    assert [float(log["video/failures"]) for log in logged(captured.out)] == [1.0]
    assert "failed: injected failure" in captured.err and "1 failed" in captured.err


########################
# the README's commands, end to end (issue 13: done means)
########################
def readme_commands() -> list[list[str]]:
    section = (REPO / "README.md").read_text().split("## video_enhancer.py", 1)[1].split("\n## ", 1)[0]
    block = section.split("### Usage", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [line.split("  #")[0] for line in block.splitlines() if "video_enhancer.py" in line]
    return [shlex.split(line)[shlex.split(line).index("video_enhancer.py") + 1 :] for line in lines[:3]]


def test_readme_sft_rl_inference_chain(qwen25, tiny_wan, scorer_env, tmp_path, monkeypatch):
    sft_cmd, rl_cmd, infer_cmd = readme_commands()
    assert sft_cmd == ["--config", "recipes/video_sft.yaml"] and rl_cmd == ["--config", "recipes/video_rl.yaml"]
    monkeypatch.chdir(REPO)  # the recipes name recipes/video_pairs.json relative to the repository root
    sft_out, rl_out, mp4 = tmp_path / "video_sft", tmp_path / "video", tmp_path / "out.mp4"
    V.main([*sft_cmd, "--model_name_or_path", qwen25, "--output_dir", str(sft_out)])
    assert (sft_out / "adapter_model.safetensors").is_file()
    V.main([*rl_cmd, "--sft_adapter", str(sft_out), "--output_dir", str(rl_out), "--video_model", tiny_wan, *VIDEO,
            "--max_steps", "1", "--max_completion_length", "16"])  # fmt: skip
    assert len((rl_out / "traces.jsonl").read_text().splitlines()) == 8  # the recipe's 8 completions per step
    paths = {"runs/video": str(rl_out), "out.mp4": str(mp4)}
    res = run_command(["video_enhancer.py", *(paths.get(a, a) for a in infer_cmd), "--video_model", tiny_wan, *VIDEO,
                       "--max_new_tokens", "8"])  # fmt: skip
    assert res.stdout.strip().splitlines()[-1] and iio.imread(mp4, extension=".mp4").shape == (5, 32, 32, 3)


########################
# command line (issue 14)
########################
def test_positional_prompts_anywhere(sft_adapter, capsys):
    V.main(["--max_new_tokens", "4", "a dog surfing", "--model_name_or_path", str(sft_adapter), "a cat", "--stage",
            "rl", "--num_generations", "4", "--video_seed", "3"])  # fmt: skip
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 2 and "note:" not in captured.out  # 2 prompts, no training


def test_help_lists_own_flags_first_grouped(capsys):
    with pytest.raises(SystemExit) as exc:
        V.main(["--stage", "rl", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and out.startswith("usage: python video_enhancer.py [PROMPT ...]")
    titles = ["data and models:", "video generation:", "rewards:", "inference:", "trainer options (TRL GRPOConfig"]
    assert [out.index(t) for t in titles] == sorted(out.index(t) for t in titles)
    assert out.index("--sft_adapter") < out.index("--judge_questions") < out.index("--num_generations")


def bad_inputs(f):
    """case -> (argv, part of the one-line error)."""
    rl = ["--stage", "rl", "--data", PAIRS, "--sft_adapter", f.adapter, "--video_model", f.wan]
    sft = ["--stage", "sft", "--data", PAIRS, "--model_name_or_path", f.model]
    infer = ["a dog", "--model_name_or_path", f.adapter]
    return {
        "sft_no_model_offline": (["--data", PAIRS], "Qwen/Qwen2.5-14B-Instruct: not a folder, and not in the Hugging"),
        "sft_model_not_a_model_folder": ([*sft, "--model_name_or_path", f.tmp], "not a model folder"),
        "sft_adapter_missing": ([*rl, "--sft_adapter", "/no/adapter"], "--sft_adapter: no such folder: /no/adapter"),
        "sft_adapter_default_missing": (["--stage", "rl", "--data", PAIRS], "no such folder: runs/video_sft"),
        "sft_adapter_base_missing": ([*rl, "--sft_adapter", f.orphan], "no such folder: /no/base"),
        "infer_model_missing": (["a dog", "--model_name_or_path", "/no/model"], "no such folder: /no/model"),
        "infer_relative_model_missing": (["a dog", "--model_name_or_path", "orphan/no_model"], "no such folder"),
        "infer_no_model": (["a dog"], "give non-empty prompts and --model_name_or_path"),
        "infer_empty_prompt": ([*infer, ""], "give non-empty prompts"),
        "infer_video_model_missing": (
            [*infer, "--generate_video", f.mp4, "--video_model", "/no"],
            "no such folder: /no",
        ),
        "video_model_missing": ([*rl, "--video_model", "/no/wan"], "--video_model: no such folder: /no/wan"),
        "video_model_not_a_pipeline": ([*rl, "--video_model", f.adapter], "not a model folder (no model_index.json)"),
        "num_frames_0": ([*rl, "--num_frames", "0"], "--num_frames must be > 0"),
        "num_frames_not_int": ([*rl, "--num_frames", "x"], "invalid int value: 'x'"),
        "video_batch_size_0": ([*rl, "--video_batch_size", "0"], "--video_batch_size must be > 0"),
        "reward_frames_0": ([*rl, "--reward_frames", "0"], "--reward_frames must be > 0"),
        "judge_retries_negative": ([*rl, "--judge_retries", "-1"], "--judge_retries must be >= 0"),
        "max_new_tokens_0": ([*infer, "--max_new_tokens", "0"], "--max_new_tokens must be > 0"),
        "num_generations_3": (
            [*rl, "--num_generations", "3"],
            "generation_batch_size (8) must be divisible by num_generations (3)",
        ),
        "json_syntax": ([*sft, "--data", f.json_bad], f"{f.json_bad}: record 2 (line 3): invalid JSON"),
        "jsonl_syntax": ([*sft, "--data", f.jsonl_bad], f"{f.jsonl_bad}: record 2 (line 2): invalid JSON"),
        "record_without_simple": ([*sft, "--data", f.no_simple], "record 2 has no simple prompt"),
        "record_without_detailed": ([*sft, "--data", f.no_detailed], "record 1 has no detailed prompt"),
        "data_missing": ([*sft, "--data", "/no/data.json"], "data file not found: /no/data.json"),
        "data_not_given": (["--stage", "sft", "--model_name_or_path", f.model], "give --data"),
        "data_empty": ([*sft, "--data", f.empty], "no records"),
        "unknown_option": ([*infer, "--num_beams", "2"], "unrecognised arguments: --num_beams"),
        "unknown_stage": (["--stage", "nope"], "unknown --stage 'nope'"),
        "judge_without_key": ([*rl, "--judge_model", "gpt-4o"], "OPENAI_API_KEY"),
        "openai_backend_without_key": ([*rl, "--video_backend", "openai"], "OPENAI_API_KEY"),
        "unknown_backend": ([*rl, "--video_backend", "nope"], "unknown --video_backend 'nope'"),
        "unknown_metric": ([*rl, "--reward_metrics", "nope:1"], "unknown metric 'nope'"),
        "judge_weights_mismatch": ([*rl, "--judge_weights", "1"], "--judge_questions (8) and --judge_weights (1)"),
        "reward_weights_mismatch": (
            [*rl, "--reward_weights", "1", "1"],
            "--reward_weights has 2 values for 1 rewards",
        ),
        "config_missing": (["--config", "/no/recipe.yaml"], "config file not found: /no/recipe.yaml"),
        "config_unknown_key": (["--config", f.bad_yaml], "unknown keys in the config file: --bogus"),
        "config_yaml_syntax": (["--config", f.yaml_syntax], f"{f.yaml_syntax}, line 2: invalid YAML: expected ','"),
        "infer_4bit": ([*infer, "--load_in_4bit", "true"], "--load_in_4bit / --load_in_8bit are for training"),
        "no_mp4_writer": (rl, "no mp4 writer available"),
    }


@pytest.fixture
def bad_files(qwen25, sft_adapter, tiny_wan, tmp_path):
    import types

    f = types.SimpleNamespace(model=qwen25, adapter=str(sft_adapter), wan=tiny_wan, tmp=str(tmp_path))
    f.mp4, f.orphan = str(tmp_path / "o.mp4"), str(tmp_path / "orphan")
    shutil.copytree(sft_adapter, f.orphan)
    cfg = json.loads((sft_adapter / "adapter_config.json").read_text())
    (tmp_path / "orphan" / "adapter_config.json").write_text(
        json.dumps({**cfg, "base_model_name_or_path": "/no/base"})
    )
    files = {"json_bad": ("b.json", '[\n {"simple": "a", "detailed": "b"},\n {"simple": "c" "detailed": "d"}\n]'),
             "jsonl_bad": ("b.jsonl", '{"simple": "a", "detailed": "b"}\n{"simple": "c",}\n'),
             "no_simple": ("s.json", json.dumps([{"simple": "a", "detailed": "b"}, {"lay": ""}])),
             "no_detailed": ("d.json", json.dumps([{"simple": "a"}])), "empty": ("e.json", "[]"),
             "bad_yaml": ("r.yaml", "stage: sft\nbogus: 1\n"), "yaml_syntax": ("y.yaml", "data: [oops\n")}  # fmt: skip
    for key, (name, text) in files.items():
        (tmp_path / name).write_text(text)
        setattr(f, key, str(tmp_path / name))
    return f


@pytest.mark.parametrize("case", sorted(bad_inputs(type("F", (), {"__getattr__": lambda s, k: k})())))
def test_bad_input_one_line_before_weights(case, bad_files, no_weights, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.chdir(tmp_path)  # no runs/video_sft here
    if case == "no_mp4_writer":
        import imageio_ffmpeg

        monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: (_ for _ in ()).throw(RuntimeError("no ffmpeg")))
    argv, expected = bad_inputs(bad_files)[case]
    with pytest.raises(SystemExit) as exc:
        V.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, err


def test_one_error_line_from_the_main_process_only(monkeypatch, capsys):
    """Under a launcher every rank validates; only rank 0 prints the error, every rank exits 2."""
    for rank, printed in (("1", ""), ("0", "error: data file not found: /no/data.json\n")):
        monkeypatch.setenv("RANK", rank)
        with pytest.raises(SystemExit) as exc:
            V.main(["--stage", "sft", "--data", "/no/data.json"])
        assert exc.value.code == 2 and capsys.readouterr().err == printed


def test_bare_bool_flag_does_not_swallow_the_prompt(sft_adapter, no_weights):
    *_, model_args, prompts = V.parse(["--model_name_or_path", str(sft_adapter), "--use_rslora", "a dog surfing"])
    assert prompts == ["a dog surfing"] and model_args.use_rslora is True
    *_, model_args, prompts = V.parse(["--use_rslora", "False", "a dog", "--model_name_or_path", str(sft_adapter)])
    assert prompts == ["a dog"] and model_args.use_rslora is False  # a bool word after the flag is its value


class Stop(Exception):
    pass


@pytest.mark.parametrize("path", ["sft", "rl", "infer"])
def test_model_flags_reach_from_pretrained(path, qwen25, sft_adapter, tiny_wan, monkeypatch, tmp_path):
    from transformers import PreTrainedModel

    calls, original = [], PreTrainedModel.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        if str(name) == qwen25:  # the policy (for rl: the stage-1 adapter's base)
            calls.append(kwargs)
            raise Stop
        return original(cls, name, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(from_pretrained))
    flags = ["--attn_implementation", "eager", "--dtype", "bfloat16", "--output_dir", str(tmp_path)]
    quant = ["--load_in_8bit", "true"]
    model, rl = ["--model_name_or_path", qwen25, "--model_revision", "v1"], ["--sft_adapter", str(sft_adapter)]
    argv = {"sft": ["--stage", "sft", "--data", PAIRS, *model, *quant],
            "rl": ["--stage", "rl", "--data", PAIRS, *rl, "--video_model", tiny_wan, *quant],
            "infer": ["a dog", *model]}[path]  # fmt: skip
    with pytest.raises(Stop):
        V.main([*argv, *flags])
    kw = calls[0]
    assert (kw.get("quantization_config") is not None and kw["quantization_config"].load_in_8bit) == (path != "infer")
    # AutoModelFor* moves attn_implementation into the config it hands to the model class
    assert kw.get("attn_implementation", getattr(kw.get("config"), "_attn_implementation", None)) == "eager"
    assert kw["dtype"] in ("bfloat16", torch.bfloat16) and (path == "rl" or kw["revision"] == "v1")


def test_bad_input_subprocess_one_line():
    res = run_command(["video_enhancer.py", "--stage", "rl", "--data", PAIRS, "--sft_adapter", "/no/adapter"],
                      check=False)  # fmt: skip
    assert res.returncode == 2 and res.stderr == "error: --sft_adapter: no such folder: /no/adapter\n"
    assert "Traceback" not in res.stdout + res.stderr


########################
# two processes (issue 15)
########################
def test_two_process_sft(qwen25, tmp_path):
    out = tmp_path / "sft"
    res = run_command(launch("video_enhancer.py", "--stage", "sft", "--data", PAIRS, "--model_name_or_path", qwen25,
                             "--output_dir", out, "--per_device_train_batch_size", "2", "--gradient_accumulation_steps",
                             "1", "--report_to", "none", "--logging_steps", "1", "--max_steps", "2", "--save_steps", "2",
                             "--gradient_checkpointing", "false", num_processes=2))  # fmt: skip
    assert res.stdout.count("effective batch 4 (2 x 1 accumulation x 2 processes)") == 1  # printed by the main process
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    lora_b = [v for k, v in load_file(out / "adapter_model.safetensors").items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)


def test_two_process_rl_and_resume(sft_adapter, tiny_wan, tiny_scorers, tmp_path):
    out = tmp_path / "rl"
    common = ["--stage", "rl", "--data", PAIRS, "--sft_adapter", sft_adapter, "--output_dir", out,
              "--per_device_train_batch_size", "2", "--num_generations", "4", "--max_completion_length", "8",
              "--report_to", "none", "--logging_steps", "1", "--save_steps", "1", "--gradient_checkpointing", "false",
              "--video_model", tiny_wan, *VIDEO]  # fmt: skip  # one group of 4 per step, split over the 2 ranks
    run_command(launch("video_enhancer.py", *common, "--max_steps", "2", num_processes=2), env=tiny_scorers.env)
    run_command(launch("video_enhancer.py", *common, "--max_steps", "3", "--resume_from_checkpoint",
                       out / "checkpoint-2", num_processes=2), env=tiny_scorers.env)  # fmt: skip
    traces = [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]
    assert [t["step"] for t in traces] == [0] * 4 + [1] * 4 + [2] * 4  # resumed at step 2; written once (main only)
    for step in range(3):
        rows = [t for t in traces if t["step"] == step]
        assert sorted(t["rank"] for t in rows) == [0, 0, 1, 1]  # every rank rendered and scored its own two
        assert len({t["simple_prompt"] for t in rows}) == 1 and len({t["seed"] for t in rows}) == 1  # same group seed
        assert all(isinstance(t["video_reward"], float) and t["video_path"] for t in rows)
    history = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["log_history"]
    steps = [h for h in history if "reward" in h]
    assert [h["step"] for h in steps] == [1, 2, 3]
    assert all(h["video/generated"] + h["video/cache_hits"] == 4 for h in steps)  # counts summed over the ranks


@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_vllm_flags_parse_with_the_recipe_sampling_and_are_documented(
    mode, sft_adapter, tiny_wan, tmp_path, no_weights
):
    _, _, training_args, _, _ = V.parse(["--stage", "rl", "--data", PAIRS, "--sft_adapter", str(sft_adapter),
                                         "--video_model", tiny_wan, "--output_dir", str(tmp_path), "--use_vllm",
                                         "true", "--vllm_mode", mode])  # fmt: skip
    assert training_args.use_vllm and training_args.vllm_mode == mode
    assert (training_args.temperature, training_args.top_p, training_args.max_completion_length) == (0.7, 0.95, 256)
    assert (
        f"--use_vllm true --vllm_mode {mode}" in V.__doc__
        and f"--use_vllm true --vllm_mode {mode}"
        in (REPO / "README.md").read_text().split("## video_enhancer.py", 1)[1]
    )
