"""Prediction intervals of a trained model: validation residuals, the split-conformal calibration, test coverage.

[`calibrate_folder`] and [`evaluate_intervals`] are also reachable as `balm_hf.calibration.calibrate_folder` and
`balm_hf.calibration.evaluate_intervals`; `balm-tsf calibrate` runs them. Training runs the same steps on the
forecasts it already holds ([`run_experiment`] with `evaluation.calibrate`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..artifacts import MODEL_CARD_FILE, PREPROCESSOR_FILE, TRAINING_INFO_FILE, git_revision
from ..calibration import (
    CALIBRATION_FILE,
    DEFAULT_LEVELS,
    INTERVAL_RESULTS_FILE,
    ConformalCalibration,
    calibration_sha256,
    supported_levels,
)
from ..data import item_series_index
from ..data.timestamps import default_season_length
from ..metrics import weighted_quantile_loss
from .trainer import ForecastOutput, canonical_item_order


logger = logging.getLogger(__name__)

# The central intervals whose coverage and width are reported, and the levels of the weighted quantile loss.
INTERVAL_LEVELS: tuple[float, ...] = (0.8, 0.9)
WQL_LEVELS: tuple[float, ...] = tuple(round(0.1 * index, 1) for index in range(1, 10))
CALIBRATION_SPLITS = ("validation", "test")
MODEL_LABEL = "BALM-TSF"
# A phrase of the comment the model card template writes under its metadata: a README.md without it is left alone.
_RENDERED_CARD_MARKER = "Rendered by `balm_hf.hub.render_model_card`"


def _check_layout(forecasts: ForecastOutput) -> None:
    """The items must be in the split's channel-major order: item `c * num_windows + w`."""
    windows, channels = forecasts.num_windows, forecasts.num_channels
    expected_windows = np.tile(np.arange(windows), channels)
    expected_channels = np.repeat(np.arange(channels), windows)
    if not (
        np.array_equal(np.asarray(forecasts.window_index), expected_windows)
        and np.array_equal(np.asarray(forecasts.channel_index), expected_channels)
    ):
        raise RuntimeError(
            f"the forecasts are not in channel-major order over {windows} windows and {channels} channels "
            "(item i = channel i // num_windows, window i % num_windows)"
        )


def items_to_windows(forecasts: ForecastOutput, values: np.ndarray) -> np.ndarray:
    r"""
    Reshape per-item values `[channels * windows, prediction_length, 1]` (channel-major, as `forecasts` orders its
    items) to `[windows, prediction_length, channels]`.
    """
    _check_layout(forecasts)
    values = np.asarray(values, dtype=np.float64)
    horizon = values.shape[1]
    if values.shape != (forecasts.num_items, horizon, 1):
        raise ValueError(f"expected per-item values of shape [{forecasts.num_items}, H, 1], got {values.shape}")
    return values[..., 0].reshape(forecasts.num_channels, forecasts.num_windows, horizon).transpose(1, 2, 0)


def window_arrays(forecasts: ForecastOutput) -> tuple[np.ndarray, np.ndarray]:
    r"""
    The forecasts and targets of a split as `[windows, prediction_length, channels]` on the standardised scale; a
    target that was not observed (`data.missing: mask`) is NaN.
    """
    predictions = items_to_windows(forecasts, forecasts.predictions)
    references = items_to_windows(forecasts, forecasts.references)
    if forecasts.observed_mask is not None:
        observed = items_to_windows(forecasts, forecasts.observed_mask) != 0
        references = np.where(observed, references, np.nan)
    if not np.isfinite(predictions).all():
        raise ValueError("the model produced non-finite forecasts; no interval can be calibrated from them")
    return predictions, references


def forecast_residuals(forecasts: ForecastOutput) -> np.ndarray:
    r"""
    `y - forecast` of every window, horizon step and channel of a split, `[windows, prediction_length, channels]`, on
    the standardised scale; NaN where the target was not observed.
    """
    predictions, references = window_arrays(forecasts)
    return references - predictions


def seasonal_naive_forecasts(dataset: Any, season: int, chunk_size: int = 4096) -> ForecastOutput:
    r"""
    Seasonal-naive forecasts of every item of a split: step `h` repeats the value `season` steps before it, read from
    the last season of the context (`past[L - season + h % season]`).

    Args:
        dataset: a split of [`~data.load_forecasting_dataset`].
        season (`int`): the season length, at most the context length (see
            [`~balm_hf.data.timestamps.default_season_length`]).
        chunk_size (`int`, *optional*): items read at a time.

    Returns:
        [`ForecastOutput`]: the forecasts, in the split's channel-major order, with targets and observed masks.
    """
    predictions, references, masks, windows, channels = [], [], [], [], []
    for start in range(0, len(dataset), chunk_size):
        batch = dataset[start : start + chunk_size]
        past = np.asarray(batch["past_values"], dtype=np.float64)
        future = np.asarray(batch["future_values"], dtype=np.float64)
        context, horizon = past.shape[1], future.shape[1]
        if not 1 <= season <= context:
            raise ValueError(
                f"the seasonal-naive reference needs a season between 1 and the context length {context}, got {season}"
            )
        positions = context - season + np.arange(horizon) % season
        predictions.append(past[:, positions])
        references.append(future)
        if "future_observed_mask" in batch:
            masks.append(np.asarray(batch["future_observed_mask"], dtype=np.float64))
        windows.append(np.asarray(batch["window_index"], dtype=np.int64))
        channels.append(np.asarray(batch["channel_index"], dtype=np.int64))
    window_index, channel_index = np.concatenate(windows), np.concatenate(channels)
    order, num_windows, num_channels = canonical_item_order(window_index, channel_index, len(dataset))
    return ForecastOutput(
        predictions=np.concatenate(predictions)[order],
        references=np.concatenate(references)[order],
        window_index=window_index[order],
        channel_index=channel_index[order],
        num_windows=num_windows,
        num_channels=num_channels,
        observed_mask=np.concatenate(masks)[order] if masks else None,
    )


def calibration_metadata(
    preprocessor: Any,
    split: str,
    forecasts: ForecastOutput,
    model: str,
    batch_size: int | None = None,
    training_git_revision: str | None = None,
) -> dict[str, Any]:
    """Provenance saved in the calibration file: data, split rows, windows, code revisions and the model."""
    borders = getattr(preprocessor, "split_borders", None) or {}
    return {
        "method": "split-conformal",
        "scale": "standardised",
        "dataset": getattr(preprocessor, "dataset_name", None),
        "split": split,
        "split_rows": list(borders.get(split, [])) or None,
        "num_windows": int(forecasts.num_windows),
        "num_channels": int(forecasts.num_channels),
        "batch_size": batch_size,
        "git_revision": git_revision(),
        "training_git_revision": training_git_revision,
        "model": model,
    }


def calibrate_forecasts(
    forecasts: ForecastOutput,
    columns: Sequence[str],
    levels: Sequence[float] | None = None,
    split: str = "validation",
    metadata: Mapping[str, Any] | None = None,
) -> ConformalCalibration:
    r"""
    The [`ConformalCalibration`] of a split's forecasts (its residuals per level, horizon step and channel).

    Args:
        forecasts ([`ForecastOutput`]): every item of a held-out split.
        columns (`Sequence[str]`): the channels, in the preprocessor's order.
        levels (`Sequence[float]`, *optional*):
            The levels to store. By default those of [`DEFAULT_LEVELS`] that the split's windows resolve (all of them
            from 199 windows per channel; the outer ones are left out below that, with a warning).
        split (`str`, *optional*), metadata (`Mapping`, *optional*): recorded in the calibration.

    Raises:
        `ValueError`: fewer windows than the levels need (19 for the 90% interval, 9 at least).
    """
    if forecasts.num_channels != len(columns):
        raise ValueError(
            f"the forecasts have {forecasts.num_channels} channels but the preprocessor has {len(columns)} columns "
            f"{list(columns)}"
        )
    residuals = forecast_residuals(forecasts)
    if levels is None:
        count = int((~np.isnan(residuals)).sum(axis=0).min())
        levels = supported_levels(count)
        if not levels or levels[0] > 0.1:
            raise ValueError(
                f"the {split} split has {count} windows with an observed target per step and channel: too few to "
                "calibrate intervals (the 80% interval needs 9, the 90% interval 19)"
            )
        if len(levels) < len(DEFAULT_LEVELS):
            logger.warning(
                "%d %s windows resolve the quantile levels %g to %g only (199 windows are needed for 0.005 to 0.995)",
                count,
                split,
                levels[0],
                levels[-1],
            )
    return ConformalCalibration.from_residuals(residuals, columns, levels=levels, split=split, metadata=metadata)


def _level_key(level: float) -> str:
    return f"{level:g}"


def _central_bounds(level: float) -> tuple[float, float]:
    if not 0.0 < level < 1.0:
        raise ValueError(f"interval levels must lie strictly between 0 and 1, got {level}")
    return round((1.0 - level) / 2.0, 10), round((1.0 + level) / 2.0, 10)


def interval_scores(
    predictions: np.ndarray,
    references: np.ndarray,
    calibration: ConformalCalibration,
    mean: np.ndarray,
    std: np.ndarray,
    interval_levels: Sequence[float] = INTERVAL_LEVELS,
    wql_levels: Sequence[float] = WQL_LEVELS,
) -> dict[str, Any]:
    r"""
    Coverage, width and WQL of the conformal intervals of point forecasts.

    Args:
        predictions (`np.ndarray` of shape `[windows, prediction_length, channels]`): standardised forecasts.
        references (`np.ndarray` of the same shape): standardised targets, NaN where not observed.
        calibration ([`ConformalCalibration`]): the offsets of the intervals.
        mean (`np.ndarray` of shape `[channels]` or `[windows, channels]`), std (`np.ndarray` of the same shape):
            The scaler (of each window's series, for data scaled per series), to express widths and the WQL in the
            data's units.
        interval_levels (`Sequence[float]`): central intervals (`0.9`: between the quantiles 0.05 and 0.95).
        wql_levels (`Sequence[float]`): the quantile levels of the WQL.

    Returns:
        `dict`: per interval level, the empirical `coverage` (observed targets inside the interval, both ends
        included), mean `width` (standardised) and `width_data_units`, `coverage_by_channel`, `coverage_by_step` and
        `oracle_width` (the width of intervals calibrated on these targets' own residuals, by the same rule: above
        `width` when the residuals here spread more than the calibration split's); `wql` (in the data's units, levels
        `wql_levels`); and `mae`, `rmse` of the residuals (standardised).
    """
    predictions = np.asarray(predictions, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    if predictions.shape != references.shape or predictions.ndim != 3:
        raise ValueError(
            f"`predictions` {predictions.shape} and `references` {references.shape} must both be "
            "[windows, prediction_length, channels]"
        )
    if predictions.shape[1:] != calibration.offsets.shape[1:]:
        raise ValueError(
            f"the forecasts have prediction_length and channels {predictions.shape[1:]} but the calibration has "
            f"{calibration.offsets.shape[1:]}"
        )
    # [channels] (one scaler) or [windows, channels] (each window's series), as [windows or 1, 1, channels]
    mean = np.asarray(mean, dtype=np.float64).reshape(-1, 1, predictions.shape[2])
    std = np.asarray(std, dtype=np.float64).reshape(-1, 1, predictions.shape[2])
    observed = ~np.isnan(references)
    if not observed.any():
        raise ValueError("no observed target to evaluate the intervals on")
    residuals = references - predictions
    scores: dict[str, Any] = {
        "coverage": {},
        "width": {},
        "width_data_units": {},
        "oracle_width": {},
        "coverage_by_channel": {},
        "coverage_by_step": {},
    }
    for level in interval_levels:
        low_level, high_level = _central_bounds(level)
        low, high = calibration.offsets_for([low_level, high_level])  # [H, C] each
        inside = (residuals >= low) & (residuals <= high) & observed
        width = np.broadcast_to(high - low, residuals.shape)
        width_data = np.broadcast_to((high - low) * std, residuals.shape)
        oracle = ConformalCalibration.from_residuals(residuals, calibration.columns, levels=[low_level, high_level])
        oracle_width = np.broadcast_to(oracle.offsets[1] - oracle.offsets[0], residuals.shape)
        key = _level_key(level)
        scores["coverage"][key] = float(inside.sum() / observed.sum())
        scores["width"][key] = float(width[observed].mean())
        scores["width_data_units"][key] = float(width_data[observed].mean())
        scores["oracle_width"][key] = float(oracle_width[observed].mean())
        scores["coverage_by_channel"][key] = {
            column: float(inside[..., channel].sum() / observed[..., channel].sum())
            for channel, column in enumerate(calibration.columns)
        }
        scores["coverage_by_step"][key] = [
            float(value) for value in inside.sum(axis=(0, 2)) / np.maximum(observed.sum(axis=(0, 2)), 1)
        ]
    offsets = calibration.offsets_for(list(wql_levels)).transpose(1, 2, 0)  # [H, C, levels]
    quantiles = (predictions[..., None] + offsets[None]) * std[..., None] + mean[..., None]
    scores["wql"] = weighted_quantile_loss(quantiles, references * std + mean, list(wql_levels))
    scores["mae"] = float(np.abs(residuals[observed]).mean())
    scores["rmse"] = float(math.sqrt(np.mean(residuals[observed] ** 2)))
    return scores


def interval_results(
    test_forecasts: ForecastOutput,
    calibration: ConformalCalibration,
    splits: Any,
    interval_levels: Sequence[float] = INTERVAL_LEVELS,
    wql_levels: Sequence[float] = WQL_LEVELS,
    reference: bool = True,
    season: int | None = None,
    split: str = "test",
) -> dict[str, Any]:
    r"""
    The content of `interval_results.json`: the coverage, width and WQL of the model's conformal intervals on the
    whole `split` (test by default), and beside them those of a seasonal-naive forecast calibrated the same way on the
    same calibration split.

    Args:
        test_forecasts ([`ForecastOutput`]): the model's forecasts of every item of `split`.
        calibration ([`ConformalCalibration`]): the model's calibration.
        splits ([`~data.BalmTsfDatasetDict`]): the data (with its `preprocessor`), for the reference and the scaler.
        interval_levels, wql_levels: see [`interval_scores`].
        reference (`bool`, *optional*, defaults to `True`): also score the seasonal-naive reference.
        season (`int`, *optional*):
            Its season; defaults to [`~balm_hf.data.timestamps.default_season_length`] of the data's frequency.
        split (`str`, *optional*, defaults to `"test"`): the evaluated split.
    """
    preprocessor = splits.preprocessor
    if list(preprocessor.columns) != list(calibration.columns):
        raise ValueError(
            f"the calibration is for the columns {calibration.columns} but the data has {list(preprocessor.columns)}"
        )
    mean, std = window_scalers(splits, split, test_forecasts.num_windows)
    predictions, references = window_arrays(test_forecasts)
    models = [
        {
            "model": MODEL_LABEL,
            "calibration_windows": calibration.num_windows,
            **interval_scores(predictions, references, calibration, mean, std, interval_levels, wql_levels),
        }
    ]
    season_used = None
    context_length = int(preprocessor.context_length or 0)
    if reference:
        season_used = default_season_length(preprocessor.frequency) if season is None else int(season)
        if context_length and season_used > context_length:
            if season is not None:
                raise ValueError(f"`season`={season} is longer than the context length {context_length}")
            logger.warning(
                "no seasonal-naive reference: the season %d is longer than the context length %d",
                season_used,
                context_length,
            )
            reference, season_used = False, None
    if reference and season_used is not None:
        naive_calibration = calibrate_forecasts(
            seasonal_naive_forecasts(splits[calibration.split], season_used),
            calibration.columns,
            levels=sorted({*_interval_bounds(interval_levels), *wql_levels}),
            split=calibration.split,
        )
        naive_predictions, naive_references = window_arrays(seasonal_naive_forecasts(splits[split], season_used))
        models.append(
            {
                "model": f"seasonal naive (season {season_used})",
                "calibration_windows": naive_calibration.num_windows,
                **interval_scores(
                    naive_predictions, naive_references, naive_calibration, mean, std, interval_levels, wql_levels
                ),
            }
        )
    borders = getattr(preprocessor, "split_borders", None) or {}
    return {
        "dataset": preprocessor.dataset_name,
        "split": split,
        "split_rows": list(borders.get(split, [])) or None,
        "calibration_split": calibration.split,
        "calibration_rows": list(borders.get(calibration.split, [])) or None,
        "context_length": int(preprocessor.context_length or 0) or None,
        "prediction_length": calibration.prediction_length,
        "columns": list(calibration.columns),
        "num_windows": int(test_forecasts.num_windows),
        "num_entries": int((~np.isnan(references)).sum()),
        "season": season_used,
        "interval_levels": [float(level) for level in interval_levels],
        "wql_levels": [float(level) for level in wql_levels],
        "scale": "coverage over every observed (window, step, channel) entry; width standardised and in data units; "
        "WQL in data units",
        "models": models,
    }


def window_scalers(splits: Any, split: str, num_windows: int) -> tuple[np.ndarray, np.ndarray]:
    r"""
    The scaler of every window of a split: `(mean, std)` of shape `[channels]` for one wide series, or
    `[windows, channels]` for long data (each window's series' statistics, `BalmTsfPreprocessor.statistics_for`).
    """
    preprocessor = splits.preprocessor
    columns = list(preprocessor.columns)
    series = item_series_index(splits[split])
    if series is None:
        return np.asarray(preprocessor.mean, dtype=np.float64), np.asarray(preprocessor.std, dtype=np.float64)
    series = np.asarray(series, dtype=np.int64).reshape(len(columns), num_windows)
    if not (series == series[:1]).all():
        raise RuntimeError(f"the channels of a window of the {split} split belong to different series")
    ids = list(preprocessor.series_ids)
    mean = np.empty((num_windows, len(columns)), dtype=np.float64)
    std = np.empty((num_windows, len(columns)), dtype=np.float64)
    for index in np.unique(series[0]):
        rows = series[0] == index
        mean[rows], std[rows] = preprocessor.statistics_for(ids[int(index)], columns)
    return mean, std


def _interval_bounds(levels: Sequence[float]) -> list[float]:
    return [bound for level in levels for bound in _central_bounds(level)]


def write_interval_files(
    folder: str | os.PathLike,
    calibration: ConformalCalibration | None = None,
    results: Mapping[str, Any] | None = None,
) -> dict[str, Any] | None:
    r"""
    Write the calibration and/or the interval results into a trained folder. The results record the SHA-256 of the
    calibration file they were computed with (`calibration_sha256`), so that a model card only shows the figures of
    the calibration the folder holds. Returns the results as written.
    """
    folder = Path(folder)
    if calibration is not None:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".calibration-") as scratch:
            written = calibration.save_pretrained(scratch)
            os.replace(written, folder / CALIBRATION_FILE)
    if results is None:
        return None
    content = dict(results)
    content["calibration_sha256"] = calibration_sha256(folder)
    path = folder / INTERVAL_RESULTS_FILE
    scratch_path = path.with_name(f".{path.name}.tmp")
    scratch_path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(scratch_path, path)
    return content


def calibrate_after_training(
    trainer: Any, splits: Any, test_forecasts: ForecastOutput, model: str
) -> tuple[ConformalCalibration | None, dict[str, Any] | None]:
    r"""
    What training adds to its final folder: forecast the whole validation split with the trained model, calibrate
    ([`calibrate_forecasts`]) and score the intervals on the test forecasts it already holds ([`interval_results`]).

    Args:
        trainer ([`BalmTsfTrainer`]): the trainer holding the best model.
        splits ([`~data.BalmTsfDatasetDict`]): the run's splits and preprocessor.
        test_forecasts ([`ForecastOutput`]): the model's forecasts of the whole test split.
        model (`str`): the run's name, recorded in the calibration's metadata.

    Returns:
        `tuple[ConformalCalibration, dict]`: the calibration and the `interval_results.json` content (with the
        `seconds` the validation forecasts and the scoring took). A validation split too short to calibrate gives
        `(None, None)` and a test split too short to score gives no results, each with a warning, so that the
        trained model is saved either way.
    """
    start = time.perf_counter()
    forecasts = trainer.predict_forecasts(splits["validation"])
    preprocessor = splits.preprocessor
    metadata = calibration_metadata(
        preprocessor,
        "validation",
        forecasts,
        model=model,
        batch_size=trainer.args.per_device_eval_batch_size,
        training_git_revision=git_revision(),
    )
    try:
        calibration = calibrate_forecasts(forecasts, preprocessor.columns, split="validation", metadata=metadata)
    except ValueError as error:
        # a short validation split must not cost the trained model: it is saved without intervals
        logger.warning("the final folder gets no prediction-interval calibration: %s", error)
        return None, None
    try:
        results = interval_results(test_forecasts, calibration, splits)
    except ValueError as error:
        logger.warning("the prediction intervals were not scored on the test split: %s", error)
        return calibration, None
    results["seconds"] = round(time.perf_counter() - start, 1)
    return calibration, results


def _training_revision(folder: Path) -> str | None:
    path = folder / TRAINING_INFO_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("git_revision")
    except (json.JSONDecodeError, AttributeError):
        return None


def _check_columns(folder: Path, columns: Sequence[str]) -> None:
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8")).get("columns")
    if saved is not None and list(saved) != list(columns):
        raise ValueError(f"the data has the columns {list(columns)} but {path} has {saved}")


def refresh_model_card(folder: str | os.PathLike) -> None:
    """Re-render a model card that `render_model_card` wrote, so that it shows the folder's intervals; leave any
    other `README.md` alone."""
    card = Path(folder) / MODEL_CARD_FILE
    if card.is_file() and _RENDERED_CARD_MARKER in card.read_text(encoding="utf-8"):
        from ..hub import render_model_card

        render_model_card(folder)


def _local_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder (expected a trained BALM-TSF folder, e.g. <run>/final)")
    return path


def calibrate_folder(
    folder: str | os.PathLike,
    split: str = "validation",
    levels: Sequence[float] | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    data_dir: str | os.PathLike | None = None,
) -> ConformalCalibration:
    r"""
    Calibrate the prediction intervals of a trained folder and save `conformal_calibration.safetensors` into it.

    The folder's data is reloaded exactly as re-evaluation does ([`~training.load_saved_run`]: the saved
    experiment's dataset, split borders, columns, missing-value mode and eval batch size), every window of `split` is
    forecast, and the split-conformal quantiles of the residuals `y - forecast` (standardised scale) are stored per
    level, horizon step and channel (see [`~calibration.ConformalCalibration`]). A model card rendered by
    `render_model_card` is re-rendered so that it states the intervals.

    Args:
        folder (`str` or `os.PathLike`): a trained folder (`<run>/final`).
        split (`str`, *optional*, defaults to `"validation"`):
            The held-out split whose residuals calibrate: `"validation"`, or `"test"` (then the test split is no
            longer an independent check of the intervals).
        levels (`Sequence[float]`, *optional*):
            Quantile levels to store. By default every percent and the tails of the 95% and 99% intervals
            ([`~calibration.DEFAULT_LEVELS`]), as far as the split's windows resolve them (199 windows per channel for
            all of them, 19 for the 90% interval).
        batch_size (`int`, *optional*): items per forward pass; defaults to the experiment's eval batch size.
        overwrite (`bool`, *optional*, defaults to `False`):
            Replace a calibration the folder already holds (and remove the `interval_results.json` that scored it).
        data_dir (`str` or `os.PathLike`, *optional*): folder of the benchmark files, when not the saved one.

    Returns:
        [`~calibration.ConformalCalibration`]: the saved calibration.

    Raises:
        `FileExistsError`: the folder holds a calibration and `overwrite` is not set.
        `ValueError`: an unknown split, or too few windows for the outermost level.
    """
    from .evaluation import load_saved_run

    path = _local_folder(folder)
    if split not in CALIBRATION_SPLITS:
        raise ValueError(
            f"`split` must be one of {CALIBRATION_SPLITS} (held-out windows), got {split!r}; the train split's "
            "residuals are too small to calibrate with"
        )
    if (path / CALIBRATION_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{path / CALIBRATION_FILE} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="balm-tsf-calibrate-") as scratch:
        run = load_saved_run(path, batch_size=batch_size, data_dir=data_dir, output_dir=scratch)
        forecasts = run.trainer.predict_forecasts(run.splits[split])
    preprocessor = run.splits.preprocessor
    _check_columns(path, preprocessor.columns)
    metadata = calibration_metadata(
        preprocessor,
        split,
        forecasts,
        model=str(path),
        batch_size=run.trainer.args.per_device_eval_batch_size,
        training_git_revision=_training_revision(path),
    )
    calibration = calibrate_forecasts(forecasts, preprocessor.columns, levels=levels, split=split, metadata=metadata)
    write_interval_files(path, calibration)
    stale = path / INTERVAL_RESULTS_FILE
    if stale.is_file():
        # computed with the calibration just replaced: its figures no longer describe the folder's intervals
        stale.unlink()
        logger.info("removed %s, which scored the replaced calibration", stale)
    logger.info(
        "calibrated %s on %d %s windows x %d channels in %.1f s",
        path,
        forecasts.num_windows,
        split,
        forecasts.num_channels,
        time.perf_counter() - start,
    )
    refresh_model_card(path)
    return calibration


def evaluate_intervals(
    folder: str | os.PathLike,
    levels: Sequence[float] = INTERVAL_LEVELS,
    wql_levels: Sequence[float] = WQL_LEVELS,
    batch_size: int | None = None,
    overwrite: bool = False,
    reference: bool = True,
    season: int | None = None,
    data_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    r"""
    Forecast the whole test split of a calibrated folder and write how its intervals do to `interval_results.json`.

    Recorded per central interval level: the empirical coverage (share of observed test targets inside the
    interval), the mean width (standardised and in the data's units) and the width that intervals calibrated on the
    test residuals themselves would have (`oracle_width`, which tells whether the test residuals spread more than the
    calibration split's); and the weighted quantile loss over `wql_levels` in the data's units. Beside the model, a
    seasonal-naive forecast (season from the data's frequency, [`~balm_hf.data.timestamps.default_season_length`])
    calibrated the same way on the same calibration split. A model card rendered by `render_model_card` is
    re-rendered to show them.

    Args:
        folder (`str` or `os.PathLike`): a trained folder holding `conformal_calibration.safetensors`.
        levels (`Sequence[float]`, *optional*, defaults to `(0.8, 0.9)`): the central intervals.
        wql_levels (`Sequence[float]`, *optional*, defaults to 0.1, ..., 0.9): the levels of the WQL.
        batch_size (`int`, *optional*): items per forward pass; defaults to the experiment's eval batch size.
        overwrite (`bool`, *optional*, defaults to `False`): replace an `interval_results.json` the folder holds.
        reference (`bool`, *optional*, defaults to `True`): also score the seasonal-naive reference.
        season (`int`, *optional*): the reference's season, instead of the one of the data's frequency.
        data_dir (`str` or `os.PathLike`, *optional*): folder of the benchmark files, when not the saved one.

    Returns:
        `dict`: the content written to `interval_results.json`.
    """
    from .evaluation import load_saved_run

    path = _local_folder(folder)
    if (path / INTERVAL_RESULTS_FILE).exists() and not overwrite:
        raise FileExistsError(
            f"{path / INTERVAL_RESULTS_FILE} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    calibration = ConformalCalibration.from_pretrained(path)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="balm-tsf-intervals-") as scratch:
        run = load_saved_run(path, batch_size=batch_size, data_dir=data_dir, output_dir=scratch)
        forecasts = run.trainer.predict_forecasts(run.splits["test"])
    results = interval_results(
        forecasts, calibration, run.splits, levels, wql_levels, reference=reference, season=season
    )
    results["seconds"] = round(time.perf_counter() - start, 1)
    written = write_interval_files(path, results=results)
    refresh_model_card(path)
    return typing.cast("dict[str, Any]", written)


__all__ = [
    "INTERVAL_LEVELS",
    "WQL_LEVELS",
    "calibrate_after_training",
    "calibrate_folder",
    "calibrate_forecasts",
    "calibration_metadata",
    "evaluate_intervals",
    "forecast_residuals",
    "interval_results",
    "interval_scores",
    "items_to_windows",
    "seasonal_naive_forecasts",
    "window_arrays",
    "refresh_model_card",
    "window_scalers",
    "write_interval_files",
]
