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

from balm_hf.cli import add_evaluate_arguments, evaluate_from_arguments  # noqa: E402


logger = logging.getLogger("balm_hf.evaluate")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_evaluate_arguments(parser).parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    results = evaluate_from_arguments(args)
    for row in results.rows:
        logger.info(
            f"{row['model']} on {row['dataset']} H={row['prediction_length']} drop_last={row['drop_last']}: "
            f"mse={row['mse']:.6f} mae={row['mae']:.6f} ({row['num_items']} items)"
        )
    logger.info(f"results: {results.path} (+ .csv, .md)\n{results.table}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
