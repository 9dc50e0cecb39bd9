"""Split configs: the benchmark protocols in `resources/data/*.yaml` and the row ranges they give."""

from __future__ import annotations

from collections.abc import Mapping
from importlib import resources
from typing import Any

import pandas as pd
import yaml

from .timestamps import DUPLICATE_MODES


SPLITS = ("train", "validation", "test")
CUSTOM_CONFIG = "custom"


def _config_dir() -> Any:
    return resources.files("balm_hf").joinpath("resources", "data")


def _read_split_config(resource: Any) -> dict[str, Any]:
    config = yaml.safe_load(resource.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "name" not in config or "split" not in config:
        raise ValueError(f"Split config {resource} must be a mapping with `name` and `split` keys")
    split = config["split"]
    if not isinstance(split, dict) or split.get("type") not in ("borders", "ratios"):
        raise ValueError(f"Split config {resource}: `split.type` must be 'borders' or 'ratios', got {split!r}")
    if split["type"] == "borders":
        for name in SPLITS:
            border = split.get(name)
            if not (isinstance(border, list) and len(border) == 2 and all(isinstance(b, int) for b in border)):
                raise ValueError(f"Split config {resource}: `split.{name}` must be [start, end] rows, got {border!r}")
    else:
        for name in ("train", "test"):
            ratio = split.get(name)
            if not isinstance(ratio, float) or not 0 < ratio < 1:
                raise ValueError(f"Split config {resource}: `split.{name}` must be a ratio in (0, 1), got {ratio!r}")
    config.setdefault("aliases", [])
    config.setdefault("file_names", [])
    config.setdefault("url", None)
    config.setdefault("duplicate_timestamps", "error")
    if config["duplicate_timestamps"] not in DUPLICATE_MODES:
        raise ValueError(
            f"Split config {resource}: `duplicate_timestamps` must be one of {DUPLICATE_MODES}, got "
            f"{config['duplicate_timestamps']!r}"
        )
    config["source"] = str(resource)
    return config


def _split_configs() -> dict[str, dict[str, Any]]:
    """All split configs, keyed by lower-cased name and alias."""
    configs: dict[str, dict[str, Any]] = {}
    for resource in sorted(_config_dir().iterdir(), key=lambda item: item.name):
        if resource.name.endswith(".yaml"):
            config = _read_split_config(resource)
            for key in [config["name"], *config["aliases"]]:
                configs[str(key).lower()] = config
    return configs


def list_benchmarks() -> list[str]:
    """Names of the benchmarks [`load_forecasting_dataset`] knows (each has a YAML file in `resources/data`)."""
    return sorted({config["name"] for config in _split_configs().values() if config["file_names"]})


def get_split_config(name: str) -> dict[str, Any]:
    """
    The split config (parsed YAML) of a benchmark, or of `"custom"` (the ratio protocol used for user CSVs).

    Args:
        name (`str`): benchmark name or alias, case-insensitive (`"ETTh1"`, `"exchange_rate"`, `"custom"`).
    """
    configs = _split_configs()
    key = str(name).lower()
    if key not in configs:
        raise ValueError(
            f"Unknown dataset name {name!r}. Known benchmarks: {', '.join(list_benchmarks())}; or pass the path to a "
            "CSV file with a `date` column."
        )
    return configs[key]


def compute_split_borders(
    config: Mapping[str, Any], num_rows: int, context_length: int, percent: int | float = 100
) -> tuple[dict[str, tuple[int, int]], int]:
    """
    The row ranges `[start, end)` each split reads, and the end of the rows the scaler is fitted on.

    Args:
        config (`Mapping`): a split config from [`get_split_config`].
        num_rows (`int`): number of rows in the file.
        context_length (`int`): the lookback `L`; validation and test start `L` rows before their border.
        percent (`int` or `float`, *optional*, defaults to 100):
            few-shot percentage; the train end becomes `(end - L) * percent // 100 + L`.

    Returns:
        `tuple[dict[str, tuple[int, int]], int]`: `{split: (start, end)}` and the scaler's end row (the full train
        border, before the few-shot trim).
    """
    split = config["split"]
    if split["type"] == "borders":
        borders = {name: (int(split[name][0]), int(split[name][1])) for name in SPLITS}
    else:
        num_train = int(num_rows * split["train"])
        num_test = int(num_rows * split["test"])
        num_val = num_rows - num_train - num_test
        borders = {
            "train": (0, num_train),
            "validation": (num_train, num_train + num_val),
            "test": (num_rows - num_test, num_rows),
        }
    return _lookback_rows(borders, context_length, percent)


def _lookback_rows(
    borders: Mapping[str, tuple[int, int]], context_length: int, percent: int | float
) -> tuple[dict[str, tuple[int, int]], int]:
    """The rows each split reads given its target border: the few-shot trim of train, the lookback of the others."""
    scaler_end = borders["train"][1]
    train_end = int((scaler_end - context_length) * percent // 100 + context_length)
    rows = {
        "train": (borders["train"][0], train_end),
        "validation": (borders["validation"][0] - context_length, borders["validation"][1]),
        "test": (borders["test"][0] - context_length, borders["test"][1]),
    }
    return rows, scaler_end


def cutoff_split_borders(
    dates: pd.DatetimeIndex,
    cutoff: pd.Timestamp,
    context_length: int,
    percent: int | float = 100,
    test_cutoff: pd.Timestamp | None = None,
) -> tuple[dict[str, tuple[int, int]], int]:
    """
    The row ranges of the splits of one series cut at timestamps, like [`compute_split_borders`] for ratios.

    The train rows are those with a timestamp at or before `cutoff` (the last training timestamp, neuralforecast's
    and GluonTS' convention). With `test_cutoff`, validation targets are the rows after `cutoff` up to and including
    `test_cutoff`, and test targets the rows after `test_cutoff`; without it, the rows after `cutoff` are halved:
    the first `n // 2` are validation targets and the other `n - n // 2` test targets. As with the ratio protocol,
    validation and test read the `context_length` rows before their first target, the few-shot `percent` trims only
    the train split, and the scaler is fitted on all the train rows.

    Args:
        dates (`pd.DatetimeIndex`): the series' strictly increasing timestamps.
        cutoff (`pd.Timestamp`): the last timestamp of the train split.
        context_length (`int`): the lookback `L`.
        percent (`int` or `float`, *optional*, defaults to 100): few-shot percentage of the train split.
        test_cutoff (`pd.Timestamp`, *optional*): the last timestamp of the validation split.

    Returns:
        `tuple[dict[str, tuple[int, int]], int]`: `{split: (start, end)}` and the scaler's end row.
    """
    num_rows = len(dates)
    num_train = int(dates.searchsorted(cutoff, side="right"))
    if test_cutoff is None:
        num_val = (num_rows - num_train) // 2
    else:
        num_val = int(dates.searchsorted(test_cutoff, side="right")) - num_train
    borders = {
        "train": (0, num_train),
        "validation": (num_train, num_train + num_val),
        "test": (num_train + num_val, num_rows),
    }
    return _lookback_rows(borders, context_length, percent)
