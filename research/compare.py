"""Train and test BALM-TSF and its baselines on the same splits; write `research/results/compare/<setting>.*`.

Example (ETTh1, L=512, H=96, BALM-TSF capped to fit a CPU):

    python -m research.compare --dataset ETTh1 --prediction-length 96 \
        --max-train-items-per-epoch balm_tsf=3000 --max-validation-items balm_tsf=2000 \
        --time-budget-minutes balm_tsf=30
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from balm_hf.training import PAPER_SCHEDULES  # noqa: E402
from research.comparison import (  # noqa: E402
    DEFAULT_MODELS,
    MODEL_NAMES,
    ComparisonSettings,
    results_paths,
    run_comparison,
    update_readme,
)


def _per_model(values: list[str] | None, cast: Any, option: str) -> dict[str, Any]:
    """`["3000"]` -> `{"*": 3000}`; `["balm_tsf=3000", "dlinear=100"]` -> per-model entries."""
    result: dict[str, Any] = {}
    for value in values or []:
        key, _, number = value.rpartition("=")
        try:
            result[key or "*"] = cast(number)
        except ValueError:
            raise SystemExit(f"{option}: expected NUMBER or MODEL=NUMBER, got {value!r}") from None
    return result


def _key_values(values: list[str] | None, option: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for value in values or []:
        key, sep, raw = value.partition("=")
        if not sep:
            raise SystemExit(f"{option}: expected KEY=VALUE, got {value!r}")
        result[key] = yaml.safe_load(raw)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ETTh1", help="benchmark name or CSV path")
    parser.add_argument("--data-dir", default=None, help="folder of the benchmark files ($BALM_TSF_DATA_DIR)")
    parser.add_argument("--split-config", default=None, help="split borders of this benchmark for a CSV path")
    parser.add_argument("--context-length", type=int, default=512)
    parser.add_argument("--prediction-length", type=int, default=96)
    parser.add_argument(
        "--models",
        default=",".join(DEFAULT_MODELS),
        help=f"comma-separated subset of {MODEL_NAMES} (default: all but balm_tsf_smollm2)",
    )
    parser.add_argument(
        "--backbone", default=None, help="backbone of balm_tsf and balm_tsf_no_llm (default: the offline MiniLM)"
    )
    parser.add_argument("--paper-mode", action="store_true", help="do not apply the fast-mode switches to BALM-TSF")
    parser.add_argument("--balm-config", action="append", metavar="KEY=VALUE", help="BalmTsfConfig argument")
    parser.add_argument("--patchtst-config", action="append", metavar="KEY=VALUE", help="PatchTSTConfig argument")
    parser.add_argument("--learning-rate", action="append", metavar="[MODEL=]LR")
    parser.add_argument(
        "--lr-schedule",
        action="append",
        metavar="[MODEL=]KIND",
        help=f"learning-rate schedule, one of {PAPER_SCHEDULES} (default halving; patchtst=patchtst_type3 with "
        "--learning-rate patchtst=1e-4 --batch-size patchtst=128 is PatchTST's own ETTh recipe)",
    )
    parser.add_argument("--batch-size", action="append", metavar="[MODEL=]N")
    parser.add_argument(
        "--gradient-accumulation-steps",
        action="append",
        metavar="[MODEL=]N",
        help="batches per optimizer step (balm_tsf=4 with batch 24: the paper's 4 GPUs x 24 on one process)",
    )
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=10)
    parser.add_argument("--max-train-items-per-epoch", action="append", metavar="[MODEL=]N")
    parser.add_argument("--max-validation-items", action="append", metavar="[MODEL=]N")
    parser.add_argument("--time-budget-minutes", action="append", metavar="[MODEL=]MINUTES")
    parser.add_argument("--season-length", type=int, default=24)
    parser.add_argument(
        "--percent", type=int, default=100, help="few-shot: percentage of the train split (the paper's few-shot: 10)"
    )
    parser.add_argument("--seed", type=int, default=2021)
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers of BALM-TSF (prompts)")
    parser.add_argument("--output-dir", default="research/results/compare")
    parser.add_argument("--work-dir", default=None, help="checkpoint folder (default: <output-dir>/checkpoints)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue each trained model from its last checkpoint in the work dir (run a long training in pieces)",
    )
    parser.add_argument(
        "--test-every-epoch",
        action="store_true",
        help="also test the whole test split after every epoch, as the original reports it (early stopping and the "
        "reported result still follow validation)",
    )
    parser.add_argument(
        "--update-readme",
        action="store_true",
        help="only regenerate the tables in <output-dir>/README.md from the results files there, then exit",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.update_readme:
        print(f"updated {update_readme(Path(args.output_dir) / 'README.md', args.output_dir)}")
        return
    command = shlex.join(["python", "-m", "research.compare", *(sys.argv[1:] if argv is None else argv)])
    try:
        settings = ComparisonSettings(
            dataset=args.dataset,
            data_dir=args.data_dir,
            split_config=args.split_config,
            context_length=args.context_length,
            prediction_length=args.prediction_length,
            models=tuple(name.strip() for name in args.models.split(",") if name.strip()),
            backbone=args.backbone,
            fast_mode=not args.paper_mode,
            balm_config=_key_values(args.balm_config, "--balm-config"),
            patchtst_config=_key_values(args.patchtst_config, "--patchtst-config"),
            learning_rates=_per_model(args.learning_rate, float, "--learning-rate"),
            lr_schedules=_per_model(args.lr_schedule, str, "--lr-schedule"),
            batch_sizes=_per_model(args.batch_size, int, "--batch-size"),
            gradient_accumulation_steps=_per_model(
                args.gradient_accumulation_steps, int, "--gradient-accumulation-steps"
            ),
            eval_batch_size=args.eval_batch_size,
            max_epochs=args.max_epochs,
            patience=args.patience,
            max_train_items_per_epoch=_per_model(args.max_train_items_per_epoch, int, "--max-train-items-per-epoch"),
            max_validation_items=_per_model(args.max_validation_items, int, "--max-validation-items"),
            time_budget_minutes=_per_model(args.time_budget_minutes, float, "--time-budget-minutes"),
            season_length=args.season_length,
            percent=args.percent,
            seed=args.seed,
            num_workers=args.num_workers,
            output_dir=args.output_dir,
            work_dir=args.work_dir,
            test_every_epoch=args.test_every_epoch,
            resume=args.resume,
            command=command,
        )
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    run_comparison(settings, log=lambda message: print(message, flush=True))
    markdown = results_paths(settings)["md"]
    print(Path(markdown).read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
