# SPDX-License-Identifier: Apache-2.0
"""grpo_image_edit.py on tiny Qwen2.5-VL + tiny Qwen-Image-Edit (64² resize patch) + the loopback judge: embeddings
match the pipeline's own encoder, the prefix drop, batching, GRPO moves only LoRA, the judge, inference, bad input."""

import itertools
import json

import pytest
import torch
from conftest import REPO, run_command
from PIL import Image
from safetensors.torch import load_file

import grpo_image_edit as G


@pytest.fixture(scope="module")
def pipe(tiny_qwen_image_edit):
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(tiny_qwen_image_edit)


def test_prefix_is_64_tokens_of_the_template(pipe):
    prefix = pipe.prompt_template_encode.split("<|vision_start|>")[0]
    assert pipe.prompt_template_encode_start_idx == 64 and prefix.endswith("<|im_start|>user\n")
    assert G.system_prompt(pipe).startswith("Describe the key features of the input image")


def test_no_response_embeddings_equal_the_pipeline_encoder(pipe, qwen_edit_small_resize):
    images = [Image.new("RGB", (64, 48), "red"), Image.new("RGB", (64, 48), "blue")]
    instructions = ["make the sky purple", "add a small boat on the left"]
    embeds, mask = G.edit_embeddings(
        pipe.text_encoder, pipe.processor, pipe, images, instructions, ["", ""], with_response=False
    )
    for i in range(2):
        ref, ref_mask = pipe.encode_prompt(prompt=instructions[i], image=G.vlm_view(images[i]), device="cpu")
        one, one_mask = G.edit_embeddings(
            pipe.text_encoder,
            pipe.processor,
            pipe,
            images[i : i + 1],
            instructions[i : i + 1],
            [""],
            with_response=False,
        )
        # alone: bit-identical to the pipeline's own encoder
        assert ref_mask is None and one_mask.all() and torch.equal(one, ref.detach())
        n = int(mask[i].sum())  # in a padded batch: same tokens, padding-level float noise, zero rows after the end
        assert n == ref.shape[1] and torch.allclose(embeds[i, :n], ref[0], atol=1e-3) and not embeds[i, n:].any()


def test_response_extends_the_same_prefix_and_batching_is_exact(pipe, qwen_edit_small_resize):
    image = Image.new("RGB", (64, 64), "green")
    base, _ = G.edit_embeddings(
        pipe.text_encoder, pipe.processor, pipe, [image], ["make it blue"], [""], with_response=False
    )
    alone, m1 = G.edit_embeddings(
        pipe.text_encoder, pipe.processor, pipe, [image], ["make it blue"], ["the sky turns blue"]
    )
    # the response rows keep the instruction tokens and add the assistant turn; nothing of the user part is lost
    assert m1.sum() > base.shape[1] and torch.allclose(alone[0, : base.shape[1] - 1], base[0, :-1], atol=1e-5)
    both, m2 = G.edit_embeddings(
        pipe.text_encoder, pipe.processor, pipe, [image, image], ["make it blue"] * 2, ["the sky turns blue", "x"]
    )
    assert torch.allclose(both[0, : int(m1.sum())], alone[0], atol=1e-3) and m2[1].sum() < m2[0].sum()


COMMON = ["--report_to", "none", "--use_cpu", "true", "--bf16", "false", "--save_strategy", "no", "--logging_steps", "1",
          "--max_steps", "2", "--per_device_train_batch_size", "4", "--num_generations", "4", "--max_completion_length", "6",
          "--gradient_checkpointing", "false", "--num_inference_steps", "2", "--true_cfg_scale", "1.0"]  # fmt: skip


def test_grpo_via_accelerate_moves_only_lora(
    tiny_qwen25_vl, tiny_qwen_image_edit, qwen_edit_patch_env, openai_server, tmp_path
):
    Image.new("RGB", (64, 64), "red").save(tmp_path / "a.png")
    (tmp_path / "d.jsonl").write_text(json.dumps({"image": "a.png", "instruction": "make it blue"}) + "\n")
    # instruction following 0, 2, 4, ... with quality 5: known rewards (0.6 IF + 0.4 Q) / 10
    counter = itertools.count()
    openai_server.chat_handler = lambda b: json.dumps(
        {"reasoning": "r", "instruction_following": 2 * (next(counter) % 6), "perceptual_quality": 5}
    )
    openai_server.fail_next(1, "malformed")  # no retries: that sample's reward is None (counted), not 0.5
    out = tmp_path / "run"
    launch = (
        "accelerate launch --cpu --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no".split()
    )
    res = run_command(
        [*launch, "grpo_image_edit.py", "--data", str(tmp_path / "d.jsonl"), "--model_name_or_path", tiny_qwen25_vl,
         "--pipeline", tiny_qwen_image_edit, "--output_dir", str(out), "--use_peft", "--lora_target_modules", "q_proj", "v_proj",
         "--learning_rate", "1e-2", "--judge_base_url", openai_server.base_url, "--judge_retries", "0", "--log_images_every", "1", *COMMON],
        env={**qwen_edit_patch_env, "OPENAI_API_KEY": "test"},
    )  # fmt: skip
    # only LoRA tensors are saved: the base weights are untouched
    adapter = load_file(out / "adapter_model.safetensors")
    assert (
        adapter
        and all("lora_" in k for k in adapter)
        and any(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    )
    trainable = sum(v.numel() for v in adapter.values())  # the script prints its count of trainable parameters
    assert f"trainable parameters {trainable:,} " in res.stdout
    logs = [eval(line) for line in res.stdout.splitlines() if line.startswith("{'loss'")]  # noqa: S307
    assert [float(log["judge/failures"]) for log in logs] == [1.0, 0.0] and "time/diffusion_s" in logs[0]
    # step 1: the malformed answer is skipped, IF 0, 2, 4 -> 0.20, 0.32, 0.44; step 2: IF 6, 8, 10, 0 -> mean 0.56
    assert [float(log["rewards/edit_reward/mean"]) for log in logs] == pytest.approx([0.32, 0.56], abs=1e-3)
    judged = [r for r in openai_server.requests if r[1].endswith("/chat/completions")]
    assert len(judged) == 8 and len(openai_server.images_in(judged[0][2])) == 2  # source and edited image
    assert (out / "grids" / "step000000.png").is_file()


def test_judge_averages_n_evals(openai_server, monkeypatch):
    import asyncio

    from openai import AsyncOpenAI

    scores = iter([(10, 0), (4, 10), (7, 7)])
    openai_server.chat_handler = lambda b: (
        lambda s: json.dumps({"reasoning": "", "instruction_following": s[0], "perceptual_quality": s[1]})
    )(next(scores))
    args = G.ScriptArguments(judge_model="j", judge_n_evals=2, judge_retries=0)
    img = Image.new("RGB", (8, 8))

    async def run():
        async with AsyncOpenAI(base_url=openai_server.base_url, api_key="t", max_retries=0) as c:
            return await G.judge_edit(c, args, img, img, "x")

    assert asyncio.run(run()) == pytest.approx(((0.6 * 10 + 0) + (0.6 * 4 + 0.4 * 10)) / 2 / 10)
    openai_server.fail_next(1, "500")
    assert asyncio.run(run()) is None  # one of the n_evals calls failed with no retry left
    # a malformed answer is retried (after a backoff) and the retry's score counts; weights are configurable
    openai_server.chat_handler = lambda b: json.dumps(
        {"reasoning": "", "instruction_following": 3, "perceptual_quality": 9}
    )
    args = G.ScriptArguments(judge_model="j", judge_n_evals=1, judge_retries=1, if_weight=1.0, quality_weight=0.0)
    openai_server.fail_next(1, "malformed")
    assert asyncio.run(run()) == pytest.approx(0.3)


def test_inference_cli(tiny_qwen25_vl, tiny_qwen_image_edit, qwen_edit_patch_env, tmp_path):
    Image.new("RGB", (64, 48), "red").save(tmp_path / "in.png")
    res = run_command(["grpo_image_edit.py", "make the sky purple", "--image", str(tmp_path / "in.png"), "--model_name_or_path", tiny_qwen25_vl,
                       "--pipeline", tiny_qwen_image_edit, "--output", str(tmp_path / "out.png"), "--max_new_tokens", "4",
                       "--num_inference_steps", "2", "--true_cfg_scale", "1.0"], env=qwen_edit_patch_env)  # fmt: skip
    assert res.stdout.strip() and Image.open(tmp_path / "out.png").size == (64, 64)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "image not found"),
        ("notimage", "not an image"),
        ("empty", "empty instruction"),
        ("key", "OPENAI_API_KEY"),
    ],
)
def test_bad_input(case, message, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    (tmp_path / "x.png").write_text("not a png")
    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    argv = {"missing": ["edit it", "--image", str(tmp_path / "none.png")], "notimage": ["edit it", "--image", str(tmp_path / "x.png")],
            "empty": ["  ", "--image", str(tmp_path / "ok.png")], "key": ["--data", str(tmp_path / "d.jsonl"), "--use_cpu", "true"]}[case]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        G.main([*argv, "--model_name_or_path", "/no/model"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1


def test_recipe_and_demo_data_parse(monkeypatch):
    monkeypatch.chdir(REPO)  # the recipe's data path is relative to the repo root
    from trl import GRPOConfig, ModelConfig, TrlParser

    parser = TrlParser((G.ScriptArguments, GRPOConfig, ModelConfig))
    args, training_args, model_args = parser.parse_args_and_config(
        ["--config", "recipes/image_edit_qwen7b.yaml", "--bf16", "false", "--use_cpu", "true"]
    )
    assert (args.judge_n_evals, args.if_weight, training_args.num_generations, model_args.lora_r) == (3, 0.6, 16, 128)
    rows = G.read_rows(args.data)
    assert len(rows) == 6 and all(r["instruction"].strip() for r in rows) and rows[0]["image"].size == (96, 64)


def test_cfg_negatives_are_the_pipelines_blank_prompt_and_only_when_needed(pipe, qwen_edit_small_resize):
    image = Image.new("RGB", (64, 64), "green")
    args = G.ScriptArguments(true_cfg_scale=4.0)
    embeds, mask, neg, neg_mask = G.edit_conditions(
        pipe.text_encoder, pipe.processor, pipe, [image], ["make it blue"], ["sky turns blue"], args
    )
    ref, _ = pipe.encode_prompt(prompt=" ", image=G.vlm_view(image), device="cpu")
    n = int(neg_mask[0].sum())  # the plain template, no completion or closing <|im_end|> appended
    assert n == ref.shape[1] and torch.allclose(neg[0, :n], ref[0].detach(), atol=1e-3) and mask[0].sum() > n
    args.true_cfg_scale = 1.0
    assert G.edit_conditions(pipe.text_encoder, pipe.processor, pipe, [image], ["make it blue"], ["x"], args)[2:] == (
        None,
        None,
    )
