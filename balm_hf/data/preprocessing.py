"""The fitted scaler of a forecasting dataset, saved as `preprocessor_config.json`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers.feature_extraction_utils import FeatureExtractionMixin


class BalmTsfPreprocessor(FeatureExtractionMixin):
    r"""
    The fitted data pipeline of a forecasting dataset: channel order, scaler statistics, split borders and time axis.

    Saved as `preprocessor_config.json` (JSON only) with `save_pretrained` and read back with `from_pretrained` (a
    folder, the JSON file or a Hub repository), so a checkpoint can carry the scaler it was trained with.

    Args:
        columns (`list[str]`):
            Channel names in model order (the target last); channel `i` of the items is `columns[i]`.
        target (`str`):
            The target column.
        mean (`list[float]`):
            Per-channel mean of the train rows.
        std (`list[float]`):
            Per-channel population standard deviation (ddof=0) of the train rows; a constant column gets 1.0
            (scikit-learn's `StandardScaler` convention, as in the original).
        split_borders (`dict[str, list[int]]`, *optional*):
            Row range `[start, end)` of the file each split reads (validation and test include the `context_length`
            lookback, train the few-shot trim).
        scaler_rows (`list[int]`, *optional*):
            Row range `[start, end)` the scaler was fitted on (the full train border).
        context_length (`int`, *optional*):
            Input window length `L` the splits were built for.
        prediction_length (`int`, *optional*):
            Horizon `H` the splits were built for.
        percent (`float`, *optional*, defaults to 100):
            Few-shot percentage of the train split.
        features (`str`, *optional*, defaults to `"M"`):
            `"M"` (all channels) or `"S"` (the target only).
        missing (`str`, *optional*, defaults to `"error"`):
            How empty cells were handled (`"error"`, `"ffill"` or `"mask"`).
        dataset_name (`str`, *optional*):
            Benchmark name or the CSV file's stem.
        date_column (`str`, *optional*, defaults to `"date"`):
            Name of the timestamp column.
        date_format (`str`, *optional*):
            The `strftime` format the timestamps were read with (given to the loader or found by it); forecasts read
            text timestamps with it. `None` in files written before it was recorded: the format is then found again
            from the forecast input.
        utc (`bool`, *optional*, defaults to `False`):
            Whether the timestamps were converted to UTC (`utc=True` at loading); forecasts do the same.
        frequency (`str`, *optional*):
            Sampling frequency inferred from the timestamps with `pandas.infer_freq` (`"h"`, `"15min"`), `None` if
            irregular.
        last_timestamp (`str`, *optional*):
            ISO format of the file's last timestamp.
        num_rows (`int`, *optional*):
            Number of rows in the file.

    Example:

    ```python
    >>> from balm_hf.data import load_forecasting_dataset, BalmTsfPreprocessor
    >>> splits = load_forecasting_dataset("ETTh1", context_length=512, prediction_length=96, data_dir="data")
    >>> splits.preprocessor.save_pretrained("checkpoint")
    >>> preprocessor = BalmTsfPreprocessor.from_pretrained("checkpoint")
    >>> forecast = preprocessor.inverse_transform(outputs.prediction_outputs, channel_index=batch["channel_index"])
    ```
    """

    def __init__(
        self,
        columns: Sequence[str],
        target: str,
        mean: Sequence[float],
        std: Sequence[float],
        split_borders: Mapping[str, Sequence[int]] | None = None,
        scaler_rows: Sequence[int] | None = None,
        context_length: int | None = None,
        prediction_length: int | None = None,
        percent: float = 100,
        features: str = "M",
        missing: str = "error",
        dataset_name: str | None = None,
        date_column: str = "date",
        date_format: str | None = None,
        utc: bool = False,
        frequency: str | None = None,
        last_timestamp: str | None = None,
        num_rows: int | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("feature_extractor_type", None)
        super().__init__(**kwargs)
        columns = [str(column) for column in columns]
        if len(mean) != len(columns) or len(std) != len(columns):
            raise ValueError(
                f"`mean` ({len(mean)}) and `std` ({len(std)}) need one value per column ({len(columns)}: {columns})"
            )
        if target not in columns:
            raise ValueError(f"`target` {target!r} is not one of the columns {columns}")
        if any(not math.isfinite(value) or value <= 0 for value in std):
            raise ValueError(f"`std` must be finite and positive, got {list(std)}")
        self.columns = columns
        self.target = target
        self.mean = [float(value) for value in mean]
        self.std = [float(value) for value in std]
        self.split_borders = (
            None if split_borders is None else {key: [int(v) for v in value] for key, value in split_borders.items()}
        )
        self.scaler_rows = None if scaler_rows is None else [int(v) for v in scaler_rows]
        self.context_length = context_length
        self.prediction_length = prediction_length
        self.percent = percent
        self.features = features
        self.missing = missing
        self.dataset_name = dataset_name
        self.date_column = date_column
        self.date_format = date_format
        self.utc = bool(utc)
        self.frequency = frequency
        self.last_timestamp = last_timestamp
        self.num_rows = num_rows

    @property
    def num_channels(self) -> int:
        return len(self.columns)

    def _statistics(
        self, values: np.ndarray | torch.Tensor, channel_index: int | np.ndarray | torch.Tensor | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std shaped to broadcast against `values` (float64 numpy)."""
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        if channel_index is None:
            if values.ndim == 0 or values.shape[-1] != self.num_channels:
                raise ValueError(
                    f"Expected values with a last dimension of {self.num_channels} channels {self.columns}, got shape "
                    f"{tuple(values.shape)}; pass `channel_index` for channel-independent items"
                )
            return mean, std
        index = channel_index.cpu().numpy() if isinstance(channel_index, torch.Tensor) else np.asarray(channel_index)
        if index.dtype.kind not in "iu":
            raise TypeError(f"`channel_index` must hold integers, got dtype {index.dtype}")
        if index.size and (index.min() < 0 or index.max() >= self.num_channels):
            raise ValueError(f"`channel_index` must lie in [0, {self.num_channels}), got values {np.unique(index)}")
        if tuple(values.shape[: index.ndim]) != index.shape:
            raise ValueError(
                f"`channel_index` of shape {index.shape} does not match the leading dimensions of values "
                f"{tuple(values.shape)}"
            )
        trailing = (1,) * (values.ndim - index.ndim)
        return mean[index].reshape(index.shape + trailing), std[index].reshape(index.shape + trailing)

    def _apply(self, values: Any, channel_index: Any, inverse: bool) -> Any:
        if isinstance(values, pd.DataFrame):
            missing = [column for column in self.columns if column not in values.columns]
            if missing:
                raise ValueError(f"DataFrame lacks the columns {missing} (expected {self.columns})")
            values = values[self.columns].to_numpy(dtype=np.float64)
        if isinstance(values, torch.Tensor):
            mean, std = self._statistics(values, channel_index)
            dtype = values.dtype if values.is_floating_point() else torch.float32
            mean_t = torch.as_tensor(mean, dtype=dtype, device=values.device)
            std_t = torch.as_tensor(std, dtype=dtype, device=values.device)
            return values * std_t + mean_t if inverse else (values - mean_t) / std_t
        values = np.asarray(values)
        if values.dtype.kind not in "fiu":
            raise TypeError(f"Expected numeric values, got dtype {values.dtype}")
        mean, std = self._statistics(values, channel_index)
        np_dtype = values.dtype if values.dtype.kind == "f" else np.dtype(np.float64)
        mean, std = mean.astype(np_dtype), std.astype(np_dtype)
        return values * std + mean if inverse else (values - mean) / std

    def transform(
        self,
        values: np.ndarray | torch.Tensor | pd.DataFrame,
        channel_index: int | np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray | torch.Tensor:
        """
        Standardise raw values with the train statistics.

        Args:
            values (`np.ndarray`, `torch.Tensor` or `pd.DataFrame`):
                Raw values `[..., channels]` in `columns` order, or a DataFrame holding the `columns` (returns numpy).
            channel_index (`int`, `np.ndarray` or `torch.Tensor`, *optional*):
                For channel-independent items: the channel of each item, shaped like the leading dimensions of
                `values` (e.g. `[batch]` for `[batch, length, 1]`), or one int for all.

        Returns:
            Scaled values of the same type (torch keeps device and floating dtype).
        """
        return self._apply(values, channel_index, inverse=False)

    def inverse_transform(
        self,
        values: np.ndarray | torch.Tensor | pd.DataFrame,
        channel_index: int | np.ndarray | torch.Tensor | None = None,
    ) -> np.ndarray | torch.Tensor:
        """
        Map scaled values (model inputs or forecasts) back to the file's units; see [`~BalmTsfPreprocessor.transform`].
        """
        return self._apply(values, channel_index, inverse=True)
