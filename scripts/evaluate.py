#!/usr/bin/env python
"""Evaluate a saved BALM-TSF model (a training folder or a Hub id) on the whole test split of a dataset.

Usage:

    python scripts/evaluate.py outputs/etth1_96/final                      # dataset etc. from its experiment.yaml
    python scripts/evaluate.py outputs/etth1_96/final --dataset ETTh2 --results results/eval_results.json
    python scripts/evaluate.py user/balm-tsf-etth1-96 --drop-last-test-batch

Appends one row per evaluation (`drop_last=false`: every test window; with --drop-last-test-batch also the original's
protocol, `drop_last=true`) to the results file (JSON `{"rows": [...]}` plus a CSV twin) and rewrites a markdown table
of all its rows in the layout of the paper's Table 1 next to it (`.md`), which is also printed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


# This folder holds `evaluate.py`, which would shadow the `evaluate` library that `balm_hf` imports: take the
# script's folder off the import path before importing anything else.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from balm_hf.training import evaluate_pretrained, results_table, write_eval_results  # noqa: E402


logger = logging.getLogger("balm_hf.evaluate")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="folder written by scripts/train.py (its final/ folder) or a Hub id")
    parser.add_argument("--dataset", default=None, help="benchmark name or CSV path (default: the experiment's)")
    parser.add_argument("--data-dir", default=None, help="folder of the benchmark files (default: $BALM_TSF_DATA_DIR)")
    parser.add_argument(
        "--prediction-length", type=int, default=None, help="horizon; must equal the model's (checked)"
    )
    parser.add_argument("--target", default=None, help="target column (default: the experiment's, else OT)")
    parser.add_argument("--features", choices=("M", "S"), default=None, help="channels (default: the experiment's)")
    parser.add_argument(
        "--drop-last-test-batch",
        action="store_true",
        help="also report the original's protocol, which drops the last incomplete test batch",
    )
    parser.add_argument(
        "--drop-last-batch-size", type=int, default=None, help="its batch size (default: the training batch size)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="items per forward pass and device")
    parser.add_argument("--model-name", default=None, help="`model` column (default: the experiment name)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results/eval_results.json"),
        help="results file to append to; a .csv twin and a .md table are written next to it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results file instead of appending")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    rows, _ = evaluate_pretrained(
        args.model,
        dataset=args.dataset,
        data_dir=args.data_dir,
        prediction_length=args.prediction_length,
        target=args.target,
        features=args.features,
        drop_last_test_batch=args.drop_last_test_batch,
        drop_last_batch_size=args.drop_last_batch_size,
        batch_size=args.batch_size,
        model_name=args.model_name,
        bf16=args.bf16,
        output_dir=args.results.parent / "evaluation_scratch",
    )
    results_path = args.results if args.results.suffix in (".json", ".csv") else args.results / "eval_results.json"
    all_rows = write_eval_results(results_path, rows, append=not args.overwrite)
    table = results_table(all_rows)
    results_path.with_suffix(".md").write_text(table, encoding="utf-8")
    for row in rows:
        logger.info(
            f"{row['model']} on {row['dataset']} H={row['prediction_length']} drop_last={row['drop_last']}: "
            f"mse={row['mse']:.6f} mae={row['mae']:.6f} ({row['num_items']} items)"
        )
    logger.info(f"results: {results_path} (+ .csv, .md)\n{table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
