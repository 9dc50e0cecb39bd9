"""Backtests of a trained BALM-TSF checkpoint on the user's own series: rolling forecast origins and their errors."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data.timestamps import default_season_length
from .forecasting import BalmTsfForecaster, _numeric_column
from .metrics import compute_forecasting_metrics, weighted_quantile_loss


logger = logging.getLogger(__name__)

CUTOFF_COLUMN = "cutoff"
WINDOW_COLUMN = "window"
TARGET_VALUE_COLUMN = "target_value"
OVERALL = "overall"


@dataclass
class BacktestResult:
    r"""
    The forecasts and errors of a [`backtest`].

    Attributes:
        forecasts (`pd.DataFrame`):
            One row per series, cutoff and horizon step, in the layout of
            [`~balm_hf.BalmTsfForecaster.predict_df`] with two more columns: `id_column`, `timestamp_column` (the
            forecast step's time), `"cutoff"` (the last timestamp the model saw, neuralforecast's convention),
            `"target_name"`, `"target_value"` (the observed value at that time, NaN where missing), `"predictions"`,
            then one column per quantile level (`"0.1"`, ...) when quantiles were asked for.
        metrics (`pd.DataFrame`):
            One row per window (`"window"` 1 to `n_windows`: the forecasts from each item's earliest to its latest
            cutoff) and a last row whose `"window"` is `"overall"` (every forecast of the backtest), with the columns
            `"window"`, `"cutoff"` (the window's cutoff timestamp when every item shares it, else NaT; NaT for
            `"overall"`), `"num_series"` (forecast series: items times targets),
            `"num_values"` (observed values scored), `"mse"` and `"mae"` (in the data's units), `"mse_scaled"` and
            `"mae_scaled"` (on the standardised scale the model works in: each value minus its series' scaling mean,
            over its scaling standard deviation), `"mase"` (the standard MASE, see [`backtest`]), `"wql"` (only with
            quantiles) and `"season_length"` (the `m` of the MASE scale).
        actuals (`pd.DataFrame`):
            The observed values around the backtest, for plots: for each item and target, the rows from one horizon
            before the first cutoff to the end, with the columns `id_column`, `timestamp_column`, `"target_name"`,
            `"target_value"`.
        season_length (`int`): the season `m` of the MASE scale.
        n_windows (`int`): the number of cutoffs per series.
        step (`int`): the rows between consecutive cutoffs.
        prediction_length (`int`): the model's horizon.
        context_length (`int`): the model's context length.
        quantile_levels (`list[float]`): the quantile levels of the forecasts (empty for point forecasts only).
        id_column (`str`): the item id column of `forecasts` and `actuals`.
        timestamp_column (`str`): the timestamp column of `forecasts` and `actuals`.
        model_name (`str`): the folder or Hub id of the model, for titles.
    """

    forecasts: pd.DataFrame
    metrics: pd.DataFrame
    actuals: pd.DataFrame
    season_length: int
    n_windows: int
    step: int
    prediction_length: int
    context_length: int
    quantile_levels: list[float]
    id_column: str
    timestamp_column: str
    model_name: str

    @property
    def overall(self) -> dict[str, Any]:
        """The `"overall"` row of `metrics` as a dict."""
        row = self.metrics[self.metrics[WINDOW_COLUMN].astype(str) == OVERALL].iloc[0]
        return {key: value for key, value in row.items() if key not in (WINDOW_COLUMN, CUTOFF_COLUMN)}


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
    return int(value)


def _as_forecaster(model_or_path: Any, device: str | torch.device | None) -> BalmTsfForecaster:
    if isinstance(model_or_path, BalmTsfForecaster):
        return model_or_path
    if isinstance(model_or_path, (str, os.PathLike)):
        return BalmTsfForecaster.from_pretrained(model_or_path, device=device)
    raise TypeError(
        "`model_or_path` must be a trained folder, a Hub id or a BalmTsfForecaster (for a model object: "
        f"`BalmTsfForecaster(model, preprocessor)`), got {type(model_or_path).__name__}"
    )


def backtest(
    model_or_path: str | os.PathLike | BalmTsfForecaster,
    df: pd.DataFrame,
    n_windows: int,
    step: int | None = None,
    id_column: str = "item_id",
    timestamp_column: str = "timestamp",
    target: str | Sequence[str] = "target",
    quantile_levels: Sequence[float] | None = None,
    season_length: int | None = None,
    batch_size: int | None = None,
    show_progress: bool | None = None,
    freq: str | None = None,
    date_format: str | None = None,
    device: str | torch.device | None = None,
) -> BacktestResult:
    r"""
    Backtest a trained model on the end of every series of a long DataFrame: forecast from `n_windows` rolling
    origins and score each forecast against the values that followed.

    For an item with `n` rows, horizon `H` (the model's `prediction_length`) and `step` `s`, the cutoffs are the rows
    `n - H - k * s` for `k = n_windows - 1, ..., 0` (counted as rows seen): the last cutoff leaves exactly one horizon
    of actuals and each earlier one lies `s` rows before the next. Forecasting from a cutoff uses the rows up to it
    only: each cutoff is one [`~balm_hf.BalmTsfForecaster.predict_df`] call on the frame cut at that cutoff, so no row
    after it reaches the model, the scaling statistics (an unknown item of a per-series preprocessor is scaled by its
    rows up to the cutoff; a global scaler or a known item's statistics were fitted at training) or the other series
    batched with it. Nothing is fitted on the evaluated windows.

    Metrics, per window (the `k`-th cutoff of every item) and over the whole backtest; missing actuals are left out:

    - `mse`, `mae`: mean squared and absolute error in the data's units;
    - `mse_scaled`, `mae_scaled`: the same on the standardised scale the model works in, each series scaled by the
      statistics [`~balm_hf.BalmTsfPreprocessor.statistics_for`] gives it at that cutoff (the paper's metric scale);
    - `mase`: the standard mean absolute scaled error of Hyndman & Koehler (2006), `mean(|e| / s)` where `s` is the
      mean absolute error of the seasonal-naive forecast `x_{t-m}` over the series' whole history up to the cutoff
      (in-sample), `m = season_length` (series with `s = 0` are left out);
    - `wql` (with `quantile_levels`): the weighted quantile loss of GluonTS and Chronos,
      `mean_q 2 * sum |(y - p_q) * (1{y <= p_q} - q)| / sum |y|`, see
      [`~balm_hf.metrics.weighted_quantile_loss`].

    Args:
        model_or_path (`str`, `os.PathLike` or [`~balm_hf.BalmTsfForecaster`]):
            A trained folder or Hub id, or a ready forecaster.
        df (`pd.DataFrame`):
            The long layout of [`~balm_hf.BalmTsfForecaster.predict_df`]: `id_column`, `timestamp_column` and the
            `target` column(s), each item's rows in increasing time order. Missing target values are allowed after
            the first cutoff's context (they are not scored); the `context_length` rows before each cutoff must be
            complete.
        n_windows (`int`): the number of cutoffs per item.
        step (`int`, *optional*): rows between consecutive cutoffs; defaults to the horizon (windows side by side).
        id_column (`str`, *optional*, defaults to `"item_id"`): the column naming each item.
        timestamp_column (`str`, *optional*, defaults to `"timestamp"`): the timestamp column.
        target (`str` or `Sequence[str]`, *optional*, defaults to `"target"`): the column(s) to forecast.
        quantile_levels (`Sequence[float]`, *optional*):
            Quantile levels to forecast and score with WQL (needs a calibrated checkpoint, see
            [`~balm_hf.BalmTsfForecaster.predict_df`]).
        season_length (`int`, *optional*):
            The season `m` of the MASE scale. Defaults to [`default_season_length`] of the preprocessor's frequency:
            24 for hourly, 96 for 15-minute, 7 for daily data, 1 otherwise.
        batch_size (`int`, *optional*): series per model call, see [`~balm_hf.BalmTsfForecaster.predict_df`].
        show_progress (`bool`, *optional*): progress bars of the `predict_df` calls.
        freq (`str`, *optional*): frequency of the future timestamps, see [`~balm_hf.BalmTsfForecaster.predict_df`].
        date_format (`str`, *optional*): `strftime` format of text timestamps (default: the recorded one).
        device (`str` or `torch.device`, *optional*): where to run a model loaded from a folder or Hub id.

    Returns:
        [`BacktestResult`]: `.forecasts`, `.metrics` (per window and `"overall"`), `.actuals` and the settings.

    Raises:
        `ValueError`: bad `n_windows` or `step`; missing columns; an item with too few rows for `n_windows` cutoffs
            (named, with the rows needed); a history no longer than `season_length`; and every error of
            [`~balm_hf.BalmTsfForecaster.predict_df`] (prefixed with the cutoff it happened at).

    Example:

    ```python
    >>> import balm_hf
    >>> result = balm_hf.backtest("outputs/run/final", df, n_windows=3, target="OT")  # doctest: +SKIP
    >>> result.metrics  # doctest: +SKIP
    ```
    """
    forecaster = _as_forecaster(model_or_path, device)
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"`df` must be a DataFrame in the long layout, got {type(df).__name__}")
    windows = _check_positive(n_windows, "n_windows")
    horizon, context_length = forecaster.prediction_length, forecaster.context_length
    stride = horizon if step is None else _check_positive(step, "step")
    targets = [target] if isinstance(target, str) else list(target)
    if not targets or not all(isinstance(column, str) for column in targets):
        raise ValueError(f"`target` must be a column name or a non-empty list of column names, got {target!r}")
    missing = [column for column in dict.fromkeys([id_column, timestamp_column, *targets]) if column not in df]
    if missing:
        raise ValueError(
            f"the input lacks the columns {missing} (`id_column`={id_column!r}, `timestamp_column`="
            f"{timestamp_column!r}, `target`={targets}); its columns are {list(df.columns)}"
        )
    if df.empty:
        raise ValueError("the input has no rows")
    if df[id_column].isna().any():
        row = int(np.flatnonzero(df[id_column].isna().to_numpy())[0])
        raise ValueError(f"`id_column` {id_column!r} is empty (NaN) at row {row} of the input; every row needs an id")
    if season_length is None:
        season = default_season_length(forecaster.preprocessor.frequency)
    else:
        season = _check_positive(season_length, "season_length")
    levels = [] if quantile_levels is None else [float(level) for level in quantile_levels]

    codes, uniques = pd.factorize(df[id_column], sort=False)
    keys = list(uniques)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=len(keys))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    names = [f"item {key!r}" for key in keys]
    needed = context_length + horizon + (windows - 1) * stride
    short = [index for index, count in enumerate(counts) if count < needed]
    if short:
        listed = ", ".join(f"{names[index]} ({counts[index]} rows)" for index in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise ValueError(
            f"{len(short)} of {len(keys)} items are too short for n_windows={windows} with step={stride}: each item "
            f"needs at least {needed} rows (context_length={context_length} before the first cutoff, "
            f"{windows - 1} steps of {stride} rows between cutoffs and prediction_length={horizon} after the last): "
            f"{listed}{more}"
        )
    # Rows seen at each cutoff, per item: [items x windows], earliest cutoff first.
    seen = counts[:, None] - horizon - stride * np.arange(windows - 1, -1, -1)[None, :]
    too_short = np.flatnonzero(seen[:, 0] <= season)
    if len(too_short):
        index = int(too_short[0])
        raise ValueError(
            f"the MASE scale with season_length={season} needs more than {season} rows of history before each "
            f"cutoff, but {names[index]} has {int(seen[index, 0])} rows before its first cutoff; pass a smaller "
            "`season_length` (e.g. 1, the naive forecast) or fewer windows"
        )

    # Values and timestamps in item-major order: item i holds sorted rows starts[i] : starts[i] + counts[i].
    # Read as `predict_df` reads them: the same numeric check, and one timestamp format for every row.
    values = np.column_stack([_numeric_column(df[column], column) for column in targets])[order]
    dates = forecaster._long_dates(df[timestamp_column], order[: counts[0]], names[0], timestamp_column, date_format)
    dates = dates[order]
    frames = []
    for window in range(windows):
        rows = np.concatenate(
            [order[start : start + count] for start, count in zip(starts, seen[:, window], strict=True)]
        )
        cut = df.iloc[np.sort(rows)]
        cutoffs = dates[starts + seen[:, window] - 1]
        try:
            frame = forecaster.predict_df(
                cut,
                id_column=id_column,
                timestamp_column=timestamp_column,
                target=targets,
                quantile_levels=levels or None,
                batch_size=batch_size,
                freq=freq,
                date_format=date_format,
                show_progress=show_progress,
            )
        except ValueError as error:
            shared = cutoffs[0] if (cutoffs == cutoffs[0]).all() else None
            where = f"the cutoff at {shared}" if shared is not None else f"cutoff {window + 1} of {windows}"
            raise ValueError(f"backtest, {where}: {error}") from error
        frames.append(
            _attach_actuals(
                frame, window, values, dates, starts, seen, cutoffs, keys, targets, timestamp_column, horizon
            )
        )
        logger.debug("backtest: cutoff %d of %d forecast", window + 1, windows)

    forecasts = pd.concat(frames, ignore_index=True)
    forecasts = _ordered(forecasts, id_column, timestamp_column, levels)
    metrics = _metrics(forecaster, forecasts, values, starts, seen, keys, targets, levels, season, horizon)
    actuals = _actuals(values, dates, starts, counts, seen[:, 0], keys, targets, horizon, id_column, timestamp_column)
    return BacktestResult(
        forecasts=forecasts,
        metrics=metrics,
        actuals=actuals,
        season_length=season,
        n_windows=windows,
        step=stride,
        prediction_length=horizon,
        context_length=context_length,
        quantile_levels=levels,
        id_column=id_column,
        timestamp_column=timestamp_column,
        model_name=str(getattr(forecaster.model, "name_or_path", "") or type(forecaster.model).__name__),
    )


def _attach_actuals(
    frame: pd.DataFrame,
    window: int,
    values: np.ndarray,
    dates: pd.DatetimeIndex,
    starts: np.ndarray,
    seen: np.ndarray,
    cutoffs: pd.DatetimeIndex,
    keys: list[Any],
    targets: list[str],
    timestamp_column: str,
    horizon: int,
) -> pd.DataFrame:
    """One cutoff's `predict_df` output with its `cutoff` and `target_value` columns, checked against the input."""
    items = len(keys)
    # predict_df's documented order: items in order of first appearance, then targets, then steps.
    item_of_row = np.repeat(np.arange(items), len(targets) * horizon)
    target_of_row = np.tile(np.repeat(np.arange(len(targets)), horizon), items)
    step_of_row = np.tile(np.arange(horizon), items * len(targets))
    id_column = frame.columns[0]
    expected_ids = pd.Index(keys).take(item_of_row).to_numpy()
    if len(frame) != len(item_of_row) or not (
        np.array_equal(frame[id_column].to_numpy(), expected_ids)
        and np.array_equal(frame["target_name"].to_numpy(), np.asarray(targets, dtype=object)[target_of_row])
    ):
        raise RuntimeError("predict_df returned its rows in another order than items, then targets, then steps")
    actual_row = starts[item_of_row] + seen[item_of_row, window] + step_of_row
    forecast_times = pd.DatetimeIndex(frame[timestamp_column])
    actual_times = dates[actual_row]
    mismatch = np.flatnonzero(np.asarray(forecast_times != actual_times))
    if len(mismatch):
        row = int(mismatch[0])
        item = int(item_of_row[row])
        raise ValueError(
            f"item {keys[item]!r}: the forecast from the cutoff at {cutoffs[item]} places step {step_of_row[row] + 1} "
            f"at {forecast_times[row]}, but the item's row {int(seen[item, window] + step_of_row[row])} after it is "
            f"at {actual_times[row]}; a backtest needs regular timestamps without gaps after each cutoff"
        )
    frame.insert(2, CUTOFF_COLUMN, cutoffs[item_of_row])
    frame.insert(4, TARGET_VALUE_COLUMN, values[actual_row, target_of_row])
    return frame


def _ordered(forecasts: pd.DataFrame, id_column: str, timestamp_column: str, levels: list[float]) -> pd.DataFrame:
    """Rows by item, then target, then cutoff, then step (the item and target orders of the input kept)."""
    item_rank = pd.factorize(forecasts[id_column], sort=False)[0]
    target_rank = pd.factorize(forecasts["target_name"], sort=False)[0]
    ranked = forecasts.assign(_item=item_rank, _target=target_rank)
    ranked = ranked.sort_values(["_item", "_target", CUTOFF_COLUMN, timestamp_column], kind="stable")
    columns = [id_column, timestamp_column, CUTOFF_COLUMN, "target_name", TARGET_VALUE_COLUMN, "predictions"]
    return ranked[columns + [str(level) for level in levels]].reset_index(drop=True)


def _metrics(
    forecaster: BalmTsfForecaster,
    forecasts: pd.DataFrame,
    values: np.ndarray,
    starts: np.ndarray,
    seen: np.ndarray,
    keys: list[Any],
    targets: list[str],
    levels: list[float],
    season: int,
    horizon: int,
) -> pd.DataFrame:
    """Per-window and overall metrics; each series is one (item, target, cutoff) forecast of `horizon` steps."""
    windows = seen.shape[1]
    # Series in the row order of `forecasts`: item, target, cutoff.
    series = [
        (item, column, window)
        for item in range(len(keys))
        for column in range(len(targets))
        for window in range(windows)
    ]
    predictions = forecasts["predictions"].to_numpy(dtype=np.float64).reshape(len(series), horizon)
    references = forecasts[TARGET_VALUE_COLUMN].to_numpy(dtype=np.float64).reshape(len(series), horizon)
    quantiles = (
        np.stack([forecasts[str(level)].to_numpy(dtype=np.float64) for level in levels], axis=-1).reshape(
            len(series), horizon, len(levels)
        )
        if levels
        else None
    )
    cutoffs = forecasts[CUTOFF_COLUMN].to_numpy()[::horizon]
    histories = []
    means = np.empty(len(series))
    stds = np.empty(len(series))
    for index, (item, column, window) in enumerate(series):
        history = values[starts[item] : starts[item] + seen[item, window], column]
        histories.append(history)
        mean, std = forecaster.preprocessor.statistics_for(str(keys[item]), [targets[column]], history[:, None])
        means[index], stds[index] = float(mean[0]), float(std[0])
    scaled_predictions = (predictions - means[:, None]) / stds[:, None]
    scaled_references = (references - means[:, None]) / stds[:, None]

    rows = []
    window_of_series = np.array([window for _, _, window in series])
    groups: list[tuple[int | str, np.ndarray]] = [
        (window + 1, np.flatnonzero(window_of_series == window)) for window in range(windows)
    ]
    for label, selected in [*groups, (OVERALL, np.arange(len(series)))]:
        shared = pd.unique(cutoffs[selected])
        raw = compute_forecasting_metrics(
            predictions[selected],
            references[selected],
            insample_values=[histories[index] for index in selected],
            seasonality=season,
        )
        scaled = compute_forecasting_metrics(scaled_predictions[selected], scaled_references[selected])
        row: dict[str, Any] = {
            WINDOW_COLUMN: label,
            CUTOFF_COLUMN: pd.Timestamp(shared[0]) if label != OVERALL and len(shared) == 1 else pd.NaT,
            "num_series": len(selected),
            "num_values": int(np.isfinite(references[selected]).sum()),
            "mse": raw["mse"],
            "mae": raw["mae"],
            "mse_scaled": scaled["mse"],
            "mae_scaled": scaled["mae"],
            "mase": raw["mase"],
        }
        if quantiles is not None:
            row["wql"] = weighted_quantile_loss(quantiles[selected], references[selected], levels)
        row["season_length"] = season
        rows.append(row)
    return pd.DataFrame(rows)


def _actuals(
    values: np.ndarray,
    dates: pd.DatetimeIndex,
    starts: np.ndarray,
    counts: np.ndarray,
    first_seen: np.ndarray,
    keys: list[Any],
    targets: list[str],
    horizon: int,
    id_column: str,
    timestamp_column: str,
) -> pd.DataFrame:
    """Observed values from one horizon before the first cutoff to the end of each item, long layout."""
    begins = starts + np.maximum(first_seen - horizon, 0)
    ends = starts + counts
    rows = np.concatenate([np.arange(begin, end) for begin, end in zip(begins, ends, strict=True)])
    item_of_row = np.repeat(np.arange(len(keys)), ends - begins)
    ids = pd.Index(keys).take(item_of_row).to_numpy()
    frames = [
        pd.DataFrame(
            {
                id_column: ids,
                timestamp_column: dates[rows],
                "target_name": name,
                TARGET_VALUE_COLUMN: values[rows, column],
                "_item": item_of_row,
                "_target": column,
            }
        )
        for column, name in enumerate(targets)
    ]
    actuals = pd.concat(frames, ignore_index=True).sort_values(["_item", "_target"], kind="stable")
    return actuals.drop(columns=["_item", "_target"]).reset_index(drop=True)


def plot_backtest(
    result: BacktestResult,
    path: str | os.PathLike,
    item: Any = None,
    target: str | Sequence[str] | None = None,
) -> Path:
    r"""
    Write a PNG of a backtest: for one item, one panel per target with the observed values and the forecast of every
    cutoff over them (with the band between the lowest and highest quantile when the backtest has quantiles), a
    dotted line at each cutoff, and a title naming the model, the item, the horizon and the overall MASE.

    Needs matplotlib (`pip install "balm-tsf[plot]"`); it is imported only here, and no global pyplot state is touched.

    Args:
        result ([`BacktestResult`]): the output of [`backtest`].
        path (`str` or `os.PathLike`): the PNG file to write (parent folders are created).
        item (*optional*): the item to draw; defaults to the first item of the backtest.
        target (`str` or `Sequence[str]`, *optional*): the target column(s) to draw; defaults to every target.

    Returns:
        `Path`: the written file.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            'plot_backtest needs matplotlib: install the `plot` extra with `pip install "balm-tsf[plot]"`'
        ) from error
    if not isinstance(result, BacktestResult):
        raise TypeError(f"`result` must be a BacktestResult, got {type(result).__name__}")
    forecasts, id_column = result.forecasts, result.id_column
    items = list(pd.unique(forecasts[id_column]))
    if item is None:
        item = items[0]
    elif item not in items:
        shown = ", ".join(repr(value) for value in items[:10]) + (", ..." if len(items) > 10 else "")
        raise ValueError(f"item {item!r} is not in the backtest (items: {shown})")
    available = list(pd.unique(forecasts["target_name"]))
    targets = available if target is None else [target] if isinstance(target, str) else list(target)
    unknown = [name for name in targets if name not in available]
    if unknown or not targets:
        raise ValueError(f"the backtest has no target {unknown or targets}; its targets are {available}")
    levels = result.quantile_levels
    band = (str(min(levels)), str(max(levels))) if len(levels) >= 2 else None

    figure = Figure(figsize=(11, 2.6 * len(targets) + 0.6), layout="constrained")
    axes = figure.subplots(len(targets), 1, sharex=True, squeeze=False)[:, 0]
    time_column = result.timestamp_column
    colours = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    for axis, name in zip(axes, targets, strict=True):
        actual = result.actuals[(result.actuals[id_column] == item) & (result.actuals["target_name"] == name)]
        axis.plot(actual[time_column], actual[TARGET_VALUE_COLUMN], color="tab:blue", linewidth=1.0, label="actual")
        rows = forecasts[(forecasts[id_column] == item) & (forecasts["target_name"] == name)]
        for index, (cutoff, window) in enumerate(rows.groupby(CUTOFF_COLUMN, sort=True)):
            colour = colours[index % len(colours)]
            axis.plot(window[time_column], window["predictions"], color=colour, linewidth=1.2, label=f"from {cutoff}")
            if band is not None:
                axis.fill_between(window[time_column], window[band[0]], window[band[1]], color=colour, alpha=0.2)
            axis.axvline(cutoff, color=colour, linestyle=":", linewidth=0.9)
        axis.set_ylabel(name)
    axes[0].legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel(time_column)
    overall = result.overall
    coverage = f", band {band[0]}-{band[1]}" if band is not None else ""
    figure.suptitle(
        f"Backtest of {result.model_name}: item {item}, {result.n_windows} cutoffs {result.step} steps apart, "
        f"horizon {result.prediction_length}{coverage}\noverall MASE (m={result.season_length}) "
        f"{overall['mase']:.3f}, MSE {overall['mse']:.4g}, MAE {overall['mae']:.4g}"
    )
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png", dpi=100)
    return output


__all__ = ["BacktestResult", "backtest", "default_season_length", "plot_backtest"]
