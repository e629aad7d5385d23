# SPDX-License-Identifier: Apache-2.0
"""Shipped accelerate configs parse as `accelerate launch` reads them; benchmarks/memory.py counts the real
architectures' parameters (checked against the numbers their model cards publish) and every full-run recipe fits the
hardware its header names with >= 10 % headroom."""

import sys

import pytest
import yaml
from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import memory  # noqa: E402

CONFIGS = {  # file -> what accelerate must make of it
    "multi_gpu.yaml": dict(multi_gpu=True, use_deepspeed=False, use_fsdp=False),
    "zero2.yaml": dict(use_deepspeed=True, zero_stage=2, mixed_precision="bf16"),
    "zero3.yaml": dict(use_deepspeed=True, zero_stage=3, mixed_precision="bf16"),
    "fsdp2.yaml": dict(use_fsdp=True, fsdp_version=2, mixed_precision="bf16"),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_accelerate_config_is_what_accelerate_launch_reads(name):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    path = REPO / "recipes" / "accelerate" / name
    args = launch_command_parser().parse_args(["--config_file", str(path), "r1_prompter.py"])
    args, _, _ = _validate_launch_command(args)  # the same merge of file + flags that `accelerate launch` does
    assert args.num_processes == 8
    for key, value in CONFIGS[name].items():
        assert str(getattr(args, key)) == str(value), (name, key, getattr(args, key))


# Published sizes (model cards / papers): Qwen2.5 cards list 3.09 B, 7.61 B, 14.7 B; Qwen2.5-VL-7B 8.29 B (hub
# safetensors metadata); FLUX.1-dev "12 billion"; T5 v1.1 XXL encoder 4.76 B; Qwen-Image "20B MMDiT"; Wan2.1 "1.3B";
# SD1.x UNet 860 M (LDM paper); OpenCLIP ViT-H-14 986 M; GPT-2 small 124 M.
PUBLISHED = {
    "qwen2.5-3b": (3.09e9, 0.01),
    "qwen2.5-7b": (7.61e9, 0.01),
    "qwen2.5-14b": (14.7e9, 0.01),
    "qwen2.5-vl-7b": (8.29e9, 0.01),
    "flux-dit": (12e9, 0.02),
    "t5-xxl": (4.76e9, 0.01),
    "qwen-image-dit": (20.4e9, 0.01),
    "wan-1.3b-dit": (1.42e9, 0.01),
    "sd15-unet": (860e6, 0.01),
    "clip-vit-h-14": (986e6, 0.01),
    "gpt2": (124e6, 0.01),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_meta_device_counts_match_published_sizes(name):
    expected, rel = PUBLISHED[name]
    assert memory.params(name) == pytest.approx(expected, rel=rel)


def test_zero2_accounting_by_hand():
    """r1 recipe under ZeRO-2 on 8 GPUs: bf16 weights (2 B) + bf16 grads and fp32 master + 2 moments (14 B) / 8, a bf16
    reference copy (beta 0.04), FLUX.1-dev in bf16 and ImageReward in fp32, recomputed here from the counts."""
    path = REPO / "recipes" / "r1_prompter.yaml"
    rows, cfg = memory.recipe_rows(path, "recipes/accelerate/zero2.yaml", 8)
    p = memory.params("qwen2.5-3b")
    flux = sum(memory.params(n) for n in ("flux-dit", "t5-xxl", "clip-text-l", "flux-vae"))
    expected = (2 * p + 14 * p / 8 + 2 * p + 2 * flux + 4 * memory.params("imagereward-blip")) / memory.GIB
    weights = sum(r.gib for r in rows if not r.part.startswith("activations"))
    assert cfg["beta"] > 0 and cfg["image_metrics"].startswith("imagereward")
    assert weights == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("recipe", memory.RECIPES)
def test_recipe_fits_its_stated_hardware(recipe, capsys):
    path = REPO / "recipes" / recipe
    n, card, config = memory._hardware(path)
    assert config == "single" or (REPO / config).is_file()
    assert yaml.safe_load(path.read_text())  # parses
    total, capacity, fits = memory.report(path, show_all=False)
    assert fits, f"{recipe}: {total:.1f} GiB > 90 % of {capacity} GiB\n{capsys.readouterr().out}"


def test_readme_memory_table_is_the_computed_one():
    """The README's table is exactly what `python benchmarks/memory.py --markdown` prints (it cannot drift)."""
    table = memory.markdown([REPO / "recipes" / r for r in memory.RECIPES])
    assert table in (REPO / "README.md").read_text()
