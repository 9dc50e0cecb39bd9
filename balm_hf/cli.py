"""The `balm-tsf` command line: forecast, push, train and evaluate."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import pandas as pd


if TYPE_CHECKING:
    from .training import EvaluationResults


logger = logging.getLogger(__name__)

_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError, ConnectionError, OSError)


def add_push_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `balm-tsf push` (shared with `scripts/push_to_hub.py`)."""
    parser.add_argument("--folder", required=True, help="trained folder (the output of scripts/train.py)")
    parser.add_argument("--repo-id", required=True, help="target Hub model repository, 'user/name' or 'org/name'")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--token", default=None, help="Hub token with write access (default: saved login or HF_TOKEN)")
    parser.add_argument("--dry-run", action="store_true", help="only prepare and validate the upload; no network")
    parser.add_argument("--output-dir", default=None, help="where to prepare the upload (default: a temporary folder)")
    parser.add_argument("--commit-message", default=None, help="message of the upload commit")
    parser.add_argument("--license", default=None, help="license identifier for the card (default: apache-2.0)")
    parser.add_argument(
        "--keep-readme", action="store_true", help="upload the folder's own README.md instead of rendering a card"
    )
    return parser


def run_push(args: argparse.Namespace) -> int:
    """Run `push` from parsed arguments; prints what was prepared or uploaded."""
    from .hub import DEFAULT_COMMIT_MESSAGE, DEFAULT_LICENSE, push_folder_to_hub

    result = push_folder_to_hub(
        args.folder,
        args.repo_id,
        token=args.token,
        private=args.private,
        commit_message=args.commit_message or DEFAULT_COMMIT_MESSAGE,
        dry_run=args.dry_run,
        output_dir=args.output_dir,
        render_card=not args.keep_readme,
        license=args.license or DEFAULT_LICENSE,
    )
    if result.dry_run:
        sys.stdout.write(
            f"dry run: prepared and validated {result.folder} for {result.repo_id} ({len(result.files)} files: "
            f"{', '.join(result.files)}); nothing was uploaded\n"
        )
    else:
        sys.stdout.write(f"pushed {len(result.files)} files to {result.repo_url} ({result.commit_url})\n")
    return 0


def _add_forecast_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="trained folder or Hub repository id")
    parser.add_argument("--input", required=True, help="CSV (or .csv.gz) with a date column and the model's channels")
    parser.add_argument("--output", default="-", help="CSV to write the forecast to (default: standard output)")
    parser.add_argument("--plot", default=None, help="also write a PNG of the history and the forecast")
    parser.add_argument("--plot-columns", nargs="+", default=None, help="channels to plot (default: all)")
    parser.add_argument("--date-column", default=None, help="timestamp column (default: the preprocessor's, 'date')")
    parser.add_argument("--freq", default=None, help="pandas frequency of the future timestamps (default: inferred)")
    parser.add_argument("--id-column", default=None, help="column identifying several stacked series")
    parser.add_argument("--batch-size", type=int, default=None, help="model batch size (default: all series at once)")
    parser.add_argument("--device", default=None, help="torch device, e.g. 'cuda' (default: cpu)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")


def run_forecast(args: argparse.Namespace) -> int:
    """Run `forecast` from parsed arguments: read the CSV, forecast, write the CSV (and the PNG)."""
    from .forecasting import BalmTsfForecaster, plot_forecast

    input_path = Path(args.input)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    if args.plot and args.id_column:
        raise ValueError("--plot draws one series; it cannot be combined with --id-column")
    history = pd.read_csv(input_path)
    load_kwargs = {"revision": args.revision} if args.revision else {}
    forecaster = BalmTsfForecaster.from_pretrained(args.model, device=args.device, **load_kwargs)
    date_column = args.date_column or forecaster.preprocessor.date_column or "date"
    # A DataFrame in gives one DataFrame out (stacked series included, with `--id-column`).
    forecast = cast(
        pd.DataFrame,
        forecaster.predict(
            history, date_column=date_column, freq=args.freq, id_column=args.id_column, batch_size=args.batch_size
        ),
    )
    if args.output == "-":
        forecast.to_csv(sys.stdout, index=False)
    else:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        forecast.to_csv(output, index=False)
        logger.info("wrote %d forecast rows to %s", len(forecast), output)
    if args.plot:
        plot_forecast(history, forecast, args.plot, columns=args.plot_columns, date_column=date_column)
        logger.info("wrote %s", args.plot)
    return 0


TRAIN_OVERRIDES_HELP = (
    "Any config field can be overridden with --set section.key=value (values are YAML: 0.005, true, [a, b]) "
    "or --section.key value, e.g. --set training.learning_rate=0.005, --model.config.llm_layers 2, "
    "--set data.percent=10. Unknown keys and impossible values are refused with a message naming them."
)


def add_train_arguments(
    parser: argparse.ArgumentParser, default_config: Path | None = None
) -> argparse.ArgumentParser:
    """The options of `balm-tsf train` (shared with `scripts/train.py`); --config is required without `default_config`.

    Parse with `parser.parse_known_args` and pass what it leaves to [`train_overrides`] for the `--section.key value`
    form of the overrides.
    """
    if default_config is None:
        config_help = "experiment YAML (see configuration/ in the repository)"
    else:
        config_help = f"experiment YAML (default: {default_config})"
    parser.add_argument(
        "--config", type=Path, required=default_config is None, default=default_config, help=config_help
    )
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="run folder (default: training.output_dir of the config)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config field, e.g. --set training.learning_rate=0.005 (repeatable; values are YAML; "
        "--section.key value works too)",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        type=Path,
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="resume from the newest complete checkpoint of the run folder, or from CHECKPOINT",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="train into a run folder that holds a run, deleting its checkpoints and final/ (training.overwrite)",
    )
    return parser


def train_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: Sequence[str]) -> list[str]:
    """The `--set` overrides followed by the `--section.key value` (or `--section.key=value`) ones in `unknown`.

    Anything else in `unknown` is refused with `parser.error`.
    """
    overrides = list(args.overrides)
    index = 0
    while index < len(unknown):
        token = unknown[index]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            parser.error(f"unrecognized argument {token!r} (overrides look like --section.key value)")
        if "=" in token:
            overrides.append(token[2:])
            index += 1
        elif index + 1 < len(unknown):
            overrides.append(f"{token[2:]}={unknown[index + 1]}")
            index += 2
        else:
            parser.error(f"override {token} needs a value")
    return overrides


def format_test_row(row: Mapping[str, Any]) -> str:
    """One line for an evaluation row, as `balm-tsf train` and `scripts/train.py` report the test metrics."""
    return (
        f"test {row['dataset']} L={row['context_length']} H={row['prediction_length']} "
        f"drop_last={row['drop_last']}: mse={row['mse']:.6f} mae={row['mae']:.6f} over {row['num_items']} items"
    )


def run_train(args: argparse.Namespace) -> int:
    """Run `train`: `balm_hf.training.load_experiment_config` + `run_experiment` (what `scripts/train.py` does)."""
    from .training import load_experiment_config, run_experiment

    config = load_experiment_config(args.config, args.overrides)
    result = run_experiment(
        config, output_dir=args.output_dir, resume_from_checkpoint=args.resume, overwrite=args.overwrite or None
    )
    for row in result.eval_rows:
        sys.stdout.write(format_test_row(row) + "\n")
    sys.stdout.write(f"saved {result.final_dir}\n")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `balm-tsf evaluate` (shared with `scripts/evaluate.py`); see [`evaluate_from_arguments`]."""
    parser.add_argument(
        "model", help="a folder written by `balm-tsf train` or scripts/train.py (its final/ folder), or a Hub id"
    )
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
    parser.add_argument(
        "--batch-size", type=int, default=None, help="items per forward pass and device (default: the experiment's)"
    )
    parser.add_argument("--model-name", default=None, help="`model` column (default: the experiment name)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA only)")
    parser.add_argument(
        "--results",
        type=Path,
        default=Path("results/eval_results.json"),
        help="results file to append to; a .csv twin and a .md table are written next to it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the results file instead of appending")
    return parser


def evaluate_from_arguments(args: argparse.Namespace) -> EvaluationResults:
    """`balm_hf.training.evaluate_to_results` with the options of [`add_evaluate_arguments`]."""
    from . import training

    return training.evaluate_to_results(
        args.model,
        args.results,
        overwrite=args.overwrite,
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
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Run `evaluate`: `training.evaluate_to_results` (what `scripts/evaluate.py` does)."""
    results = evaluate_from_arguments(args)
    sys.stdout.write(f"results: {results.path} (+ .csv, .md)\n{results.table}")
    return 0


class _Command(NamedTuple):
    help: str
    description: str
    epilog: str | None
    add_arguments: Callable[[argparse.ArgumentParser], Any]
    run: Callable[[argparse.Namespace], int]


_COMMANDS = {
    "forecast": _Command(
        "forecast the steps after the end of a CSV",
        "Forecast the prediction_length steps after the end of a CSV, in its units; write them as CSV.",
        None,
        _add_forecast_arguments,
        run_forecast,
    ),
    "push": _Command(
        "push a trained folder (model, scaler, results, card) to the Hub",
        "Validate a trained folder, render its model card and upload it to a Hub model repository.",
        None,
        add_push_arguments,
        run_push,
    ),
    "train": _Command(
        "train and test one experiment, save the Hub-ready folder",
        "Train and test one experiment from its YAML and save the Hub-ready folder to <run>/final.",
        TRAIN_OVERRIDES_HELP,
        add_train_arguments,
        run_train,
    ),
    "evaluate": _Command(
        "evaluate a saved model on the whole test split",
        "Evaluate a saved model on the whole test split and append the rows to a results file.",
        None,
        add_evaluate_arguments,
        run_evaluate,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balm-tsf",
        description="BALM-TSF time series forecasting: forecast with, share, train and evaluate checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in _COMMANDS.items():
        command.add_arguments(
            commands.add_parser(name, help=command.help, description=command.description, epilog=command.epilog)
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    r"""
    Entry point of the `balm-tsf` command.

    Usage:

    ```bash
    balm-tsf forecast --model runs/etth1_96 --input ETTh1.csv --output forecast.csv --plot forecast.png
    balm-tsf push --folder runs/etth1_96 --repo-id me/balm-tsf-etth1-96 --dry-run
    balm-tsf train --config configuration/long_term/etth1_96.yaml --set training.learning_rate=0.005 --data.percent 10
    balm-tsf evaluate outputs/etth1_96/final --drop-last-test-batch --results results/eval_results.json
    ```

    Returns the exit status (0 on success, 1 on an error, whose message goes to standard error).
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "train":
        args.overrides = train_overrides(parser, args, unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _COMMANDS[args.command].run(args)
    except _ERRORS as error:
        sys.stderr.write(f"balm-tsf {args.command}: error: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
