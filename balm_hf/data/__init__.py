"""
The data library: split configs, CSV and DataFrame reading, the one timestamp parser used by loading and forecasting,
the preprocessor and the window datasets. It does not import the model; [`BalmTsfDataCollator`], which can build the
model's prompts, lives in `balm_hf.collator` and is re-exported here on first access.
"""

from __future__ import annotations

from typing import Any

from .loading import FEATURES_MODES, MISSING_MODES, load_forecasting_dataset
from .preprocessing import SCALING_MODES, BalmTsfPreprocessor
from .reading import DATA_DIR_ENV
from .splits import SPLITS, compute_split_borders, cutoff_split_borders, get_split_config, list_benchmarks
from .timestamps import DUPLICATE_MODES, check_increasing, infer_frequency, parse_timestamps
from .windows import INDEX_FEATURES, BalmTsfDatasetDict, BalmTsfWindowTransform, item_series_index


def __getattr__(name: str) -> Any:
    # The collator imports the model (to build prompts); importing it lazily keeps `balm_hf.data` free of the model.
    if name == "BalmTsfDataCollator":
        from ..collator import BalmTsfDataCollator

        return BalmTsfDataCollator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATA_DIR_ENV",
    "DUPLICATE_MODES",
    "FEATURES_MODES",
    "INDEX_FEATURES",
    "MISSING_MODES",
    "SCALING_MODES",
    "SPLITS",
    "BalmTsfDataCollator",
    "BalmTsfDatasetDict",
    "BalmTsfPreprocessor",
    "BalmTsfWindowTransform",
    "check_increasing",
    "compute_split_borders",
    "cutoff_split_borders",
    "get_split_config",
    "infer_frequency",
    "item_series_index",
    "list_benchmarks",
    "load_forecasting_dataset",
    "parse_timestamps",
]
