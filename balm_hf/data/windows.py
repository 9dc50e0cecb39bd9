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
    """

    def __init__(
        self,
        values: np.ndarray,
        context_length: int,
        prediction_length: int,
        observed_mask: np.ndarray | None = None,
    ) -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        self.observed_mask = None if observed_mask is None else np.ascontiguousarray(observed_mask, dtype=np.float32)
        self.context_length = int(context_length)
        self.prediction_length = int(prediction_length)

    @property
    def num_windows(self) -> int:
        return self.values.shape[0] - self.context_length - self.prediction_length + 1

    def __call__(self, batch: Mapping[str, Sequence[int]]) -> dict[str, np.ndarray]:
        windows = np.asarray(batch["window_index"], dtype=np.int64)
        channels = np.asarray(batch["channel_index"], dtype=np.int64)[:, None]
        past_rows = windows[:, None] + np.arange(self.context_length)  # [batch x context_length]
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
        return output


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
