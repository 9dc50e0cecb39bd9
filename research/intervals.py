"""Prediction intervals of a trained folder, measured on the whole test split.

    python -m research.intervals --folder DIR --output research/results/intervals/ETTh1_L512_H96.json

Forecasts every window of the folder's validation and test splits (its saved experiment's data, as re-evaluation
reloads it), calibrates the split-conformal intervals on the validation residuals (unless the folder already holds a
calibration), scores the 80% and 90% intervals and the WQL on the test split beside a seasonal-naive reference
calibrated the same way, and writes `interval_results.json` into the folder and, to `--output`, the figures with
the command, code and training revisions, machine, versions, experiment settings and timings, plus diagnostics of any
miss: the coverage of the validation split itself and the spread of the validation and test residuals per horizon
quarter. The `README.md` next to `--output` is rewritten with a table of every result file in that folder.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from balm_hf.artifacts import TRAINING_INFO_FILE, _read_folder, collect_environment_info
from balm_hf.calibration import CALIBRATION_FILE, INTERVAL_RESULTS_FILE, ConformalCalibration, interval_table
from balm_hf.training.evaluation import load_saved_run
from balm_hf.training.intervals import (
    calibrate_forecasts,
    calibration_metadata,
    forecast_residuals,
    interval_results,
    refresh_model_card,
    write_interval_files,
)


COVERAGE_GOAL_POINTS = 3.0  # coverage within 3 points of nominal


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _epochs(count: Any) -> str:
    number = f"{count:g}" if isinstance(count, (int, float)) else str(count)
    return f"{number} epoch" + ("" if number == "1" else "s")


def residual_spread(residuals: np.ndarray, parts: int = 4) -> dict[str, Any]:
    """Mean absolute residual and RMS (standardised), overall and per consecutive part of the horizon."""
    horizon = residuals.shape[1]
    bounds = np.linspace(0, horizon, parts + 1).astype(int)
    observed = residuals[~np.isnan(residuals)]
    spread: dict[str, Any] = {
        "mae": float(np.abs(observed).mean()),
        "rmse": float(np.sqrt(np.mean(observed**2))),
        "by_steps": [],
    }
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        part = residuals[:, start:end]
        part = part[~np.isnan(part)]
        spread["by_steps"].append(
            {
                "steps": f"{start + 1}-{end}",
                "mae": float(np.abs(part).mean()),
                "rmse": float(np.sqrt(np.mean(part**2))),
            }
        )
    return spread


def in_sample_coverage(residuals: np.ndarray, calibration: ConformalCalibration, level: float) -> float:
    """Coverage of the central `level` interval on the residuals it was calibrated on (nominal up to ranks)."""
    low, high = calibration.offsets_for([round((1 - level) / 2, 10), round((1 + level) / 2, 10)])
    observed = ~np.isnan(residuals)
    return float((((residuals >= low) & (residuals <= high)) & observed).sum() / observed.sum())


def diagnose(results: dict[str, Any], parts: int = 4) -> dict[str, Any]:
    """What `interval_results.json` itself says about a miss: the model's width over the width calibrated on the test
    residuals themselves (below 1: the test errors spread more than the validation errors), its coverage per part
    of the horizon, and which levels miss the goal."""
    model = results["models"][0]
    by_part: dict[str, list[float]] = {}
    for level, steps in model["coverage_by_step"].items():
        bounds = np.linspace(0, len(steps), parts + 1).astype(int)
        by_part[level] = [float(np.mean(steps[start:end])) for start, end in zip(bounds[:-1], bounds[1:], strict=True)]
    return {
        "width_over_oracle_width": {
            level: model["width"][level] / model["oracle_width"][level] for level in model["width"]
        },
        "coverage_by_horizon_quarter": by_part,
        "misses_goal": {
            level: abs(model["coverage"][level] - float(level)) * 100 > COVERAGE_GOAL_POINTS
            for level in model["coverage"]
        },
    }


def collect(folder: Path) -> dict[str, Any]:
    """The figures that training wrote (`evaluation.calibrate`): the folder's calibration and `interval_results.json`,
    read and checked as the folder contract does (the results must belong to the calibration), nothing recomputed."""
    trained = _read_folder(folder, strict=True)
    if trained.calibration is None or not trained.interval_results:
        raise FileNotFoundError(f"{folder} holds no calibration and interval results written by training")
    calibration, results = trained.calibration, trained.interval_results
    return {
        "calibrated_here": False,
        "source": f"{INTERVAL_RESULTS_FILE} written by the training run (evaluation.calibrate), read back unchanged",
        "calibration": {
            "num_windows": calibration.num_windows,
            "split": calibration.split,
            "levels": f"{len(calibration.levels)} levels from {calibration.levels[0]:g} to {calibration.levels[-1]:g}",
        },
        "timings_s": {"calibrate_and_score_in_training_s": results.get("seconds")},
        "results": results,
        "diagnostics": {
            **diagnose(results),
            "mse": {
                "validation_monitored_by_training": trained.training_info.get("best_validation_mse"),
                "test": next((row["mse"] for row in trained.eval_rows if not row["drop_last"]), None),
            },
        },
        "training_info": trained.training_info,
    }


def measure(folder: Path, batch_size: int | None, overwrite: bool) -> dict[str, Any]:
    """Forecast both held-out splits, calibrate (unless present), score the test split; the figures and diagnostics."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="balm-tsf-intervals-") as scratch:
        run = load_saved_run(folder, batch_size=batch_size, output_dir=scratch)
        timings["load_s"] = time.perf_counter() - start
        forecasts = {}
        for split in ("validation", "test"):
            began = time.perf_counter()
            forecasts[split] = run.trainer.predict_forecasts(run.splits[split])
            timings[f"forecast_{split}_s"] = time.perf_counter() - began
    preprocessor = run.splits.preprocessor
    info = json.loads((folder / TRAINING_INFO_FILE).read_text(encoding="utf-8"))
    calibrated_here = overwrite or not (folder / CALIBRATION_FILE).is_file()
    if calibrated_here:
        metadata = calibration_metadata(
            preprocessor,
            "validation",
            forecasts["validation"],
            model=str(folder),
            batch_size=run.trainer.args.per_device_eval_batch_size,
            training_git_revision=info.get("git_revision"),
        )
        calibration = calibrate_forecasts(forecasts["validation"], preprocessor.columns, metadata=metadata)
        write_interval_files(folder, calibration)
    else:
        calibration = ConformalCalibration.from_pretrained(folder)
    began = time.perf_counter()
    results = interval_results(forecasts["test"], calibration, run.splits)
    timings["score_s"] = time.perf_counter() - began
    results = write_interval_files(folder, results=results) or results
    refresh_model_card(folder)  # the card's table and model-index show the figures
    validation_residuals = forecast_residuals(forecasts["validation"])
    test_residuals = forecast_residuals(forecasts["test"])
    diagnostics = {
        **diagnose(results),
        "validation_coverage": {
            f"{level:g}": in_sample_coverage(validation_residuals, calibration, level)
            for level in results["interval_levels"]
        },
        "residual_spread": {
            "validation": residual_spread(validation_residuals),
            "test": residual_spread(test_residuals),
        },
    }
    return {
        "calibrated_here": calibrated_here,
        "calibration": {
            "num_windows": calibration.num_windows,
            "split": calibration.split,
            "levels": f"{len(calibration.levels)} levels from {calibration.levels[0]:g} to {calibration.levels[-1]:g}",
        },
        "source": "validation and test splits forecast by this script",
        "timings_s": {name: round(value, 1) for name, value in timings.items()},
        "results": results,
        "diagnostics": diagnostics,
        "training_info": info,
    }


def build_record(folder: Path, measured: dict[str, Any], command: str) -> dict[str, Any]:
    info = measured.pop("training_info")
    environment = collect_environment_info()
    experiment = yaml.safe_load((folder / "experiment.yaml").read_text(encoding="utf-8"))
    training = experiment.get("training") or {}
    revision = environment["git_revision"]
    return {
        "command": command,
        "git_revision": revision[:7] if revision else None,
        "machine": f"{environment['hardware']['cpu_count']}-core {_cpu_model()} CPU",
        "versions": environment["versions"],
        "folder": str(folder),
        "training": {
            "experiment": experiment.get("name"),
            "git_revision": (info.get("git_revision") or "")[:7] or None,
            "num_train_epochs": training.get("num_train_epochs"),
            "epochs_completed": info.get("epochs_completed"),
            "best_validation_mse": info.get("best_validation_mse"),
            "wall_time_s": info.get("wall_time_s"),
            "note": f"trained for at most {_epochs(training.get('num_train_epochs'))} (a cap for CPU time), not to "
            "convergence",
            "experiment_settings": experiment,
        },
        **measured,
    }


def diagnosis(diagnostics: dict[str, Any]) -> str:
    """One sentence of the diagnostics of a result file."""
    parts = [
        "width over the width calibrated on the test residuals themselves: "
        + ", ".join(f"{value:.2f} ({level})" for level, value in diagnostics["width_over_oracle_width"].items())
    ]
    if "mse" in diagnostics:
        mse = diagnostics["mse"]
        parts.append(
            f"MSE of the validation items training monitored {mse['validation_monitored_by_training']:.3f}, "
            f"of the test split {mse['test']:.3f}"
        )
    if "validation_coverage" in diagnostics:
        spread = diagnostics["residual_spread"]
        parts.append(
            "coverage of the validation split itself: "
            + ", ".join(f"{value:.3f} ({level})" for level, value in diagnostics["validation_coverage"].items())
        )
        parts.append(f"residual RMS validation {spread['validation']['rmse']:.3f}, test {spread['test']['rmse']:.3f}")
    return "Diagnostics: " + "; ".join(parts) + "."


def write_table(folder: Path) -> Path:
    """Rewrite `folder/README.md`: one table of the coverage, width and WQL of every result file in `folder`."""
    lines = [
        "# Prediction intervals on the whole test split",
        "",
        "Written by `python -m research.intervals` (see [research/README.md](../../README.md#prediction-intervals)):",
        "split-conformal intervals calibrated on the validation split (per horizon step and channel, standardised",
        "scale), scored on every window, step and channel of the test split. Coverage is the share of observed",
        "values inside the central interval (goal: within 3 points of nominal), width the mean width on the",
        "standardised scale, WQL the weighted quantile loss over the levels 0.1, ..., 0.9 in the data's units. The",
        "seasonal-naive reference is calibrated the same way on the same validation split. Each JSON file holds the",
        "command, revisions, machine, versions, settings and the diagnostics (coverage per horizon quarter, width",
        "over the width the test residuals themselves give, and when the script forecast the validation split too,",
        "the validation coverage and residual spread).",
        "",
    ]
    for path in sorted(folder.glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        results = record["results"]
        header, rows = interval_table(results)
        training = record["training"]
        diagnostics = record["diagnostics"]
        lines += [
            f"## {results['dataset']}, L={results['context_length']}, H={results['prediction_length']} ([{path.name}]"
            f"({path.name}))",
            "",
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows),
            "",
            f"{results['num_windows']} test windows x {len(results['columns'])} channels, calibrated on "
            f"{record['calibration']['num_windows']} validation windows; model `{training['experiment']}` trained "
            f"{_epochs(training['epochs_completed'])} (capped at {training['num_train_epochs']}) at "
            f"`{training['git_revision']}`"
            + (
                ", figures computed by that training run"
                if "training run" in record.get("source", "")
                else f", figures measured by this script at `{record['git_revision']}`"
            )
            + f", on a {record['machine']}.",
            "",
            diagnosis(diagnostics),
            "",
            f"`{record['command']}`",
            "",
        ]
    readme = folder / "README.md"
    readme.write_text("\n".join(lines), encoding="utf-8")
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, required=True, help="a trained folder (<run>/final)")
    parser.add_argument("--output", type=Path, required=True, help="the result JSON to write")
    parser.add_argument("--batch-size", type=int, default=None, help="items per forward pass (default: as trained)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="recalibrate a folder that holds a calibration, and replace an existing --output",
    )
    parser.add_argument(
        "--from-training",
        action="store_true",
        help="forecast nothing: record the calibration and interval_results.json that training wrote into the folder "
        "(without the diagnostics that need the validation forecasts)",
    )
    args = parser.parse_args(argv)
    checked = [args.output] if args.from_training else [args.output, args.folder / INTERVAL_RESULTS_FILE]
    for path in checked:
        if path.exists() and not args.overwrite:
            parser.error(f"{path} already exists; pass --overwrite to replace it")
    command = "python -m research.intervals " + " ".join(shlex.quote(arg) for arg in (argv or sys.argv[1:]))
    measured = collect(args.folder) if args.from_training else measure(args.folder, args.batch_size, args.overwrite)
    record = build_record(args.folder, measured, command)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    header, rows = interval_table(record["results"])
    sys.stdout.write("| " + " | ".join(header) + " |\n" + "".join("| " + " | ".join(row) + " |\n" for row in rows))
    sys.stdout.write(f"wrote {args.output} and {write_table(args.output.parent)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
