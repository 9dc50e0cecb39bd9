"""The one timestamp parser of the package, used when loading data and when forecasting."""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.api import guess_datetime_format


logger = logging.getLogger(__name__)

DUPLICATE_MODES = ("error", "warn")
_NUMBER_PATTERN = r"[+-]?\d+(?:\.\d*)?"
_ISO8601 = "ISO8601"


def _first_line(error: Exception) -> str:
    """pandas' parsing errors end in general advice over several lines; keep the line that names the value."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    return line.removesuffix(" You might want to try:").removesuffix(".").strip()


def _mixed_offsets(error: Exception) -> bool:
    text = str(error).lower()
    return "mixed timezones" in text or "mixed offsets" in text or ("tz-aware" in text and "tz-naive" in text)


def _to_datetime(text: pd.Series, date_format: str, utc: bool) -> pd.DatetimeIndex:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pd.DatetimeIndex(pd.to_datetime(text, format=date_format, utc=utc))


def _is_regular(dates: pd.DatetimeIndex) -> bool:
    return dates.is_monotonic_increasing and dates.is_unique and infer_frequency(dates) is not None


def parse_timestamps(
    raw: Any,
    date_format: str | None = None,
    utc: bool = False,
    label: str = "input",
    date_column: str = "date",
) -> tuple[pd.DatetimeIndex, str | None]:
    r"""
    Parse a timestamp column with one format for every row, the same way at training and at forecast time.

    Text is parsed with an explicit `strftime` format, never row by row: with `date_format` if given, otherwise with
    the formats pandas guesses from the first value read month-first and day-first (and ISO 8601). When several
    formats parse every row, the reading whose timestamps are strictly increasing and regular wins, so a `dd/mm/YYYY`
    column whose days are all 12 or less is still read day-first; if two readings are both regular, month-first is
    kept and a warning says the dates are ambiguous. Datetime values are taken as they are.

    Args:
        raw (`pd.Series`, `pd.Index` or sequence):
            The timestamp values (text or datetimes).
        date_format (`str`, *optional*):
            `strftime` format of the text (e.g. `"%d/%m/%Y %H:%M"`), or `"ISO8601"`. Required for timestamps written
            as plain numbers (e.g. `"%Y%m%d"` for `20210301`): numbers are never read as seconds or nanoseconds
            since 1970.
        utc (`bool`, *optional*, defaults to `False`):
            Convert every timestamp to UTC. Needed when the UTC offset changes within the column (daylight saving
            time: `+01:00` in winter, `+02:00` in summer); without it such a column is an error.
        label (`str`, *optional*, defaults to `"input"`):
            What the values are (a file path, `"input"`), for error messages.
        date_column (`str`, *optional*, defaults to `"date"`):
            The column's name, for error messages.

    Returns:
        `tuple[pd.DatetimeIndex, str | None]`: the timestamps (UTC with `utc=True`) and the format they were read
        with (`None` for datetime values).
    """
    series = pd.Series(raw).reset_index(drop=True)
    if isinstance(series.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(series.dtype):
        dates = pd.DatetimeIndex(series)
        if dates.isna().any():
            row = int(np.flatnonzero(dates.isna())[0])
            raise ValueError(f"{label}: empty {date_column!r} value at row {row}")
        if utc:
            dates = dates.tz_localize("UTC") if dates.tz is None else dates.tz_convert("UTC")
        return dates, None
    empty = series.isna() | (series.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise ValueError(f"{label}: empty {date_column!r} value at row {row}")
    if pd.api.types.is_bool_dtype(series.dtype):
        raise ValueError(f"{label}: the {date_column!r} column holds booleans, not timestamps")
    numeric = pd.api.types.is_numeric_dtype(series.dtype)
    if numeric and pd.api.types.is_float_dtype(series.dtype) and (series % 1 == 0).all():
        series = series.astype(np.int64)
    text = series.astype(str).str.strip()
    if date_format is not None:
        try:
            return _to_datetime(text, date_format, utc), date_format
        except (ValueError, TypeError, OverflowError) as error:
            if numeric:
                raise ValueError(
                    f"{label}: the {date_column!r} column holds plain numbers (first: {text.iloc[0]!r}), not "
                    f"timestamps in the format {date_format!r}; numbers are not read as time since 1970"
                ) from error
            hint = "; pass utc=True to convert them to UTC" if _mixed_offsets(error) else ""
            raise ValueError(
                f"{label}: cannot parse {date_column!r} with date_format={date_format!r}: {_first_line(error)}{hint}"
            ) from error
    if numeric or text.str.fullmatch(_NUMBER_PATTERN).all():
        raise ValueError(
            f"{label}: the {date_column!r} column holds plain numbers (first: {text.iloc[0]!r}), not timestamps; "
            "pass `date_format=...` if they are dates written as digits (e.g. '%Y%m%d'), they are not read as "
            "time since 1970"
        )
    first = text.iloc[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        formats = [guess_datetime_format(first, dayfirst=dayfirst) for dayfirst in (False, True)]
    candidates = [fmt for fmt in dict.fromkeys([*formats, _ISO8601]) if fmt is not None]
    readings: list[tuple[str, pd.DatetimeIndex]] = []
    errors: list[str] = []
    for fmt in candidates:
        try:
            dates = _to_datetime(text, fmt, utc)
        except (ValueError, TypeError, OverflowError) as error:
            if _mixed_offsets(error):
                raise ValueError(
                    f"{label}: the {date_column!r} timestamps carry different UTC offsets (e.g. across a daylight "
                    f"saving change: {_first_line(error)}); pass utc=True to read them all as UTC"
                ) from error
            errors.append(f"{fmt!r}: {_first_line(error)}")
            continue
        if not any(dates.equals(other) for _, other in readings):
            readings.append((fmt, dates))
    if not readings:
        guessed = next((fmt for fmt in formats if fmt is not None), None)
        if guessed is None:
            detail = f"no date format fits the first value {first!r} ({'; '.join(errors)})"
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                failed = pd.to_datetime(text, format=guessed, errors="coerce", utc=utc).isna().to_numpy()
            row = int(np.flatnonzero(failed)[0]) if failed.any() else 0
            detail = f"data row {row} ({text.iloc[row]!r}) does not match {guessed!r}, the format of the first value"
        raise ValueError(
            f"{label}: cannot parse the {date_column!r} column as dates with one format for every row: {detail}; pass "
            "`date_format=...` (e.g. '%d/%m/%Y %H:%M')"
        )
    regular = [reading for reading in readings if _is_regular(reading[1])]
    increasing = [reading for reading in readings if reading[1].is_monotonic_increasing]
    chosen = regular or increasing or readings
    if len(regular) > 1:
        logger.warning(
            "%s: the %r dates read both month-first and day-first as regular timestamps; using %r, pass "
            "`date_format=...` to choose",
            label,
            date_column,
            regular[0][0],
        )
    fmt, dates = chosen[0]
    return dates, fmt


def check_increasing(
    dates: pd.DatetimeIndex, label: str = "input", date_column: str = "date", duplicates: str = "error"
) -> None:
    r"""
    Check that timestamps are strictly increasing; raise naming the first row that is not.

    Args:
        dates (`pd.DatetimeIndex`): the parsed timestamps.
        label (`str`, *optional*, defaults to `"input"`): what the values are, for messages.
        date_column (`str`, *optional*, defaults to `"date"`): the column's name, for messages.
        duplicates (`str`, *optional*, defaults to `"error"`):
            A timestamp equal to the previous one: `"error"` raises; `"warn"` logs a warning naming every repeated
            timestamp and its rows and keeps the rows in file order (unsorted timestamps still raise).
    """
    if duplicates not in DUPLICATE_MODES:
        raise ValueError(f"`duplicate_timestamps` must be one of {DUPLICATE_MODES}, got {duplicates!r}")
    steps = np.diff(dates.asi8)
    backwards = np.flatnonzero(steps < 0)
    repeats = np.flatnonzero(steps == 0)
    if duplicates == "error":
        backwards = np.flatnonzero(steps <= 0)
    if len(backwards):
        row = int(backwards[0]) + 1
        repeated = steps[row - 1] == 0
        kind, verb = ("duplicate", "repeats") if repeated else ("unsorted", "goes back in time")
        hint = "; pass duplicate_timestamps='warn' to keep repeated rows" if repeated else ""
        raise ValueError(
            f"{label}: {kind} timestamps in {date_column!r}: data row {row} ({dates[row]}) after data row {row - 1} "
            f"({dates[row - 1]}); the column {verb} at row {row}, timestamps must be strictly increasing (sort the "
            f"rows and drop duplicates){hint}"
        )
    if len(repeats):
        described = ", ".join(f"{dates[int(row) + 1]} (data rows {int(row)} and {int(row) + 1})" for row in repeats)
        logger.warning("%s: repeated timestamps in %r, rows kept in file order: %s", label, date_column, described)


def infer_frequency(dates: pd.DatetimeIndex) -> str | None:
    """The pandas frequency alias of regular timestamps (`"h"`, `"15min"`), `None` if irregular or fewer than 3."""
    if len(dates) < 3:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            frequency = pd.infer_freq(dates)
        except (ValueError, TypeError):
            return None
    return getattr(frequency, "freqstr", frequency)


# Default season length per sampling interval: one day of hourly or 15-minute data, one week of daily data.
_SEASON_LENGTHS = {pd.Timedelta(hours=1): 24, pd.Timedelta(minutes=15): 96, pd.Timedelta(days=1): 7}
# Upper-case aliases of older pandas versions (still found in saved preprocessors), by their current names.
_LEGACY_ALIASES = {"H": "h", "T": "min", "S": "s", "L": "ms", "U": "us", "N": "ns"}


def _to_offset(frequency: str) -> Any:
    try:
        return pd.tseries.frequencies.to_offset(frequency)
    except ValueError:
        match = re.fullmatch(r"(\d*)([A-Z])", frequency)
        if match is None or match.group(2) not in _LEGACY_ALIASES:
            raise
        return pd.tseries.frequencies.to_offset(match.group(1) + _LEGACY_ALIASES[match.group(2)])


def default_season_length(frequency: str | None) -> int:
    r"""
    The season length `m` used by default for seasonal scales and references (MASE, the seasonal-naive forecast): 24
    for hourly data, 96 for 15-minute data, 7 for daily data, 1 (the naive forecast) for any other or no frequency.

    Args:
        frequency (`str`, *optional*): a pandas frequency alias such as `"h"`, `"15min"` or `"D"` (the upper-case
            aliases of older pandas versions, `"H"` or `"15T"`, are read too). An alias pandas cannot read gives 1
            with a warning.

    Example:

    ```python
    >>> from balm_hf.data.timestamps import default_season_length
    >>> [default_season_length(frequency) for frequency in ("h", "H", "15min", "D", "W")]
    [24, 24, 96, 7, 1]
    ```
    """
    if frequency is None:
        return 1
    try:
        offset = _to_offset(frequency)
    except (ValueError, TypeError):
        logger.warning(
            "the frequency %r is not a pandas alias: the season length defaults to 1 (the naive forecast); pass the "
            "season length explicitly",
            frequency,
        )
        return 1
    try:
        interval = pd.Timedelta(offset)
    except (ValueError, TypeError):
        return 1  # calendar frequencies (months, business days) have no fixed interval
    return _SEASON_LENGTHS.get(interval, 1)
