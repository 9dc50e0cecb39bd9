"""The `balm-tsf` command line: forecast, push, train, evaluate, calibrate and backtest.

Only the standard library is imported at module level, so that `balm-tsf --help` (and every `--help`) answers
without importing torch; each command imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast


if TYPE_CHECKING:
    from .training import EvaluationResults


logger = logging.getLogger(__name__)

_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError, ConnectionError, OSError)

# Exit status of a refused input (bad config, data, backbone or option value), as argparse uses for usage errors.
USAGE_ERROR = 2

PACKAGED_EXPERIMENTS = ("default", "csv", "finetune")

_LOADING_REPORT_LOGGER = "transformers.utils.loading_report"


def packaged_experiment_path(name: str = "default") -> Path:
    r"""
    Path of an experiment YAML shipped in the package (`balm_hf/resources/experiments/<name>.yaml`).

    Args:
        name (`str`, *optional*, defaults to `"default"`):
            `"default"`: the CPU demo that `balm-tsf train` runs without `--config` (`configuration/default.yaml` in
            the repository is an identical copy); `"csv"`: the template for a user CSV that `balm-tsf train --data
            FILE` starts from; `"finetune"`: the template that `balm-tsf train --init-from MODEL --data FILE` starts
            from (no architecture keys: they come from the checkpoint).
    """
    if name not in PACKAGED_EXPERIMENTS:
        raise ValueError(f"no packaged experiment {name!r}; choose one of {', '.join(PACKAGED_EXPERIMENTS)}")
    return Path(str(resources.files("balm_hf").joinpath("resources", "experiments", f"{name}.yaml")))


def _one_line(error: BaseException) -> str:
    """The message of `error` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(error).split()) or type(error).__name__


def configure_logging(verbose: bool = False) -> None:
    r"""
    Quiet by default: this package's messages at INFO (one line each), transformers and datasets at WARNING without
    the transformers weight-loading reports, and no progress bars while a CSV is read or weights are loaded and
    written (the training and evaluation progress bars stay).

    With `verbose`, this package logs at DEBUG (configuration and preprocessor dumps), transformers and datasets at
    INFO with the loading reports, and every progress bar shows.

    Args:
        verbose (`bool`, *optional*, defaults to `False`): the `--verbose` flag.
    """
    import datasets.utils.logging as datasets_logging
    import transformers.utils.logging as transformers_logging

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("balm_hf").setLevel(logging.DEBUG if verbose else logging.INFO)
    if verbose:
        transformers_logging.set_verbosity_info()
        datasets_logging.set_verbosity_info()
        transformers_logging.enable_progress_bar()
        datasets_logging.enable_progress_bar()
    else:
        transformers_logging.set_verbosity_warning()
        datasets_logging.set_verbosity_warning()
        transformers_logging.disable_progress_bar()
        datasets_logging.disable_progress_bar()
    # Both libraries print through their own handlers; passing their records on to the root handler too would print
    # every line twice.
    transformers_logging.disable_propagation()
    datasets_logging.disable_propagation()
    # The table of unexpected or missing weights that transformers prints after every load (a backbone cut to its
    # first blocks has many), at WARNING level.
    logging.getLogger(_LOADING_REPORT_LOGGER).setLevel(logging.NOTSET if verbose else logging.ERROR)


def add_push_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `balm-tsf push`."""
    parser.add_argument("--folder", required=True, help="trained folder (the final/ folder of `balm-tsf train`)")
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
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument(
        "--lean",
        dest="lean",
        action="store_true",
        default=True,
        help="upload the trained weights and a verified reference to the frozen backbone (the default)",
    )
    kind.add_argument("--full", dest="lean", action="store_false", help="upload the frozen backbone's weights too")
    parser.add_argument(
        "--backbone-path",
        default=None,
        help="local copy of the backbone to verify a lean upload with (default: its recorded Hub id or package)",
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
        lean=args.lean,
        backbone_path=args.backbone_path,
    )
    kind = "lean checkpoint, the backbone by verified reference" if args.lean else "full checkpoint"
    if result.dry_run:
        sys.stdout.write(
            f"dry run: prepared and validated {result.folder} for {result.repo_id} ({kind}; {len(result.files)} "
            f"files: {', '.join(result.files)}); nothing was uploaded\n"
        )
    else:
        sys.stdout.write(f"pushed {len(result.files)} files ({kind}) to {result.repo_url} ({result.commit_url})\n")
    return 0


def _add_forecast_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="trained folder or Hub repository id")
    parser.add_argument(
        "--input", required=True, help="CSV (or .csv.gz): a date column and the model's channels, or the long layout"
    )
    parser.add_argument("--output", default="-", help="CSV to write the forecast to (default: standard output)")
    parser.add_argument(
        "--format",
        choices=("wide", "long"),
        default="wide",
        help="'wide': one column per channel in and out (default); 'long': one row per series and time step in and "
        "out (--id-column, --timestamp-column, --target; output columns id, timestamp, target_name, predictions, "
        "then one per quantile)",
    )
    parser.add_argument("--plot", default=None, help="also write a PNG of the history and the forecast")
    parser.add_argument("--plot-columns", nargs="+", default=None, help="channels to plot (default: all)")
    parser.add_argument(
        "--plot-item", default=None, help="with --format long: the item to plot (default: the only one)"
    )
    parser.add_argument("--date-column", default=None, help="timestamp column (default: the preprocessor's, 'date')")
    parser.add_argument(
        "--timestamp-column", default=None, help="with --format long: the timestamp column (default: 'timestamp')"
    )
    parser.add_argument(
        "--target", nargs="+", default=None, help="with --format long: the column(s) to forecast (default: 'target')"
    )
    parser.add_argument(
        "--quantiles",
        nargs="+",
        type=float,
        default=None,
        help="with --format long: quantile levels to add, e.g. 0.1 0.5 0.9 (needs `balm-tsf calibrate` first)",
    )
    parser.add_argument("--freq", default=None, help="pandas frequency of the future timestamps (default: inferred)")
    parser.add_argument(
        "--id-column",
        default=None,
        help="column identifying each series (stacked wide input; default 'item_id' with --format long)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="series per model call (default: all at once for wide input, 256 with --format long)",
    )
    parser.add_argument("--device", default=None, help="torch device, e.g. 'cuda' (default: cpu)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output or --plot file")


def _check_output_files(input_path: Path, outputs: Mapping[str, str | None], overwrite: bool, replaced: str) -> None:
    """Refuse, before any work, outputs that would replace the input, each other or (without --overwrite) a file."""
    if outputs.get("--plot"):
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise ImportError(
                f'--plot {outputs["--plot"]} needs matplotlib: pip install "balm-tsf[plot]" (nothing was written)'
            ) from None
    seen: dict[Path, str] = {}
    for option, value in outputs.items():
        if value is None:
            continue
        path = Path(value)
        resolved = path.resolve()
        if resolved == input_path.resolve():
            raise ValueError(f"{option} {path} is the --input file: {replaced}")
        if resolved in seen:
            raise ValueError(f"{seen[resolved]} and {option} are the same file {path}")
        seen[resolved] = option
        if path.exists() and not overwrite:
            raise FileExistsError(f"{option} {path} already exists; pass --overwrite to replace it")


def _read_input_and_forecaster(args: argparse.Namespace) -> tuple[Any, Any]:
    """The `--input` CSV and the `--model` forecaster of `forecast` and `backtest`."""
    import pandas as pd

    from .forecasting import BalmTsfForecaster

    # Series ids are text, as the loader reads them: "001" stays "001" and finds its trained statistics.
    data = pd.read_csv(Path(args.input), dtype={args.id_column or "item_id": str})
    load_kwargs = {"revision": args.revision} if args.revision else {}
    return data, BalmTsfForecaster.from_pretrained(args.model, device=args.device, **load_kwargs)


def _check_forecast_outputs(args: argparse.Namespace) -> None:
    """Refuse, before anything is read or written, outputs that would replace the input or an existing file."""
    input_path = Path(args.input)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    long_only = {"--timestamp-column": args.timestamp_column, "--target": args.target, "--quantiles": args.quantiles}
    long_only["--plot-item"] = args.plot_item
    if args.format == "wide":
        given = [option for option, value in long_only.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --format long")
        if args.plot and args.id_column:
            raise ValueError("--plot draws one series; it cannot be combined with --id-column")
    _check_output_files(
        input_path,
        {"--output": None if args.output == "-" else args.output, "--plot": args.plot},
        args.overwrite,
        "the forecast would replace the history",
    )


def run_forecast(args: argparse.Namespace) -> int:
    """Run `forecast` from parsed arguments: read the CSV, forecast, write the CSV (and the PNG)."""
    import pandas as pd

    from .forecasting import plot_forecast

    _check_forecast_outputs(args)
    input_path = Path(args.input)
    history, forecaster = _read_input_and_forecaster(args)
    date_column = args.date_column or forecaster.preprocessor.date_column or "date"
    if args.format == "long":
        date_column, id_column = args.timestamp_column or "timestamp", args.id_column or "item_id"
        if args.plot and id_column in history.columns:
            items = history[id_column].dropna().astype(str).unique()
            if args.plot_item is None and len(items) > 1:
                raise ValueError(f"--plot draws one item; choose one of the {len(items)} items with --plot-item")
            if args.plot_item is not None and args.plot_item not in items:
                raise ValueError(f"--plot-item {args.plot_item!r} is not an item of --input {input_path}")
        forecast = forecaster.predict_df(
            history,
            id_column=id_column,
            timestamp_column=date_column,
            target=args.target or "target",
            quantile_levels=args.quantiles,
            batch_size=args.batch_size,
            freq=args.freq,
        )
    else:
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
        plot_forecast(
            history,
            forecast,
            args.plot,
            columns=args.plot_columns,
            date_column=date_column,
            item_id=args.plot_item,
            model_name=args.model,
        )
        logger.info("wrote %s", args.plot)
    return 0


TRAIN_OVERRIDES_HELP = (
    "Any config field can be overridden with --set section.key=value (values are YAML: 0.005, true, [a, b]) "
    "or --section.key value, e.g. --set training.learning_rate=0.005, --model.config.llm_layers 2, "
    "--set data.percent=10. Unknown keys and impossible values are refused with a message naming them."
)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `balm-tsf train` (`scripts/train.py` runs the same command).

    Parse with `parser.parse_known_args` and pass what it leaves to [`train_overrides`] for the `--section.key value`
    form of the overrides.
    """
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="experiment YAML (default: the packaged CPU demo on ETTh1, or with --data the packaged template for a "
        "user CSV; see configuration/ in the repository for the paper experiments)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        metavar="CSV",
        help="train on this CSV (a date column and one column per channel; 70/10/20 split): sets data.dataset",
    )
    parser.add_argument("--target", default=None, metavar="COLUMN", help="target column (the last channel)")
    parser.add_argument(
        "--init-from",
        default=None,
        metavar="FOLDER_OR_HUB_ID",
        help="fine-tune: start from this trained model (a final/ folder or a Hub id) instead of a new one; its "
        "architecture is kept (model.init_from; without --config the packaged fine-tuning template is used)",
    )
    parser.add_argument(
        "--init-revision", default=None, metavar="REVISION", help="Hub revision of --init-from (model.init_revision)"
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
    """`--data`/`--target` (and with `--data` but no `--config`, the run's `name` after the file) and
    `--init-from`/`--init-revision`, then the `--set` overrides, then the `--section.key value` (or
    `--section.key=value`) ones in `unknown`.

    Anything else in `unknown` is refused with `parser.error`.
    """
    overrides = []
    # JSON strings are YAML strings: a file or column name is never read as a number or a boolean.
    if getattr(args, "data", None) is not None:
        if getattr(args, "config", None) is None:
            # The packaged CSV template: the run (folder, card title) is named after the file.
            overrides.append(f"name={json.dumps('balm-tsf-' + Path(args.data).name.split('.')[0])}")
        overrides.append(f"data.dataset={json.dumps(str(args.data))}")
    if getattr(args, "target", None) is not None:
        overrides.append(f"data.target={json.dumps(str(args.target))}")
    if getattr(args, "init_from", None) is not None:
        overrides.append(f"model.init_from={json.dumps(str(args.init_from))}")
    if getattr(args, "init_revision", None) is not None:
        overrides.append(f"model.init_revision={json.dumps(str(args.init_revision))}")
    overrides += list(args.overrides)
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
    """One line for an evaluation row, as `balm-tsf train` reports the test metrics."""
    return (
        f"test {row['dataset']} L={row['context_length']} H={row['prediction_length']} "
        f"drop_last={row['drop_last']}: mse={row['mse']:.6f} mae={row['mae']:.6f} over {row['num_items']} items"
    )


def _train_config_path(args: argparse.Namespace) -> Path:
    if args.config is not None:
        if not Path(args.config).is_file():
            raise FileNotFoundError(f"--config {args.config} does not exist")
        return Path(args.config)
    if getattr(args, "init_from", None) is not None:
        if args.data is None and not any(override.startswith("data.dataset=") for override in args.overrides):
            raise ValueError("--init-from without --config needs the data to fine-tune on: --data CSV")
        return packaged_experiment_path("finetune")
    return packaged_experiment_path("csv" if args.data is not None else "default")


def _is_main_process() -> bool:
    """`False` on the non-main processes of a distributed run (`accelerate launch`), which print no summary."""
    return os.environ.get("RANK", "0") == "0"


def run_train(args: argparse.Namespace) -> int:
    """Run `train`: `balm_hf.training.load_experiment_config` + `run_experiment`, then print the closing summary."""
    from . import training

    if args.data is not None and not Path(args.data).is_file():
        raise FileNotFoundError(f"--data {args.data} does not exist")
    config = training.load_experiment_config(_train_config_path(args), args.overrides)
    result = training.run_experiment(
        config,
        output_dir=args.output_dir,
        resume_from_checkpoint=args.resume,
        overwrite=args.overwrite or None,
        verbose=args.verbose,
    )
    if not _is_main_process():
        return 0
    for row in result.eval_rows:
        sys.stdout.write(format_test_row(row) + "\n")
    card = Path(result.final_dir) / "README.md"
    info = getattr(result, "training_info", None) or {}
    wall_time = f" in {info['wall_time_s']:.1f} s" if isinstance(info.get("wall_time_s"), int | float) else ""
    sys.stdout.write(f"saved {result.final_dir}{wall_time}\n")
    if card.is_file():
        sys.stdout.write(f"model card: {card}\n")
    return 0


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `balm-tsf evaluate`; see [`evaluate_from_arguments`]."""
    parser.add_argument("model", help="a folder written by `balm-tsf train` (its final/ folder), or a Hub id")
    parser.add_argument("--dataset", default=None, help="benchmark name or CSV path (default: the experiment's)")
    parser.add_argument("--data-dir", default=None, help="folder of the benchmark files (default: $BALM_TSF_DATA_DIR)")
    parser.add_argument(
        "--prediction-length", type=int, default=None, help="horizon; must equal the model's (checked)"
    )
    parser.add_argument("--target", default=None, help="target column (default: the experiment's, else OT)")
    parser.add_argument("--features", choices=("M", "S"), default=None, help="channels (default: the experiment's)")
    parser.add_argument(
        "--drop-last-test-batch",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also report the original's protocol, which drops the last incomplete test batch (default: as trained)",
    )
    parser.add_argument(
        "--drop-last-batch-size", type=int, default=None, help="its batch size (default: the training batch size)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="items per forward pass and device (default: the experiment's)"
    )
    parser.add_argument("--model-name", default=None, help="`model` column (default: the experiment name)")
    parser.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="bf16 autocast (CUDA only; default: as the training run)",
    )
    parser.add_argument(
        "--missing",
        choices=("error", "ffill", "mask"),
        default=None,
        help="missing-value mode (default: the experiment's data.missing)",
    )
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
        missing=args.missing,
    )


def run_evaluate(args: argparse.Namespace) -> int:
    """Run `evaluate`: `training.evaluate_to_results`, then print the results table."""
    results = evaluate_from_arguments(args)
    sys.stdout.write(f"results: {results.path} (+ .csv, .md)\n{results.table}")
    return 0


def _add_backtest_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="trained folder or Hub repository id")
    parser.add_argument(
        "--input",
        required=True,
        help="CSV (or .csv.gz): the long layout (an id column, a timestamp column, the target column(s)), or a wide "
        "table (a date column and the model's channels: one item, each channel a target)",
    )
    parser.add_argument("--n-windows", type=int, required=True, help="number of forecast origins (cutoffs) per series")
    parser.add_argument("--step", type=int, default=None, help="rows between cutoffs (default: the model's horizon)")
    parser.add_argument(
        "--id-column",
        default=None,
        help="item id column (default: 'item_id' when the file has one; without it the file is one wide item)",
    )
    parser.add_argument(
        "--timestamp-column",
        default=None,
        help="timestamp column (default: 'timestamp' when the file has one, else the preprocessor's, 'date')",
    )
    parser.add_argument(
        "--target",
        nargs="+",
        default=None,
        help="column(s) to forecast (default: the model's channels found in the file, else 'target')",
    )
    parser.add_argument(
        "--quantiles",
        nargs="+",
        type=float,
        default=None,
        help="quantile levels to forecast and score with WQL, e.g. 0.1 0.5 0.9 (needs `balm-tsf calibrate` first)",
    )
    parser.add_argument(
        "--season-length",
        type=int,
        default=None,
        help="season m of the MASE scale (default: 24 hourly, 96 15-minute, 7 daily data, else 1)",
    )
    parser.add_argument("--output", default=None, help="CSV to write the forecasts of every cutoff to")
    parser.add_argument("--metrics", default=None, help="CSV to write the metrics (per cutoff and overall) to")
    parser.add_argument("--plot", default=None, help="PNG of the forecasts of every cutoff over the actuals")
    parser.add_argument("--plot-item", default=None, help="the item to plot (default: the first)")
    parser.add_argument("--plot-target", nargs="+", default=None, help="the target(s) to plot (default: all)")
    parser.add_argument("--freq", default=None, help="pandas frequency of the timestamps (default: inferred)")
    parser.add_argument("--batch-size", type=int, default=None, help="series per model call (default: 256)")
    parser.add_argument("--device", default=None, help="torch device, e.g. 'cuda' (default: cpu)")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing --output, --metrics or --plot files"
    )


def _check_backtest_outputs(args: argparse.Namespace) -> None:
    """Refuse, before any work, outputs that would replace the input, each other or an existing file."""
    input_path = Path(args.input)
    if not input_path.is_file():
        raise FileNotFoundError(f"--input {input_path} does not exist")
    _check_output_files(
        input_path,
        {"--output": args.output, "--metrics": args.metrics, "--plot": args.plot},
        args.overwrite,
        "the backtest would replace its data",
    )


def run_backtest(args: argparse.Namespace) -> int:
    """Run `backtest`: read the CSV (long or wide), backtest, print the metrics, write the CSVs (and the PNG)."""
    import pandas as pd

    from .backtesting import backtest, plot_backtest

    _check_backtest_outputs(args)
    input_path = Path(args.input)
    data, forecaster = _read_input_and_forecaster(args)
    id_column = args.id_column or "item_id"
    if args.id_column is None and id_column not in data.columns:
        # A wide table: one item, named after the file, whose channels are its targets.
        data.insert(0, id_column, input_path.name.split(".")[0])
    timestamp_column = args.timestamp_column or (
        "timestamp" if "timestamp" in data.columns else forecaster.preprocessor.date_column or "date"
    )
    targets = args.target or [column for column in forecaster.columns if column in data.columns] or ["target"]
    result = backtest(
        forecaster,
        data,
        n_windows=args.n_windows,
        step=args.step,
        id_column=id_column,
        timestamp_column=timestamp_column,
        target=targets,
        quantile_levels=args.quantiles,
        season_length=args.season_length,
        batch_size=args.batch_size,
        freq=args.freq,
    )
    for option, frame in (("output", result.forecasts), ("metrics", result.metrics)):
        if getattr(args, option):
            path = Path(getattr(args, option))
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, index=False)
            logger.info("wrote %d rows to %s", len(frame), path)
    if args.plot:
        item = args.plot_item
        if item is not None and item not in set(result.forecasts[id_column]):
            # Ids read as numbers from the CSV are matched by their text.
            matches = [value for value in pd.unique(result.forecasts[id_column]) if str(value) == item]
            item = matches[0] if matches else item
        plot_backtest(result, args.plot, item=item, target=args.plot_target)
        logger.info("wrote %s", args.plot)
    sys.stdout.write(
        f"backtest of {args.model} on {input_path}: {result.n_windows} cutoffs {result.step} rows apart, horizon "
        f"{result.prediction_length}, MASE season {result.season_length}\n"
    )
    sys.stdout.write(result.metrics.to_string(index=False) + "\n")
    return 0


def add_calibrate_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of `balm-tsf calibrate`; see [`run_calibrate`]."""
    parser.add_argument("folder", help="a trained folder (the final/ folder of `balm-tsf train`)")
    parser.add_argument(
        "--split",
        choices=("validation", "test"),
        default="validation",
        help="held-out split whose residuals calibrate the intervals (default: validation)",
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="items per forward pass (default: the experiment's eval batch)"
    )
    parser.add_argument("--data-dir", default=None, help="folder of the benchmark files (default: the saved one)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the folder's calibration (and, with --evaluate-test, its interval_results.json)",
    )
    parser.add_argument(
        "--evaluate-test",
        action="store_true",
        help="also forecast the whole test split and write the coverage and width of the 80%% and 90%% intervals "
        "and the WQL, beside a seasonal-naive reference, to interval_results.json (an existing calibration is used "
        "as it is unless --overwrite)",
    )
    return parser


def run_calibrate(args: argparse.Namespace) -> int:
    """Run `calibrate`: `calibration.calibrate_folder` (and `evaluate_intervals`), then print what was written."""
    from .calibration import CALIBRATION_FILE, INTERVAL_RESULTS_FILE, calibrate_folder, evaluate_intervals

    folder = Path(args.folder)
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.evaluate_test and (folder / INTERVAL_RESULTS_FILE).exists() and not args.overwrite:
        raise FileExistsError(f"{folder / INTERVAL_RESULTS_FILE} already exists; pass --overwrite to replace it")
    if args.evaluate_test and (folder / CALIBRATION_FILE).is_file() and not args.overwrite:
        sys.stdout.write(f"using the calibration in {folder / CALIBRATION_FILE}\n")
    else:
        calibration = calibrate_folder(
            folder, split=args.split, batch_size=args.batch_size, overwrite=args.overwrite, data_dir=args.data_dir
        )
        low, high = calibration.offsets_for([0.05, 0.95])
        width = high - low  # [prediction_length, channels]
        sys.stdout.write(
            f"saved {folder / CALIBRATION_FILE}: {calibration.num_windows} {calibration.split} windows x "
            f"{len(calibration.columns)} channels, quantile levels {calibration.levels[0]:g} to "
            f"{calibration.levels[-1]:g}; 90% interval width (standardised, mean over channels) "
            f"{width[0].mean():.3f} at step 1, {width[-1].mean():.3f} at step {calibration.prediction_length}\n"
        )
    if args.evaluate_test:
        results = evaluate_intervals(
            folder, batch_size=args.batch_size, overwrite=args.overwrite, data_dir=args.data_dir
        )
        sys.stdout.write(f"wrote {folder / INTERVAL_RESULTS_FILE}\n{format_interval_table(results)}")
    return 0


def format_interval_table(results: Mapping[str, Any]) -> str:
    """A markdown table of `interval_results.json` (coverage and width per interval level, and the WQL, per model)."""
    from .calibration import interval_table

    header, rows = interval_table(results)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    note = (
        f"{results.get('dataset')} {results.get('split', 'test')} split, {results.get('num_windows')} windows; "
        "coverage of the observed values, width standardised, WQL in the data's units\n"
    )
    return "\n".join(lines) + "\n" + note


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
        "Train and test one experiment and save the Hub-ready folder to <run>/final. Without --config: the packaged "
        "CPU demo on ETTh1, or with --data FILE (--target COLUMN) the packaged template for a user CSV.",
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
    "calibrate": _Command(
        "calibrate prediction intervals of a trained folder",
        "Forecast every window of a trained folder's validation split and save the split-conformal calibration of "
        "its prediction intervals (conformal_calibration.safetensors) into the folder; with --evaluate-test, also "
        "score the intervals on the whole test split (interval_results.json).",
        None,
        add_calibrate_arguments,
        run_calibrate,
    ),
    "backtest": _Command(
        "backtest a trained model on the end of your series",
        "Forecast from n rolling cutoffs at the end of every series of a CSV (long or wide) and score each forecast "
        "against what followed: MSE and MAE in the data's units and standardised, MASE (in-sample seasonal scale) "
        "and, with --quantiles, WQL; per cutoff and overall.",
        None,
        _add_backtest_arguments,
        run_backtest,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The `balm-tsf` parser: one sub-command per command, each with `-v/--verbose`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print configuration and preprocessor dumps, load reports and the transformers/datasets logs",
    )
    parser = argparse.ArgumentParser(
        prog="balm-tsf",
        description="BALM-TSF time series forecasting: forecast with, share, train and evaluate checkpoints.",
        epilog="Run `balm-tsf COMMAND --help` for the options of a command (all take --verbose).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in _COMMANDS.items():
        command.add_arguments(
            commands.add_parser(
                name,
                help=command.help,
                description=command.description,
                epilog=command.epilog,
                parents=[common],
            )
        )
    return parser


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse a `balm-tsf` command line; for `train`, `args.overrides` holds every override in order."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    if args.command == "train":
        args.overrides = train_overrides(parser, args, unknown)
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    r"""
    Entry point of the `balm-tsf` command.

    Usage:

    ```bash
    balm-tsf train                                   # the packaged CPU demo (ETTh1, MiniLM backbone)
    balm-tsf train --data my.csv --target OT         # your CSV, split 70/10/20
    balm-tsf train --init-from outputs/balm-tsf-my/final --data new.csv --set data.percent=10   # fine-tune it
    balm-tsf train --config configuration/long_term/etth1_96.yaml --set training.learning_rate=0.005 --data.percent 10
    balm-tsf forecast --model outputs/balm-tsf-csv/final --input my.csv --output forecast.csv --plot forecast.png
    balm-tsf evaluate outputs/etth1_96/final --drop-last-test-batch --results results/eval_results.json
    balm-tsf calibrate outputs/old_run/final --evaluate-test  # intervals for a folder trained without them
    balm-tsf push --folder outputs/etth1_96/final --repo-id me/balm-tsf-etth1-96 --dry-run
    ```

    Returns the exit status: 0 on success; on an error one line goes to standard error (with the traceback under
    `--verbose`) and the status is 2 for `train` (a refused config, data file, backbone or option value) and 1 for the
    other commands.
    """
    args = parse_arguments(argv)
    import datasets.utils.logging as datasets_logging
    import transformers.utils.logging as transformers_logging

    # Restored afterwards, for callers that run `main` inside their own process.
    levels = (
        logging.getLogger("balm_hf").level,
        transformers_logging.get_verbosity(),
        datasets_logging.get_verbosity(),
        datasets_logging.is_progress_bar_enabled(),
        transformers_logging.is_progress_bar_enabled(),
        logging.getLogger(_LOADING_REPORT_LOGGER).level,
    )
    configure_logging(args.verbose)
    try:
        return _COMMANDS[args.command].run(args)
    except _ERRORS as error:
        if args.verbose:
            traceback.print_exc()
        sys.stderr.write(f"balm-tsf {args.command}: error: {_one_line(error)}\n")
        return USAGE_ERROR if args.command == "train" else 1
    finally:
        logging.getLogger("balm_hf").setLevel(levels[0])
        transformers_logging.set_verbosity(levels[1])
        datasets_logging.set_verbosity(levels[2])
        for enabled, module in ((levels[3], datasets_logging), (levels[4], transformers_logging)):
            if enabled:
                module.enable_progress_bar()
            else:
                module.disable_progress_bar()
        logging.getLogger(_LOADING_REPORT_LOGGER).setLevel(levels[5])


if __name__ == "__main__":
    sys.exit(main())
