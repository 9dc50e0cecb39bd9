"""The one timestamp parser shared by loading and forecasting, and the data library's independence from the model."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from balm_hf.data import check_increasing, infer_frequency, parse_timestamps


HOURS = pd.date_range("2021-03-01", periods=60, freq="h")


def test_day_first_dates_are_read_day_first_even_when_every_day_is_12_or_less():
    dates, found = parse_timestamps(HOURS.strftime("%d/%m/%Y %H:%M"))
    assert found == "%d/%m/%Y %H:%M"
    pd.testing.assert_index_equal(dates, HOURS, check_names=False)


def test_month_first_dates_are_read_month_first():
    dates, found = parse_timestamps(HOURS.strftime("%m/%d/%Y %H:%M"))
    assert found == "%m/%d/%Y %H:%M"
    pd.testing.assert_index_equal(dates, HOURS, check_names=False)


def test_dates_that_read_regularly_both_ways_warn_and_are_read_month_first(caplog):
    monthly = pd.date_range("2021-01-01", periods=12, freq="MS")  # 01/01, 02/01, ...: regular either way
    with caplog.at_level(logging.WARNING, logger="balm_hf.data.timestamps"):
        dates, found = parse_timestamps(monthly.strftime("%m/%d/%Y"), label="f.csv")
    assert found == "%m/%d/%Y"
    pd.testing.assert_index_equal(dates, monthly, check_names=False)
    assert "f.csv: the 'date' dates read both month-first and day-first" in caplog.text


def test_one_format_for_every_row_and_bad_values_are_named():
    text = list(HOURS.astype(str))
    text[7] = "not a date"
    with pytest.raises(
        ValueError, match=r"f\.csv: cannot parse the 'date' column as dates with one format.*'not a date'"
    ):
        parse_timestamps(text, label="f.csv")
    with pytest.raises(ValueError, match=r"f\.csv: empty 'when' value at row 3"):
        parse_timestamps([*text[:3], " ", *text[4:]], label="f.csv", date_column="when")


def test_an_explicit_format_is_used_and_returned():
    dates, found = parse_timestamps(HOURS.strftime("%Y%m%d %H%M"), date_format="%Y%m%d %H%M")
    assert found == "%Y%m%d %H%M"
    pd.testing.assert_index_equal(dates, HOURS, check_names=False)
    with pytest.raises(ValueError, match=r"input: cannot parse 'date' with date_format='%d\.%m\.%Y': time data"):
        parse_timestamps(HOURS.astype(str), date_format="%d.%m.%Y")


@pytest.mark.parametrize("values", [np.arange(60), np.arange(60).astype(str), np.arange(60) * 1.0])
def test_numbers_are_not_read_as_time_since_1970(values):
    with pytest.raises(ValueError, match=r"input: the 'date' column holds plain numbers \(first: '0'\)"):
        parse_timestamps(values)


def test_dates_written_as_digits_parse_with_their_format():
    days = pd.date_range("2021-03-01", periods=30, freq="D")
    dates, _ = parse_timestamps(days.strftime("%Y%m%d").astype(int), date_format="%Y%m%d")
    pd.testing.assert_index_equal(dates, days, check_names=False)


def test_changing_utc_offsets_need_utc_true():
    paris = pd.date_range("2021-03-27 20:00", periods=12, freq="h", tz="Europe/Paris")  # crosses +01:00 -> +02:00
    text = paris.strftime("%Y-%m-%d %H:%M:%S%z")
    with pytest.raises(ValueError, match=r"f\.csv: the 'date' timestamps carry different UTC offsets.*pass utc=True"):
        parse_timestamps(text, label="f.csv")
    dates, _ = parse_timestamps(text, utc=True)
    pd.testing.assert_index_equal(dates, paris.tz_convert("UTC"), check_names=False)
    assert infer_frequency(dates) == "h"


def test_datetime_values_are_taken_as_they_are():
    dates, found = parse_timestamps(pd.Series(HOURS))
    assert found is None
    pd.testing.assert_index_equal(dates, HOURS, check_names=False)


def test_repeated_timestamps_raise_or_warn_as_asked(caplog):
    repeated = HOURS[[0, 1, 2, 2, 3]]
    with pytest.raises(ValueError, match=r"f\.csv: duplicate timestamps in 'date': data row 3 .*duplicate_timestamps"):
        check_increasing(repeated, "f.csv")
    with caplog.at_level(logging.WARNING, logger="balm_hf.data.timestamps"):
        check_increasing(repeated, "f.csv", duplicates="warn")
    assert (
        "f.csv: repeated timestamps in 'date', rows kept in file order: 2021-03-01 02:00:00 (data rows 2 and 3)"
        in (caplog.text)
    )
    with pytest.raises(ValueError, match=r"unsorted timestamps in 'date': data row 2 .*goes back in time at row 2"):
        check_increasing(HOURS[[0, 2, 1]], "f.csv", duplicates="warn")


def test_the_data_library_does_not_import_the_model():
    # Import `balm_hf.data` alone: a bare parent package stands in for `balm_hf/__init__.py`, which imports everything.
    package = Path(__file__).resolve().parents[1] / "balm_hf"
    code = (
        "import sys, types\n"
        f"package = types.ModuleType('balm_hf'); package.__path__ = [{str(package)!r}]\n"
        "sys.modules['balm_hf'] = package\n"
        "import balm_hf.data\n"
        "loaded = sorted(name for name in sys.modules if name.startswith('balm_hf.models'))\n"
        "assert not loaded, loaded\n"
        "assert balm_hf.data.BalmTsfDataCollator.__module__ == 'balm_hf.collator'\n"
        "assert 'balm_hf.models.balm_tsf.modeling_balm_tsf' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_default_season_length_reads_old_upper_case_aliases_and_warns_on_unknown_ones(caplog):
    from balm_hf.data.timestamps import default_season_length

    assert [default_season_length(f) for f in ("H", "2H", "15T", "h", "D")] == [24, 1, 96, 24, 7]
    with caplog.at_level(logging.WARNING, logger="balm_hf.data.timestamps"):
        assert default_season_length("fortnightly") == 1
    assert "'fortnightly' is not a pandas alias" in caplog.text
