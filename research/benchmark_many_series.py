#!/usr/bin/env python
"""
Forecast 10,000 series of the long layout with the default experiment's model through `predict_df`; print and write
the throughput (series/s), wall time and peak memory.

The model is built as `balm-tsf train` builds it (the packaged `default.yaml`: the offline MiniLM backbone cut to 2
blocks, lookback 96, horizon 96, its prompt switches), with the fitted ETTh1 scaler, saved to a temporary folder and
loaded back with `BalmTsfForecaster.from_pretrained`. Its head is not trained: the speed does not depend on the
weights' values. Each series is 192 hourly rows of one ETTh1 column starting at its own row (two contexts of
history, so the scaler statistics and the last 96 rows are both read), one item per series.

    python research/benchmark_many_series.py                      # writes research/results/many_series_cpu.json
    python research/benchmark_many_series.py --num-series 500 --output /tmp/check.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformers import set_seed  # noqa: E402

from balm_hf import BalmTsfForecaster, load_forecasting_dataset, training  # noqa: E402
from balm_hf.cli import packaged_experiment_path  # noqa: E402
from balm_hf.data import DATA_DIR_ENV  # noqa: E402
from balm_hf.forecasting import DEFAULT_BATCH_SIZE  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "research" / "results" / "many_series_cpu.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-series", type=int, default=10_000, help="how many series to forecast")
    parser.add_argument("--history", type=int, default=192, help="rows of history per series (at least 96)")
    parser.add_argument(
        "--batch-size", type=int, default=None, help=f"series per model call (default: {DEFAULT_BATCH_SIZE})"
    )
    parser.add_argument("--data-dir", default=None, help="folder of ETTh1.csv(.gz) (default: $BALM_TSF_DATA_DIR)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="results JSON to write")
    return parser.parse_args(argv)


def long_frame(num_series: int, history: int, data_dir: str | None) -> pd.DataFrame:
    """`num_series` items of `history` hourly rows: item i is column i % 7 of ETTh1 from row i // 7 * 7 + i % 7."""
    folder = Path(data_dir or os.environ.get(DATA_DIR_ENV) or REPO_ROOT.parent / "shared" / "datasets")
    path = next((folder / name for name in ("ETTh1.csv", "ETTh1.csv.gz") if (folder / name).is_file()), None)
    if path is None:
        raise SystemExit(f"no ETTh1.csv or ETTh1.csv.gz in {folder} (pass --data-dir or set ${DATA_DIR_ENV})")
    etth1 = pd.read_csv(path)
    columns = [column for column in etth1.columns if column != "date"]
    starts = (np.arange(num_series) * 3) % (len(etth1) - history)
    rows = (starts[:, None] + np.arange(history)[None, :]).reshape(-1)
    column_of = np.arange(num_series) % len(columns)
    values = etth1[columns].to_numpy()[rows, np.repeat(column_of, history)]
    return pd.DataFrame(
        {
            "item_id": np.repeat([f"series-{index:05d}" for index in range(num_series)], history),
            "timestamp": etth1["date"].to_numpy()[rows],
            "OT": values,
        }
    )


def versions() -> dict[str, str]:
    names = ["balm-tsf", "torch", "transformers", "pandas", "numpy", "huggingface_hub", "tqdm"]
    found = {name.replace("-", "_"): metadata.version(name) for name in names}
    found["python"] = platform.python_version()
    return found


def git_revision() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO_ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    revision = git_revision()
    load_at_start = os.getloadavg()[0]  # other work on the cores slows the figures: record how busy they were
    experiment = training.load_experiment_config(packaged_experiment_path("default"))
    context, horizon = experiment.data.context_length, experiment.data.prediction_length
    if args.history < context:
        raise SystemExit(f"--history {args.history} is shorter than the model's context_length={context}")
    set_seed(experiment.training.seed)
    model = training.build_model(experiment)
    splits = load_forecasting_dataset(
        "ETTh1",
        context_length=context,
        prediction_length=horizon,
        percent=experiment.data.percent,
        data_dir=args.data_dir,
    )
    preprocessor = splits.preprocessor
    if preprocessor is None:
        raise RuntimeError("the ETTh1 splits carry no fitted preprocessor")
    frame = long_frame(args.num_series, args.history, args.data_dir)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        preprocessor.save_pretrained(folder)
        forecaster = BalmTsfForecaster.from_pretrained(folder)
        del model
        rss_before = peak_rss_mib()
        start = time.perf_counter()
        result = forecaster.predict_df(frame, target="OT", batch_size=args.batch_size)
        wall = time.perf_counter() - start
    if len(result) != args.num_series * horizon or not np.isfinite(result["predictions"]).all():
        raise RuntimeError(f"expected {args.num_series * horizon} finite forecast rows, got {len(result)}")
    results: dict[str, Any] = {
        "command": shlex.join(["python", "research/benchmark_many_series.py", *(argv or sys.argv[1:])]),
        "git_revision": revision,
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average_1min": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
        },
        "versions": versions(),
        "model": {
            "experiment": "balm_hf/resources/experiments/default.yaml",
            "backbone": model_name(forecaster),
            "llm_layers": forecaster.model.config.llm_layers,
            "context_length": context,
            "prediction_length": horizon,
            "num_input_channels": forecaster.model.config.num_input_channels,
            "parameters": sum(parameter.numel() for parameter in forecaster.model.parameters()),
        },
        "num_series": args.num_series,
        "history_rows_per_series": args.history,
        "input_rows": len(frame),
        "batch_size": args.batch_size or DEFAULT_BATCH_SIZE,
        "wall_time_s": round(wall, 2),
        "series_per_s": round(args.num_series / wall, 1),
        "peak_rss_mib": round(peak_rss_mib()),
        "peak_rss_mib_before_predict_df": round(rss_before),
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(
        f"{args.num_series} series (batch {results['batch_size']}): {wall:.1f} s, {results['series_per_s']} series/s, "
        f"peak RSS {results['peak_rss_mib']} MiB ({results['peak_rss_mib_before_predict_df']} MiB before "
        f"predict_df); wrote {output}"
    )
    return results


def model_name(forecaster: BalmTsfForecaster) -> str:
    return str(forecaster.model.config.llm_name_or_path)


if __name__ == "__main__":
    main()
