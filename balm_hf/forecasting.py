"""Forecasting new data with a trained BALM-TSF checkpoint, in the data's own units and time axis."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .data import BalmTsfPreprocessor, check_increasing, infer_frequency, parse_timestamps
from .models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting


logger = logging.getLogger(__name__)

SERIES_ID_COLUMN = "series_id"
STEP_COLUMN = "step"
_LOAD_KWARGS = ("revision", "token", "cache_dir", "local_files_only", "subfolder", "force_download")
_MODEL_ONLY_KWARGS = ("dtype",)


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
    can depend slightly on the series batched with it (see the model card's limitations); forecasts of one input are
    always computed in one model batch, so repeated calls give identical results.

    Args:
        model ([`BalmTsfForForecasting`]): a trained model with its tokenizer attached.
        preprocessor ([`BalmTsfPreprocessor`]): the scaler fitted on the model's training data.
        device (`str` or `torch.device`, *optional*): where to run the model; defaults to where it is.

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
        self.model = model
        self.preprocessor = preprocessor
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
                both `from_pretrained` calls; `dtype` (e.g. `torch.bfloat16`), passed to the model's only.

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
        model.eval()
        if device is not None:
            model.to(device)
        return cls(model, preprocessor, device=device)

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

    def _parse_dates(self, raw: Any, date_column: str, label: str, date_format: str | None) -> pd.DatetimeIndex:
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
        self, windows: np.ndarray, batch_size: int | None = None, labels: Sequence[str] | None = None
    ) -> np.ndarray:
        r"""
        Forecast raw-unit windows: scale, run the model in its dtype, invert the scaling, check the result is finite.

        Args:
            windows (`np.ndarray` of shape `[series, context_length, channels]`): raw values, channels in `columns`
                order.
            batch_size (`int`, *optional*):
                Model batch size in series (channel-independent models count channels as series). Defaults to all at
                once, which makes each forecast independent of how the input is chunked.
            labels (`Sequence[str]`, *optional*): a name per series for error messages (default `"series <i>"`).

        Returns:
            `np.ndarray` of shape `[series, prediction_length, channels]` (float64) in the units of `windows`.

        Raises:
            `ValueError`: the forecast holds NaN or infinite values (the series and column are named).
            `RuntimeError` or `ValueError`: a model in bfloat16, float16 or float64 that cannot run on its device or
                that the model rejects (the message says to load it in float32).
        """
        windows = np.asarray(windows, dtype=np.float64)
        expected = (self.context_length, len(self.columns))
        if windows.ndim != 3 or windows.shape[1:] != expected:
            raise ValueError(f"`windows` must have shape [series, {expected[0]}, {expected[1]}], got {windows.shape}")
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
        scaled_values = self.preprocessor.transform(windows)
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
        result = np.asarray(self.preprocessor.inverse_transform(prediction.numpy()), dtype=np.float64)
        self._check_forecast(result, windows, labels)
        return result

    def _check_forecast(self, result: np.ndarray, windows: np.ndarray, labels: Sequence[str] | None) -> None:
        """Raise naming the series and column of the first NaN or infinite forecast value."""
        bad = ~np.isfinite(result)
        if not bad.any():
            return
        index, step, column = (int(value) for value in np.argwhere(bad)[0])
        label = labels[index] if labels is not None else f"series {index}"
        kind = "NaN" if np.isnan(result[index, step, column]) else "infinite"
        name = self.columns[column]
        largest = float(np.abs(windows[index, :, column]).max())
        weights_finite = all(bool(torch.isfinite(parameter).all()) for parameter in self.model.parameters())
        cause = (
            "the model's weights hold NaN or infinite values"
            if not weights_finite
            else f"the largest |value| of the column in the rows the model read is {largest:.6g}, possibly too large "
            f"for the model in {self.dtype}"
        )
        raise ValueError(
            f"{label}: the forecast of column {name!r} is {kind} (first at step {step + 1} of "
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
        empty = data[id_column].isna().to_numpy()
        if empty.any():
            rows = np.flatnonzero(empty)
            shown = ", ".join(str(int(row)) for row in rows[:10]) + (", ..." if len(rows) > 10 else "")
            raise ValueError(
                f"`id_column` {id_column!r} is empty (NaN) in {len(rows)} rows of the input (rows {shown}, counted "
                "from 0); every row must name its series: fill or drop these rows"
            )
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
        if dates is None:
            last = pd.Timestamp(last_timestamp)
            frequency = freq or self.preprocessor.frequency
            source = "`freq`" if freq else "the preprocessor"
            if frequency is None:
                raise ValueError(
                    f"cannot place the forecast of {label} in time: the preprocessor records no frequency; pass "
                    "`freq=` (e.g. 'h' or '15min')"
                )
        else:
            last = dates[-1]
            frequency, source = freq, "`freq`"
            if frequency is None:
                frequency, source = infer_frequency(dates), "the input's timestamps"
            if frequency is None:
                raise ValueError(f"{label}: {_describe_irregular(dates)}; pass `freq=` (e.g. 'h' or '15min')")
        if source == "the input's timestamps" and self.preprocessor.frequency not in (None, frequency):
            logger.warning(
                "%s is sampled every %r but the model was trained on data sampled every %r",
                label,
                frequency,
                self.preprocessor.frequency,
            )
        try:
            future = pd.date_range(start=last, periods=self.prediction_length + 1, freq=frequency)[1:]
        except ValueError as error:
            raise ValueError(f"invalid frequency {frequency!r} from {source}: {error}") from error
        frame.insert(0, date_column, future)
        return frame

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
    **predict_kwargs: Any,
) -> pd.DataFrame | list[pd.DataFrame]:
    r"""
    Forecast the steps after the end of `data` with a trained BALM-TSF checkpoint, in the units of `data`.

    Args:
        model_or_path (`str`, `os.PathLike`, [`BalmTsfForForecasting`] or [`BalmTsfForecaster`]):
            A trained folder or Hub id (model, tokenizer and `preprocessor_config.json`), a loaded model (then pass
            `preprocessor`), or a ready forecaster.
        data: see [`BalmTsfForecaster.predict`].
        preprocessor ([`BalmTsfPreprocessor`], `str` or `os.PathLike`, *optional*):
            The fitted scaler (or a folder/Hub id holding it); required with a model object, and overrides the
            checkpoint's own otherwise.
        device (`str` or `torch.device`, *optional*): where to run the model.
        predict_kwargs: `date_column`, `freq`, `id_column`, `last_timestamp`, `batch_size` (see
            [`BalmTsfForecaster.predict`]).

    Returns:
        The forecast DataFrame (or list of DataFrames for a batch), see [`BalmTsfForecaster.predict`].

    Example:

    ```python
    >>> import pandas as pd
    >>> import balm_hf
    >>> history = pd.read_csv("ETTh1.csv")  # doctest: +SKIP
    >>> balm_hf.forecast("runs/etth1_96", history).head()  # doctest: +SKIP
    ```
    """
    if isinstance(preprocessor, (str, os.PathLike)):
        preprocessor = _load_preprocessor(preprocessor)
    if isinstance(model_or_path, BalmTsfForecaster):
        forecaster = model_or_path
        if preprocessor is not None or device is not None:
            forecaster = BalmTsfForecaster(
                forecaster.model, preprocessor or forecaster.preprocessor, device=device or forecaster.device
            )
    elif isinstance(model_or_path, (str, os.PathLike)):
        forecaster = BalmTsfForecaster.from_pretrained(model_or_path, device=device)
        if preprocessor is not None:
            forecaster = BalmTsfForecaster(forecaster.model, preprocessor, device=forecaster.device)
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
    return forecaster.predict(data, **predict_kwargs)


def plot_forecast(
    history: pd.DataFrame,
    forecast: pd.DataFrame,
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    date_column: str = "date",
    history_steps: int | None = None,
    date_format: str | None = None,
) -> Path:
    r"""
    Write a PNG with one panel per channel: the end of the history and the forecast that follows it.

    Needs matplotlib (`pip install "balm-tsf[plot]"`); it is imported only here, and no global pyplot state is touched.

    Args:
        history (`pd.DataFrame`): the input series (timestamp column or `DatetimeIndex`, plus the channels).
        forecast (`pd.DataFrame`): the output of [`forecast`] / [`BalmTsfForecaster.predict`] for that series.
        path (`str` or `os.PathLike`): the PNG file to write (parent folders are created).
        columns (`Sequence[str]`, *optional*): the channels to draw; defaults to every channel of `forecast`.
        date_column (`str`, *optional*, defaults to `"date"`): the timestamp column of both frames (`step` is used
            for a forecast made from an array).
        history_steps (`int`, *optional*): how many trailing history rows to draw; defaults to four times the forecast
            length.
        date_format (`str`, *optional*): `strftime` format of text timestamps in both frames; by default found as the
            loader does (see [`~balm_hf.data.parse_timestamps`]), so day-first dates are drawn day-first.

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
    steps = history_steps if history_steps is not None else 4 * len(forecast)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`history_steps` must be a positive integer, got {history_steps!r}")
    tail = history.iloc[-steps:]
    if axis_column == STEP_COLUMN:
        history_x = np.arange(-len(tail) + 1, 1)
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

    figure = Figure(figsize=(10, 2.2 * len(columns)), layout="constrained")
    axes = figure.subplots(len(columns), 1, sharex=True, squeeze=False)[:, 0]
    for axis, column in zip(axes, columns, strict=True):
        axis.plot(history_x, tail[column].to_numpy(), color="tab:blue", label="history")
        axis.plot(future_x, forecast[column].to_numpy(), color="tab:orange", label="forecast")
        axis.axvline(future_x.iloc[0] if hasattr(future_x, "iloc") else future_x[0], color="grey", linewidth=0.8)
        axis.set_ylabel(column)
    axes[0].legend(loc="upper left")
    axes[-1].set_xlabel(axis_column)
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, format="png", dpi=100)
    return output


__all__ = ["BalmTsfForecaster", "forecast", "plot_forecast"]
