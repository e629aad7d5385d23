# SPDX-License-Identifier: Apache-2.0
"""One GPU check: every script's real architecture with random weights, timed and measured in one command.

    python benchmarks/gpu_check.py                 # one H100/H200, CUDA required, no hub: <= 8 min, writes gpu_check.json
    python benchmarks/gpu_check.py --tiny          # the same code with tiny configs on the CPU (tests run this)
    python benchmarks/gpu_check.py --only epd_ppo  # one part

Every model is built from the configs written out in benchmarks/memory.py (ARCHS; tiny twins under the same names in
TINY below) with random weights, in the precision its script uses on CUDA, and driven through the scripts' own
functions (batched rendering, beam search, the PPO step, the edit conditioning, scoring), so the check measures the code
users run and breaks loudly when that code changes. Each part runs in its own subprocess with a time budget: an error
or an out-of-memory in one part is reported in the table and the others still run. Ratios are measured side by side in
the same process. Tokenizers are built offline (the real CLIP BPE ships inside open_clip; the others are small BPEs
padded to the real vocabulary size, so sequence lengths and LM-head costs are real but the text is not).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "benchmarks")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PARTS = ["promptist", "r1_prompter", "epd_ppo", "grpo_image_edit", "video_enhancer", "score"]
BUDGET_S = {  # wall-clock budget per part on one H100/H200 (subprocess start and model building included); sum 8 min
    "promptist": 60,
    "r1_prompter": 90,
    "epd_ppo": 60,
    "grpo_image_edit": 105,
    "video_enhancer": 75,
    "score": 90,
}


########################
# tiny twins of benchmarks/memory.py ARCHS (sizes shrunk, categorical values kept)
########################
TINY_QWEN = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, tie_word_embeddings=False)  # fmt: skip
TINY_CLIP_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
TINY_T5 = dict(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
               feed_forward_proj="gated-gelu")  # fmt: skip
TINY = {
    "qwen2.5-3b": ("transformers.Qwen2ForCausalLM", "transformers.Qwen2Config", dict(TINY_QWEN, vocab_size=600)),
    "qwen2.5-14b": ("transformers.Qwen2ForCausalLM", "transformers.Qwen2Config", dict(TINY_QWEN, vocab_size=600)),
    "qwen2.5-vl-7b": ("transformers.Qwen2_5_VLForConditionalGeneration", "transformers.Qwen2_5_VLConfig",
                      dict(text_config=dict(TINY_QWEN, vocab_size=600,
                                            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default"}),
                           vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2,
                                              out_hidden_size=32, fullatt_block_indexes=[1], window_size=112))),
    "flux-dit": ("diffusers.FluxTransformer2DModel", None,
                 dict(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=16,
                      num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                      axes_dims_rope=(4, 4, 8))),
    "t5-xxl": ("transformers.T5EncoderModel", "transformers.T5Config", dict(vocab_size=600, **TINY_T5)),
    "umt5-xxl": ("transformers.UMT5EncoderModel", "transformers.UMT5Config", dict(vocab_size=600, **TINY_T5)),
    "clip-text-l": ("transformers.CLIPTextModel", "transformers.CLIPTextConfig",
                    dict(projection_dim=32, **TINY_CLIP_TEXT)),
    "clip-text-l-proj": ("transformers.CLIPTextModelWithProjection", "transformers.CLIPTextConfig",
                         dict(projection_dim=32, **TINY_CLIP_TEXT)),
    "flux-vae": ("diffusers.AutoencoderKL", None,
                 dict(block_out_channels=(4,), layers_per_block=1, latent_channels=1, norm_num_groups=1,
                      use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)),
    "sd15-unet": ("diffusers.UNet2DConditionModel", None,
                  dict(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, cross_attention_dim=32,
                       down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                       up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))),
    "sd-vae": ("diffusers.AutoencoderKL", None,
               dict(block_out_channels=(32, 64), latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                    up_block_types=("UpDecoderBlock2D",) * 2)),
    "qwen-image-dit": ("diffusers.QwenImageTransformer2DModel", None,
                       dict(patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16,
                            num_attention_heads=3, joint_attention_dim=32, guidance_embeds=False,
                            axes_dims_rope=(8, 4, 4))),
    "qwen-image-vae": ("diffusers.AutoencoderKLQwenImage", None,
                       dict(base_dim=24, z_dim=4, dim_mult=[1, 2, 4], num_res_blocks=1,
                            temperal_downsample=[False, True], latents_mean=[0.0] * 4, latents_std=[1.0] * 4)),
    "wan-1.3b-dit": ("diffusers.WanTransformer3DModel", None,
                     dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=16,
                          out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
                          qk_norm="rms_norm_across_heads", rope_max_seq_len=32)),
    "wan-vae": ("diffusers.AutoencoderKLWan", None,
                dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                     temperal_downsample=[False, True, True])),
    "gpt2": ("transformers.GPT2LMHeadModel", "transformers.GPT2Config",
             dict(n_embd=64, n_layer=2, n_head=4, n_positions=256, vocab_size=600)),
    # score.py's reward models (benchmarks/score_bench.py writes them in the checkpoint layouts score.py loads)
    "clip-vit-h-14": ("transformers.CLIPModel", "transformers.CLIPConfig",
                      dict(projection_dim=16, text_config=dict(TINY_CLIP_TEXT, hidden_act="gelu"),
                           vision_config=dict(TINY_CLIP_TEXT, patch_size=14, hidden_act="gelu"))),
    "clip-vit-l-14": ("transformers.CLIPModel", "transformers.CLIPConfig",
                      dict(projection_dim=16, text_config=TINY_CLIP_TEXT, vision_config=dict(TINY_CLIP_TEXT, patch_size=14))),
    "imagereward-blip": ("transformers.BlipForImageTextRetrieval", "transformers.BlipConfig",
                         dict(vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                                 num_attention_heads=1, patch_size=16, image_size=224),
                              text_config=dict(vocab_size=30524, hidden_size=32, intermediate_size=37,
                                               num_hidden_layers=2, num_attention_heads=2, encoder_hidden_size=64,
                                               max_position_embeddings=64),
                              image_text_hidden_size=16)),
    "qwen2-vl-7b-reward": ("transformers.Qwen2VLModel", "transformers.Qwen2VLConfig",
                           dict(text_config=TINY_QWEN,
                                vision_config=dict(depth=2, embed_dim=16, hidden_size=32, mlp_ratio=4, num_heads=2,
                                                   patch_size=14, spatial_merge_size=2))),
}  # fmt: skip


########################
# parts: each script's benchmark owns its `gpu_check(tiny) -> dict` (real architectures from memory.ARCHS, tiny twins
# from TINY above, driven through the script's own functions); here each dict becomes rows with the goals
########################
BENCH = {
    "promptist": "promptist_bench",
    "r1_prompter": "r1_bench",
    "epd_ppo": "epd_bench",
    "grpo_image_edit": "image_edit_bench",
    "video_enhancer": "video_bench",
    "score": "score_bench",
}
GIB_PER_GB = 1e9 / 2**30
GOALS = {  # part -> (result key, what, unit, goal text, test on the value)
    "promptist": [
        ("optimise_speedup", "GPT-2 (8-bit) beams, 32 prompts: batched vs per prompt", "x", ">= 4x", lambda v: v >= 4),
        ("render_peak_gib", "SD1.5 fp16 512² render: peak allocated", "GiB", "<= 4.5 GB", lambda v: v <= 4.5 * GIB_PER_GB),
        ("optimise_peak_gib", "GPT-2 8-bit beam search: peak allocated", "GiB", "<= 4.5 GB", lambda v: v <= 4.5 * GIB_PER_GB),
    ],
    "r1_prompter": [
        ("sd15_speedup", "16 completions at 512², SD1.5: batched vs one per call", "x", ">= 3x", lambda v: v >= 3),
        ("flux_speedup", "16 completions at 512², FLUX.1-dev arch: batched vs one per call", "x", "", None),
        ("qwen_group_s", "Qwen2.5-3B: one group, 4 x 256 sampled tokens", "s", "", None),
    ],
    "epd_ppo": [
        ("step_s", "one PPO step, rollout 8, K 2, N 11, SD1.5 + HPS ViT-H", "s", "<= 3 s (RLEPD 8.4 s)", lambda v: v <= 3),
        ("k_speedup", "EPD sampling: K points in one UNet call vs one call per point", "x", "", None),
    ],
    "grpo_image_edit": [
        ("peak_gib", "Qwen2.5-VL-7B LoRA + Qwen-Image DiT + VAE, one GRPO step, 1 MP, -2509 (recipe): peak", "GiB",
         "fits 80 GB (<= 71.6 GiB)", lambda v: v <= 0.9 * 79.6),
        ("edit_peak_gib", "the same with Qwen-Image-Edit (1 MP VLM view, worst case): peak", "GiB",
         "fits 80 GB (<= 71.6 GiB)", lambda v: v <= 0.9 * 79.6),
    ],
    "video_enhancer": [
        ("speedup", "Wan 1.3B, 33 frames 480p, 4 steps: batched per group vs one at a time", "x", ">= 1.5x",
         lambda v: v >= 1.5),
        ("speedup_at_default_steps_derived", "the same at 30 steps (derived from the measured phases)", "x", ">= 1.5x",
         lambda v: v >= 1.5),
    ],
    "score": [],
}  # fmt: skip


def run_part(name: str, tiny: bool) -> list[dict]:
    """One part in this process: its benchmark's gpu_check, then rows (goal rows first, the other numbers after)."""
    import importlib

    res = importlib.import_module(BENCH[name]).gpu_check(tiny=tiny)
    rows, seen = [], {"device", "tiny"}
    for key, what, unit, goal, test in GOALS[name]:
        value, seen = res.get(key), seen | {key}
        value = None if tiny and key.endswith("_gib") else value
        ok = None if (tiny or test is None or value is None) else bool(test(value))  # no verdicts on the CPU dry run
        rows.append(dict(script=name, what=what, key=key, value=value, unit=unit, goal=goal, ok=ok))
    for key, value in res.items():
        if key not in seen and isinstance(value, int | float | type(None)):
            value = None if tiny and key.endswith("_gib") else value  # no GPU memory on the CPU dry run
            rows.append(dict(script=name, what=key, key=key, value=value, unit="", goal="", ok=None))
    return rows


########################
# driver: each part in its own subprocess with a budget; one table; gpu_check.json
########################
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny configs on the CPU (the same code; for tests)")
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts (repeatable)")
    parser.add_argument("--out", default="gpu_check.json", help="where the JSON results go")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # internal: run one part in this process
    args = parser.parse_args(argv)
    if args.part:
        print("RESULT " + json.dumps(run_part(args.part, args.tiny)))
        return 0
    if not args.tiny:
        import torch

        if not torch.cuda.is_available():
            print("error: the GPU check needs CUDA (use --tiny for the CPU dry run)", file=sys.stderr)
            return 2
        device = torch.cuda.get_device_name()
    else:
        device = "cpu (tiny configs)"
    results, t_start = [], time.perf_counter()
    for part in args.only or PARTS:
        budget = BUDGET_S[part] * (4 if args.tiny else 1)  # the CPU dry run is slower per FLOP but tiny
        cmd = [sys.executable, __file__, "--part", part, *(["--tiny"] if args.tiny else [])]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=budget, cwd=REPO)
            lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
            if res.returncode == 0 and lines:
                rows, status = json.loads(lines[-1][7:]), "ok"
            else:
                tail = (res.stderr or res.stdout).strip().splitlines()[-1:] or ["no output"]
                oom = "OutOfMemoryError" in res.stderr or "out of memory" in res.stderr
                rows, status = [], ("OOM: " if oom else f"failed (exit {res.returncode}): ") + tail[0][:200]
        except subprocess.TimeoutExpired:
            rows, status = [], f"over its {budget} s budget"
        results.append(dict(part=part, status=status, seconds=round(time.perf_counter() - t0, 1), rows=rows))
        print(f"[{part}] {status} in {results[-1]['seconds']} s", file=sys.stderr, flush=True)
    header = "| script | what | measured | goal | ok |\n|---|---|---|---|---|"
    lines = [header]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"| {r['part']} | (part) | {r['status']} | | no |")
        for row in r["rows"]:
            ok = {True: "yes", False: "NO", None: ""}[row["ok"]]
            lines.append(
                f"| {row['script']} | {row['what']} | {fmt(row['value'])} {row['unit']} | {row['goal']} | {ok} |"
            )
    print("\n".join(lines))
    out = dict(device=device, tiny=args.tiny, date=time.strftime("%Y-%m-%d"), seconds=round(time.perf_counter() - t_start, 1),
               parts=results)  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out} ({out['seconds']} s on {device})", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
