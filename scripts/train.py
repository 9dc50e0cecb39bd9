#!/usr/bin/env python
r"""Train and test one BALM-TSF experiment and save the Hub-ready folder.

Usage:

    # paper experiment, one or several GPUs (see configuration/accelerate/)
    accelerate launch --config_file configuration/accelerate/one_gpu.yaml scripts/train.py \
        --config configuration/long_term/etth1_96.yaml
    # small CPU demo (configuration/default.yaml)
    python scripts/train.py
    # overrides: --set section.key=value (repeatable) or --section.key value
    python scripts/train.py --set training.learning_rate=0.005 --training.num_train_epochs 2
    # resume an interrupted run from its latest checkpoint (or from a given checkpoint folder)
    python scripts/train.py --config ... --resume [outputs/<name>/checkpoint-120]

Writes checkpoints to the output folder (`training.output_dir`, default `outputs/<name>`) and the Hub-ready folder
(model, tokenizer, preprocessor_config.json, experiment.yaml, training_info.json, eval_results.json/.csv) to
`<output folder>/final`.
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

import transformers  # noqa: E402

from balm_hf.cli import TRAIN_OVERRIDES_HELP, add_train_arguments, format_test_row, train_overrides  # noqa: E402
from balm_hf.training import load_experiment_config, run_experiment  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configuration" / "default.yaml"
logger = logging.getLogger("balm_hf.train")


def parse_args(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog=TRAIN_OVERRIDES_HELP, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_train_arguments(parser, default_config=DEFAULT_CONFIG)
    args, unknown = parser.parse_known_args(argv)
    return args, train_overrides(parser, args, unknown)


def main(argv: Sequence[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_info()
    try:
        try:
            config = load_experiment_config(args.config, overrides)
        except (ValueError, FileNotFoundError) as error:
            logger.error(str(error))
            return 2
        result = run_experiment(
            config, output_dir=args.output_dir, resume_from_checkpoint=args.resume, overwrite=args.overwrite or None
        )
    finally:
        transformers.logging.set_verbosity(verbosity)
    for row in result.eval_rows:
        logger.info(format_test_row(row))
    logger.info(f"saved {result.final_dir} in {result.training_info['wall_time_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
