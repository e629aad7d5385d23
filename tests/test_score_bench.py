# SPDX-License-Identifier: Apache-2.0
"""benchmarks/score_bench.py's GPU check at the REAL sizes without a GPU: what its --tiny run cannot see (the real
configs, the padded vocabularies, HPSv3's 16.6 GB checkpoint that is never written) checked on the meta device."""

import sys

import open_clip
import torch
from conftest import QWEN_SPECIALS, REPO
from tiny_scorers import HPSV3_TEXT, make_hpsv3_tokenizer

sys.path.insert(0, str(REPO / "benchmarks"))
import memory  # noqa: E402
import score_bench  # noqa: E402


def test_real_hpsv3_loads_through_score_from_memory(tmp_path):
    """Qwen2-VL-7B + reward head at full size, built on the meta device, handed to score.py's loader in memory: every
    tensor maps (strict load), the embedding has the tokenizer's rows, the M-RoPE split is the released config's."""
    with score_bench.on("meta"):  # score.py's own modules (the head) on the meta device too: no data to copy
        scorer = score_bench.load_hpsv3(tmp_path, memory.ARCHS["qwen2-vl-7b-reward"][2], "meta", torch.bfloat16)
    rows = score_bench.QWEN2VL_TOKENS + 1  # + <|Reward|>
    config = scorer.model.config
    assert len(scorer.processor.tokenizer) == rows == config.text_config.vocab_size
    assert scorer.reward_id == rows - 1
    assert config.text_config.rope_parameters["mrope_section"] == [16, 24, 24]  # Qwen2-VL-7B-Instruct config.json
    assert config.vision_config.hidden_size == config.text_config.hidden_size == 3584
    # memory.ARCHS counts the backbone with the config's 152,064 embedding rows; HPSv3 resized them to the tokenizer
    assert (
        sum(p.numel() for p in scorer.model.parameters())
        == memory.params("qwen2-vl-7b-reward") - (152064 - rows) * 3584
    )
    assert [m.weight.shape[::-1] for m in scorer.head if hasattr(m, "weight")] == [(3584, 1024), (1024, 16), (16, 2)]


def test_hpsv3_tokenizer_is_padded_without_changing_the_text():
    padded, plain = make_hpsv3_tokenizer(score_bench.QWEN2VL_TOKENS), make_hpsv3_tokenizer()
    assert len(padded) == 151657
    assert [padded.convert_tokens_to_ids(t) for t in QWEN_SPECIALS] == list(range(151657 - len(QWEN_SPECIALS), 151657))
    text = HPSV3_TEXT.format(text_prompt="a photo of 3 red cubes on a blue table")
    pieces = padded.convert_ids_to_tokens(padded(text)["input_ids"])
    assert pieces == plain.convert_ids_to_tokens(plain(text)["input_ids"])
    assert len(pieces) < 600  # whole words (conftest's 400-piece BPE: ~1,700 pieces)


def test_open_clip_vit_h_14_is_the_architecture_memory_counts():
    """The real HPSv2 run writes open_clip's built-in ViT-H-14 and checks it against memory.ARCHS (PickScore, MPS)."""
    with torch.device("meta"):
        model = open_clip.create_model("ViT-H-14", device="meta")
    assert sum(p.numel() for p in model.parameters()) == memory.params("clip-vit-h-14") == 986109441
