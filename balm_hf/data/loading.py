"""Loading a benchmark or a user CSV as `train`/`validation`/`test` splits of channel-independent windows."""

from __future__ import annotations

import logging
import os
from typing import Any

import datasets
import numpy as np
import pandas as pd

from .preprocessing import BalmTsfPreprocessor
from .reading import frame_values, handle_missing, read_csv, resolve_source
from .splits import CUSTOM_CONFIG, SPLITS, compute_split_borders, cutoff_split_borders, get_split_config
from .timestamps import DUPLICATE_MODES, check_increasing, infer_frequency, parse_timestamps
from .windows import INDEX_FEATURES, BalmTsfDatasetDict, BalmTsfWindowTransform


logger = logging.getLogger(__name__)

FEATURES_MODES = ("M", "S")
MISSING_MODES = ("error", "ffill", "mask")


def _check_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"`{name}` must be an int, got {value!r}")
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value}")
    return int(value)


def _kept_statistics(scaler: BalmTsfPreprocessor, columns: list[str], path: Any) -> tuple[np.ndarray, np.ndarray]:
    """The mean and std of `columns` in a fitted preprocessor; a `ValueError` names the columns it has none for."""
    if getattr(scaler, "scaling", "global") != "global":
        raise ValueError(
            f"{path}: the kept scaler scales each series with its own statistics (scaling={scaler.scaling!r}); only "
            "one global scaler can be kept for new data: refit the scaler"
        )
    unknown = [column for column in columns if column not in scaler.columns]
    if unknown:
        raise ValueError(
            f"{path}: the kept scaler has no statistics for the columns {unknown} (it was fitted on {scaler.columns}, "
            f"the data has {columns}); give data with those columns or refit the scaler"
        )
    index = [scaler.columns.index(column) for column in columns]
    return np.asarray(scaler.mean, dtype=np.float64)[index], np.asarray(scaler.std, dtype=np.float64)[index]


def load_forecasting_dataset(
    name_or_path: str | os.PathLike | pd.DataFrame,
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
    utc: bool = False,
    duplicate_timestamps: str | None = None,
    encoding: str = "utf-8",
    scaler: BalmTsfPreprocessor | None = None,
    id_column: str | None = None,
    cutoff: str | pd.Timestamp | None = None,
    test_cutoff: str | pd.Timestamp | None = None,
    drop_short: bool = False,
    dataset_name: str | None = None,
) -> BalmTsfDatasetDict:
    r"""
    Load a benchmark, a CSV or a DataFrame as `train`/`validation`/`test` splits of channel-independent windows
    (`docs/protocol.md` §3), from one wide series or from many series in long format.

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
    - Many series (long format, `id_column`): one row per series and time step. Each series is split on its own, by
      the same protocol (70/10/20 of its own rows) or at `cutoff`, scaled per channel with the mean and std of its
      own train rows (`preprocessor.scaling == "per_series"`, statistics in `preprocessor.series_statistics`), and
      its windows never reach into another series. A split's rows of all series are concatenated in order of first
      appearance; `window_index` counts the split's windows over all series (item `i` is channel
      `i // num_windows` and window `i % num_windows`, as above) and items also carry `series_index`, the series'
      position in `preprocessor.series_ids`. Each series' timestamps must be strictly increasing and regular in the
      given row order (rows of different series may interleave), all series of one frequency.
    - The index columns are not `forward` arguments: train with
      `TrainingArguments(remove_unused_columns=False, label_names=["future_values"])` and [`BalmTsfDataCollator`].

    Args:
        name_or_path (`str`, `os.PathLike` or `pd.DataFrame`):
            A benchmark name (`"ETTh1"`, `"ETTh2"`, `"ETTm1"`, `"ETTm2"`, `"Weather"`, `"Exchange"`; see
            [`list_benchmarks`]), the path to a CSV (`.csv` or `.csv.gz`) with a date column and numeric columns, or a
            `pandas.DataFrame` laid out like such a CSV (the date column may also be the index; datetime or text
            timestamps, numeric or numeric-text values). A wide DataFrame gives exactly what writing it to a CSV and
            loading that file gives. A
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
            The target column; it is moved last, so it is the last channel. In long data, the value column.
        data_dir (`str` or `os.PathLike`, *optional*):
            Folder holding `<Name>.csv` or `<Name>.csv.gz` (the benchmark's file name, e.g. `ETTh1.csv.gz`,
            `weather.csv`, `exchange_rate.csv`); a relative `name_or_path` is also looked up there.
        features (`str`, *optional*, defaults to `"M"`):
            `"M"`: every column is a channel (each an item); `"S"`: only the target. In long data, `"M"` makes every
            column but `id_column` and `date_column` a channel of each series (the target last; all must be numeric)
            and `"S"` keeps only `target`, leaving out any other column.
        missing (`str`, *optional*, defaults to `"error"`):
            Empty/NaN cells: `"error"` raises naming the column and first row; `"ffill"` fills forward then backward;
            `"mask"` fills the same way, fits the scaler on observed train values only and adds `past_observed_mask`
            and `future_observed_mask` (`1` = observed) to the items.
        date_column (`str`, *optional*, defaults to `"date"`):
            Name of the timestamp column.
        date_format (`str`, *optional*):
            `strftime` format of the dates (e.g. `"%d/%m/%Y %H:%M"`, or `"%Y%m%d"` for dates written as numbers). By
            default the format pandas guesses from the first date is used for every row, day-first when month-first
            fails or gives unsorted or irregular timestamps (see [`~balm_hf.data.parse_timestamps`]). The format used
            is saved in the preprocessor, and forecasts read their timestamps with it.
        split_config (`str`, *optional*):
            For a CSV given by path: the benchmark whose split borders to use (e.g. `"ETTh1"`). By default a path gets
            the 70/10/20 ratio protocol (`resources/data/custom.yaml`).
        cache_dir (`str` or `os.PathLike`, *optional*):
            `datasets` cache folder for the parsed CSV and downloads. The parsed CSV is cached under the file's size
            and SHA-256, so a file rewritten in place (even with its old modification time) is read again.
        utc (`bool`, *optional*, defaults to `False`):
            Convert the timestamps to UTC. Needed for timestamps whose UTC offset changes within the file (daylight
            saving time, e.g. `+01:00` and `+02:00`), which are an error otherwise. Saved in the preprocessor.
        duplicate_timestamps (`str`, *optional*):
            A timestamp equal to the one before it: `"error"` raises naming the rows; `"warn"` logs a warning naming
            each repeated timestamp and keeps every row in file order (the benchmarks' protocol reads rows by
            position). Defaults to the split config's `duplicate_timestamps` (`"warn"` for Weather, whose standard
            file repeats `2020-05-12 06:00:00`; `"error"` for the others and for user CSVs).
        encoding (`str`, *optional*, defaults to `"utf-8"`):
            Text encoding of the CSV (e.g. `"latin-1"`).
        id_column (`str`, *optional*):
            Long data: the column naming the series of each row (read as text; `1` and `"1"` are the same series).
            Empty ids are an error naming the row. Without it the data is one wide series.
        cutoff (`str` or `pd.Timestamp`, *optional*):
            Split every series at timestamps instead of by the split protocol: train holds each series' rows up to
            and including `cutoff`; without `test_cutoff`, its rows after `cutoff` are halved, the first `n // 2`
            being validation targets and the other `n - n // 2` test targets (see
            [`~balm_hf.data.cutoff_split_borders`]). Validation and test still read the `context_length` rows before
            their first target, and the scaler is fitted on the train rows. Recorded in the preprocessor.
        test_cutoff (`str` or `pd.Timestamp`, *optional*):
            With `cutoff`: validation targets are the rows after `cutoff` up to and including `test_cutoff`, test
            targets the rows after it.
        drop_short (`bool`, *optional*, defaults to `False`):
            Long data: a series without one whole window (`context_length + prediction_length` rows) in each split is
            an error naming it, its length and the split; with `True` such series are left out with a warning naming
            them (an error when none is left).
        dataset_name (`str`, *optional*):
            The name recorded in the preprocessor and the results; defaults to the benchmark's name, the CSV file's
            stem, or `"dataframe"` for a DataFrame.
        scaler ([`BalmTsfPreprocessor`], *optional*):
            Scale with the per-column statistics of this fitted preprocessor (e.g. a checkpoint's, to fine-tune it on
            new data with its own scaling) instead of fitting them on the train rows. Every channel must be one of
            its `columns` (a `ValueError` names those that are not); the returned preprocessor holds these statistics
            and no `scaler_rows`.

    Returns:
        [`BalmTsfDatasetDict`]: `train`, `validation` and `test` datasets whose items hold `past_values`
        (`float32 [context_length, 1]`), `future_values` (`float32 [prediction_length, 1]`), `window_index` and
        `channel_index` (plus the observed masks with `missing="mask"`, and `series_index` for long data), in
        channel-major order, and the fitted [`BalmTsfPreprocessor`] as `.preprocessor`.

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
    if duplicate_timestamps is not None and duplicate_timestamps not in DUPLICATE_MODES:
        raise ValueError(f"`duplicate_timestamps` must be one of {DUPLICATE_MODES}, got {duplicate_timestamps!r}")
    if id_column is not None and duplicate_timestamps == "warn":
        raise ValueError("`duplicate_timestamps='warn'` does not apply to many series: a series has one row per time")
    if drop_short and id_column is None:
        raise ValueError("`drop_short` leaves out the short series of long data: it needs `id_column`")
    if test_cutoff is not None and cutoff is None:
        raise ValueError("`test_cutoff` needs `cutoff` (the last timestamp of the train split)")
    if cutoff is not None and split_config is not None:
        raise ValueError(f"give `cutoff` or `split_config` ({split_config!r}), not both: each defines the splits")

    if isinstance(name_or_path, pd.DataFrame):
        frame = _check_frame(name_or_path, date_column, id_column)
        label = "DataFrame"
        config = get_split_config(split_config if split_config is not None else CUSTOM_CONFIG)
        name = dataset_name or DATAFRAME_NAME
    else:
        path, config = resolve_source(name_or_path, data_dir, split_config, cache_dir)
        frame = read_csv(path, date_column, cache_dir, encoding=encoding, id_column=id_column)
        label = str(path)
        name = dataset_name or (config["name"] if config["name"] != CUSTOM_CONFIG else path.name.split(".")[0])

    value_columns = [column for column in frame.columns if column not in (date_column, id_column)]
    if target not in value_columns:
        raise ValueError(f"{label}: target column {target!r} not found (columns: {value_columns}); pass `target=...`")
    columns = [target] if features == "S" else [column for column in value_columns if column != target] + [target]
    hint = "; pass features='S' to use the target column only" if features == "M" else ""
    values = frame_values(frame, columns, label, hint)  # [rows x channels]
    splitter = _Splitter(config, context_length, prediction_length, percent, cutoff, test_cutoff, utc)
    common = {
        "context_length": context_length,
        "prediction_length": prediction_length,
        "percent": percent,
        "features": features,
        "missing": missing,
        "dataset_name": name,
        "date_column": date_column,
        "utc": utc,
        "cutoff": splitter.cutoff_text,
        "test_cutoff": splitter.test_cutoff_text,
    }
    if id_column is None:
        kept = None if scaler is None else _kept_statistics(scaler, columns, label)
        duplicates = duplicate_timestamps or config["duplicate_timestamps"]
        return _load_one_series(
            frame, values, columns, target, label, splitter, missing, duplicates, date_format, common, kept
        )
    if scaler is not None:
        raise ValueError(
            f"{label}: long data (id_column={id_column!r}) is scaled per series from each series' own train rows; a "
            "kept scaler applies to one wide series only: refit the scaler"
        )
    return _load_many_series(
        frame, values, columns, target, label, splitter, id_column, drop_short, date_format, common
    )


DATAFRAME_NAME = "dataframe"


def _check_frame(frame: pd.DataFrame, date_column: str, id_column: str | None) -> pd.DataFrame:
    """A DataFrame given as data: its timestamp column (a column or the index) and id column present, names unique."""
    if date_column not in frame.columns and frame.index.name == date_column:
        frame = frame.reset_index()
    duplicated = frame.columns[frame.columns.duplicated()].tolist()
    if duplicated:
        raise ValueError(f"DataFrame: duplicate column names {duplicated}")
    if date_column not in frame.columns:
        raise ValueError(
            f"DataFrame: no {date_column!r} column (columns: {list(frame.columns)}); pass `date_column=...`"
        )
    if id_column is not None and id_column not in frame.columns:
        raise ValueError(
            f"DataFrame: no {id_column!r} column (columns: {list(frame.columns)}); pass the series id column"
        )
    if len(frame) == 0:
        raise ValueError(f"DataFrame: no rows (columns: {list(frame.columns)})")
    return frame


class _Splitter:
    """The split protocol of one series: the ratio or border config, or cutoff timestamps."""

    def __init__(
        self,
        config: dict[str, Any],
        context_length: int,
        prediction_length: int,
        percent: int | float,
        cutoff: Any,
        test_cutoff: Any,
        utc: bool,
    ) -> None:
        self.config = config
        self.context_length = context_length
        self.horizon = context_length + prediction_length
        self.percent = percent
        self.cutoff = None if cutoff is None else _timestamp("cutoff", cutoff, utc)
        self.test_cutoff = None if test_cutoff is None else _timestamp("test_cutoff", test_cutoff, utc)
        if self.cutoff is not None and self.test_cutoff is not None and self.test_cutoff <= self.cutoff:
            raise ValueError(f"`test_cutoff` ({self.test_cutoff}) must come after `cutoff` ({self.cutoff})")
        self.cutoff_text = None if self.cutoff is None else self.cutoff.isoformat()
        self.test_cutoff_text = None if self.test_cutoff is None else self.test_cutoff.isoformat()

    @property
    def protocol(self) -> str:
        if self.cutoff is None:
            return f"{self.config['name']} split protocol, percent={self.percent}"
        test = "" if self.test_cutoff is None else f", test_cutoff={self.test_cutoff_text}"
        return f"cutoff={self.cutoff_text}{test}, percent={self.percent}"

    def borders(self, dates: pd.DatetimeIndex) -> tuple[dict[str, tuple[int, int]], int]:
        if self.cutoff is None:
            return compute_split_borders(self.config, len(dates), self.context_length, self.percent)
        for name, stamp in (("cutoff", self.cutoff), ("test_cutoff", self.test_cutoff)):
            if stamp is not None and (stamp.tzinfo is None) != (dates.tz is None):
                raise ValueError(
                    f"`{name}` {stamp} and the timestamps (e.g. {dates[0]}) must both have a UTC offset or both not"
                )
        return cutoff_split_borders(dates, self.cutoff, self.context_length, self.percent, self.test_cutoff)

    def short_split(self, borders: dict[str, tuple[int, int]], num_rows: int) -> tuple[str, int] | None:
        """The first split without one whole window, with the rows it reads; `None` when every split has one."""
        for split, (start, end) in borders.items():
            if start < 0 or end > num_rows or end - start < self.horizon:
                return split, max(min(end, num_rows) - max(start, 0), 0)
        return None


def _timestamp(name: str, value: Any, utc: bool) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError) as error:
        raise ValueError(f"`{name}` must be a timestamp (e.g. '2021-03-01 12:00'), got {value!r}") from error
    if stamp is pd.NaT:
        raise ValueError(f"`{name}` must be a timestamp, got {value!r}")
    if utc:
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp


def _fit_scaler(
    rows: np.ndarray, observed: np.ndarray | None, label: str, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and population std of train rows (observed entries only with a mask); std 0 becomes 1."""
    if observed is not None:
        masked = np.where(observed, rows, np.nan)
        if np.isnan(masked).all(axis=0).any():
            raise ValueError(f"{label}: a column has no observed values in the train rows {where}")
        mean, std = np.nanmean(masked, axis=0), np.nanstd(masked, axis=0)
    else:
        mean, std = rows.mean(axis=0), rows.std(axis=0)
    return mean, np.where(std == 0, 1.0, std)  # scikit-learn's StandardScaler convention for constant columns


def _index_dataset(split: str, num_windows: int, num_channels: int) -> datasets.Dataset:
    # channel-major: item i = (channel i // num_windows, window i % num_windows), as in the original
    return datasets.Dataset.from_dict(
        {
            "window_index": np.tile(np.arange(num_windows, dtype=np.int64), num_channels),
            "channel_index": np.repeat(np.arange(num_channels, dtype=np.int64), num_windows),
        },
        features=INDEX_FEATURES,
        split=datasets.NamedSplit(split),
    )


def _load_one_series(
    frame: pd.DataFrame,
    values: np.ndarray,
    columns: list[str],
    target: str,
    label: str,
    splitter: _Splitter,
    missing: str,
    duplicates: str,
    date_format: str | None,
    common: dict[str, Any],
    kept: tuple[np.ndarray, np.ndarray] | None = None,
) -> BalmTsfDatasetDict:
    date_column = common["date_column"]
    dates, found_format = parse_timestamps(
        frame[date_column], date_format=date_format, utc=common["utc"], label=label, date_column=date_column
    )
    check_increasing(dates, label, date_column, duplicates=duplicates)
    observed = handle_missing(values, columns, missing, label)

    num_rows = len(values)
    borders, scaler_end = splitter.borders(dates)
    short = splitter.short_split(borders, num_rows)
    if short is not None:
        split, rows = short
        start, end = borders[split]
        raise ValueError(
            f"{label}: the {split} split reads rows [{start}, {end}) ({rows} rows) of {num_rows}, but "
            f"context_length + prediction_length = {common['context_length']} + {common['prediction_length']} = "
            f"{splitter.horizon} rows are needed for one window ({splitter.protocol}); use a longer series or shorter "
            "lengths"
        )

    if kept is None:
        mean, std = _fit_scaler(
            values[:scaler_end], None if observed is None else observed[:scaler_end], label, f"[0, {scaler_end})"
        )
    else:
        mean, std = kept
    scaled = ((values - mean) / std).astype(np.float32)

    splits = {}
    for split, (start, end) in borders.items():
        window_transform = BalmTsfWindowTransform(
            scaled[start:end],
            common["context_length"],
            common["prediction_length"],
            observed_mask=None if observed is None else observed[start:end],  # not None iff missing == "mask"
        )
        index = _index_dataset(split, window_transform.num_windows, len(columns))
        splits[split] = index.with_transform(window_transform)

    preprocessor = BalmTsfPreprocessor(
        columns=columns,
        target=target,
        mean=mean.tolist(),
        std=std.tolist(),
        split_borders={split: list(border) for split, border in borders.items()},
        scaler_rows=[0, scaler_end] if kept is None else None,
        date_format=found_format,
        frequency=infer_frequency(dates.unique()),
        last_timestamp=dates[-1].isoformat(),
        num_rows=num_rows,
        **common,
    )
    return BalmTsfDatasetDict(splits, preprocessor=preprocessor)


def _describe(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _load_many_series(
    frame: pd.DataFrame,
    values: np.ndarray,
    columns: list[str],
    target: str,
    label: str,
    splitter: _Splitter,
    id_column: str,
    drop_short: bool,
    date_format: str | None,
    common: dict[str, Any],
) -> BalmTsfDatasetDict:
    date_column, missing, utc = common["date_column"], common["missing"], common["utc"]
    raw_ids = frame[id_column]
    empty = raw_ids.isna().to_numpy() | (raw_ids.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise ValueError(f"{label}: empty {id_column!r} value at data row {row}; every row needs its series id")
    codes, item_ids = pd.factorize(raw_ids.astype(str).to_numpy())  # series in order of first appearance
    item_ids = [str(item) for item in item_ids]

    # One format for every row, found on the first series' own (increasing) timestamps.
    raw_dates = frame[date_column].reset_index(drop=True)
    if date_format is None:
        first_rows = np.flatnonzero(codes == 0)
        _, date_format = parse_timestamps(
            raw_dates.iloc[first_rows], utc=utc, label=f"{label} (series {item_ids[0]!r})", date_column=date_column
        )
    dates, found_format = parse_timestamps(
        raw_dates, date_format=date_format, utc=utc, label=label, date_column=date_column
    )

    bad = ~np.isfinite(values)
    if bad.any() and (missing == "error" or np.isinf(values).any()):
        infinite = np.isinf(values).any()
        row, column = (int(i) for i in np.argwhere(np.isinf(values) if infinite else bad)[0])
        where = f"column {columns[column]!r} at data row {row} (series {item_ids[codes[row]]!r})"
        if infinite:
            raise ValueError(f"{label}: infinite value in {where}")
        raise ValueError(
            f"{label}: empty or NaN cell in {where}; set missing='ffill' to fill forward (then backward) within each "
            "series or missing='mask' to fill and mask"
        )

    # Rows of each series in their given order: strictly increasing, regular timestamps.
    order = np.lexsort((np.arange(len(codes)), codes))
    counts = np.bincount(codes, minlength=len(item_ids))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    stamps = dates.asi8[order]
    same_series = codes[order][1:] == codes[order][:-1]
    backwards = np.flatnonzero(same_series & (np.diff(stamps) <= 0))
    if len(backwards):
        previous, row = int(order[backwards[0]]), int(order[backwards[0] + 1])
        kind = "duplicate" if dates[row] == dates[previous] else "unsorted"
        raise ValueError(
            f"{label}: {kind} timestamps in {date_column!r} of series {item_ids[codes[row]]!r}: data row {row} "
            f"({dates[row]}) after data row {previous} ({dates[previous]}); each series' timestamps must be strictly "
            f"increasing (sort the rows by {id_column!r} and {date_column!r} and drop duplicates)"
        )

    kept: list[int] = []
    short: list[str] = []
    item_borders = {}
    for item in range(len(item_ids)):
        item_dates = dates[order[offsets[item] : offsets[item + 1]]]
        borders, scaler_end = splitter.borders(item_dates)
        problem = splitter.short_split(borders, len(item_dates))
        if problem is None:
            kept.append(item)
            item_borders[item] = (borders, scaler_end)
        else:
            split, split_rows = problem
            short.append(f"{item_ids[item]!r} ({len(item_dates)} rows, {split_rows} in its {split} split)")
    if short:
        message = (
            f"{label}: {len(short)} of {len(item_ids)} series are too short for one window of context_length + "
            f"prediction_length = {common['context_length']} + {common['prediction_length']} = {splitter.horizon} "
            f"rows in every split ({splitter.protocol}): {_describe(short)}"
        )
        if not drop_short:
            raise ValueError(f"{message}; pass drop_short=True to leave them out, or use shorter lengths")
        if not kept:
            raise ValueError(f"{message}; no series is left")
        logger.warning(f"{message}; left out (drop_short=True)")

    frequencies: dict[str, str] = {}
    for item in kept:
        item_dates = dates[order[offsets[item] : offsets[item + 1]]]
        frequency = infer_frequency(item_dates)
        if frequency is None:
            steps = np.diff(item_dates.to_numpy())  # timedelta64 in the timestamps' unit
            usual = pd.Series(steps).mode().iloc[0]
            first = int(np.flatnonzero(steps != usual)[0]) + 1 if (steps != usual).any() else 1
            row = int(order[offsets[item] + first])
            raise ValueError(
                f"{label}: the timestamps of series {item_ids[item]!r} are irregular: data row {row} ({dates[row]}) "
                f"comes {pd.Timedelta(steps[first - 1])} after the series' previous row, its usual step is "
                f"{pd.Timedelta(usual)}; every series needs one row per time step"
            )
        frequencies.setdefault(frequency, item_ids[item])
    if len(frequencies) > 1:
        described = ", ".join(f"{frequency!r} (e.g. series {item!r})" for frequency, item in frequencies.items())
        raise ValueError(f"{label}: the series have different frequencies: {described}; give series of one frequency")

    context_length, prediction_length = common["context_length"], common["prediction_length"]
    statistics: dict[str, dict[str, list[float]]] = {}
    train_rows: list[np.ndarray] = []
    train_observed: list[np.ndarray] = []
    chunks: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    observed_chunks: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    starts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    series: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    sizes = dict.fromkeys(SPLITS, 0)
    for position, item in enumerate(kept):
        item_rows = order[offsets[item] : offsets[item + 1]]
        item_values = values[item_rows]
        item_label = f"{label} (series {item_ids[item]!r})"
        observed = handle_missing(item_values, columns, missing, item_label)
        borders, scaler_end = item_borders[item]
        train_observed_rows = None if observed is None else observed[:scaler_end]
        mean, std = _fit_scaler(
            item_values[:scaler_end], train_observed_rows, item_label, f"of its first {scaler_end}"
        )
        statistics[item_ids[item]] = {"mean": mean.tolist(), "std": std.tolist()}
        train_rows.append(item_values[:scaler_end])
        if train_observed_rows is not None:
            train_observed.append(train_observed_rows)
        scaled = ((item_values - mean) / std).astype(np.float32)
        for split, (start, end) in borders.items():
            num_windows = end - start - splitter.horizon + 1
            chunks[split].append(scaled[start:end])
            if observed is not None:
                observed_chunks[split].append(observed[start:end])
            starts[split].append(sizes[split] + np.arange(num_windows, dtype=np.int64))
            series[split].append(np.full(num_windows, position, dtype=np.int64))
            sizes[split] += end - start

    splits = {}
    for split in SPLITS:
        window_transform = BalmTsfWindowTransform(
            np.concatenate(chunks[split]),
            context_length,
            prediction_length,
            observed_mask=np.concatenate(observed_chunks[split]) if missing == "mask" else None,
            window_starts=np.concatenate(starts[split]),
            window_series=np.concatenate(series[split]),
        )
        index = _index_dataset(split, window_transform.num_windows, len(columns))
        splits[split] = index.with_transform(window_transform)

    # The pooled statistics of every series' train rows, recorded for reference; each series is scaled by its own.
    pooled_mean, pooled_std = _fit_scaler(
        np.concatenate(train_rows), np.concatenate(train_observed) if train_observed else None, label, "of all series"
    )
    kept_rows = order[np.concatenate([np.arange(offsets[item], offsets[item + 1]) for item in kept])]
    preprocessor = BalmTsfPreprocessor(
        columns=columns,
        target=target,
        mean=pooled_mean.tolist(),
        std=pooled_std.tolist(),
        date_format=found_format,
        frequency=next(iter(frequencies)),
        last_timestamp=dates[kept_rows].max().isoformat(),
        num_rows=len(kept_rows),
        id_column=id_column,
        scaling="per_series",
        series_statistics=statistics,
        series_ids=[item_ids[item] for item in kept],
        **common,
    )
    return BalmTsfDatasetDict(splits, preprocessor=preprocessor)


__all__ = ["load_forecasting_dataset"]
