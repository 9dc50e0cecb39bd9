"""Split-conformal prediction intervals: residual quantiles per horizon step and channel, saved with a checkpoint."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


CALIBRATION_FILE = "conformal_calibration.safetensors"
# What `evaluate_intervals` (`balm-tsf calibrate --evaluate-test`) writes: test coverage, width and WQL of intervals.
INTERVAL_RESULTS_FILE = "interval_results.json"
CALIBRATE_COMMAND = "balm-tsf calibrate FOLDER"
_FORMAT_VERSION = "1"

# The quantile levels a calibration stores: every percent, and the tails of the usual 90%, 95% and 99% intervals.
DEFAULT_LEVELS: tuple[float, ...] = tuple(
    sorted({round(0.01 * index, 2) for index in range(1, 100)} | {0.005, 0.025, 0.975, 0.995})
)


class MissingCalibrationError(FileNotFoundError):
    """A checkpoint without `conformal_calibration.safetensors` was asked for quantiles."""


def conformal_rank(num_residuals: int, level: float) -> int:
    r"""
    The 1-based rank of the sorted residual used as the split-conformal quantile at `level`.

    Upper levels (`level >= 0.5`) take rank `ceil((n + 1) * level)`, lower levels `floor((n + 1) * level)`, each
    clipped to `[1, n]`: with exchangeable residuals, `P(y <= forecast + q_level) >= level` for an upper level and
    `P(y >= forecast + q_level) >= 1 - level` for a lower one, so the interval between levels `a` and `1 - a` covers
    at least `1 - 2a` of new values (up to the clipping at small `n`).
    """
    position = (num_residuals + 1) * level
    # round first: (n + 1) * level is often an integer that floating point writes as k - 1e-13 or k + 1e-13
    position = round(position, 9)
    rank = math.ceil(position) if level >= 0.5 else math.floor(position)
    return min(max(rank, 1), num_residuals)


def windows_needed(level: float) -> int:
    """The fewest residuals that resolve `level`: `ceil(1 / min(level, 1 - level)) - 1` (19 for 0.05 and 0.95)."""
    return math.ceil(round(1.0 / min(level, 1.0 - level), 9)) - 1


def supported_levels(num_residuals: int, levels: Sequence[float] = DEFAULT_LEVELS) -> list[float]:
    """The `levels` that `num_residuals` held-out residuals resolve ([`windows_needed`]), in increasing order."""
    return sorted(float(level) for level in levels if windows_needed(float(level)) <= num_residuals)


def _check_levels(levels: Sequence[float], name: str) -> list[float]:
    values = [float(level) for level in levels]
    if not values:
        raise ValueError(f"`{name}` is empty")
    bad = [level for level in values if not (0.0 < level < 1.0) or not math.isfinite(level)]
    if bad:
        raise ValueError(f"`{name}` must lie strictly between 0 and 1, got {bad}")
    return values


class ConformalCalibration:
    r"""
    Split-conformal quantiles of the forecast residuals `y - forecast`, on the standardised scale (the scale of the
    preprocessor the model was trained with), per quantile level, horizon step and channel.

    A quantile of a new forecast is `forecast + offset[level, step, channel]` on the standardised scale, that is
    `forecast + offset * std[channel]` in the data's units. Offsets come from windows the model was not trained on
    (the validation split by default), so intervals built from them are valid for exchangeable data; they widen with
    the horizon as the residuals do.

    Args:
        columns (`list[str]`): the channels, in the preprocessor's order.
        levels (`Sequence[float]`): the stored quantile levels, strictly increasing, in `(0, 1)`.
        offsets (`np.ndarray` of shape `[levels, prediction_length, channels]`):
            The conformal quantile of the residuals at each level, non-decreasing along the levels.
        num_windows (`int`): how many forecast windows the residuals came from (per channel).
        split (`str`, *optional*, defaults to `"validation"`): the split the residuals came from.
        metadata (`Mapping[str, Any]`, *optional*): provenance saved with the file (dataset, split rows, revision).
    """

    def __init__(
        self,
        columns: Sequence[str],
        levels: Sequence[float],
        offsets: np.ndarray,
        num_windows: int,
        split: str = "validation",
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.columns = [str(column) for column in columns]
        self.levels = _check_levels(levels, "levels")
        if any(b <= a for a, b in zip(self.levels, self.levels[1:], strict=False)):
            raise ValueError(f"`levels` must be strictly increasing, got {self.levels}")
        offsets = np.asarray(offsets, dtype=np.float64)
        if offsets.ndim != 3 or offsets.shape[0] != len(self.levels) or offsets.shape[2] != len(self.columns):
            raise ValueError(
                f"`offsets` must have shape [levels={len(self.levels)}, prediction_length, channels="
                f"{len(self.columns)}], got {offsets.shape}"
            )
        if not np.isfinite(offsets).all():
            raise ValueError("`offsets` holds NaN or infinite values")
        if (np.diff(offsets, axis=0) < 0).any():
            raise ValueError("`offsets` must be non-decreasing along the quantile levels")
        if isinstance(num_windows, bool) or not isinstance(num_windows, int) or num_windows < 1:
            raise ValueError(f"`num_windows` must be a positive integer, got {num_windows!r}")
        self.offsets = offsets
        self.num_windows = num_windows
        self.split = split
        self.metadata = dict(metadata or {})

    @property
    def prediction_length(self) -> int:
        return int(self.offsets.shape[1])

    @classmethod
    def from_residuals(
        cls,
        residuals: np.ndarray,
        columns: Sequence[str],
        levels: Sequence[float] = DEFAULT_LEVELS,
        split: str = "validation",
        metadata: Mapping[str, Any] | None = None,
    ) -> ConformalCalibration:
        r"""
        Calibrate from held-out residuals.

        Args:
            residuals (`np.ndarray` of shape `[windows, prediction_length, channels]`):
                `y - forecast` on the standardised scale, from windows the model was not trained on. NaN marks a
                missing target and is left out of its step and channel.
            columns (`Sequence[str]`): the channel names, in the order of the last axis.
            levels (`Sequence[float]`, *optional*): the quantile levels to store (default: [`DEFAULT_LEVELS`]).

        Raises:
            `ValueError`: residuals of the wrong shape, infinite residuals, or a step and channel with fewer
                residuals than needed to resolve the outermost level (`1 / min(level, 1 - level) - 1`).
        """
        residuals = np.asarray(residuals, dtype=np.float64)
        if residuals.ndim != 3 or residuals.shape[2] != len(columns):
            raise ValueError(
                f"`residuals` must have shape [windows, prediction_length, channels={len(columns)}], got "
                f"{residuals.shape}"
            )
        if np.isinf(residuals).any():
            raise ValueError("`residuals` holds infinite values: a forecast or target was not finite")
        levels = sorted(_check_levels(levels, "levels"))
        counts = (~np.isnan(residuals)).sum(axis=0)
        needed = max(windows_needed(min(levels)), windows_needed(max(levels)))
        if counts.min() < needed:
            step, channel = (int(v) for v in np.argwhere(counts == counts.min())[0])
            raise ValueError(
                f"channel {columns[channel]!r} has {int(counts.min())} residuals at step {step + 1}; the levels "
                f"{min(levels)} and {max(levels)} need at least {needed} held-out windows"
            )
        ordered = np.sort(residuals, axis=0)  # NaN sorts last
        offsets = np.empty((len(levels), residuals.shape[1], residuals.shape[2]), dtype=np.float64)
        for step in range(residuals.shape[1]):
            for channel in range(residuals.shape[2]):
                count = int(counts[step, channel])
                ranks = [conformal_rank(count, level) - 1 for level in levels]
                offsets[:, step, channel] = ordered[ranks, step, channel]
        return cls(columns, levels, offsets, num_windows=int(residuals.shape[0]), split=split, metadata=metadata)

    def offsets_for(self, quantile_levels: Sequence[float]) -> np.ndarray:
        r"""
        The offsets of the requested levels, `[len(quantile_levels), prediction_length, channels]`.

        A stored level is returned as stored; a level between two stored ones is interpolated linearly.

        Raises:
            `ValueError`: a level outside `(0, 1)` or outside the stored range `[levels[0], levels[-1]]`.
        """
        requested = _check_levels(quantile_levels, "quantile_levels")
        low, high = self.levels[0], self.levels[-1]
        outside = [level for level in requested if level < low - 1e-12 or level > high + 1e-12]
        if outside:
            raise ValueError(f"quantile levels {outside} are outside the calibrated range [{low}, {high}]")
        grid = np.asarray(self.levels)
        result = np.empty((len(requested),) + self.offsets.shape[1:], dtype=np.float64)
        for index, level in enumerate(requested):
            upper = int(np.searchsorted(grid, level - 1e-12))
            if abs(grid[upper] - level) <= 1e-12:
                result[index] = self.offsets[upper]
                continue
            lower = upper - 1
            weight = (level - grid[lower]) / (grid[upper] - grid[lower])
            result[index] = (1.0 - weight) * self.offsets[lower] + weight * self.offsets[upper]
        return result

    # -- files ------------------------------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write `conformal_calibration.safetensors` (offsets, with levels and provenance in its header)."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        header = {
            "format_version": _FORMAT_VERSION,
            "columns": json.dumps(self.columns),
            "levels": json.dumps(self.levels),
            "num_windows": str(self.num_windows),
            "split": self.split,
            "metadata": json.dumps(self.metadata, sort_keys=True),
        }
        path = folder / CALIBRATION_FILE
        save_file({"offsets": torch.from_numpy(self.offsets.astype(np.float32))}, str(path), metadata=header)
        return path

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, **hub_kwargs: Any
    ) -> ConformalCalibration:
        r"""
        Read the calibration of a trained folder (or a Hub repository, with `revision`, `token`, `cache_dir`, ...).

        Raises:
            `MissingCalibrationError`: the folder or repository has no calibration; the message gives the command
                that adds it.
            `ValueError`: the file is not a valid calibration (the message names it).
        """
        source = os.fspath(pretrained_model_name_or_path)
        local = Path(source).expanduser()
        path = local / CALIBRATION_FILE
        if not local.is_dir():
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

            try:
                path = Path(hf_hub_download(source, CALIBRATION_FILE, **hub_kwargs))
            except (EntryNotFoundError, LocalEntryNotFoundError) as error:
                raise MissingCalibrationError(_missing_message(source)) from error
        elif not path.is_file():
            raise MissingCalibrationError(_missing_message(source))
        return cls.from_file(path)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ConformalCalibration:
        """Read a `conformal_calibration.safetensors` file."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                header = handle.metadata() or {}
            offsets = load_file(str(path))["offsets"].double().numpy()
            return cls(
                columns=json.loads(header["columns"]),
                levels=json.loads(header["levels"]),
                offsets=offsets,
                num_windows=int(header["num_windows"]),
                split=header.get("split", "validation"),
                metadata=json.loads(header.get("metadata", "{}")),
            )
        except (SafetensorError, KeyError, json.JSONDecodeError, ValueError, OSError) as error:
            raise ValueError(f"{path} is not a valid prediction-interval calibration: {error}") from error

    def __repr__(self) -> str:
        return (
            f"ConformalCalibration(columns={self.columns}, prediction_length={self.prediction_length}, "
            f"levels={len(self.levels)} in [{self.levels[0]}, {self.levels[-1]}], num_windows={self.num_windows}, "
            f"split={self.split!r})"
        )


def calibrate_folder(
    folder: str | os.PathLike,
    split: str = "validation",
    levels: Sequence[float] | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> ConformalCalibration:
    r"""
    Calibrate the prediction intervals of a trained folder on its validation split and save
    `conformal_calibration.safetensors` into it (what `balm-tsf calibrate FOLDER` does).

    The folder's data is reloaded as re-evaluation does (its saved experiment's dataset, split borders, columns and
    eval batch size), every window of `split` is forecast and the conformal quantiles of the residuals are stored per
    level, horizon step and channel. See [`balm_hf.training.intervals.calibrate_folder`] for the arguments.

    Example:

    ```python
    >>> from balm_hf.calibration import calibrate_folder
    >>> calibration = calibrate_folder("outputs/balm-tsf-default-etth1-96-96/final")  # doctest: +SKIP
    >>> calibration.offsets_for([0.05, 0.95]).shape  # doctest: +SKIP
    (2, 96, 7)
    ```
    """
    from .training.intervals import calibrate_folder as calibrate

    return calibrate(folder, split=split, levels=levels, batch_size=batch_size, overwrite=overwrite, data_dir=data_dir)


def evaluate_intervals(
    folder: str | os.PathLike,
    levels: Sequence[float] = (0.8, 0.9),
    batch_size: int | None = None,
    overwrite: bool = False,
    **kwargs: Any,
) -> dict[str, Any]:
    r"""
    Forecast the whole test split of a calibrated folder and write the empirical coverage and mean width of its
    central `levels` intervals and its weighted quantile loss, beside a seasonal-naive reference calibrated the same
    way, to `interval_results.json` (what `balm-tsf calibrate FOLDER --evaluate-test` adds). See
    [`balm_hf.training.intervals.evaluate_intervals`] for the other arguments.
    """
    from .training.intervals import evaluate_intervals as evaluate

    return evaluate(folder, levels=levels, batch_size=batch_size, overwrite=overwrite, **kwargs)


def calibration_sha256(folder: str | os.PathLike) -> str:
    """The SHA-256 of a folder's calibration file, which `interval_results.json` records to name its calibration."""
    digest = hashlib.sha256()
    with open(Path(folder) / CALIBRATION_FILE, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def interval_table(results: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the table of an `interval_results.json`: per model, the coverage and mean width
    (standardised) of each central interval and the WQL."""
    levels = [f"{float(level):g}" for level in results["interval_levels"]]
    header = ["model"]
    for level in levels:
        header += [f"coverage {float(level) * 100:g}%", f"width {float(level) * 100:g}%"]
    rows = []
    for model in results["models"]:
        cells = [str(model["model"])]
        for level in levels:
            cells += [f"{model['coverage'][level]:.3f}", f"{model['width'][level]:.3f}"]
        rows.append(cells + [f"{model['wql']:.4f}"])
    return header + ["WQL"], rows


def _missing_message(source: str) -> str:
    return (
        f"{source} has no prediction-interval calibration ({CALIBRATION_FILE}), so it gives point forecasts only; "
        f"add one with `{CALIBRATE_COMMAND.replace('FOLDER', source)}`"
    )


__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT_LEVELS",
    "INTERVAL_RESULTS_FILE",
    "ConformalCalibration",
    "MissingCalibrationError",
    "calibrate_folder",
    "calibration_sha256",
    "conformal_rank",
    "evaluate_intervals",
    "interval_table",
    "supported_levels",
    "windows_needed",
]
