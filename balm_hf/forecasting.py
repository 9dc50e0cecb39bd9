"""Forecasting new data with a trained BALM-TSF checkpoint, in the data's own units and time axis."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from tqdm.auto import tqdm

from .calibration import CALIBRATION_FILE, ConformalCalibration, MissingCalibrationError, _missing_message
from .data import BalmTsfPreprocessor, check_increasing, infer_frequency, parse_timestamps
from .models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting


logger = logging.getLogger(__name__)

SERIES_ID_COLUMN = "series_id"
STEP_COLUMN = "step"
_LOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download")
_MODEL_ONLY_KWARGS = ("dtype", "backbone_path")
# Series per model call of `predict_df`: bounds the memory of a call whatever the number of series. For 10,000 series
# of the default experiment's model on a 2-core CPU, 256 peaked 414 MiB above the memory held before `predict_df`, 1024
# peaked 1,198 MiB above it at about the same speed (47.7 and 51.2 series/s on busy cores;
# research/results/many_series_cpu.json and many_series_cpu_bs1024.json).
DEFAULT_BATCH_SIZE = 256
FORMATS = ("wide", "long")


class BalmTsfForecaster:
    r"""
    Forecast the next `prediction_length` steps of new series with a trained BALM-TSF model and its fitted scaler.

    The input is scaled with the preprocessor the model was trained with, the model runs on the last
    `context_length` rows, and the forecast is mapped back to the input's units. Text timestamps are read with the
    format recorded in the preprocessor at training (the same parser as the loader, see
    [`~balm_hf.data.parse_timestamps`]); future timestamps continue the input's time axis at its frequency
    (`pandas.infer_freq`). Irregular input timestamps are an error unless `freq` is given. A model in another floating
    dtype (bfloat16, float16, float64) runs in its dtype and the forecast is returned as float64 in the input's units;
    a forecast that is not finite is an error naming the column, never returned.

    Channel handling follows the checkpoint: a channel-independent model (`num_input_channels=1`, the paper's setting)
    forecasts every column as its own univariate series; a multichannel model gets all columns at once. In paper mode
    the prompts of the series in one model batch are padded together without an attention mask, so a series' forecast
    can depend slightly on the series batched with it (see the model card's limitations), and so it can without
    `prompt_stable_lags`, whose absence lets floating-point noise of the batch order the prompt's lags; forecasts of
    one input are always computed in one model batch, so repeated calls give identical results. [`predict_df`]
    forecasts many series of the long layout in chunks of bounded memory (what holds across chunks is stated there).

    Args:
        model ([`BalmTsfForForecasting`]): a trained model with its tokenizer attached.
        preprocessor ([`BalmTsfPreprocessor`]): the scaler fitted on the model's training data.
        device (`str` or `torch.device`, *optional*): where to run the model; defaults to where it is.
        calibration ([`~balm_hf.calibration.ConformalCalibration`], *optional*):
            The checkpoint's split-conformal calibration, which quantile forecasts need; its columns must be the
            preprocessor's and its horizon the model's. `from_pretrained` reads it from the folder when present.

    Example:

    ```python
    >>> import pandas as pd
    >>> from balm_hf import BalmTsfForecaster
    >>> forecaster = BalmTsfForecaster.from_pretrained("runs/etth1_96")  # doctest: +SKIP
    >>> forecast = forecaster.predict(pd.read_csv("ETTh1.csv"))  # doctest: +SKIP
    >>> forecast.columns.tolist()  # doctest: +SKIP
    ['date', 'HUFL', 'HULL', 'MUFL', 'MULL', 'LUFL', 'LULL', 'OT']
    ```
    """

    def __init__(
        self,
        model: BalmTsfForForecasting,
        preprocessor: BalmTsfPreprocessor,
        device: str | torch.device | None = None,
        calibration: ConformalCalibration | None = None,
    ) -> None:
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"`model` must be a BalmTsfForForecasting, got {type(model).__name__}")
        if getattr(model.config, "model_type", None) != "balm_tsf":
            raise TypeError(f"`model` must be a BALM-TSF model, got model_type {model.config.model_type!r}")
        if not isinstance(preprocessor, BalmTsfPreprocessor):
            raise TypeError(f"`preprocessor` must be a BalmTsfPreprocessor, got {type(preprocessor).__name__}")
        channels = preprocessor.num_channels
        if model.config.num_input_channels not in (1, channels):
            raise ValueError(
                f"the preprocessor scales {channels} columns {preprocessor.columns} but the model expects "
                f"`num_input_channels`={model.config.num_input_channels} (must be 1 or {channels})"
            )
        if model.tokenizer is None:
            raise ValueError(
                "the model has no tokenizer attached (it builds its text prompts with it): load it with "
                "`from_pretrained` from a folder that holds the tokenizer files, or call `model.set_tokenizer(...)`"
            )
        if calibration is not None:
            if not isinstance(calibration, ConformalCalibration):
                raise TypeError(f"`calibration` must be a ConformalCalibration, got {type(calibration).__name__}")
            if sorted(calibration.columns) != sorted(preprocessor.columns):
                raise ValueError(
                    f"the calibration is for the columns {calibration.columns} but the preprocessor scales "
                    f"{preprocessor.columns}: it belongs to another checkpoint"
                )
            if calibration.prediction_length != model.config.prediction_length:
                raise ValueError(
                    f"the calibration covers {calibration.prediction_length} steps but the model forecasts "
                    f"prediction_length={model.config.prediction_length}: it belongs to another checkpoint"
                )
        self.model = model
        self.preprocessor = preprocessor
        self.calibration = calibration
        self.device = torch.device(device) if device is not None else next(model.parameters()).device

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        device: str | torch.device | None = None,
        **kwargs: Any,
    ) -> BalmTsfForecaster:
        r"""
        Load the model (safetensors weights only), its tokenizer and its `preprocessor_config.json`.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`): a trained folder or a Hub repository id.
            device (`str` or `torch.device`, *optional*): where to run the model (default: CPU).
            kwargs: `revision`, `token`, `cache_dir`, `local_files_only`, `subfolder` or `force_download`, passed to
                both `from_pretrained` calls; `dtype` (e.g. `torch.bfloat16`) and, for a lean checkpoint,
                `backbone_path` (a local copy of its frozen backbone), passed to the model's only.

        The folder's `conformal_calibration.safetensors`, when present, becomes [`calibration`] (quantile
        forecasts); without it the forecaster gives point forecasts only.

        Raises:
            `FileNotFoundError`: a local folder that does not exist (a path that cannot be a Hub id, or a Hub-id-like
                name that is neither a local folder nor loadable from the Hub), or a folder without
                `preprocessor_config.json`.
        """
        unknown = sorted(set(kwargs) - set(_LOAD_KWARGS) - set(_MODEL_ONLY_KWARGS))
        if unknown:
            raise TypeError(f"unexpected arguments {unknown}; accepted: {list(_LOAD_KWARGS + _MODEL_ONLY_KWARGS)}")
        source = os.fspath(pretrained_model_name_or_path)
        local = Path(source).expanduser()
        if local.exists() and not local.is_dir():
            raise FileNotFoundError(f"{source!r} is a file, not a trained folder")
        if not local.exists() and not _is_hub_id(source):
            raise FileNotFoundError(f"No trained folder at {source!r} (no such folder, and not a Hub repository id)")
        if local.is_dir():
            source = str(local)
            if not (local / "preprocessor_config.json").is_file():
                raise FileNotFoundError(
                    f"{local / 'preprocessor_config.json'} is missing: the forecaster needs the scaler the model was "
                    "trained with"
                )
        shared = {key: value for key, value in kwargs.items() if key in _LOAD_KWARGS}
        try:
            model = BalmTsfForForecasting.from_pretrained(source, use_safetensors=True, **kwargs)
            preprocessor = BalmTsfPreprocessor.from_pretrained(source, **shared)
        except OSError as error:
            if local.is_dir():
                raise
            raise FileNotFoundError(
                f"No trained folder at {source!r}: there is no such local folder, and loading it as a Hub repository "
                f"failed ({error})"
            ) from error
        calibration = _load_calibration(source, local, shared)
        model.eval()
        if device is not None:
            model.to(device)
        return cls(model, preprocessor, device=device, calibration=calibration)

    @property
    def context_length(self) -> int:
        return self.model.config.context_length

    @property
    def prediction_length(self) -> int:
        return self.model.config.prediction_length

    @property
    def columns(self) -> list[str]:
        """The channels, in model order: the columns a DataFrame must hold and the order of an array's last axis."""
        return list(self.preprocessor.columns)

    # -- input parsing ----------------------------------------------------------------------------------------------

    def _parse_dates(
        self, raw: Any, date_column: str, label: str, date_format: str | None, check_order: bool = True
    ) -> pd.DatetimeIndex:
        """Read timestamps with the given format, else the one recorded at training (else found again)."""
        recorded = date_format is None and self.preprocessor.date_format is not None
        fmt = date_format or self.preprocessor.date_format
        try:
            dates, _ = parse_timestamps(
                raw, date_format=fmt, utc=self.preprocessor.utc, label=label, date_column=date_column
            )
        except ValueError as error:
            if not recorded:
                raise
            raise ValueError(
                f"{error} (the format of the training data, recorded in the preprocessor; pass `date_format=` for "
                "timestamps written differently)"
            ) from error
        if check_order:
            check_increasing(dates, label, date_column)
        return dates

    def _frame_values(
        self, frame: pd.DataFrame, date_column: str, label: str, date_format: str | None = None
    ) -> tuple[np.ndarray, pd.DatetimeIndex]:
        """The last `context_length` rows of the channels (raw units) and the full timestamp index of `frame`."""
        missing = [column for column in self.columns if column not in frame.columns]
        if missing:
            raise ValueError(
                f"{label} lacks the channels {missing}; the model was trained on {self.columns} (any column order)"
            )
        if date_column in frame.columns:
            raw_dates = frame[date_column]
        elif isinstance(frame.index, pd.DatetimeIndex):
            raw_dates = frame.index.to_series()
        else:
            raise ValueError(
                f"{label} has no {date_column!r} column and no DatetimeIndex; pass `date_column=` to name the "
                "timestamp column"
            )
        dates = self._parse_dates(raw_dates, date_column, label, date_format)
        rows = len(frame)
        if rows < self.context_length:
            raise ValueError(
                f"{label} has {rows} rows but the model needs at least context_length={self.context_length} rows of "
                f"history (it reads the last {self.context_length})"
            )
        tail = frame.iloc[rows - self.context_length :]
        values = np.empty((self.context_length, len(self.columns)), dtype=np.float64)
        for index, column in enumerate(self.columns):
            try:
                values[:, index] = pd.to_numeric(tail[column], errors="raise").to_numpy(dtype=np.float64)
            except (ValueError, TypeError) as error:
                raise ValueError(f"{label}: column {column!r} holds non-numeric values ({error})") from error
        _check_finite(values, self.columns, first_row=rows - self.context_length, label=label)
        return values, dates

    def _array_windows(self, array: np.ndarray, label: str) -> np.ndarray:
        """`[time, channels]` or `[series, time, channels]` (or `[time]` for one channel) -> the last windows."""
        if array.dtype.kind not in "fiu":
            raise TypeError(f"{label} must hold numbers, got dtype {array.dtype}")
        if array.ndim == 1 and len(self.columns) == 1:
            array = array[:, None]
        if array.ndim not in (2, 3) or array.shape[-1] != len(self.columns):
            raise ValueError(
                f"{label} must have shape [time, {len(self.columns)}] or [series, time, {len(self.columns)}] "
                f"(channels {self.columns}), got {array.shape}"
            )
        length = array.shape[-2]
        if length < self.context_length:
            raise ValueError(
                f"{label} has {length} time steps but the model needs at least context_length={self.context_length}"
            )
        windows = np.asarray(array[..., length - self.context_length :, :], dtype=np.float64)
        batch = windows if windows.ndim == 3 else windows[None]
        for index, window in enumerate(batch):
            name = label if windows.ndim == 2 else f"{label} series {index}"
            _check_finite(window, self.columns, first_row=length - self.context_length, label=name)
        return batch

    # -- model ------------------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        """The floating dtype the model runs in (its parameters' dtype)."""
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def forecast_windows(
        self,
        windows: np.ndarray,
        batch_size: int | None = None,
        labels: Sequence[str] | None = None,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> np.ndarray:
        r"""
        Forecast raw-unit windows: scale, run the model in its dtype, invert the scaling, check the result is finite.

        Args:
            windows (`np.ndarray` of shape `[series, context_length, channels]`): raw values, channels in `columns`
                order. With per-series `mean` and `std`, a channel-independent model also takes `channels=1`: each
                series is then one univariate series (name its item and column in `labels`).
            batch_size (`int`, *optional*):
                Model batch size in series (channel-independent models count channels as series). Defaults to all at
                once, which makes each forecast independent of how the input is chunked.
            labels (`Sequence[str]`, *optional*): a name per series for error messages (default `"series <i>"`).
            mean (`np.ndarray` of shape `[series, channels]`, *optional*):
                The scaling mean of each series and channel, used instead of the preprocessor's trained statistics
                (e.g. [`~BalmTsfPreprocessor.statistics_for`] of each item). Give both `mean` and `std` or neither.
            std (`np.ndarray` of shape `[series, channels]`, *optional*): the scaling standard deviation, positive.

        Returns:
            `np.ndarray` of shape `[series, prediction_length, channels]` (float64) in the units of `windows`.

        Raises:
            `ValueError`: the forecast holds NaN or infinite values (the series and column are named).
            `RuntimeError` or `ValueError`: a model in bfloat16, float16 or float64 that cannot run on its device or
                that the model rejects (the message says to load it in float32).
        """
        windows = np.asarray(windows, dtype=np.float64)
        per_series = mean is not None or std is not None
        channel_counts = {len(self.columns)}
        if per_series and self.model.config.num_input_channels == 1:
            channel_counts.add(1)
        if windows.ndim != 3 or windows.shape[1] != self.context_length or windows.shape[2] not in channel_counts:
            expected = " or ".join(str(count) for count in sorted(channel_counts, reverse=True))
            raise ValueError(
                f"`windows` must have shape [series, {self.context_length}, {expected}], got {windows.shape}"
            )
        if per_series:
            mean, std = _series_statistics(mean, std, windows.shape[0], windows.shape[2])
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
        ):
            raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size!r}")
        if labels is not None and len(labels) != len(windows):
            raise ValueError(f"`labels` has {len(labels)} names for {len(windows)} series")
        dtype = self.dtype
        if not dtype.is_floating_point:
            raise TypeError(f"the model's parameters are {dtype}; a floating dtype is needed (e.g. torch.float32)")
        series, length, channels = windows.shape
        if mean is None and getattr(self.preprocessor, "scaling", "global") == "per_series":
            raise ValueError(
                "this model scales each series by its own statistics (it was trained on many series, "
                '`scaling="per_series"`): forecast with `predict_df` (the long layout, with the item ids), or pass '
                "each series' `mean` and `std`"
            )
        if mean is None or std is None:
            scaled_values = self.preprocessor.transform(windows)
        else:
            scaled_values = (windows - mean[:, None, :]) / std[:, None, :]
        scaled = (
            torch.as_tensor(scaled_values, dtype=torch.float32)
            if dtype == torch.float32
            else torch.as_tensor(scaled_values).to(dtype)
        )
        folded = self.model.config.num_input_channels == 1 and channels > 1
        if folded:
            # One univariate series per (series, channel): [series*channels x context_length x 1]
            scaled = scaled.permute(0, 2, 1).reshape(series * channels, length, 1)
        # Paper-mode prompts print the statistics at full float32 precision, whose last digits depend on the reduction
        # order and thus on the memory layout: always feed contiguous windows, as the training collator does.
        scaled = scaled.contiguous()
        step = batch_size or scaled.shape[0]
        was_training = self.model.training
        self.model.eval()
        try:
            outputs = [
                self.model(past_values=chunk.to(self.device)).prediction_outputs.double().cpu()
                for chunk in torch.split(scaled, step)
            ]
        except (RuntimeError, TypeError, ValueError) as error:
            if dtype == torch.float32:
                raise
            message = (
                f"the model runs in {dtype} and failed on {self.device} ({error}); load it in float32 "
                "(`dtype=torch.float32`, or `model.float()`) to forecast on this device"
            )
            raise (RuntimeError(message) if isinstance(error, RuntimeError) else ValueError(message)) from error
        finally:
            self.model.train(was_training)
        prediction = torch.cat(outputs)  # [rows x prediction_length x model channels]
        if folded:
            prediction = prediction.reshape(series, channels, self.prediction_length).permute(0, 2, 1)
        if mean is None or std is None:
            result = np.asarray(self.preprocessor.inverse_transform(prediction.numpy()), dtype=np.float64)
        else:
            result = prediction.numpy() * std[:, None, :] + mean[:, None, :]
        self._check_forecast(result, windows, labels)
        return result

    def _check_forecast(self, result: np.ndarray, windows: np.ndarray, labels: Sequence[str] | None) -> None:
        """Raise naming the series and column (unless one-channel windows) of the first NaN or infinite value."""
        bad = ~np.isfinite(result)
        if not bad.any():
            return
        index, step, column = (int(value) for value in np.argwhere(bad)[0])
        label = labels[index] if labels is not None else f"series {index}"
        kind = "NaN" if np.isnan(result[index, step, column]) else "infinite"
        of_column = f" of column {self.columns[column]!r}" if windows.shape[2] == len(self.columns) else ""
        largest = float(np.abs(windows[index, :, column]).max())
        weights_finite = all(bool(torch.isfinite(parameter).all()) for parameter in self.model.parameters())
        cause = (
            "the model's weights hold NaN or infinite values"
            if not weights_finite
            else f"the largest |value| of the column in the rows the model read is {largest:.6g}, possibly too large "
            f"for the model in {self.dtype}"
        )
        raise ValueError(
            f"{label}: the forecast{of_column} is {kind} (first at step {step + 1} of "
            f"{self.prediction_length}); {cause}. No forecast is returned"
        )

    # -- public API -------------------------------------------------------------------------------------------------

    def predict(
        self,
        data: pd.DataFrame | np.ndarray | Sequence[pd.DataFrame],
        date_column: str | None = None,
        freq: str | None = None,
        id_column: str | None = None,
        last_timestamp: str | pd.Timestamp | None = None,
        batch_size: int | None = None,
        date_format: str | None = None,
    ) -> pd.DataFrame | list[pd.DataFrame]:
        r"""
        Forecast the `prediction_length` steps that follow the end of each input series.

        Args:
            data (`pd.DataFrame`, `np.ndarray` or a list of `pd.DataFrame`):
                - a DataFrame with a timestamp column (or a `DatetimeIndex`) and the model's channels (`columns`, in
                  any order; other columns are ignored), rows in strictly increasing time order;
                - a list of such DataFrames (a batch of series);
                - a DataFrame holding several series stacked, with `id_column` naming the series;
                - an array `[time, channels]` (or `[time]` for a one-channel model) or `[series, time, channels]`, with
                  channels in `columns` order.
                At least `context_length` rows are needed; the model reads the last `context_length`, which must be
                finite.
            date_column (`str`, *optional*): the timestamp column; defaults to the preprocessor's (`"date"`).
            freq (`str`, *optional*):
                Frequency of the future timestamps (a pandas alias such as `"h"` or `"15min"`). Defaults to
                `pandas.infer_freq` of the input's timestamps; irregular timestamps (gaps, changing steps) are then an
                error naming the first irregular step. For array input it defaults to the frequency recorded at
                training time.
            id_column (`str`, *optional*):
                For a stacked DataFrame, the column that identifies each series; an empty (NaN) id is an error naming
                the rows.
            last_timestamp (`str` or `pd.Timestamp`, *optional*):
                For array input: the timestamp of the last row; the output then has a `date` column instead of `step`.
            batch_size (`int`, *optional*): model batch size (see [`~BalmTsfForecaster.forecast_windows`]).
            date_format (`str`, *optional*):
                `strftime` format of text timestamps (and of a text `last_timestamp`). Defaults to the format recorded
                in the preprocessor at training; for preprocessors saved without one, the format is found from the
                input as the loader does (see [`~balm_hf.data.parse_timestamps`]).

        Returns:
            - DataFrame input: a DataFrame of `prediction_length` rows with the timestamp column and one column per
              channel (`columns` order), in the input's units.
            - stacked DataFrame with `id_column`: one DataFrame with `id_column` first, series in order of first
              appearance.
            - list of DataFrames or 3-D array: a list of such DataFrames, one per series, in input order (use
              `pd.concat(forecasts, keys=ids, names=["series_id", None])` for a single long frame).
            - 2-D array: one DataFrame with a `step` column (`1..prediction_length`), or a `date` column when
              `last_timestamp` is given.

        Raises:
            `ValueError`: too little history (the message says how many rows are needed), missing channels (named),
                NaN or infinite values (column and row named), timestamps that are not strictly increasing or that
                cannot be parsed with one format, irregular timestamps without `freq`, empty series ids, or a forecast
                that is not finite (column named).
        """
        date_column = date_column or self.preprocessor.date_column or "date"
        if isinstance(data, pd.DataFrame):
            if id_column is not None:
                return self._predict_stacked(data, id_column, date_column, freq, batch_size, date_format)
            return self._predict_frames([data], date_column, freq, batch_size, ["input"], date_format)[0]
        if isinstance(data, (np.ndarray, torch.Tensor)):
            array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else data
            windows = self._array_windows(array, "input array")
            names = ["input array"] if array.ndim != 3 else [f"input array series {i}" for i in range(len(windows))]
            forecasts = self.forecast_windows(windows, batch_size, labels=names)
            last = self._last_timestamp(last_timestamp, date_format)
            frames = [self._future_frame(forecast, None, freq, last) for forecast in forecasts]
            return frames if array.ndim == 3 else frames[0]
        if isinstance(data, (list, tuple)):
            if not data:
                raise ValueError("`data` is an empty list")
            wrong = [index for index, item in enumerate(data) if not isinstance(item, pd.DataFrame)]
            if wrong:
                raise TypeError(f"a list input must hold DataFrames only; items {wrong} are not")
            return self._predict_frames(
                list(data), date_column, freq, batch_size, [f"series {i}" for i in range(len(data))], date_format
            )
        raise TypeError(
            f"`data` must be a DataFrame, a list of DataFrames or a numpy array, got {type(data).__name__}"
        )

    def predict_df(
        self,
        df: pd.DataFrame,
        id_column: str = "item_id",
        timestamp_column: str = "timestamp",
        target: str | Sequence[str] = "target",
        quantile_levels: Sequence[float] | None = None,
        batch_size: int | None = None,
        freq: str | None = None,
        date_format: str | None = None,
        show_progress: bool | None = None,
    ) -> pd.DataFrame:
        r"""
        Forecast every series of a long DataFrame (one row per series and time step), as Chronos-2's `predict_df`.

        Each item's rows are its history: its scaling statistics come from
        [`~BalmTsfPreprocessor.statistics_for`] (the trained column statistics for a preprocessor with
        `scaling="global"`; an unknown item of a `scaling="per_series"` preprocessor is scaled by the statistics of
        all its given rows), and the model reads its last `context_length` rows. A channel-independent model
        (`num_input_channels=1`, the usual case) forecasts each (item, target column) as one univariate series; a
        multichannel model forecasts an item's target columns together, so they must be exactly the model's
        `columns`. Nixtla's layout works through the same arguments:
        `predict_df(df, id_column="unique_id", timestamp_column="ds", target="y")`.

        Series are forecast in chunks of `batch_size` series, one model call each, so memory stays bounded for any
        number of series. A series' forecast depends only on the series in its chunk: for a model with masked
        prompts and stable lags (`prompt_attention_mask=True` and `prompt_stable_lags=True`, as in fast mode) it is
        the same in any chunk up to floating-point rounding of the batched matrix products. Without the mask (paper
        mode) the prompts of a chunk are padded together, and without stable lags (paper mode, and the default
        experiment) the order of a prompt's mirrored lags comes from floating-point noise of the batch, so another
        `batch_size` (or other series in the frame) can change a forecast. The same frame with the same `batch_size`
        always gives the same forecasts.

        Args:
            df (`pd.DataFrame`):
                The long layout: `id_column`, `timestamp_column` and the `target` column(s); other columns are
                ignored. Items may have different lengths and start times, and their rows may be interleaved; each
                item's rows must be in strictly increasing time order.
            id_column (`str`, *optional*, defaults to `"item_id"`): the column naming each item.
            timestamp_column (`str`, *optional*, defaults to `"timestamp"`): the timestamp column.
            target (`str` or `Sequence[str]`, *optional*, defaults to `"target"`): the column(s) to forecast, each one
                of the preprocessor's `columns`.
            quantile_levels (`Sequence[float]`, *optional*):
                Levels in `(0, 1)` of the quantile columns to add, e.g. `[0.1, 0.5, 0.9]`. Needs the checkpoint's
                split-conformal calibration ([`calibration`]): a quantile is the point forecast plus the calibrated
                offset of its level, horizon step and channel times the series' scaling standard deviation.
            batch_size (`int`, *optional*, defaults to 256):
                Series per model call (items for a multichannel model).
            freq (`str`, *optional*):
                Frequency of the future timestamps of every item (a pandas alias such as `"h"`). Defaults to each
                item's own frequency, inferred from its timestamps (an irregular item is then an error naming it).
            date_format (`str`, *optional*):
                `strftime` format of text timestamps; defaults to the format recorded at training, else the one the
                parser finds from the first item (see [`~balm_hf.data.parse_timestamps`]). One format reads every row.
            show_progress (`bool`, *optional*):
                Show a progress bar over the series. `None`: shown when there is more than one chunk and standard
                error is a terminal or this package logs at DEBUG (`balm-tsf --verbose`).

        Returns:
            `pd.DataFrame`: `prediction_length` rows per item and target, items in order of first appearance and
            targets in the given order, with the columns `id_column`, `timestamp_column`, `"target_name"`,
            `"predictions"` (the model's point forecast, in the data's units), then one column per quantile level
            named `str(level)` (e.g. `"0.1"`), in the given order.

        Raises:
            `ValueError`: missing columns (named), an empty id, a target the model does not know, an item with fewer
                than `context_length` rows (named, with the rows needed), NaN or infinite values in the rows the
                model reads (item, column and row named), unparsable, unsorted or irregular timestamps (item named),
                a forecast or quantile that is not finite, or quantile levels outside the calibrated range.
            [`~balm_hf.calibration.MissingCalibrationError`]: `quantile_levels` for a checkpoint without a
                calibration (the message gives the `balm-tsf calibrate` command that adds one).
        """
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"`df` must be a DataFrame in the long layout, got {type(df).__name__}")
        targets = self._long_targets(target)
        levels = [] if quantile_levels is None else self._check_quantile_levels(quantile_levels)
        chunk = DEFAULT_BATCH_SIZE if batch_size is None else batch_size
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"`batch_size` must be a positive integer or None, got {batch_size!r}")
        needed = [id_column, timestamp_column, *targets]
        missing = [column for column in dict.fromkeys(needed) if column not in df.columns]
        if missing:
            raise ValueError(
                f"the input lacks the columns {missing} (`id_column`={id_column!r}, `timestamp_column`="
                f"{timestamp_column!r}, `target`={targets}); its columns are {list(df.columns)}"
            )
        if len({id_column, timestamp_column, *targets}) != len(needed):
            raise ValueError(f"`id_column`, `timestamp_column` and `target` must be different columns, got {needed}")
        if df.empty:
            raise ValueError("the input has no rows")
        _check_ids(df[id_column], id_column)
        codes, uniques = pd.factorize(df[id_column], sort=False)
        order = np.argsort(codes, kind="stable")
        rows_per_item = np.bincount(codes, minlength=len(uniques))
        positions = np.split(order, np.cumsum(rows_per_item)[:-1])  # each item's rows, in input order
        names = [f"item {key!r}" for key in _python_values(uniques)]
        dates = self._long_dates(df[timestamp_column], positions[0], names[0], timestamp_column, date_format)
        values = np.column_stack([_numeric_column(df[column], column) for column in targets])
        model_order = (
            [targets.index(column) for column in self.columns] if self.model.config.num_input_channels > 1 else None
        )

        short = [index for index, count in enumerate(rows_per_item) if count < self.context_length]
        if short:
            listed = ", ".join(f"{names[index]} ({rows_per_item[index]} rows)" for index in short[:5])
            more = f" and {len(short) - 5} more" if len(short) > 5 else ""
            raise ValueError(
                f"{len(short)} of {len(uniques)} items are shorter than the model's context_length="
                f"{self.context_length} rows (it reads the last {self.context_length} rows of each item): {listed}"
                f"{more}; give them more history or leave them out"
            )
        tails = np.stack([rows[-self.context_length :] for rows in positions])  # [items x context_length]
        means = np.empty((len(uniques), len(targets)), dtype=np.float64)
        stds = np.empty_like(means)
        futures: list[pd.DatetimeIndex] = []
        other_frequencies: set[str] = set()
        for index, (key, rows, name) in enumerate(zip(_python_values(uniques), positions, names, strict=True)):
            item_dates = dates[rows]
            check_increasing(item_dates, name, timestamp_column)
            read = values[tails[index]]
            bad = ~np.isfinite(read)
            if bad.any():
                row, column = (int(value) for value in np.argwhere(bad)[0])
                kind = "NaN" if np.isnan(read[row, column]) else "infinite"
                raise ValueError(
                    f"{name}: {kind} value in column {targets[column]!r} at row {int(tails[index][row])} of the input "
                    f"(row {len(rows) - self.context_length + row} of the item); the last {self.context_length} rows "
                    "of each item are read by the model and must be complete (fill or drop missing values first)"
                )
            means[index], stds[index] = self.preprocessor.statistics_for(str(key), targets, values[rows])
            future, frequency = self._future_dates(item_dates, freq, name)
            futures.append(future)
            if freq is None and self.preprocessor.frequency not in (None, frequency):
                other_frequencies.add(frequency)
        if other_frequencies:
            logger.warning(
                "items of the input are sampled every %s but the model was trained on data sampled every %r",
                " or ".join(repr(frequency) for frequency in sorted(other_frequencies)),
                self.preprocessor.frequency,
            )
        _check_statistics(means, stds, names, targets)
        self._warn_unknown_items(uniques, id_column)

        points = self._forecast_long(values, tails, means, stds, names, targets, model_order, chunk, show_progress)
        return self._long_frame(uniques, futures, points, stds, targets, levels, names, id_column, timestamp_column)

    def _warn_unknown_items(self, uniques: Any, id_column: str) -> None:
        """With per-series scaling, say which items had no trained statistics (each was scaled by its own rows)."""
        if self.preprocessor.scaling != "per_series":
            return
        known = self.preprocessor.series_statistics or {}
        unknown = [key for key in _python_values(uniques) if str(key) not in known]
        if unknown:
            shown = ", ".join(repr(str(key)) for key in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            logger.warning(
                "%d of %d items (%s) have no statistics from training, so each is scaled by all of its given rows; "
                "ids are compared as text (%r as written in the training data)",
                len(unknown),
                len(uniques),
                shown,
                id_column,
            )

    def _long_targets(self, target: str | Sequence[str]) -> list[str]:
        """The target columns as a list: known to the model, no repeats, all of the model's for a multichannel one."""
        targets = [target] if isinstance(target, str) else list(target)
        if not targets or not all(isinstance(column, str) for column in targets):
            raise ValueError(f"`target` must be a column name or a non-empty list of column names, got {target!r}")
        repeated = sorted({column for column in targets if targets.count(column) > 1})
        if repeated:
            raise ValueError(f"`target` names the columns {repeated} more than once")
        unknown = [column for column in targets if column not in self.columns]
        if unknown:
            raise ValueError(
                f"the model does not know the target columns {unknown}: it was trained on {self.columns} (rename the "
                "column, or pass `target=` with the model's name for it)"
            )
        if self.model.config.num_input_channels > 1 and sorted(targets) != sorted(self.columns):
            raise ValueError(
                f"the model forecasts its {len(self.columns)} channels together (num_input_channels="
                f"{self.model.config.num_input_channels}): `target` must be exactly {self.columns} (any order), got "
                f"{targets}"
            )
        return targets

    def _check_quantile_levels(self, quantile_levels: Sequence[float]) -> list[float]:
        if isinstance(quantile_levels, (str, bytes)) or not isinstance(quantile_levels, Sequence):
            raise TypeError(f"`quantile_levels` must be a list of numbers, got {quantile_levels!r}")
        levels = [float(level) for level in quantile_levels]
        if not levels:
            raise ValueError("`quantile_levels` is empty; pass None for point forecasts only")
        bad = [level for level in levels if not 0.0 < level < 1.0]
        if bad:
            raise ValueError(f"`quantile_levels` must lie strictly between 0 and 1, got {bad}")
        if len(set(levels)) != len(levels):
            raise ValueError(f"`quantile_levels` repeats a level: {levels}")
        if self.calibration is None:
            raise MissingCalibrationError(_missing_message(self._folder_name()))
        self.calibration.offsets_for(levels)  # a level outside the calibrated range is an error before any work
        return levels

    def _folder_name(self) -> str:
        """The folder or Hub id the model was loaded from (`FOLDER` for a model built in memory)."""
        return str(getattr(self.model, "name_or_path", "") or "FOLDER")

    def _long_dates(
        self,
        raw: pd.Series,
        first_rows: np.ndarray,
        first_name: str,
        timestamp_column: str,
        date_format: str | None,
    ) -> pd.DatetimeIndex:
        """Every row's timestamp, read with one format: the given one, the recorded one, else the first item's."""
        column = raw.reset_index(drop=True)
        is_datetime = isinstance(column.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(column.dtype)
        if date_format is None and self.preprocessor.date_format is None and not is_datetime:
            # The whole column is not ordered (each item restarts), so the format is found from the first item alone.
            _, date_format = parse_timestamps(
                column.iloc[first_rows], utc=self.preprocessor.utc, label=first_name, date_column=timestamp_column
            )
        return self._parse_dates(column, timestamp_column, "input", date_format, check_order=False)

    def _future_dates(self, dates: pd.DatetimeIndex, freq: str | None, label: str) -> tuple[pd.DatetimeIndex, str]:
        """The `prediction_length` timestamps after `dates`, at `freq` or the frequency of `dates`."""
        frequency, source = freq, "`freq`"
        if frequency is None:
            frequency, source = infer_frequency(dates), "the input's timestamps"
        if frequency is None:
            raise ValueError(f"{label}: {_describe_irregular(dates)}; pass `freq=` (e.g. 'h' or '15min')")
        return self._date_range(dates[-1], frequency, source), frequency

    def _forecast_long(
        self,
        values: np.ndarray,
        tails: np.ndarray,
        means: np.ndarray,
        stds: np.ndarray,
        names: list[str],
        targets: list[str],
        model_order: list[int] | None,
        chunk: int,
        show_progress: bool | None,
    ) -> np.ndarray:
        """Point forecasts `[items, targets, prediction_length]`, `chunk` series per model call."""
        items = len(tails)
        points = np.empty((items, len(targets), self.prediction_length), dtype=np.float64)
        if model_order is None:  # one univariate series per (item, target), item-major
            series = [(item, column) for item in range(items) for column in range(len(targets))]
        else:  # one multichannel series per item, channels in model order
            series = [(item, -1) for item in range(items)]
        chunks = range(0, len(series), chunk)
        bar = tqdm(
            total=len(series),
            unit="series",
            desc="forecast",
            disable=not progress_enabled(show_progress, len(chunks)),
        )
        with bar:
            for start in chunks:
                part = series[start : start + chunk]
                item_index = np.array([item for item, _ in part])
                if model_order is None:
                    column_index = np.array([column for _, column in part])
                    windows = values[tails[item_index], column_index[:, None]][..., None]
                    mean = means[item_index, column_index][:, None]
                    std = stds[item_index, column_index][:, None]
                    labels = [f"{names[item]}, column {targets[column]!r}" for item, column in part]
                    forecasts = self.forecast_windows(windows, labels=labels, mean=mean, std=std)
                    points[item_index, column_index] = forecasts[..., 0]
                else:
                    windows = values[tails[item_index]][..., model_order]
                    mean, std = means[item_index][:, model_order], stds[item_index][:, model_order]
                    labels = [names[item] for item in item_index]
                    forecasts = self.forecast_windows(windows, labels=labels, mean=mean, std=std)
                    back = [model_order.index(column) for column in range(len(targets))]
                    points[item_index] = forecasts[..., back].transpose(0, 2, 1)
                bar.update(len(part))
        return points

    def _long_frame(
        self,
        uniques: Any,
        futures: list[pd.DatetimeIndex],
        points: np.ndarray,
        stds: np.ndarray,
        targets: list[str],
        levels: list[float],
        names: list[str],
        id_column: str,
        timestamp_column: str,
    ) -> pd.DataFrame:
        """The long output: rows item-major, then target, then step; quantile columns checked finite and ordered."""
        items, horizon = len(futures), self.prediction_length
        item_of_row = np.repeat(np.arange(items), len(targets) * horizon)
        step_of_row = np.tile(np.arange(horizon), items * len(targets))
        all_future = futures[0].append(futures[1:]) if items > 1 else futures[0]
        columns: dict[str, Any] = {
            id_column: pd.Index(uniques).take(item_of_row),
            timestamp_column: all_future.take(item_of_row * horizon + step_of_row),
            "target_name": np.tile(np.repeat(np.asarray(targets, dtype=object), horizon), items),
            "predictions": points.reshape(-1),
        }
        if levels:
            assert self.calibration is not None
            channel = [self.calibration.columns.index(column) for column in targets]
            offsets = self.calibration.offsets_for(levels)[:, :, channel]  # [levels x horizon x targets]
            # [items x targets x levels x horizon]
            quantiles = points[:, :, None, :] + offsets.transpose(2, 0, 1)[None] * stds[:, :, None, None]
            _check_quantiles(quantiles, levels, names, targets)
            for index, level in enumerate(levels):
                columns[str(level)] = quantiles[:, :, index, :].reshape(-1)
        return pd.DataFrame(columns)

    def _predict_frames(
        self,
        frames: list[pd.DataFrame],
        date_column: str,
        freq: str | None,
        batch_size: int | None,
        labels: list[str],
        date_format: str | None = None,
    ) -> list[pd.DataFrame]:
        parsed = [
            self._frame_values(frame, date_column, label, date_format)
            for frame, label in zip(frames, labels, strict=True)
        ]
        forecasts = self.forecast_windows(np.stack([values for values, _ in parsed]), batch_size, labels=labels)
        return [
            self._future_frame(forecast, dates, freq, None, date_column=date_column, label=label)
            for forecast, (_, dates), label in zip(forecasts, parsed, labels, strict=True)
        ]

    def _predict_stacked(
        self,
        data: pd.DataFrame,
        id_column: str,
        date_column: str,
        freq: str | None,
        batch_size: int | None,
        date_format: str | None = None,
    ) -> pd.DataFrame:
        if id_column not in data.columns:
            raise ValueError(f"`id_column` {id_column!r} is not a column of the input (columns: {list(data.columns)})")
        _check_ids(data[id_column], id_column)
        groups = [(key, group) for key, group in data.groupby(id_column, sort=False, dropna=False)]
        labels = [f"series {id_column}={key!r}" for key, _ in groups]
        frames = self._predict_frames(
            [group for _, group in groups], date_column, freq, batch_size, labels, date_format
        )
        for (key, _), frame in zip(groups, frames, strict=True):
            frame.insert(0, id_column, key)
        return pd.concat(frames, ignore_index=True)

    def _future_frame(
        self,
        forecast: np.ndarray,
        dates: pd.DatetimeIndex | None,
        freq: str | None,
        last_timestamp: str | pd.Timestamp | None,
        date_column: str = "date",
        label: str = "input",
    ) -> pd.DataFrame:
        frame = pd.DataFrame(forecast, columns=self.columns)
        if dates is None and last_timestamp is None:
            frame.insert(0, STEP_COLUMN, np.arange(1, self.prediction_length + 1))
            return frame
        if dates is not None:
            future, frequency = self._future_dates(dates, freq, label)
            if freq is None and self.preprocessor.frequency not in (None, frequency):
                logger.warning(
                    "%s is sampled every %r but the model was trained on data sampled every %r",
                    label,
                    frequency,
                    self.preprocessor.frequency,
                )
            frame.insert(0, date_column, future)
            return frame
        recorded = freq or self.preprocessor.frequency
        if recorded is None:
            raise ValueError(
                f"cannot place the forecast of {label} in time: the preprocessor records no frequency; pass "
                "`freq=` (e.g. 'h' or '15min')"
            )
        source = "`freq`" if freq else "the preprocessor"
        frame.insert(0, date_column, self._date_range(pd.Timestamp(last_timestamp), recorded, source))
        return frame

    def _date_range(self, last: pd.Timestamp, frequency: str, source: str) -> pd.DatetimeIndex:
        """The `prediction_length` timestamps after `last` at `frequency` (taken from `source`)."""
        try:
            return pd.date_range(start=last, periods=self.prediction_length + 1, freq=frequency)[1:]
        except ValueError as error:
            raise ValueError(f"invalid frequency {frequency!r} from {source}: {error}") from error

    def _last_timestamp(
        self, last_timestamp: str | pd.Timestamp | None, date_format: str | None
    ) -> pd.Timestamp | None:
        """`last_timestamp` of array input, text read with the given or the recorded format."""
        if last_timestamp is None or isinstance(last_timestamp, pd.Timestamp):
            return last_timestamp
        fmt = date_format or self.preprocessor.date_format
        if fmt is None or not isinstance(last_timestamp, str):
            return pd.Timestamp(last_timestamp)
        dates, _ = parse_timestamps(
            [last_timestamp], date_format=fmt, utc=self.preprocessor.utc, label="`last_timestamp`", date_column="date"
        )
        return dates[0]


# -- helpers ---------------------------------------------------------------------------------------------------------


def _load_preprocessor(source: str | os.PathLike) -> BalmTsfPreprocessor:
    """`BalmTsfPreprocessor.from_pretrained`, with a missing local folder or file reported as missing."""
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.exists():
        return BalmTsfPreprocessor.from_pretrained(str(local))
    if not _is_hub_id(text):
        raise FileNotFoundError(f"No preprocessor at {text!r} (no such folder or file, and not a Hub repository id)")
    try:
        return BalmTsfPreprocessor.from_pretrained(text)
    except OSError as error:
        raise FileNotFoundError(
            f"No preprocessor at {text!r}: there is no such local folder, and loading it as a Hub repository failed "
            f"({error})"
        ) from error


def _load_calibration(source: str, local: Path, hub_kwargs: dict[str, Any]) -> ConformalCalibration | None:
    """The checkpoint's conformal calibration, or None when it has none."""
    if local.is_dir():
        path = local / hub_kwargs.get("subfolder", "") / CALIBRATION_FILE
        return ConformalCalibration.from_file(path) if path.is_file() else None
    try:
        return ConformalCalibration.from_pretrained(source, **hub_kwargs)
    except MissingCalibrationError:
        return None


def progress_enabled(show_progress: bool | None, num_chunks: int) -> bool:
    """
    Whether `predict_df` shows its progress bar: as asked, else when there is more than one chunk and standard error
    is a terminal or this package logs at DEBUG (`balm-tsf --verbose`).
    """
    if show_progress is not None:
        return bool(show_progress)
    if num_chunks < 2:
        return False
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    return interactive or logging.getLogger("balm_hf").isEnabledFor(logging.DEBUG)


def _check_ids(ids: pd.Series, id_column: str) -> None:
    """Raise naming the rows (positions) whose series id is empty."""
    empty = ids.isna().to_numpy()
    if empty.any():
        rows = np.flatnonzero(empty)
        shown = ", ".join(str(int(row)) for row in rows[:10]) + (", ..." if len(rows) > 10 else "")
        raise ValueError(
            f"`id_column` {id_column!r} is empty (NaN) in {len(rows)} rows of the input (rows {shown}, counted "
            "from 0); every row must name its series: fill or drop these rows"
        )


def _python_values(values: Any) -> list[Any]:
    """Plain Python scalars (so that an id prints as `3`, not `np.int64(3)`)."""
    return values.tolist() if hasattr(values, "tolist") else list(values)


def _numeric_column(column: pd.Series, name: str) -> np.ndarray:
    """A column as float64; text that is not a number is an error naming the first such row and value."""
    converted = pd.to_numeric(column, errors="coerce")
    bad = (converted.isna() & column.notna()).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"column {name!r} holds non-numeric values: row {row} of the input is {column.iloc[row]!r}")
    return converted.to_numpy(dtype=np.float64)


def _series_statistics(
    mean: np.ndarray | None, std: np.ndarray | None, series: int, channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-series scaling statistics as float64 `[series, channels]`; std finite and positive."""
    if mean is None or std is None:
        raise ValueError("give both `mean` and `std` (per-series scaling) or neither (the preprocessor's)")
    arrays = []
    for name, value in (("mean", mean), ("std", std)):
        array = np.asarray(value, dtype=np.float64)
        if array.shape != (series, channels):
            raise ValueError(f"`{name}` must have shape [series={series}, channels={channels}], got {array.shape}")
        arrays.append(array)
    if not np.isfinite(arrays[0]).all():
        raise ValueError("`mean` holds NaN or infinite values")
    if not (np.isfinite(arrays[1]).all() and (arrays[1] > 0).all()):
        raise ValueError("`std` must be finite and positive")
    return arrays[0], arrays[1]


def _check_statistics(means: np.ndarray, stds: np.ndarray, names: list[str], targets: list[str]) -> None:
    """Raise naming the item and column of scaling statistics that cannot scale (NaN, infinite, std <= 0)."""
    bad = ~np.isfinite(means) | ~np.isfinite(stds) | ~(stds > 0)
    if bad.any():
        item, column = (int(value) for value in np.argwhere(bad)[0])
        raise ValueError(
            f"{names[item]}: the scaling statistics of column {targets[column]!r} are mean={means[item, column]!r}, "
            f"std={stds[item, column]!r}; a series needs a finite mean and a positive std"
        )


def _check_quantiles(quantiles: np.ndarray, levels: list[float], names: list[str], targets: list[str]) -> None:
    """Quantiles `[items, targets, levels, horizon]` must be finite and non-decreasing in the level."""
    bad = ~np.isfinite(quantiles)
    if bad.any():
        item, column, level, step = (int(value) for value in np.argwhere(bad)[0])
        raise ValueError(
            f"{names[item]}, column {targets[column]!r}: the {levels[level]} quantile is not finite at step "
            f"{step + 1}; no forecast is returned"
        )
    order = np.argsort(levels, kind="stable")
    crossing = np.diff(quantiles[:, :, order, :], axis=2) < 0
    if crossing.any():
        item, column, level, step = (int(value) for value in np.argwhere(crossing)[0])
        low, high = levels[order[level]], levels[order[level + 1]]
        raise ValueError(
            f"{names[item]}, column {targets[column]!r}: the {low} quantile exceeds the {high} quantile at step "
            f"{step + 1}; the calibration's offsets are not ordered by level"
        )


def _is_hub_id(name: str) -> bool:
    """Whether `name` has the form of a Hub repository id (`name` or `owner/name`)."""
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _describe_irregular(dates: pd.DatetimeIndex) -> str:
    """Why future timestamps cannot be placed after `dates`: too few, or the first step that differs from the usual."""
    if len(dates) < 3:
        return f"{len(dates)} timestamps are too few to infer the frequency of the future timestamps"
    steps = np.diff(dates.asi8)
    values, counts = np.unique(steps, return_counts=True)
    usual = values[np.argmax(counts)]
    row = int(np.flatnonzero(steps != usual)[0]) + 1 if (steps != usual).any() else 1
    usual_step = pd.Timedelta(int(usual), unit=dates.unit)
    return (
        f"the timestamps are irregular, so the future timestamps cannot be placed: row {row} ({dates[row]}) comes "
        f"{dates[row] - dates[row - 1]} after row {row - 1}, most rows are {usual_step} apart"
    )


def _check_finite(values: np.ndarray, columns: list[str], first_row: int, label: str) -> None:
    """Raise naming the column and row (position in the input) of the first NaN or infinite value."""
    bad = ~np.isfinite(values)
    if bad.any():
        row, column = (int(index) for index in np.argwhere(bad)[0])
        kind = "NaN" if np.isnan(values[row, column]) else "infinite"
        raise ValueError(
            f"{label}: {kind} value in column {columns[column]!r} at row {first_row + row}; the last rows the model "
            "reads must be complete (fill or drop missing values first)"
        )


def forecast(
    model_or_path: str | os.PathLike | BalmTsfForForecasting | BalmTsfForecaster,
    data: pd.DataFrame | np.ndarray | Sequence[pd.DataFrame],
    preprocessor: BalmTsfPreprocessor | str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    format: str = "wide",
    **predict_kwargs: Any,
) -> pd.DataFrame | list[pd.DataFrame]:
    r"""
    Forecast the steps after the end of `data` with a trained BALM-TSF checkpoint, in the units of `data`.

    Args:
        model_or_path (`str`, `os.PathLike`, [`BalmTsfForForecasting`] or [`BalmTsfForecaster`]):
            A trained folder or Hub id (model, tokenizer and `preprocessor_config.json`), a loaded model (then pass
            `preprocessor`), or a ready forecaster.
        data: see [`BalmTsfForecaster.predict`] (`format="wide"`) or [`BalmTsfForecaster.predict_df`]
            (`format="long"`).
        preprocessor ([`BalmTsfPreprocessor`], `str` or `os.PathLike`, *optional*):
            The fitted scaler (or a folder/Hub id holding it); required with a model object, and overrides the
            checkpoint's own otherwise.
        device (`str` or `torch.device`, *optional*): where to run the model.
        format (`str`, *optional*, defaults to `"wide"`):
            `"wide"`: one column per channel, see [`BalmTsfForecaster.predict`]. `"long"`: one row per series and time
            step in and out (Chronos-2's and Nixtla's layout), see [`BalmTsfForecaster.predict_df`].
        predict_kwargs: for `"wide"`, `date_column`, `freq`, `id_column`, `last_timestamp`, `batch_size`,
            `date_format` (see [`BalmTsfForecaster.predict`]); for `"long"`, `id_column`, `timestamp_column`,
            `target`, `quantile_levels`, `batch_size`, `freq`, `date_format`, `show_progress` (see
            [`BalmTsfForecaster.predict_df`]).

    Returns:
        The forecast DataFrame (or list of DataFrames for a wide batch).

    Example:

    ```python
    >>> import pandas as pd
    >>> import balm_hf
    >>> history = pd.read_csv("ETTh1.csv")  # doctest: +SKIP
    >>> balm_hf.forecast("runs/etth1_96", history).head()  # doctest: +SKIP
    >>> long = history.melt(id_vars="date", var_name="item_id", value_name="target")  # doctest: +SKIP
    >>> balm_hf.forecast("runs/etth1_96", long, format="long", timestamp_column="date").head()  # doctest: +SKIP
    ```
    """
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {format!r}")
    if isinstance(preprocessor, (str, os.PathLike)):
        preprocessor = _load_preprocessor(preprocessor)
    if isinstance(model_or_path, BalmTsfForecaster):
        forecaster = model_or_path
        if preprocessor is not None or device is not None:
            forecaster = BalmTsfForecaster(
                forecaster.model,
                preprocessor or forecaster.preprocessor,
                device=device or forecaster.device,
                calibration=forecaster.calibration,
            )
    elif isinstance(model_or_path, (str, os.PathLike)):
        forecaster = BalmTsfForecaster.from_pretrained(model_or_path, device=device)
        if preprocessor is not None:
            forecaster = BalmTsfForecaster(
                forecaster.model, preprocessor, device=forecaster.device, calibration=forecaster.calibration
            )
    elif isinstance(model_or_path, torch.nn.Module):
        if preprocessor is None:
            raise ValueError(
                "forecasting with a model object needs its fitted scaler: pass `preprocessor=` (a BalmTsfPreprocessor "
                "or the folder holding preprocessor_config.json), or pass the trained folder instead of the model"
            )
        forecaster = BalmTsfForecaster(model_or_path, preprocessor, device=device)
    else:
        raise TypeError(
            "`model_or_path` must be a folder, a Hub id, a BalmTsfForForecasting or a BalmTsfForecaster, got "
            f"{type(model_or_path).__name__}"
        )
    if format == "long":
        if not isinstance(data, pd.DataFrame):
            raise TypeError(f'format="long" takes one DataFrame in the long layout, got {type(data).__name__}')
        return forecaster.predict_df(data, **predict_kwargs)
    return forecaster.predict(data, **predict_kwargs)


def plot_forecast(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    date_column: str = "date",
    history_steps: int | None = None,
    date_format: str | None = None,
    item_id: Any = None,
    model_name: str | None = None,
    title: str | None = None,
) -> Path:
    r"""
    Write a PNG with one panel per channel: the end of the history, the forecast that follows it and, for a long
    forecast with quantile columns, the interval between the lowest and the highest level (and the median line when
    the 0.5 level is there), under a title naming the model, the horizon and the series.

    Needs matplotlib (`pip install "balm-tsf[plot]"`); it is imported only here, and no global pyplot state is touched.

    Args:
        history (`pd.DataFrame`): the input series: the wide layout (timestamp column or `DatetimeIndex`, plus the
            channels) or the long layout given to [`BalmTsfForecaster.predict_df`].
        forecast (`pd.DataFrame`): the output of [`forecast`], [`BalmTsfForecaster.predict`] or
            [`BalmTsfForecaster.predict_df`] for that history.
        path (`str` or `os.PathLike`): the PNG file to write (parent folders are created).
        columns (`Sequence[str]`, *optional*): the channels (wide) or targets (long) to draw; default every one.
        date_column (`str`, *optional*, defaults to `"date"`): the timestamp column of both wide frames (`step` is
            used for a forecast made from an array). A long forecast names its own: its second column.
        history_steps (`int`, *optional*): how many trailing history rows to draw; defaults to four times the forecast
            length.
        date_format (`str`, *optional*): `strftime` format of text timestamps in both frames; by default found as the
            loader does (see [`~balm_hf.data.parse_timestamps`]), so day-first dates are drawn day-first.
        item_id (*optional*): for a long forecast of several items, the item to draw (compared as written, or as
            text); not needed when it holds one item.
        model_name (`str`, *optional*): the model named in the title (e.g. its folder or Hub id).
        title (`str`, *optional*): a title to use instead of the default one.

    Returns:
        `Path`: the written file.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            'plot_forecast needs matplotlib: install the `plot` extra with `pip install "balm-tsf[plot]"`'
        ) from error
    for name, frame in (("history", history), ("forecast", forecast)):
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"`{name}` must be a DataFrame, got {type(frame).__name__}")
    if history_steps is not None and (
        isinstance(history_steps, bool) or not isinstance(history_steps, int) or history_steps < 1
    ):
        raise ValueError(f"`history_steps` must be a positive integer, got {history_steps!r}")
    if {"target_name", "predictions"} <= set(forecast.columns):
        panels, axis_column, series = _long_panels(history, forecast, columns, history_steps, date_format, item_id)
    else:
        panels, axis_column, series = _wide_panels(history, forecast, columns, date_column, history_steps, date_format)
    horizon = len(panels[0].future_x)

    figure = Figure(figsize=(10, 0.6 + 2.2 * len(panels)), layout="constrained")
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, panel in zip(axes, panels, strict=True):
        axis.plot(panel.history_x, panel.history_y, color="tab:blue", label="history")
        if panel.band is not None:
            (low, low_values), (high, high_values) = panel.band
            axis.fill_between(
                panel.future_x,
                low_values,
                high_values,
                color="tab:orange",
                alpha=0.25,
                linewidth=0,
                label=f"{low:g} to {high:g} quantiles",
            )
        axis.plot(panel.future_x, panel.forecast_y, color="tab:orange", label="forecast")
        if panel.median is not None:
            axis.plot(panel.future_x, panel.median, color="tab:red", linestyle="--", linewidth=1, label="median")
        first = panel.future_x.iloc[0] if hasattr(panel.future_x, "iloc") else panel.future_x[0]
        axis.axvline(first, color="grey", linewidth=0.8)
        axis.set_ylabel(panel.name)
    axes[0].legend(loc="upper left")
    axes[-1].set_xlabel(axis_column)
    figure.suptitle(title if title is not None else forecast_title(model_name, horizon, series))
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png", dpi=100)
    return output


def forecast_title(model_name: str | None, horizon: int, series: str) -> str:
    """The default title of [`plot_forecast`]: the model, the horizon and the series."""
    return f"{model_name or 'BALM-TSF'}: {horizon}-step forecast of {series}"


class _Panel(NamedTuple):
    name: str
    history_x: Any
    history_y: np.ndarray
    future_x: Any
    forecast_y: np.ndarray
    band: tuple[tuple[float, np.ndarray], tuple[float, np.ndarray]] | None = None
    median: np.ndarray | None = None


def _wide_panels(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    columns: Sequence[str] | None,
    date_column: str,
    history_steps: int | None,
    date_format: str | None,
) -> tuple[list[_Panel], str, str]:
    if SERIES_ID_COLUMN in forecast.columns:
        raise ValueError(f"`forecast` holds several series ({SERIES_ID_COLUMN!r}); plot them one at a time")
    axis_column = date_column if date_column in forecast.columns else STEP_COLUMN
    if axis_column not in forecast.columns:
        raise ValueError(f"`forecast` has neither a {date_column!r} nor a {STEP_COLUMN!r} column")
    if columns is None:
        columns = [column for column in forecast.columns if column != axis_column]
    columns = list(columns)
    missing = [column for column in columns if column not in forecast.columns or column not in history.columns]
    if missing:
        raise ValueError(f"the columns {missing} are not in both `history` and `forecast`")
    if not columns:
        raise ValueError("no channel to plot")
    tail = history.iloc[-(history_steps or 4 * len(forecast)) :]
    if axis_column == STEP_COLUMN:
        history_x: Any = np.arange(-len(tail) + 1, 1)
    elif date_column in history.columns:
        history_dates, _ = parse_timestamps(
            history[date_column], date_format, label="history", date_column=date_column
        )
        history_x = history_dates[len(history_dates) - len(tail) :]
    elif isinstance(tail.index, pd.DatetimeIndex):
        history_x = tail.index
    else:
        raise ValueError(f"`history` has no {date_column!r} column and no DatetimeIndex to place it in time")
    future_x = (
        forecast[axis_column]
        if axis_column == STEP_COLUMN
        else parse_timestamps(forecast[axis_column], date_format, label="forecast", date_column=axis_column)[0]
    )
    panels = [
        _Panel(column, history_x, tail[column].to_numpy(), future_x, forecast[column].to_numpy()) for column in columns
    ]
    series = ", ".join(columns) if len(columns) <= 3 else f"{len(columns)} channels"
    return panels, axis_column, series


def _long_panels(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    columns: Sequence[str] | None,
    history_steps: int | None,
    date_format: str | None,
    item_id: Any,
) -> tuple[list[_Panel], str, str]:
    """The panels of one item of a long forecast (columns: id, timestamp, "target_name", "predictions", ...)."""
    id_column, time_column = str(forecast.columns[0]), str(forecast.columns[1])
    for name, frame in (("history", history), ("forecast", forecast)):
        absent = [column for column in (id_column, time_column) if column not in frame.columns]
        if absent:
            raise ValueError(f"`{name}` lacks the columns {absent} of the long layout")
    items = pd.unique(forecast[id_column])
    if item_id is None:
        if len(items) != 1:
            shown = ", ".join(repr(item) for item in _python_values(items[:5])) + (", ..." if len(items) > 5 else "")
            raise ValueError(f"`forecast` holds {len(items)} items ({shown}); choose one with `item_id=`")
        item_id = _python_values(items)[0]
    rows = _item_rows(forecast[id_column], item_id)
    if not rows.any():
        raise ValueError(f"`forecast` has no item {item_id!r} in its {id_column!r} column")
    item_forecast = forecast[rows]
    item_history = history[_item_rows(history[id_column], item_id)]
    if item_history.empty:
        raise ValueError(f"`history` has no item {item_id!r} in its {id_column!r} column")
    targets = list(pd.unique(item_forecast["target_name"])) if columns is None else list(columns)
    missing = [
        column
        for column in targets
        if column not in history.columns or not (item_forecast["target_name"] == column).any()
    ]
    if missing:
        raise ValueError(f"the targets {missing} are not in both `history` and the forecast of item {item_id!r}")
    levels = sorted(_quantile_columns(forecast), key=lambda pair: pair[0])
    history_dates, _ = parse_timestamps(
        item_history[time_column], date_format, label="history", date_column=time_column
    )
    panels = []
    for target in targets:
        rows_of_target = item_forecast[item_forecast["target_name"] == target]
        steps = history_steps or 4 * len(rows_of_target)
        future_x = parse_timestamps(
            rows_of_target[time_column], date_format, label="forecast", date_column=time_column
        )[0]
        band = None
        if len(levels) >= 2:
            (low, low_name), (high, high_name) = levels[0], levels[-1]
            band = ((low, rows_of_target[low_name].to_numpy()), (high, rows_of_target[high_name].to_numpy()))
        median = next((rows_of_target[name].to_numpy() for level, name in levels if level == 0.5), None)
        panels.append(
            _Panel(
                str(target),
                history_dates[-steps:],
                item_history[target].to_numpy()[-steps:],
                future_x,
                rows_of_target["predictions"].to_numpy(),
                band,
                median,
            )
        )
    return panels, time_column, f"{id_column} {item_id!r}"


def _item_rows(ids: pd.Series, item_id: Any) -> np.ndarray:
    """Rows whose id equals `item_id`, or, when none does, whose id written as text equals it (ids from a CLI)."""
    rows = (ids == item_id).to_numpy()
    return rows if rows.any() else (ids.astype(str) == str(item_id)).to_numpy()


def _quantile_columns(forecast: pd.DataFrame) -> list[tuple[float, str]]:
    """The quantile columns of a long forecast (those after `predictions` named by a level in (0, 1))."""
    found = []
    for name in forecast.columns[list(forecast.columns).index("predictions") + 1 :]:
        try:
            level = float(name)
        except (TypeError, ValueError):
            continue
        if 0.0 < level < 1.0:
            found.append((level, name))
    return found


__all__ = ["BalmTsfForecaster", "forecast", "plot_forecast"]
