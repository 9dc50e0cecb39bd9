"""Finding and reading forecasting CSVs: benchmark files, downloads, the content-keyed `datasets` cache, checks."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd

from .splits import CUSTOM_CONFIG, _split_configs, get_split_config, list_benchmarks


logger = logging.getLogger(__name__)

DATA_DIR_ENV = "BALM_TSF_DATA_DIR"
_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_GZIP_MAGIC = b"\x1f\x8b"


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


def resolve_source(
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
            config = get_split_config(split_config if split_config is not None else CUSTOM_CONFIG)
            if split_config is None:
                stem = path.name.removesuffix(".gz").removesuffix(".csv").lower()
                benchmark_config = configs.get(stem)
                if (
                    benchmark_config is not None
                    and benchmark_config["file_names"]
                    and benchmark_config["split"] != config["split"]
                ):
                    benchmark = benchmark_config["name"]
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


def _diagnose_non_numeric(path: Path, text_columns: Sequence[str], encoding: str = "utf-8") -> str | None:
    """Name the columns holding cells that are not numbers (read as text with pandas)."""
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=True, encoding=encoding)
    except Exception:  # the original `datasets` error is reported instead
        return None
    problems = []
    for column in raw.columns:
        if column in text_columns:
            continue
        cells = raw[column]
        parsed = pd.to_numeric(cells, errors="coerce")
        bad = cells.notna() & parsed.isna()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            problems.append(f"{column!r} (first at data row {row}: {cells.iloc[row]!r})")
    return ", ".join(problems) if problems else None


def _content_key(path: Path) -> str:
    """A `datasets` config name keyed on the file's size and SHA-256, so a rewritten file is never read stale."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return f"content-{path.stat().st_size}-{digest.hexdigest()[:32]}"


def _cause(error: BaseException, kinds: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first exception of `kinds` in the chain of `error` (`datasets` wraps the reader's errors)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, kinds):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _explain_unreadable(path: Path, error: BaseException, encoding: str) -> ValueError | None:
    decoding = _cause(error, (UnicodeDecodeError,))
    if decoding is not None:
        return ValueError(
            f"{path}: the file is not valid {encoding} text ({decoding}); pass `encoding=...` with the file's "
            "encoding (e.g. 'latin-1' or 'cp1252')"
        )
    compressed = _cause(error, (gzip.BadGzipFile, EOFError, zlib.error))
    if compressed is not None:
        return ValueError(f"{path}: the gzip data is corrupt or truncated ({type(compressed).__name__}: {compressed})")
    return None


def _check_compression(path: Path) -> None:
    with open(path, "rb") as handle:
        magic = handle.read(2)
    named_gzip = path.name.endswith(".gz")
    if magic == _GZIP_MAGIC and not named_gzip:
        raise ValueError(
            f"{path}: the file is gzip-compressed but its name does not end in .gz; rename it to {path.name}.gz"
        )
    if named_gzip and magic != _GZIP_MAGIC:
        raise ValueError(
            f"{path}: the name ends in .gz but the file is not gzip-compressed; remove .gz from the name or compress "
            "it with gzip"
        )


def read_csv(
    path: Path,
    date_column: str,
    cache_dir: str | os.PathLike | None,
    encoding: str = "utf-8",
    id_column: str | None = None,
) -> pd.DataFrame:
    """
    Read the CSV through `datasets` (date and `id_column` as text, every other column as float64), cached by
    content.
    """
    _check_compression(path)
    try:
        first = pd.read_csv(path, nrows=1, encoding=encoding)
    except pd.errors.EmptyDataError as error:
        raise ValueError(f"{path}: the file is empty") from error
    except (UnicodeDecodeError, OSError, EOFError, zlib.error) as error:
        explained = _explain_unreadable(path, error, encoding)
        if explained is None:
            raise ValueError(f"{path}: could not read the file ({type(error).__name__}: {error})") from error
        raise explained from error
    except LookupError as error:
        raise ValueError(f"{path}: unknown `encoding` {encoding!r}") from error
    header = first.columns
    if date_column not in header:
        raise ValueError(f"{path}: no {date_column!r} column (columns: {list(header)}); pass `date_column=...`")
    text_columns = [date_column] if id_column is None else [date_column, id_column]
    if id_column is not None and id_column not in header:
        raise ValueError(f"{path}: no {id_column!r} column (columns: {list(header)}); pass the series id column")
    if len(header) <= len(text_columns):
        raise ValueError(f"{path}: no value columns besides {' and '.join(repr(c) for c in text_columns)}")
    if first.empty:
        raise ValueError(f"{path}: the file has a header ({list(header)}) but no data rows")
    features = datasets.Features(
        {column: datasets.Value("string" if column in text_columns else "float64") for column in header}
    )
    try:
        table = datasets.load_dataset(
            "csv",
            name=_content_key(path),
            data_files=str(path),
            split="train",
            features=features,
            cache_dir=cache_dir,
            encoding=encoding,
        )
    except Exception as error:  # pandas/pyarrow conversion errors surface wrapped by `datasets`
        explained = _explain_unreadable(path, error, encoding)
        if explained is not None:
            raise explained from error
        problems = _diagnose_non_numeric(path, text_columns, encoding)
        if problems:
            raise ValueError(f"{path}: non-numeric values in columns {problems}") from error
        raise ValueError(f"{path}: could not read the CSV ({type(error).__name__}: {error})") from error
    return table.to_pandas()


def handle_missing(values: np.ndarray, columns: list[str], missing: str, path: str | os.PathLike) -> np.ndarray | None:
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
            f"{path}: empty or NaN cell in column {columns[column]!r} at data row {row}; set missing='ffill' to fill "
            "forward (then backward) or missing='mask' to fill and mask (`--set data.missing=ffill` for balm-tsf "
            "train, `--missing ffill` for balm-tsf evaluate)"
        )
    empty = [columns[i] for i in np.flatnonzero(nan.all(axis=0))]
    if empty:
        raise ValueError(f"{path}: columns {empty} have no values at all")
    values[:] = pd.DataFrame(values).ffill().bfill().to_numpy()
    return ~nan if missing == "mask" else None


def frame_values(frame: pd.DataFrame, columns: Sequence[str], label: str, hint: str = "") -> np.ndarray:
    """
    The given columns of a DataFrame as float64 `[rows, columns]`, as a CSV of the frame would be read: numbers as
    they are, empty cells as NaN, text holding numbers parsed; other text and booleans are an error naming the column
    and the first row.
    """
    selected = frame[list(columns)]
    converted = {}
    for column in columns:
        cells = selected[column]
        if pd.api.types.is_bool_dtype(cells.dtype):
            raise ValueError(f"{label}: column {column!r} holds booleans, not numbers{hint}")
        if pd.api.types.is_numeric_dtype(cells.dtype):
            continue
        parsed = pd.to_numeric(cells, errors="coerce")
        bad = (cells.notna() & parsed.isna()).to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{label}: non-numeric values in column {column!r} (first at data row {row}: {cells.iloc[row]!r})"
                f"{hint}"
            )
        converted[column] = parsed.astype(np.float64)
    if converted:
        selected = selected.copy()
        for column, parsed in converted.items():
            selected[column] = parsed
    return selected.to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
