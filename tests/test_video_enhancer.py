# SPDX-License-Identifier: Apache-2.0
"""video_enhancer.py: SFT on tiny Qwen2 (LoRA moves), GRPO against tiny Wan and the loopback /videos API, the cache,
traces, judge failures as None, inference with an mp4, and bad input."""

import asyncio
import itertools
import json

import imageio.v3 as iio
import pytest
import torch
from conftest import REPO, run_command
from safetensors.torch import load_file

import video_enhancer as V

PAIRS = REPO / "recipes" / "video_pairs.json"
COMMON = ["--report_to", "none", "--use_cpu", "true", "--bf16", "false", "--save_strategy", "no", "--logging_steps", "1",
          "--max_steps", "2", "--gradient_checkpointing", "false"]  # fmt: skip
VIDEO = [
    "--num_frames",
    "5",
    "--height",
    "32",
    "--width",
    "32",
    "--num_inference_steps",
    "2",
    "--reward_frames",
    "2",
    "--fps",
    "4",
]


@pytest.fixture(scope="module")
def sft_adapter(tiny_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft")
    V.main(["--stage", "sft", "--data", str(PAIRS), "--model_name_or_path", tiny_qwen2, "--output_dir", str(out),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", "--learning_rate", "1e-2", *COMMON])  # fmt: skip
    return out


def test_sft_trains_lora_on_completions(sft_adapter):
    weights = load_file(sft_adapter / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 7 and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every target moved
    cfg = json.loads((sft_adapter / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["lora_dropout"]) == (16, 32, 0.05) and set(cfg["target_modules"]) == set(
        V.LORA_TARGETS
    )


def test_sft_logs_loss(tiny_qwen2, tmp_path, capsys):
    V.main(["--stage", "sft", "--data", str(PAIRS), "--model_name_or_path", tiny_qwen2, "--output_dir", str(tmp_path),
            "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1", *COMMON])  # fmt: skip
    logs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{'loss'")]
    assert len(logs) == 2 and float(eval(logs[0])["loss"]) > 0  # noqa: S307 - the trainer's own dict repr


def test_data_layouts_and_record_numbers(tmp_path):
    seed = {"pair_02": {"lay": "b", "elaborate": "B long"}, "pair_01": {"lay": "a", "elaborate": "A long"}}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    assert V.load_pairs(str(tmp_path / "seed.json")) == [
        {"simple": "a", "detailed": "A long"},
        {"simple": "b", "detailed": "B long"},
    ]
    (tmp_path / "p.jsonl").write_text('{"simple": "a", "detailed": "x"}\n{"simple": "b"}\n')
    with pytest.raises(ValueError, match="record 2 has no detailed prompt"):
        V.load_pairs(str(tmp_path / "p.jsonl"))
    assert [p["simple"] for p in V.load_pairs(str(tmp_path / "p.jsonl"), need_detailed=False)] == ["a", "b"]


def test_cache_hits_on_repeat(tiny_wan, tmp_path):
    args = V.ScriptArguments(video_model=tiny_wan, num_frames=5, height=32, width=32, num_inference_steps=2, fps=4)
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


def train_rl(sft_adapter, out, extra):
    V.main(["--stage", "rl", "--data", str(PAIRS), "--sft_adapter", str(sft_adapter), "--output_dir", str(out),
            "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "8",
            "--learning_rate", "1e-2", *COMMON, *VIDEO, *extra])  # fmt: skip
    return [json.loads(line) for line in (out / "traces.jsonl").read_text().splitlines()]


def test_rl_diffusers_backend_with_judge(
    sft_adapter, tiny_wan, tiny_scorers, openai_server, monkeypatch, tmp_path, capsys
):
    for k, v in {**tiny_scorers.env, "OPENAI_API_KEY": "test"}.items():
        monkeypatch.setenv(k, v)
    counter = itertools.count()  # alternate all-yes / all-no checklists so a group's rewards differ
    answer = lambda body: json.dumps({"answers": [next(counter) % 2 == 0] * len(V.CHECKLIST)})  # noqa: E731
    monkeypatch.setattr(openai_server, "chat_handler", answer)  # restored after the test: the server is shared
    openai_server.fail_next(1, "500")  # one judge call fails (no retries): None for that sample
    out = tmp_path / "rl"
    traces = train_rl(
        sft_adapter,
        out,
        [
            "--video_model",
            tiny_wan,
            "--judge_model",
            "j",
            "--judge_base_url",
            openai_server.base_url,
            "--judge_retries",
            "0",
        ],
    )
    assert len(traces) == 8 and [t["step"] for t in traces] == [0] * 4 + [1] * 4
    assert {"simple_prompt", "detailed_prompt", "seed", "video_path", "video_reward", "judge_reward"} <= set(traces[0])
    assert sum(t["judge_reward"] is None for t in traces) == 1 and {t["judge_reward"] for t in traces} - {None} == {
        1.0,
        -1.0,
    }
    assert len({t["seed"] for t in traces[:4]}) == 1 and all(isinstance(t["video_reward"], float) for t in traces)
    before = load_file(sft_adapter / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    logs = [eval(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{'loss'")]  # noqa: S307
    assert [float(log["judge/failures"]) for log in logs] == [1.0, 0.0] and "video/clip" in logs[0]


def test_rl_openai_backend_and_failed_video(sft_adapter, tiny_scorers, openai_server, monkeypatch, tmp_path):
    for k, v in {**tiny_scorers.env, "OPENAI_API_KEY": "test"}.items():
        monkeypatch.setenv(k, v)
    n0 = len(openai_server.requests)  # the server is shared by the whole session
    openai_server.fail_video_next(1)  # one job ends "failed" and no retry is allowed: that sample's reward is None
    out = tmp_path / "rl"
    traces = train_rl(sft_adapter, out, ["--video_backend", "openai", "--video_base_url", openai_server.base_url,
                                         "--video_model", "sora-2", "--poll_interval", "0.01", "--video_retries", "0",
                                         "--max_steps", "1"])  # fmt: skip
    created = [r for r in openai_server.requests[n0:] if r[0] == "POST" and r[1].endswith("/videos")]
    assert len(created) == 4 and created[0][2]["model"] == "sora-2" and created[0][2]["seconds"] == "4"
    assert sum(t["video_path"] is None for t in traces) == 1 and sum(t["video_reward"] is None for t in traces) == 1


def test_inference_prints_prompt_and_writes_mp4(sft_adapter, tiny_wan, tmp_path):
    out = tmp_path / "v.mp4"
    res = run_command(["video_enhancer.py", "a dog surfing at sunset", "--model_name_or_path", str(sft_adapter), "--max_new_tokens", "6",
                       "--generate_video", str(out), "--video_model", tiny_wan, *VIDEO])  # fmt: skip
    assert res.stdout.strip().splitlines()[-1] and iio.imread(out, extension=".mp4").shape == (5, 32, 32, 3)


@pytest.mark.parametrize("case", ["missing", "empty", "malformed", "judge_key", "no_writer", "stage", "recipe"])
def test_bad_input(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    data, extra = str(PAIRS), []
    if case == "missing":
        data = str(tmp_path / "none.json")
    elif case == "empty":
        (tmp_path / "e.json").write_text("[]")
        data = str(tmp_path / "e.json")
    elif case == "malformed":
        (tmp_path / "m.json").write_text(json.dumps([{"simple": "a", "detailed": "b"}, {"lay": ""}]))
        data, extra = str(tmp_path / "m.json"), ["--stage", "sft"]
    elif case in ("judge_key", "recipe"):  # recipe: the rl stage (GRPOConfig) is read from the yaml file
        extra = ["--judge_model", "gpt-4o"]
    elif case == "no_writer":
        import imageio_ffmpeg

        monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: (_ for _ in ()).throw(RuntimeError("no ffmpeg")))
    stage = {"stage": ["--stage", "nope"], "recipe": ["--config", str(REPO / "recipes" / "video_rl.yaml")]}
    stage = stage.get(case, ["--stage", "rl"])
    with pytest.raises(SystemExit) as exc:
        V.main(
            [
                *stage,
                "--data",
                data,
                "--model_name_or_path",
                "/no/model",
                "--use_cpu",
                "true",
                "--bf16",
                "false",
                *extra,
            ]
        )
    err = capsys.readouterr().err
    expected = {"missing": "data file not found", "empty": "no records", "malformed": "record 2 has no simple prompt",
                "judge_key": "OPENAI_API_KEY", "recipe": "OPENAI_API_KEY", "no_writer": "no mp4 writer available", "stage": "unknown --stage 'nope'"}  # fmt: skip
    assert exc.value.code == 2 and expected[case] in err and err.count("\n") == 1


def test_inference_bad_input(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    for argv, msg in [
        (["a dog", "--model_name_or_path", "/m", "--num_beams", "2"], "unrecognised arguments: --num_beams"),
        (["a dog", "--model_name_or_path", "/m", "--generate_video", str(tmp_path / "o.mp4"), "--video_backend",
          "openai"], "needs OPENAI_API_KEY"),
    ]:  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            V.main(argv)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and msg in err and err.count("\n") == 1


def test_openai_videos_timeout_retry_then_none_and_cache(openai_server, monkeypatch, tmp_path):
    monkeypatch.setenv("OPENAI_API_KEY", "test")
    args = V.ScriptArguments(video_backend="openai", video_base_url=openai_server.base_url, video_model="sora-2",
                             poll_interval=0.02, video_timeout=0.2, video_retries=1)  # fmt: skip
    videos, n0 = V.Videos(args, str(tmp_path)), len(openai_server.requests)
    monkeypatch.setattr(
        openai_server, "video_polls", 10**6
    )  # the job never completes: the deadline passes, one retry, then None
    assert videos(["a dog"], [0]) == [None] and videos.failures == 1
    creates = lambda: sum(r[0] == "POST" and r[1].endswith("/videos") for r in openai_server.requests[n0:])  # noqa: E731
    assert creates() == 2
    monkeypatch.setattr(openai_server, "video_polls", 1)
    first = videos(["a dog"], [0])
    assert first[0] is not None and videos(["a dog"], [0]) == first and videos.hits == 1 and creates() == 3


def test_judge_timeout_retried_and_malformed_becomes_none(openai_server, monkeypatch):
    from openai import AsyncOpenAI
    from PIL import Image

    answer = lambda body: json.dumps({"answers": [True] * (len(V.CHECKLIST) - 1) + [False]})  # noqa: E731
    monkeypatch.setattr(openai_server, "chat_handler", answer)
    frames = [Image.new("RGB", (16, 16), "red")]
    expected = (sum(w for _, w in V.CHECKLIST) - 2 * V.CHECKLIST[-1][1]) / sum(w for _, w in V.CHECKLIST)

    async def judge(fail_mode, retries):
        openai_server.fail_next(2 if fail_mode == "malformed" else 1, fail_mode)
        async with AsyncOpenAI(base_url=openai_server.base_url, api_key="test", max_retries=0, timeout=0.5) as c:
            return await V.judge_one(c, "j", frames, "a red square", retries)

    assert asyncio.run(judge("timeout", 1)) == pytest.approx(expected)  # timed out once, answered on the retry
    assert asyncio.run(judge("malformed", 1)) is None  # both tries malformed: None, not a made-up score
