"""The `balm-tsf` command line: forecast, push, and the train/evaluate scripts."""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd


logger = logging.getLogger(__name__)

# `train` and `evaluate` run the repository's scripts; they are not part of the installed package.
SCRIPTS_DIR_ENV = "BALM_TSF_SCRIPTS_DIR"
DELEGATED_COMMANDS = {"train": "train.py", "evaluate": "evaluate.py"}
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
    forecast = forecaster.predict(
        history, date_column=date_column, freq=args.freq, id_column=args.id_column, batch_size=args.batch_size
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


def scripts_dir() -> Path:
    """The repository's `scripts/` folder (or `$BALM_TSF_SCRIPTS_DIR`), where `train.py` and `evaluate.py` live."""
    override = os.environ.get(SCRIPTS_DIR_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[1] / "scripts"


def run_script(command: str, argv: Sequence[str]) -> int:
    r"""
    Run `scripts/<command>.py` with `argv` as its command line, in this process.

    The training and evaluation scripts are thin wrappers over the library that live in the repository, not in the
    installed package; from a `pip install` without a checkout, point `$BALM_TSF_SCRIPTS_DIR` at a `scripts/` folder.
    """
    script = scripts_dir() / DELEGATED_COMMANDS[command]
    if not script.is_file():
        raise FileNotFoundError(
            f"`balm-tsf {command}` runs {script}, which does not exist: run it from a checkout of the balm-tsf "
            f"repository (pip install -e .) or set ${SCRIPTS_DIR_ENV} to the folder holding {script.name}"
        )
    saved_argv = sys.argv
    sys.argv = [str(script), *argv]
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved_argv
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="balm-tsf",
        description="BALM-TSF time series forecasting: forecast with, share, train and evaluate checkpoints.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    forecast = commands.add_parser(
        "forecast",
        help="forecast the steps after the end of a CSV",
        description="Forecast the prediction_length steps after the end of a CSV, in its units; write them as CSV.",
    )
    _add_forecast_arguments(forecast)
    push = commands.add_parser(
        "push",
        help="push a trained folder (model, scaler, results, card) to the Hub",
        description="Validate a trained folder, render its model card and upload it to a Hub model repository.",
    )
    add_push_arguments(push)
    for command, script in DELEGATED_COMMANDS.items():
        commands.add_parser(
            command,
            add_help=False,
            help=f"run scripts/{script} with the remaining arguments (see `balm-tsf {command} --help`)",
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    r"""
    Entry point of the `balm-tsf` command.

    Usage:

    ```bash
    balm-tsf forecast --model runs/etth1_96 --input ETTh1.csv --output forecast.csv --plot forecast.png
    balm-tsf push --folder runs/etth1_96 --repo-id me/balm-tsf-etth1-96 --dry-run
    balm-tsf train --config configuration/etth1_96.yaml   # arguments go to scripts/train.py
    balm-tsf evaluate --help                              # arguments go to scripts/evaluate.py
    ```

    Returns the exit status (0 on success, 1 on an error, whose message goes to standard error).
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if arguments and arguments[0] in DELEGATED_COMMANDS:
        try:
            return run_script(arguments[0], arguments[1:])
        except FileNotFoundError as error:
            sys.stderr.write(f"balm-tsf {arguments[0]}: error: {error}\n")
            return 1
    args = parser.parse_args(arguments)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run_forecast(args) if args.command == "forecast" else run_push(args)
    except _ERRORS as error:
        sys.stderr.write(f"balm-tsf {args.command}: error: {error}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
