#!/usr/bin/env python
"""Measure BALM-TSF training/inference throughput, peak memory and LLM utilisation; print a table, write JSON."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from balm_hf import BalmTsfConfig  # noqa: E402
from balm_hf.training import apply_overrides  # noqa: E402
from research.benchmarking import (  # noqa: E402
    BenchmarkSetting,
    iter_settings,
    machine_info,
    matmul_peak_gflops,
    measure_interleaved,
    run_isolated,
)


# The original implementation measured on a 2-core CPU of the same kind (Intel Xeon), batch 24, L=512, H=96.
ORIGINAL_REFERENCE = {
    ("gpt2-shape", 768, "fp32"): {
        "train_samples_per_s": 9.9,
        "inference_samples_per_s_bs24": 19.8,
        "peak_rss_mb": 2768,
    },
    ("gpt2-shape", 768, "bf16"): {
        "train_samples_per_s": 28.2,
        "inference_samples_per_s_bs24": 42.7,
        "peak_rss_mb": 1762,
    },
    ("gpt2-shape", 384, "fp32"): {
        "train_samples_per_s": 27.1,
        "inference_samples_per_s_bs24": 57.5,
        "peak_rss_mb": 1529,
    },
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--backbones",
        nargs="+",
        default=["gpt2-shape"],
        help="gpt2-shape (random GPT-2 architecture from a config) or Hub ids / local folders",
    )
    parser.add_argument("--llm-width", type=int, default=768, help="width of the gpt2-shape backbone")
    parser.add_argument("--llm-layers", type=int, default=6)
    parser.add_argument("--modes", nargs="+", default=["paper", "fast"], choices=["paper", "fast"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=24)
    parser.add_argument("--inference-batch-sizes", type=int, nargs="+", default=[24, 256])
    parser.add_argument("--context-length", type=int, default=512)
    parser.add_argument("--prediction-length", type=int, default=96)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--d-ff", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="torch.compile the LLM backbone")
    parser.add_argument("--no-llm-share", action="store_true", help="skip the no-LLM runs that split step time")
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="BalmTsfConfig override applied on top of the mode's switches (e.g. trim_last_block=false for an A/B)",
    )
    parser.add_argument(
        "--versus",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="instead of the isolated runs, measure each setting and the same setting with these BalmTsfConfig "
        "overrides side by side, step by step in one process (A/B ratios that machine drift does not move), e.g. "
        "the straightforward path: --versus trim_last_block=false --versus fast_dropout=false "
        "--versus use_prefix_cache=false",
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds of --versus (median reported)")
    parser.add_argument(
        "--output", type=Path, default=None, help="JSON file to write (e.g. research/results/benchmark_cpu.json)"
    )
    return parser.parse_args(argv)


def parse_config_overrides(items: list[str]) -> dict:
    """`["key=value", ...]` -> `{key: value}` (YAML values such as `false`, `2`), checked against the config."""
    try:
        overrides = apply_overrides({}, items)
    except ValueError as error:
        raise SystemExit(f"--config expects KEY=VALUE: {error}") from None
    unknown = set(overrides) - set(BalmTsfConfig().to_dict())
    if unknown:
        raise SystemExit(f"--config: unknown BalmTsfConfig arguments {sorted(unknown)}")
    return overrides


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    common = dict(
        llm_layers=args.llm_layers,
        llm_width=args.llm_width,
        batch_size=args.batch_size,
        inference_batch_sizes=tuple(args.inference_batch_sizes),
        context_length=args.context_length,
        prediction_length=args.prediction_length,
        d_model=args.d_model,
        d_ff=args.d_ff,
        steps=args.steps,
        warmup=args.warmup,
        compile=args.compile,
        extra=parse_config_overrides(args.config),
    )
    peaks = {
        "fp32": matmul_peak_gflops(__import__("torch").float32),
        "bf16": matmul_peak_gflops(__import__("torch").bfloat16),
    }
    if args.versus:
        return run_versus(args, common, parse_config_overrides(args.versus), peaks)
    rows = []
    for setting in iter_settings(args.backbones, args.modes, args.precisions, **common):
        train = run_isolated(setting, "train")
        inference = run_isolated(setting, "inference")
        row = {
            **train,
            **{
                k: v
                for k, v in inference.items()
                if k.startswith(
                    ("inference", "llm_inf", "matmul_probe_gflops_inference", "llm_projection_matmul_gflops_inference")
                )
            },
        }
        row["peak_rss_mb_train"] = train["peak_rss_mb"]
        row["peak_rss_mb_inference"] = inference["peak_rss_mb"]
        if row["text_branch"] == "llm":
            add_inference_utilisation(row, peaks)
        if not args.no_llm_share:
            twin = BenchmarkSetting(
                **{
                    **row["setting"],
                    "extra": {**setting.extra, "text_branch": "no_llm"},
                    "inference_batch_sizes": tuple(args.inference_batch_sizes),
                }
            )
            outside = run_isolated(twin, "train")["train_step_s"]
            add_training_utilisation(row, outside, setting.batch_size, peaks)
        reference = ORIGINAL_REFERENCE.get((setting.backbone, setting.llm_width, setting.precision))
        if reference and setting.llm_layers == 6 and setting.batch_size == 24:
            row["original"] = reference
            row["train_speedup_vs_original"] = row["train_samples_per_s"] / reference["train_samples_per_s"]
            row["inference_speedup_vs_original"] = (
                row["inference_samples_per_s_bs24"] / reference["inference_samples_per_s_bs24"]
                if "inference_samples_per_s_bs24" in row
                else None
            )
            fp32 = ORIGINAL_REFERENCE[(setting.backbone, setting.llm_width, "fp32")]
            row["train_speedup_vs_original_fp32"] = row["train_samples_per_s"] / fp32["train_samples_per_s"]
            if "inference_samples_per_s_bs24" in row:
                row["inference_speedup_vs_original_fp32"] = (
                    row["inference_samples_per_s_bs24"] / fp32["inference_samples_per_s_bs24"]
                )
        rows.append(row)
        print(format_row(row), flush=True)
    report = {"machine": machine_info(), "matmul_peak_gflops": peaks, "command": " ".join(sys.argv), "rows": rows}
    print(format_table(report))
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    return rows


def add_training_utilisation(row: dict, outside_step_s: float, batch_size: int, peaks: dict) -> None:
    r"""
    The LLM's share of a training step and, from the step time it adds over the no-LLM twin (`outside_step_s`), its
    achieved GFLOP/s against the square matmul peak, the probe run while the setting trained, and its own projection
    shapes. On tiny models timing noise can make the twin as slow as the full model; then only the share is recorded,
    because a rate from a non-positive time difference means nothing.
    """
    llm_seconds = row["train_step_s"] - outside_step_s
    row["share_outside_llm"] = min(outside_step_s / row["train_step_s"], 1.0)
    if llm_seconds <= 0:
        return
    row["llm_train_gflops"] = row["llm_train_gflop_per_sample"] * batch_size / llm_seconds
    row["llm_utilisation"] = row["llm_train_gflops"] / peaks[row["llm_precision"]]
    during = row.get("matmul_probe_gflops_train", {}).get(row["llm_precision"])
    if during:
        row["llm_utilisation_of_probe"] = row["llm_train_gflops"] / during
    if row.get("llm_projection_matmul_gflops"):
        row["llm_utilisation_of_projections"] = row["llm_train_gflops"] / row["llm_projection_matmul_gflops"]


def add_inference_utilisation(row: dict, peaks: dict) -> None:
    r"""
    The LLM's achieved GFLOP/s at inference for every measured batch size, and its share of the square matmul peak, of
    the probe run while that batch size was timed, and of its own projection shapes at that batch's rows. The whole
    eval forward's time counts (no no-LLM twin at inference), so these shares are lower bounds.
    """
    precision = row["llm_precision"]
    for batch_size in row["setting"]["inference_batch_sizes"]:
        rate = row.get(f"inference_samples_per_s_bs{batch_size}")
        if not rate:
            continue
        achieved = row["llm_inference_gflop_per_sample"] * rate
        row[f"llm_inference_gflops_bs{batch_size}"] = achieved
        row[f"llm_inference_utilisation_bs{batch_size}"] = achieved / peaks[precision]
        during = row.get(f"matmul_probe_gflops_inference_bs{batch_size}", {}).get(precision)
        if during:
            row[f"llm_inference_utilisation_of_probe_bs{batch_size}"] = achieved / during
        ceiling = row.get(f"llm_projection_matmul_gflops_inference_bs{batch_size}")
        if ceiling:
            row[f"llm_inference_utilisation_of_projections_bs{batch_size}"] = achieved / ceiling


def run_versus(args: argparse.Namespace, common: dict, overrides: dict, peaks: dict) -> list[dict]:
    """Each setting (A) against itself with `overrides` (B), interleaved step by step in one process."""
    rows = []
    lines = [
        f"A/B interleaved in one process, {args.rounds} rounds; B = A with {json.dumps(overrides)}",
        "| backbone | mode | precision | A train /s | B train /s | A/B train | A infer /s | B infer /s | A/B infer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    batch = args.batch_size
    for setting in iter_settings(args.backbones, args.modes, args.precisions, **common):
        other = BenchmarkSetting(**{**asdict(setting), "extra": {**setting.extra, **overrides}})
        a, b = measure_interleaved([setting, other], rounds=args.rounds, warmup=args.warmup)
        infer_key = f"inference_samples_per_s_bs{batch}"
        row = {
            "setting": a["setting"],
            "versus_overrides": overrides,
            "a": a,
            "b": b,
            "train_ratio": a["train_samples_per_s"] / b["train_samples_per_s"],
            "inference_ratio": a[infer_key] / b[infer_key],
        }
        rows.append(row)
        s = setting
        name = f"{s.backbone} {s.llm_layers}x{s.llm_width}" if s.backbone == "gpt2-shape" else s.backbone
        lines.append(
            f"| {name} | {s.mode} | {s.precision} | {a['train_samples_per_s']:.1f} | {b['train_samples_per_s']:.1f} | "
            f"{row['train_ratio']:.2f} | {a[infer_key]:.1f} | {b[infer_key]:.1f} | {row['inference_ratio']:.2f} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    report = {"machine": machine_info(), "matmul_peak_gflops": peaks, "command": " ".join(sys.argv), "versus": rows}
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(report, indent=2))
    return rows


def format_row(row: dict) -> str:
    s = row["setting"]
    return (
        f"{s['backbone']}({s['llm_layers']}x{s['llm_width'] if s['backbone'] == 'gpt2-shape' else ''}) "
        f"{s['mode']}/{s['precision']}: train {row['train_samples_per_s']:.1f}/s, "
        + ", ".join(
            f"infer bs{b} {row[f'inference_samples_per_s_bs{b}']:.1f}/s"
            for b in s["inference_batch_sizes"]
            if f"inference_samples_per_s_bs{b}" in row
        )
    )


def format_inference_utilisation(row: dict) -> str:
    """`bs N: GFLOP/s (x% of peak; y% of probe; z% of its own matrix shapes)` for each inference batch size."""
    parts = []
    for batch_size in row["setting"]["inference_batch_sizes"]:
        achieved = row.get(f"llm_inference_gflops_bs{batch_size}")
        if achieved is None:
            continue
        shares = [f"{100 * row[f'llm_inference_utilisation_bs{batch_size}']:.0f}% of peak"]
        for key, label in (("of_probe", "probe"), ("of_projections", "own shapes")):
            if f"llm_inference_utilisation_{key}_bs{batch_size}" in row:
                shares.append(f"{100 * row[f'llm_inference_utilisation_{key}_bs{batch_size}']:.0f}% of {label}")
        parts.append(f"bs {batch_size}: {achieved:.0f} ({'; '.join(shares)})")
    return ", ".join(parts) or "-"


def format_table(report: dict) -> str:
    peaks = report["matmul_peak_gflops"]
    lines = [
        f"matmul peak: fp32 {peaks['fp32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s; "
        f"machine: {report['machine']['processor']} x{report['machine']['cpu_count']}",
        "| backbone | mode | precision | LLM tokens | train samples/s | infer bs24 /s | infer bs256 /s | "
        "peak RSS train/infer MB | outside-LLM share | LLM GFLOP/s (util.) | LLM GFLOP/s at inference (util.) | "
        "matmul probe fp32/bf16 during train | x original (same prec.) | x original fp32 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        s = row["setting"]
        name = (
            f"{s['backbone']} {s['llm_layers']}x{s['llm_width']}" if s["backbone"] == "gpt2-shape" else s["backbone"]
        )
        util = (
            f"{row['llm_train_gflops']:.0f} ({100 * row['llm_utilisation']:.0f}% of {row['llm_precision']})"
            if "llm_utilisation" in row
            else "-"
        )
        if "llm_utilisation_of_probe" in row:
            util += f"; {100 * row['llm_utilisation_of_probe']:.0f}% of probe"
        if "llm_utilisation_of_projections" in row:
            util += (
                f"; {100 * row['llm_utilisation_of_projections']:.0f}% of its own matrix shapes "
                f"({row['llm_projection_matmul_gflops']:.0f})"
            )
        share = f"{100 * row['share_outside_llm']:.0f}%" if "share_outside_llm" in row else "-"
        infer_util = format_inference_utilisation(row)
        probe = row.get("matmul_probe_gflops_train", {})
        during = f"{probe['fp32']:.0f} / {probe['bf16']:.0f}" if {"fp32", "bf16"} <= set(probe) else "-"
        same = (
            f"{row['train_speedup_vs_original']:.2f} / {row['inference_speedup_vs_original']:.2f}"
            if "train_speedup_vs_original" in row
            else "-"
        )
        fp32 = (
            f"{row['train_speedup_vs_original_fp32']:.2f} / {row['inference_speedup_vs_original_fp32']:.2f}"
            if "train_speedup_vs_original_fp32" in row
            else "-"
        )
        lines.append(
            f"| {name} | {s['mode']} | {s['precision']} | {row['llm_tokens_per_series']} | "
            f"{row['train_samples_per_s']:.1f} | {row.get('inference_samples_per_s_bs24', float('nan')):.1f} | "
            f"{row.get('inference_samples_per_s_bs256', float('nan')):.1f} | "
            f"{row['peak_rss_mb_train']:.0f}/{row['peak_rss_mb_inference']:.0f} | {share} | {util} | {infer_util} | "
            f"{during} | {same} | {fp32} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
