"""Channel-independent windows cut on access from a split's scaled rows, and the split dict with its scaler."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets
import numpy as np

from .preprocessing import BalmTsfPreprocessor


INDEX_FEATURES = datasets.Features({"window_index": datasets.Value("int64"), "channel_index": datasets.Value("int64")})


class BalmTsfWindowTransform:
    r"""
    Cuts channel-independent windows out of one split's scaled rows on access (a `datasets` format transform).

    Picklable (numpy arrays and ints only), so `DataLoader` workers can hold it.

    Args:
        values (`np.ndarray` of shape `[rows, channels]`):
            The split's scaled rows; stored as float32.
        context_length (`int`):
            Input length `L`.
        prediction_length (`int`):
            Horizon `H`.
        observed_mask (`np.ndarray` of shape `[rows, channels]`, *optional*):
            `1` where the value was observed; when given, items also carry `past_observed_mask` and
            `future_observed_mask`.
        window_starts (`np.ndarray` of shape `[windows]`, *optional*):
            For many series whose rows are concatenated in `values`: the first row of each window, so that window
            `w` reads rows `[window_starts[w], window_starts[w] + L + H)` and never crosses from one series into the
            next. By default window `w` starts at row `w`.
        window_series (`np.ndarray` of shape `[windows]`, *optional*):
            With `window_starts`: the series of each window; items then also carry `series_index`.
    """

    def __init__(
        self,
        values: np.ndarray,
        context_length: int,
        prediction_length: int,
        observed_mask: np.ndarray | None = None,
        window_starts: np.ndarray | None = None,
        window_series: np.ndarray | None = None,
    ) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.observed_mask = None if observed_mask is None else np.ascontiguousarray(observed_mask, dtype=np.float32)
        self.context_length = int(context_length)
        self.prediction_length = int(prediction_length)
        if window_series is not None and window_starts is None:
            raise ValueError("`window_series` needs `window_starts`")
        self.window_starts = None if window_starts is None else np.asarray(window_starts, dtype=np.int64)
        self.window_series = None if window_series is None else np.asarray(window_series, dtype=np.int64)
        if self.window_starts is not None:
            last_start = len(self.values) - self.context_length - self.prediction_length
            if self.window_starts.ndim != 1 or (
                len(self.window_starts) and (self.window_starts.min() < 0 or self.window_starts.max() > last_start)
            ):
                raise ValueError(f"`window_starts` must be a 1-D array of rows in [0, {last_start}]")
            if self.window_series is not None and self.window_series.shape != self.window_starts.shape:
                raise ValueError(
                    f"`window_series` {self.window_series.shape} and `window_starts` {self.window_starts.shape} "
                    "need one entry per window"
                )

    @property
    def num_windows(self) -> int:
        if self.window_starts is not None:
            return len(self.window_starts)
        return self.values.shape[0] - self.context_length - self.prediction_length + 1

    def __call__(self, batch: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
        windows = np.asarray(batch["window_index"], dtype=np.int64)
        channels = np.asarray(batch["channel_index"], dtype=np.int64)[:, None]
        starts = windows if self.window_starts is None else self.window_starts[windows]
        past_rows = starts[:, None] + np.arange(self.context_length)  # [batch x context_length]
        future_rows = past_rows[:, -1:] + 1 + np.arange(self.prediction_length)  # [batch x prediction_length]
        output = {
            "past_values": self.values[past_rows, channels][..., None],  # [batch x context_length x 1]
            "future_values": self.values[future_rows, channels][..., None],  # [batch x prediction_length x 1]
        }
        if self.observed_mask is not None:
            output["past_observed_mask"] = self.observed_mask[past_rows, channels][..., None]
            output["future_observed_mask"] = self.observed_mask[future_rows, channels][..., None]
        output["window_index"] = windows
        output["channel_index"] = channels[:, 0]
        if self.window_series is not None:
            output["series_index"] = self.window_series[windows]
        return output


def item_series_index(dataset: datasets.Dataset) -> np.ndarray | None:
    """
    The series (position in `preprocessor.series_ids`) of every item of a split of long data, in the split's item
    order, read from its index without cutting any window; `None` for a split of one wide series.
    """
    transform = (dataset.format.get("format_kwargs") or {}).get("transform")
    if not isinstance(transform, BalmTsfWindowTransform) or transform.window_series is None:
        return None
    windows = np.asarray(dataset.with_format("numpy")["window_index"], dtype=np.int64)
    return transform.window_series[windows]


class BalmTsfDatasetDict(datasets.DatasetDict):
    r"""
    A `DatasetDict` of forecasting splits that also carries the fitted [`BalmTsfPreprocessor`] as `preprocessor`.

    `DatasetDict` methods that build a new dict (`map`, `with_format`, ...) return a plain `DatasetDict` without it;
    keep a reference to `preprocessor` first.

    Args:
        splits (`Mapping[str, datasets.Dataset]`, *optional*):
            The split datasets by name.
        preprocessor ([`BalmTsfPreprocessor`], *optional*):
            The preprocessor fitted while building the splits.
    """

    def __init__(
        self, splits: Mapping[str, datasets.Dataset] | None = None, preprocessor: BalmTsfPreprocessor | None = None
    ) -> None:
        super().__init__(splits or {})
        self.preprocessor: BalmTsfPreprocessor | None = preprocessor
