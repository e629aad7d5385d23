# SPDX-License-Identifier: Apache-2.0
"""The harness itself: every tiny model loads from its folder like a hub id and produces outputs of the asked size;
tokenizers keep special tokens whole; the loopback server speaks the OpenAI API to the real client, failures included."""

import base64
import io
import json

import numpy as np
import openai
import pytest
import torch
from conftest import (
    QWEN_SPECIALS,
    make_bert_tokenizer,
    make_clip_tokenizer,
    make_qwen2_tokenizer,
    run_command,
    tiny_mp4,
)
from PIL import Image


def test_tokenizers_keep_special_tokens_whole():
    qwen = make_qwen2_tokenizer()
    for tok in QWEN_SPECIALS:
        assert len(qwen(tok, add_special_tokens=False)["input_ids"]) == 1
    text = qwen.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a cat"}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert (
        text == "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a cat<|im_end|>\n<|im_start|>assistant\n"
    )
    clip = make_clip_tokenizer()
    ids = clip("a red cube", padding="max_length", max_length=77)["input_ids"]
    assert ids[0] == 0 and ids[4] == 1 and len(ids) == 77 and 1 not in ids[1:4]  # bos, 3 words, eos = pad
    bert = make_bert_tokenizer()
    assert bert.convert_tokens_to_ids(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) == [0, 1, 2, 3, 4]
    assert bert.decode(bert("A Cat in the RAIN")["input_ids"]) == "[CLS] a cat in the rain [SEP]"


def test_language_models_generate(tiny_gpt2, tiny_qwen2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path in (tiny_gpt2, tiny_qwen2):
        tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        ids = tok(["a cat in the rain"], return_tensors="pt")
        out = model.generate(
            **ids,
            max_new_tokens=5,
            min_new_tokens=5,
            do_sample=False,
            pad_token_id=tok.pad_token_id or tok.eos_token_id,
        )
        assert out.shape == (1, ids["input_ids"].shape[1] + 5)


def test_qwen25_vl_sees_an_image(tiny_qwen25_vl):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    proc, model = (
        AutoProcessor.from_pretrained(tiny_qwen25_vl),
        AutoModelForImageTextToText.from_pretrained(tiny_qwen25_vl),
    )
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "make the sky purple"}]}]
    text = proc.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[text], images=[Image.new("RGB", (64, 64), "blue")], return_tensors="pt")
    assert inputs["pixel_values"].shape[0] > 0
    out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("fixture", ["tiny_sd15", "tiny_flux"])
def test_image_pipelines_render_requested_size(fixture, request):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(request.getfixturevalue(fixture))
    out = pipe(
        ["a cat", "a dog"],
        num_inference_steps=2,
        height=64,
        width=48,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (2, 3, 64, 48)


def test_qwen_image_edit_small_resize(tiny_qwen_image_edit, qwen_edit_small_resize, qwen_edit_patch_env):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(tiny_qwen_image_edit)
    out = pipe(
        image=Image.new("RGB", (96, 64), "red"),
        prompt="make it blue",
        num_inference_steps=2,
        true_cfg_scale=1.0,
        output_type="pil",
    )
    assert max(out.images[0].size) <= 96  # the 1024² resize is patched away (it would give ~1254x836)
    code = "from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as m; print(m.calculate_dimensions(1024 * 1024, 1.0))"
    res = run_command(["-c", code], env=qwen_edit_patch_env)
    assert res.stdout.strip() == "(64, 64, None)"


def test_qwen_patch_env_keeps_a_shadowed_sitecustomize(qwen_edit_patch_env, tmp_path):
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['SHADOWED_RAN'] = '1'\n")
    env = {**qwen_edit_patch_env, "PYTHONPATH": qwen_edit_patch_env["PYTHONPATH"] + f":{tmp_path}"}
    code = "import os, sys; print(os.environ.get('SHADOWED_RAN'), 'diffusers' in sys.modules)"
    assert run_command(["-c", code], env=env).stdout.split() == ["1", "False"]  # chained, and nothing imported early


@pytest.mark.parametrize("fixture", ["tiny_wan", "tiny_cogvideox"])
def test_video_pipelines_render_frames(fixture, request):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(request.getfixturevalue(fixture))
    kwargs = {"max_sequence_length": 16} if fixture == "tiny_cogvideox" else {}
    out = pipe("a dog surfing", num_frames=9, height=32, width=32, num_inference_steps=2, output_type="np", **kwargs)
    assert out.frames.shape[0] == 1 and out.frames.shape[2:] == (32, 32, 3) and out.frames.shape[1] >= 5


def client(server, **kw):
    return openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0, **kw)


def test_chat_structured_output_images_and_failures(openai_server):
    png = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(png, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    schema = {"type": "object", "properties": {"score": {"type": "integer"}, "why": {"type": "string"}}}
    kwargs = dict(
        model="judge",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "rate"}, {"type": "image_url", "image_url": {"url": url}}],
            }
        ],
        response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}},
    )
    res = client(openai_server).chat.completions.create(**kwargs)
    assert json.loads(res.choices[0].message.content) == {"score": 7, "why": "ok"}
    assert openai_server.images_in(openai_server.requests[-1][2]) == [png.getvalue()]
    openai_server.chat_handler = lambda body: '{"score": 3}'
    assert client(openai_server).chat.completions.create(**kwargs).choices[0].message.content == '{"score": 3}'
    openai_server.fail_next(1, "500")
    with pytest.raises(openai.InternalServerError):
        client(openai_server).chat.completions.create(**kwargs)
    openai_server.fail_next(1, "malformed")
    with pytest.raises(json.JSONDecodeError):
        json.loads(client(openai_server).chat.completions.create(**kwargs).choices[0].message.content)
    openai_server.timeout_sleep = 1.0
    openai_server.fail_next(1, "timeout")
    with pytest.raises(openai.APITimeoutError):
        client(openai_server, timeout=0.3).chat.completions.create(**kwargs)
    assert client(openai_server).chat.completions.create(**kwargs).choices[0].message.content == '{"score": 3}'


def test_videos_create_poll_download_and_failure(openai_server):
    import imageio.v3 as iio

    c = client(openai_server)
    openai_server.video_polls = 2
    video = c.videos.create(model="sora-2", prompt="a dog surfing", seconds="4", size="720x1280")
    assert video.status == "queued" and openai_server.requests[-1][2]["prompt"] == "a dog surfing"
    assert c.videos.retrieve(video.id).status == "in_progress"
    assert c.videos.retrieve(video.id).status == "completed"
    frames = iio.imread(c.videos.download_content(video.id).read(), extension=".mp4")
    assert frames.shape == (8, 64, 64, 3)
    openai_server.fail_video_next(1)
    bad = c.videos.create(model="sora-2", prompt="a cat")
    c.videos.retrieve(bad.id)
    failed = c.videos.retrieve(bad.id)
    assert failed.status == "failed" and failed.error.code == "injected"
    assert not np.array_equal(frames[0, 40, 40], iio.imread(tiny_mp4("a cat"), extension=".mp4")[0, 40, 40])
