"""The fitted scaler of a forecasting dataset, saved as `preprocessor_config.json`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from transformers.feature_extraction_utils import FeatureExtractionMixin


SCALING_MODES = ("global", "per_series")


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
        id_column (`str`, *optional*):
            For long data (many series): the column naming the series (item) of each row; `None` for one wide series.
        scaling (`str`, *optional*, defaults to `"global"`):
            `"global"`: one mean and std per column (`mean`, `std`) for every series; `"per_series"`: each series has
            its own per-column statistics in `series_statistics`, fitted on its own train rows (`mean` and `std` then
            hold the statistics of all series' train rows pooled, for reference only). Files written without it load
            as `"global"`.
        series_statistics (`dict[str, dict[str, list[float]]]`, *optional*):
            With `scaling="per_series"`: item id (as a string) -> `{"mean": [...], "std": [...]}`, one value per
            column in `columns` order (population std, 1.0 for a constant column).
        series_ids (`list[str]`, *optional*):
            The item ids in the order of the datasets' `series_index` (defaults to the order of `series_statistics`).

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
        id_column: str | None = None,
        scaling: str = "global",
        series_statistics: Mapping[Any, Mapping[str, Sequence[float]]] | None = None,
        series_ids: Sequence[Any] | None = None,
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
        if scaling not in SCALING_MODES:
            raise ValueError(f"`scaling` must be one of {SCALING_MODES}, got {scaling!r}")
        if scaling == "per_series" and not series_statistics:
            raise ValueError(
                '`scaling="per_series"` needs `series_statistics` (item id -> {"mean": [...], "std": [...]})'
            )
        self.id_column = None if id_column is None else str(id_column)
        self.scaling = scaling
        self.series_statistics = (
            None
            if series_statistics is None
            else {str(item): self._check_item_statistics(item, stats) for item, stats in series_statistics.items()}
        )
        if series_ids is not None:
            series_ids = [str(item) for item in series_ids]
            unknown = [
                item for item in series_ids if self.series_statistics is None or item not in self.series_statistics
            ]
            if unknown:
                raise ValueError(f"`series_ids` {unknown[:5]} have no `series_statistics`")
        elif self.series_statistics is not None:
            series_ids = list(self.series_statistics)
        self.series_ids = series_ids

    def _check_item_statistics(self, item: Any, stats: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
        """One item's `{"mean", "std"}` as float lists of one value per column, checked."""
        if not isinstance(stats, Mapping) or set(stats) != {"mean", "std"}:
            raise ValueError(
                f'`series_statistics[{str(item)!r}]` must be {{"mean": [...], "std": [...]}}, got {stats!r}'
            )
        mean, std = [float(value) for value in stats["mean"]], [float(value) for value in stats["std"]]
        if len(mean) != len(self.columns) or len(std) != len(self.columns):
            raise ValueError(
                f"`series_statistics[{str(item)!r}]` needs one mean and std per column ({len(self.columns)}: "
                f"{self.columns}), got {len(mean)} and {len(std)}"
            )
        if not all(math.isfinite(value) for value in mean) or any(not math.isfinite(v) or v <= 0 for v in std):
            raise ValueError(
                f"`series_statistics[{str(item)!r}]` must hold finite means and finite positive stds, got {stats!r}"
            )
        return {"mean": mean, "std": std}

    def _column_indices(self, columns: Sequence[str]) -> np.ndarray:
        unknown = [column for column in columns if str(column) not in self.columns]
        if unknown:
            raise ValueError(f"column(s) {unknown} were not trained (the preprocessor knows {self.columns})")
        return np.asarray([self.columns.index(str(column)) for column in columns], dtype=np.int64)

    def statistics_for(
        self, item_id: Any, columns: Sequence[str], history: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """
        The mean and std that scale the series `item_id` in the given columns.

        Args:
            item_id (`Any`):
                The series' id (compared as a string); ignored with `scaling="global"`.
            columns (`Sequence[str]`):
                Trained column names, in the order wanted.
            history (`np.ndarray` of shape `[rows, len(columns)]`, *optional*):
                Raw values of the series; with `scaling="per_series"` an item that has no stored statistics is scaled
                by their NaN-aware mean and population std (a std of 0 becomes 1).

        Returns:
            `tuple[np.ndarray, np.ndarray]`: float64 `mean` and `std`, each of shape `[len(columns)]`.

        Raises:
            `ValueError`: for an untrained column, or with `scaling="per_series"` for an unknown item without
            `history`, a `history` of the wrong shape or a column without any finite value in it.
        """
        columns = [str(column) for column in columns]
        index = self._column_indices(columns)
        if self.scaling == "global":
            return np.asarray(self.mean, dtype=np.float64)[index], np.asarray(self.std, dtype=np.float64)[index]
        stats = (self.series_statistics or {}).get(str(item_id))
        if stats is not None:
            mean = np.asarray(stats["mean"], dtype=np.float64)[index]
            return mean, np.asarray(stats["std"], dtype=np.float64)[index]
        if history is None:
            raise ValueError(
                f"series {str(item_id)!r} has no stored scaling statistics (the preprocessor was fitted on "
                f"{len(self.series_statistics or {})} other series); pass its `history` to scale it by its own values"
            )
        values = np.asarray(history, dtype=np.float64)
        if values.ndim == 1 and len(columns) == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[1] != len(columns):
            raise ValueError(
                f"`history` of series {str(item_id)!r} must have shape [rows, {len(columns)}] (columns {columns}), "
                f"got {values.shape}"
            )
        if np.isinf(values).any():
            row, column = (int(i) for i in np.argwhere(np.isinf(values))[0])
            raise ValueError(
                f"`history` of series {str(item_id)!r} holds an infinite value in column {columns[column]!r} at row "
                f"{row}"
            )
        empty = [column for column, count in zip(columns, np.isfinite(values).sum(axis=0), strict=True) if count == 0]
        if empty:
            raise ValueError(f"`history` of series {str(item_id)!r} has no finite value in column(s) {empty}")
        mean, std = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        return mean, np.where(std == 0, 1.0, std)

    @property
    def num_channels(self) -> int:
        return len(self.columns)

    def _statistics(
        self,
        values: np.ndarray | torch.Tensor,
        channel_index: int | np.ndarray | torch.Tensor | None,
        item_id: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std shaped to broadcast against `values` (float64 numpy)."""
        if self.scaling == "per_series":
            if item_id is None:
                raise ValueError(
                    'this preprocessor scales each series by its own statistics (scaling="per_series"): pass `item_id`'
                )
            mean, std = self.statistics_for(item_id, self.columns)
        else:
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

    def _apply(self, values: Any, channel_index: Any, inverse: bool, item_id: Any = None) -> Any:
        if isinstance(values, pd.DataFrame):
            missing = [column for column in self.columns if column not in values.columns]
            if missing:
                raise ValueError(f"DataFrame lacks the columns {missing} (expected {self.columns})")
            values = values[self.columns].to_numpy(dtype=np.float64)
        if isinstance(values, torch.Tensor):
            mean, std = self._statistics(values, channel_index, item_id)
            dtype = values.dtype if values.is_floating_point() else torch.float32
            mean_t = torch.as_tensor(mean, dtype=dtype, device=values.device)
            std_t = torch.as_tensor(std, dtype=dtype, device=values.device)
            return values * std_t + mean_t if inverse else (values - mean_t) / std_t
        values = np.asarray(values)
        if values.dtype.kind not in "fiu":
            raise TypeError(f"Expected numeric values, got dtype {values.dtype}")
        mean, std = self._statistics(values, channel_index, item_id)
        np_dtype = values.dtype if values.dtype.kind == "f" else np.dtype(np.float64)
        mean, std = mean.astype(np_dtype), std.astype(np_dtype)
        return values * std + mean if inverse else (values - mean) / std

    def transform(
        self,
        values: np.ndarray | torch.Tensor | pd.DataFrame,
        channel_index: int | np.ndarray | torch.Tensor | None = None,
        item_id: Any = None,
    ) -> np.ndarray | torch.Tensor:
        """
        Standardise raw values with the train statistics.

        Args:
            values (`np.ndarray`, `torch.Tensor` or `pd.DataFrame`):
                Raw values `[..., channels]` in `columns` order, or a DataFrame holding the `columns` (returns numpy).
            channel_index (`int`, `np.ndarray` or `torch.Tensor`, *optional*):
                For channel-independent items: the channel of each item, shaped like the leading dimensions of
                `values` (e.g. `[batch]` for `[batch, length, 1]`), or one int for all.
            item_id (`Any`, *optional*):
                The series the values belong to; required with `scaling="per_series"` (a stored item), ignored
                otherwise.

        Returns:
            Scaled values of the same type (torch keeps device and floating dtype).
        """
        return self._apply(values, channel_index, inverse=False, item_id=item_id)

    def inverse_transform(
        self,
        values: np.ndarray | torch.Tensor | pd.DataFrame,
        channel_index: int | np.ndarray | torch.Tensor | None = None,
        item_id: Any = None,
    ) -> np.ndarray | torch.Tensor:
        """
        Map scaled values (model inputs or forecasts) back to the file's units; see [`~BalmTsfPreprocessor.transform`].
        """
        return self._apply(values, channel_index, inverse=True, item_id=item_id)
