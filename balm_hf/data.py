"""Long-term-forecasting data: benchmark and user CSVs as channel-independent window `datasets`."""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
import torch
import yaml
from transformers.feature_extraction_utils import FeatureExtractionMixin

from .models.balm_tsf.modeling_balm_tsf import prepare_prompt_inputs


logger = logging.getLogger(__name__)

DATA_DIR_ENV = "BALM_TSF_DATA_DIR"
SPLITS = ("train", "validation", "test")
FEATURES_MODES = ("M", "S")
MISSING_MODES = ("error", "ffill", "mask")
_CUSTOM_CONFIG = "custom"
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
INDEX_FEATURES = datasets.Features({"window_index": datasets.Value("int64"), "channel_index": datasets.Value("int64")})


# -- split configs --------------------------------------------------------------------------------------------------


def _config_dir() -> Any:
    return resources.files("balm_hf").joinpath("resources", "data")


def _read_split_config(resource: Any) -> dict[str, Any]:
    config = yaml.safe_load(resource.read_text(encoding="utf-8"))
    if not isinstance(config, dict) or "name" not in config or "split" not in config:
        raise ValueError(f"Split config {resource} must be a mapping with `name` and `split` keys")
    split = config["split"]
    if not isinstance(split, dict) or split.get("type") not in ("borders", "ratios"):
        raise ValueError(f"Split config {resource}: `split.type` must be 'borders' or 'ratios', got {split!r}")
    if split["type"] == "borders":
        for name in SPLITS:
            border = split.get(name)
            if not (isinstance(border, list) and len(border) == 2 and all(isinstance(b, int) for b in border)):
                raise ValueError(f"Split config {resource}: `split.{name}` must be [start, end] rows, got {border!r}")
    else:
        for name in ("train", "test"):
            ratio = split.get(name)
            if not isinstance(ratio, float) or not 0 < ratio < 1:
                raise ValueError(f"Split config {resource}: `split.{name}` must be a ratio in (0, 1), got {ratio!r}")
    config.setdefault("aliases", [])
    config.setdefault("file_names", [])
    config.setdefault("url", None)
    config["source"] = str(resource)
    return config


def _split_configs() -> dict[str, dict[str, Any]]:
    """All split configs, keyed by lower-cased name and alias."""
    configs: dict[str, dict[str, Any]] = {}
    for resource in sorted(_config_dir().iterdir(), key=lambda item: item.name):
        if resource.name.endswith(".yaml"):
            config = _read_split_config(resource)
            for key in [config["name"], *config["aliases"]]:
                configs[str(key).lower()] = config
    return configs


def list_benchmarks() -> list[str]:
    """Names of the benchmarks [`load_forecasting_dataset`] knows (each has a YAML file in `resources/data`)."""
    return sorted({config["name"] for config in _split_configs().values() if config["file_names"]})


def get_split_config(name: str) -> dict[str, Any]:
    """
    The split config (parsed YAML) of a benchmark, or of `"custom"` (the ratio protocol used for user CSVs).

    Args:
        name (`str`): benchmark name or alias, case-insensitive (`"ETTh1"`, `"exchange_rate"`, `"custom"`).
    """
    configs = _split_configs()
    key = str(name).lower()
    if key not in configs:
        raise ValueError(
            f"Unknown dataset name {name!r}. Known benchmarks: {', '.join(list_benchmarks())}; or pass the path to a "
            "CSV file with a `date` column."
        )
    return configs[key]


def compute_split_borders(
    config: Mapping[str, Any], num_rows: int, context_length: int, percent: int | float = 100
) -> tuple[dict[str, tuple[int, int]], int]:
    """
    The row ranges `[start, end)` each split reads, and the end of the rows the scaler is fitted on.

    Args:
        config (`Mapping`): a split config from [`get_split_config`].
        num_rows (`int`): number of rows in the file.
        context_length (`int`): the lookback `L`; validation and test start `L` rows before their border.
        percent (`int` or `float`, *optional*, defaults to 100):
            few-shot percentage; the train end becomes `(end - L) * percent // 100 + L`.

    Returns:
        `tuple[dict[str, tuple[int, int]], int]`: `{split: (start, end)}` and the scaler's end row (the full train
        border, before the few-shot trim).
    """
    split = config["split"]
    if split["type"] == "borders":
        borders = {name: (int(split[name][0]), int(split[name][1])) for name in SPLITS}
    else:
        num_train = int(num_rows * split["train"])
        num_test = int(num_rows * split["test"])
        num_val = num_rows - num_train - num_test
        borders = {
            "train": (0, num_train),
            "validation": (num_train, num_train + num_val),
            "test": (num_rows - num_test, num_rows),
        }
    scaler_end = borders["train"][1]
    train_end = int((scaler_end - context_length) * percent // 100 + context_length)
    rows = {
        "train": (borders["train"][0], train_end),
        "validation": (borders["validation"][0] - context_length, borders["validation"][1]),
        "test": (borders["test"][0] - context_length, borders["test"][1]),
    }
    return rows, scaler_end


# -- preprocessor ---------------------------------------------------------------------------------------------------


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


# -- windows ------------------------------------------------------------------------------------------------------


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


@dataclass
class BalmTsfDataCollator:
    r"""
    Stacks window items into the batch dict that `BalmTsfForForecasting.forward` takes.

    `past_values` becomes `[batch, context_length, 1]`, `future_values` `[batch, prediction_length, 1]` (float32), the
    observed masks likewise when present, and `window_index`/`channel_index` become `[batch]` long tensors (the model
    accepts and ignores them). Item values may be numpy arrays, tensors or nested lists; a 1-D value gains the channel
    axis.

    Args:
        value_keys (`tuple[str, ...]`, *optional*, defaults to the values and observed masks):
            Item keys stacked into float32 tensors when present in the items.
        id_keys (`tuple[str, ...]`, *optional*, defaults to `("window_index", "channel_index")`):
            Item keys stacked into long tensors when present in the items.
        model_config ([`BalmTsfConfig`], *optional*):
            With `tokenizer`, also build and tokenise the statistics prompts of the batch here (`prompt_input_ids`,
            `prompt_attention_mask`), so that this work runs in the DataLoader workers instead of the training step.
            The model then gives the same outputs as when it builds the prompts itself.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            The model's tokenizer (`model.tokenizer`), required with `model_config`.
    """

    value_keys: tuple[str, ...] = ("past_values", "future_values", "past_observed_mask", "future_observed_mask")
    id_keys: tuple[str, ...] = ("window_index", "channel_index")
    model_config: Any = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        if (self.model_config is None) != (self.tokenizer is None):
            raise ValueError(
                "BalmTsfDataCollator needs both `model_config` and `tokenizer` to build prompts, or neither"
            )

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("BalmTsfDataCollator got an empty list of items")
        if "past_values" not in features[0]:
            raise ValueError(f"Items must carry `past_values`; got keys {sorted(features[0])}")
        batch: dict[str, torch.Tensor] = {}
        for key in self.value_keys:
            if key in features[0]:
                stacked = torch.as_tensor(np.stack([np.asarray(item[key], dtype=np.float32) for item in features]))
                batch[key] = stacked.unsqueeze(-1) if stacked.ndim == 2 else stacked
        for key in self.id_keys:
            if key in features[0]:
                batch[key] = torch.as_tensor(np.asarray([item[key] for item in features], dtype=np.int64))
        if self.model_config is not None:
            batch.update(
                prepare_prompt_inputs(
                    batch["past_values"], self.model_config, self.tokenizer, batch.get("past_observed_mask")
                )
            )
        return batch


# -- reading and checking the CSV ---------------------------------------------------------------------------------


def _is_offline() -> bool:
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(variable, "").upper() in _TRUE_VALUES:
            return True
    return bool(datasets.config.HF_HUB_OFFLINE)


def _find_in_folder(folder: str | os.PathLike, config: Mapping[str, Any]) -> Path | None:
    names = [*config["file_names"], f"{config['name']}.csv"]
    for name in dict.fromkeys(names):
        for candidate in (Path(folder) / name, Path(folder) / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _download(url: str, name: str, cache_dir: str | os.PathLike | None) -> Path:
    """Download through `datasets`' cache; `use_etag=False` reuses a cached copy without a request."""
    download_config = datasets.DownloadConfig(cache_dir=cache_dir, use_etag=False)
    manager = datasets.DownloadManager(dataset_name=name, download_config=download_config)
    return Path(manager.download(url))


def _resolve_source(
    name_or_path: str | os.PathLike,
    data_dir: str | os.PathLike | None,
    split_config: str | None,
    cache_dir: str | os.PathLike | None,
) -> tuple[Path, dict[str, Any]]:
    """The CSV file to read and the split config that applies to it."""
    text = os.fspath(name_or_path)
    configs = _split_configs()
    is_benchmark = text.lower() in configs and configs[text.lower()]["file_names"]
    if not is_benchmark:
        path = Path(text).expanduser()
        if not path.is_file() and data_dir is not None and (Path(data_dir) / text).is_file():
            path = Path(data_dir) / text
        if path.is_file():
            config = get_split_config(split_config if split_config is not None else _CUSTOM_CONFIG)
            if split_config is None:
                stem = path.name.removesuffix(".gz").removesuffix(".csv").lower()
                if stem in configs and configs[stem]["file_names"]:
                    benchmark = configs[stem]["name"]
                    logger.warning(
                        f"{path} looks like the {benchmark} benchmark but is split with the 70/10/20 ratio protocol "
                        f"of user CSVs; pass split_config={benchmark!r} (or the name with data_dir) for the "
                        "benchmark's borders."
                    )
            return path, config
        if path.suffix in (".csv", ".gz") or os.sep in text or path.is_dir():
            raise FileNotFoundError(f"No CSV file at {text!r}")
        raise ValueError(
            f"Unknown dataset name {text!r}. Known benchmarks: {', '.join(list_benchmarks())}; or pass the path to a "
            "CSV file with a `date` column."
        )

    config = configs[text.lower()]
    searched = []
    for folder, origin in ((data_dir, "data_dir"), (os.environ.get(DATA_DIR_ENV), f"${DATA_DIR_ENV}")):
        if folder:
            searched.append(f"{origin}={os.fspath(folder)!r}")
            found = _find_in_folder(folder, config)
            if found is not None:
                return found, config
    candidates = " or ".join(f"{name}(.gz)" for name in config["file_names"])
    where = (
        f"Put {candidates} in a folder and pass it as `data_dir=...` or set the environment variable {DATA_DIR_ENV} "
        f"to that folder (searched: {', '.join(searched) or 'nothing'})."
    )
    url = config["url"]
    if url is None:
        raise FileNotFoundError(f"Cannot find the {config['name']} data. {where}")
    if _is_offline():
        raise FileNotFoundError(
            f"Cannot find the {config['name']} data and offline mode is on (HF_DATASETS_OFFLINE/HF_HUB_OFFLINE), so "
            f"it was not downloaded from {url}. {where}"
        )
    try:
        return _download(url, config["name"], cache_dir), config
    except Exception as error:  # any network, HTTP or filesystem failure of the download
        raise FileNotFoundError(
            f"Cannot find the {config['name']} data and downloading {url} failed ({type(error).__name__}: {error}). "
            f"{where}"
        ) from error


def _diagnose_non_numeric(path: Path, date_column: str) -> str | None:
    """Name the columns holding cells that are not numbers (read as text with pandas)."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=True)
    except Exception:  # the original `datasets` error is reported instead
        return None
    problems = []
    for column in raw.columns:
        if column == date_column:
            continue
        cells = raw[column]
        parsed = pd.to_numeric(cells, errors="coerce")
        bad = cells.notna() & parsed.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            problems.append(f"{column!r} (first at data row {row}: {cells.iloc[row]!r})")
    return ", ".join(problems) if problems else None


def _read_csv(path: Path, date_column: str, cache_dir: str | os.PathLike | None) -> pd.DataFrame:
    """Read the CSV through `datasets` (date as text, every other column as float64)."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"{path}: the file is empty") from error
    if date_column not in header:
        raise ValueError(f"{path}: no {date_column!r} column (columns: {list(header)}); pass `date_column=...`")
    if len(header) < 2:
        raise ValueError(f"{path}: no value columns besides {date_column!r}")
    features = datasets.Features(
        {column: datasets.Value("string" if column == date_column else "float64") for column in header}
    )
    try:
        table = datasets.load_dataset(
            "csv", data_files=str(path), split="train", features=features, cache_dir=cache_dir
        )
    except Exception as error:  # pandas/pyarrow conversion errors surface wrapped by `datasets`
        problems = _diagnose_non_numeric(path, date_column)
        if problems:
            raise ValueError(f"{path}: non-numeric values in columns {problems}") from error
        raise ValueError(f"{path}: could not read the CSV ({type(error).__name__}: {error})") from error
    return table.to_pandas()


def _parse_dates(raw: pd.Series, date_format: str | None, path: Path, date_column: str) -> pd.DatetimeIndex:
    empty = raw.isna() | (raw.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise ValueError(f"{path}: empty {date_column!r} cell at data row {row}")
    if date_format is not None:
        try:
            return pd.DatetimeIndex(pd.to_datetime(raw, format=date_format))
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"{path}: cannot parse {date_column!r} with date_format={date_format!r}: {error}"
            ) from error
    parsed: list[pd.DatetimeIndex] = []
    errors = []
    for dayfirst in (False, True):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                parsed.append(pd.DatetimeIndex(pd.to_datetime(raw, dayfirst=dayfirst)))
        except (ValueError, TypeError, OverflowError) as error:
            errors.append(str(error))
    if not parsed:
        raise ValueError(
            f"{path}: cannot parse the {date_column!r} column as dates ({errors[0]}); pass `date_format=...` "
            "(e.g. '%d/%m/%Y %H:%M')"
        )
    # Ambiguous day/month orders (all days <= 12): prefer a reading with strictly increasing, regular timestamps.
    increasing = [dates for dates in parsed if dates.is_monotonic_increasing and dates.is_unique]
    regular = [dates for dates in increasing if _infer_frequency(dates) is not None]
    candidates = regular or increasing or parsed
    if len(candidates) > 1 and not candidates[0].equals(candidates[1]):
        logger.warning(f"{path}: the {date_column!r} dates are ambiguous (day or month first); pass `date_format=...`")
    return candidates[0]


def _check_order(dates: pd.DatetimeIndex, path: Path, date_column: str) -> None:
    steps = np.diff(dates.asi8)
    if (steps <= 0).any():
        row = int(np.flatnonzero(steps <= 0)[0]) + 1
        problem = "duplicate" if steps[row - 1] == 0 else "unsorted"
        raise ValueError(
            f"{path}: {problem} timestamps in {date_column!r}: data row {row} ({dates[row]}) after data row {row - 1} "
            f"({dates[row - 1]}); timestamps must be strictly increasing"
        )


def _infer_frequency(dates: pd.DatetimeIndex) -> str | None:
    if len(dates) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frequency = pd.infer_freq(dates)
        except (ValueError, TypeError):
            return None
    return getattr(frequency, "freqstr", frequency)


def _handle_missing(values: np.ndarray, columns: list[str], missing: str, path: Path) -> np.ndarray | None:
    """Fill NaN cells in place as `missing` says; returns the observed mask for `"mask"`."""
    infinite = np.isinf(values)
    if infinite.any():
        row, column = (int(i) for i in np.argwhere(infinite)[0])
        raise ValueError(f"{path}: infinite value in column {columns[column]!r} at data row {row}")
    nan = np.isnan(values)
    if not nan.any():
        return np.ones_like(values, dtype=bool) if missing == "mask" else None
    row, column = (int(i) for i in np.argwhere(nan)[0])
    if missing == "error":
        raise ValueError(
            f"{path}: empty or NaN cell in column {columns[column]!r} at data row {row}; pass missing='ffill' to fill "
            "forward (then backward) or missing='mask' to fill and mask"
        )
    empty = [columns[i] for i in np.flatnonzero(nan.all(axis=0))]
    if empty:
        raise ValueError(f"{path}: columns {empty} have no values at all")
    values[:] = pd.DataFrame(values).ffill().bfill().to_numpy()
    return ~nan if missing == "mask" else None


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}")
    return int(value)


def load_forecasting_dataset(
    name_or_path: str | os.PathLike,
    context_length: int,
    prediction_length: int,
    percent: int | float = 100,
    target: str = "OT",
    data_dir: str | os.PathLike | None = None,
    features: str = "M",
    missing: str = "error",
    date_column: str = "date",
    date_format: str | None = None,
    split_config: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> BalmTsfDatasetDict:
    r"""
    Load a benchmark or a CSV as `train`/`validation`/`test` splits of channel-independent windows
    (`docs/protocol.md` §3).

    - Split borders come from the YAML files in `balm_hf/resources/data/`: fixed 12/4/4-month borders for ETT, the
      70/10/20 ratio protocol for Weather, Exchange and user CSVs. Validation and test start `context_length` rows
      before their border, so that their first target starts at the border.
    - The scaler (per-column mean and population std, ddof=0) is fitted on the full train border *before* the few-shot
      trim, as the original does (`train_data = df_data[border1s[0]:border2s[0]]`), and applied to every row. Metrics
      computed on the items are on this scale.
    - Every (window, channel) pair is one item, in **channel-major** order like the original `Dataset_ETT_hour`: item
      `i` of a split is channel `i // num_windows` and window `i % num_windows`; window `w` reads input rows
      `[start + w, start + w + L)` and target rows `[start + w + L, start + w + L + H)` of the file, where `start` is
      `preprocessor.split_borders[split][0]`.
    - Windows are never materialised: each split is a tiny index `Dataset` (one `window_index`, `channel_index` row
      per item) with a picklable [`BalmTsfWindowTransform`] attached by `with_transform`, which holds the split's
      scaled float32 rows and cuts windows on access. For ETTm1 at L=512, H=720 (233,303 / 75,607 / 75,607 items)
      building took 0.7-0.8 s on a 2-core CPU machine and the Python process peaked at about 510 MiB resident
      memory, of which about 450 MiB are the torch/transformers/datasets imports; materialised windows would need
      about 1.9 GB.
    - The index columns are not `forward` arguments: train with
      `TrainingArguments(remove_unused_columns=False, label_names=["future_values"])` and [`BalmTsfDataCollator`].

    Args:
        name_or_path (`str` or `os.PathLike`):
            A benchmark name (`"ETTh1"`, `"ETTh2"`, `"ETTm1"`, `"ETTm2"`, `"Weather"`, `"Exchange"`; see
            [`list_benchmarks`]) or the path to a CSV (`.csv` or `.csv.gz`) with a date column and numeric columns. A
            benchmark's file is looked up in `data_dir`, then in the folder named by `$BALM_TSF_DATA_DIR`, and (ETT
            only, unless `HF_DATASETS_OFFLINE`/`HF_HUB_OFFLINE` is set) downloaded from the ETDataset repository into
            the `datasets` cache.
        context_length (`int`):
            Input length `L` of every window.
        prediction_length (`int`):
            Horizon `H` of every window.
        percent (`int` or `float`, *optional*, defaults to 100):
            Few-shot percentage in (0, 100]; trims only the train split, whose end becomes
            `(end - L) * percent // 100 + L`. The scaler still uses the full train border, as in the original.
        target (`str`, *optional*, defaults to `"OT"`):
            The target column; it is moved last, so it is the last channel.
        data_dir (`str` or `os.PathLike`, *optional*):
            Folder holding `<Name>.csv` or `<Name>.csv.gz` (the benchmark's file name, e.g. `ETTh1.csv.gz`,
            `weather.csv`, `exchange_rate.csv`); a relative `name_or_path` is also looked up there.
        features (`str`, *optional*, defaults to `"M"`):
            `"M"`: every column is a channel (each an item); `"S"`: only the target.
        missing (`str`, *optional*, defaults to `"error"`):
            Empty/NaN cells: `"error"` raises naming the column and first row; `"ffill"` fills forward then backward;
            `"mask"` fills the same way, fits the scaler on observed train values only and adds `past_observed_mask`
            and `future_observed_mask` (`1` = observed) to the items.
        date_column (`str`, *optional*, defaults to `"date"`):
            Name of the timestamp column.
        date_format (`str`, *optional*):
            `strftime` format of the dates (e.g. `"%d/%m/%Y %H:%M"`). By default pandas infers it, trying day-first
            when month-first fails or gives unsorted or irregular timestamps.
        split_config (`str`, *optional*):
            For a CSV given by path: the benchmark whose split borders to use (e.g. `"ETTh1"`). By default a path gets
            the 70/10/20 ratio protocol (`resources/data/custom.yaml`).
        cache_dir (`str` or `os.PathLike`, *optional*):
            `datasets` cache folder for the parsed CSV and downloads.

    Returns:
        [`BalmTsfDatasetDict`]: `train`, `validation` and `test` datasets whose items hold `past_values`
        (`float32 [context_length, 1]`), `future_values` (`float32 [prediction_length, 1]`), `window_index` and
        `channel_index` (plus the observed masks with `missing="mask"`), in channel-major order, and the fitted
        [`BalmTsfPreprocessor`] as `.preprocessor`.

    Example:

    ```python
    >>> from balm_hf.data import BalmTsfDataCollator, load_forecasting_dataset
    >>> splits = load_forecasting_dataset("ETTh1", context_length=512, prediction_length=96, data_dir="data")
    >>> splits["train"].num_rows  # 8,033 windows x 7 channels
    56231
    >>> batch = BalmTsfDataCollator()([splits["train"][i] for i in range(4)])
    >>> batch["past_values"].shape
    torch.Size([4, 512, 1])
    ```
    """
    context_length = _check_int("context_length", context_length)
    prediction_length = _check_int("prediction_length", prediction_length)
    if isinstance(percent, bool) or not isinstance(percent, (int, float, np.integer, np.floating)):
        raise TypeError(f"`percent` must be a number in (0, 100], got {percent!r}")
    if not 0 < percent <= 100:
        raise ValueError(f"`percent` must be in (0, 100], got {percent}")
    if features not in FEATURES_MODES:
        raise ValueError(f"`features` must be one of {FEATURES_MODES}, got {features!r}")
    if missing not in MISSING_MODES:
        raise ValueError(f"`missing` must be one of {MISSING_MODES}, got {missing!r}")

    path, config = _resolve_source(name_or_path, data_dir, split_config, cache_dir)
    frame = _read_csv(path, date_column, cache_dir)
    dates = _parse_dates(frame[date_column], date_format, path, date_column)
    _check_order(dates, path, date_column)

    value_columns = [column for column in frame.columns if column != date_column]
    if target not in value_columns:
        raise ValueError(f"{path}: target column {target!r} not found (columns: {value_columns}); pass `target=...`")
    columns = [target] if features == "S" else [column for column in value_columns if column != target] + [target]
    values = frame[columns].to_numpy(dtype=np.float64, copy=True)  # [rows x channels]
    observed = _handle_missing(values, columns, missing, path)

    num_rows = len(values)
    horizon = context_length + prediction_length
    borders, scaler_end = compute_split_borders(config, num_rows, context_length, percent)
    for split, (start, end) in borders.items():
        if start < 0 or end > num_rows or end - start < horizon:
            raise ValueError(
                f"{path}: the {split} split reads rows [{start}, {end}) ({max(end - start, 0)} rows) of {num_rows}, "
                f"but context_length + prediction_length = {context_length} + {prediction_length} = {horizon} rows "
                f"are needed for one window ({config['name']} split protocol, percent={percent}); use a longer series "
                "or shorter lengths"
            )

    train_rows = values[:scaler_end]
    if observed is not None:
        masked = np.where(observed[:scaler_end], train_rows, np.nan)
        if np.isnan(masked).all(axis=0).any():
            raise ValueError(f"{path}: a column has no observed values in the train rows [0, {scaler_end})")
        mean, std = np.nanmean(masked, axis=0), np.nanstd(masked, axis=0)
    else:
        mean, std = train_rows.mean(axis=0), train_rows.std(axis=0)
    std = np.where(std == 0, 1.0, std)  # scikit-learn's StandardScaler convention for constant columns
    scaled = ((values - mean) / std).astype(np.float32)

    splits = {}
    num_channels = len(columns)
    for split, (start, end) in borders.items():
        window_transform = BalmTsfWindowTransform(
            scaled[start:end],
            context_length,
            prediction_length,
            observed_mask=None if observed is None else observed[start:end],  # not None iff missing == "mask"
        )
        num_windows = window_transform.num_windows
        # channel-major: item i = (channel i // num_windows, window i % num_windows), as in the original
        index = datasets.Dataset.from_dict(
            {
                "window_index": np.tile(np.arange(num_windows, dtype=np.int64), num_channels),
                "channel_index": np.repeat(np.arange(num_channels, dtype=np.int64), num_windows),
            },
            features=INDEX_FEATURES,
            split=datasets.NamedSplit(split),
        )
        splits[split] = index.with_transform(window_transform)

    preprocessor = BalmTsfPreprocessor(
        columns=columns,
        target=target,
        mean=mean.tolist(),
        std=std.tolist(),
        split_borders={split: list(border) for split, border in borders.items()},
        scaler_rows=[0, scaler_end],
        context_length=context_length,
        prediction_length=prediction_length,
        percent=percent,
        features=features,
        missing=missing,
        dataset_name=config["name"] if config["name"] != _CUSTOM_CONFIG else path.name.split(".")[0],
        date_column=date_column,
        frequency=_infer_frequency(dates),
        last_timestamp=dates[-1].isoformat(),
        num_rows=num_rows,
    )
    return BalmTsfDatasetDict(splits, preprocessor=preprocessor)


__all__ = [
    "BalmTsfDataCollator",
    "BalmTsfDatasetDict",
    "BalmTsfPreprocessor",
    "BalmTsfWindowTransform",
    "compute_split_borders",
    "get_split_config",
    "list_benchmarks",
    "load_forecasting_dataset",
]
