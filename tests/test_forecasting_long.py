"""The long layout in and out (many series, Nixtla names, quantiles from a calibration), its CLI and its plot."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DATA_DIR, tiny_model
from test_hub import CONTEXT_LENGTH, PREDICTION_LENGTH, build_trained_folder

import balm_hf
from balm_hf import BalmTsfForecaster, BalmTsfPreprocessor, plot_forecast
from balm_hf.calibration import ConformalCalibration, MissingCalibrationError
from balm_hf.cli import main as cli_main
from balm_hf.forecasting import forecast_title, progress_enabled
from balm_hf.models.balm_tsf.configuration_balm_tsf import FAST_MODE_SWITCHES


LEVELS = [0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def folder(tmp_path_factory, preprocessor) -> Path:
    """A tiny trained folder in paper mode (prompts padded together without a mask)."""
    return build_trained_folder(tmp_path_factory.mktemp("trained") / "run", preprocessor)


@pytest.fixture(scope="module")
def fast_folder(tmp_path_factory, preprocessor) -> Path:
    """A tiny trained folder in fast mode: each series' forecast does not depend on the series batched with it."""
    return build_trained_folder(tmp_path_factory.mktemp("fast") / "run", preprocessor, **FAST_MODE_SWITCHES)


@pytest.fixture(scope="module")
def calibrated_folder(tmp_path_factory, folder, preprocessor) -> Path:
    copy = Path(shutil.copytree(folder, tmp_path_factory.mktemp("calibrated") / "run"))
    residuals = np.random.default_rng(0).normal(size=(200, PREDICTION_LENGTH, len(preprocessor.columns)))
    residuals *= np.linspace(0.5, 2.0, PREDICTION_LENGTH)[None, :, None]
    ConformalCalibration.from_residuals(residuals, preprocessor.columns).save_pretrained(copy)
    return copy


@pytest.fixture(scope="module")
def etth1() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv.gz")


def to_long(frame: pd.DataFrame, item: str, columns: list[str]) -> pd.DataFrame:
    """One item of the long layout from a wide ETTh1 slice (one row per time step, a column per target)."""
    return pd.DataFrame({"item_id": item, "timestamp": frame["date"].to_numpy(), **{c: frame[c] for c in columns}})


def test_long_forecast_equals_the_wide_forecast_of_the_same_series(folder, etth1, preprocessor):
    first, second = etth1.iloc[:100].reset_index(drop=True), etth1.iloc[1000:1200].reset_index(drop=True)
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    wide = forecaster.predict([first, second])  # one model batch of 2 x 7 series, item-major
    long_input = pd.concat(
        [to_long(first, "b", preprocessor.columns), to_long(second, "a", preprocessor.columns)], ignore_index=True
    )
    result = forecaster.predict_df(long_input, target=preprocessor.columns)

    assert list(result.columns) == ["item_id", "timestamp", "target_name", "predictions"]
    assert len(result) == 2 * len(preprocessor.columns) * PREDICTION_LENGTH
    assert result["item_id"].unique().tolist() == ["b", "a"]  # order of first appearance
    for item, expected in zip(["b", "a"], wide, strict=True):
        rows = result[result["item_id"] == item]
        assert rows["target_name"].unique().tolist() == preprocessor.columns
        for column in preprocessor.columns:
            of_column = rows[rows["target_name"] == column]
            np.testing.assert_array_equal(of_column["predictions"].to_numpy(), expected[column].to_numpy())
            pd.testing.assert_index_equal(
                pd.DatetimeIndex(of_column["timestamp"]), pd.DatetimeIndex(expected["date"]), check_names=False
            )
    pd.testing.assert_frame_equal(
        balm_hf.forecast(forecaster, long_input, format="long", target=preprocessor.columns), result
    )


def test_nixtla_names_and_per_series_scaling(etth1):
    columns = ["y"]
    stored = {"known": {"mean": [5.0], "std": [2.0]}}
    preprocessor = BalmTsfPreprocessor(
        columns, "y", mean=[0.0], std=[1.0], scaling="per_series", series_statistics=stored, id_column="unique_id"
    )
    forecaster = BalmTsfForecaster(tiny_model(**FAST_MODE_SWITCHES).eval(), preprocessor)
    history = etth1.iloc[:120]
    nixtla = pd.concat(
        [
            pd.DataFrame({"unique_id": name, "ds": pd.to_datetime(history["date"]), "y": history[column].to_numpy()})
            for name, column in (("known", "OT"), ("new", "HUFL"))
        ],
        ignore_index=True,
    )
    result = forecaster.predict_df(nixtla, id_column="unique_id", timestamp_column="ds", target="y")
    assert list(result.columns) == ["unique_id", "ds", "target_name", "predictions"]
    assert (result["target_name"] == "y").all()

    values = {name: nixtla.loc[nixtla["unique_id"] == name, "y"].to_numpy() for name in ("known", "new")}
    new = values["new"]
    expected_mean = np.array([[5.0], [new.mean()]])
    expected_std = np.array([[2.0], [new.std()]])  # the unknown item: all its rows, population std
    windows = np.stack([values[name][-CONTEXT_LENGTH:, None] for name in ("known", "new")])
    expected = forecaster.forecast_windows(windows, mean=expected_mean, std=expected_std)[..., 0]
    np.testing.assert_allclose(result["predictions"].to_numpy().reshape(2, -1), expected, rtol=1e-6, atol=1e-6)


def test_wide_input_of_a_per_series_model_points_to_predict_df(etth1):
    stored = {"known": {"mean": [5.0], "std": [2.0]}}
    preprocessor = BalmTsfPreprocessor(
        ["OT"], "OT", mean=[0.0], std=[1.0], scaling="per_series", series_statistics=stored
    )
    forecaster = BalmTsfForecaster(tiny_model().eval(), preprocessor)
    with pytest.raises(ValueError, match=r"scales each series by its own statistics.*forecast with `predict_df`"):
        forecaster.predict(etth1.iloc[:100])


def test_unequal_lengths_interleaved_rows_and_each_items_own_frequency(fast_folder, etth1):
    forecaster = BalmTsfForecaster.from_pretrained(fast_folder)
    hourly = to_long(etth1.iloc[:100], "hourly", ["OT"])
    two_hourly = to_long(etth1.iloc[500:580], "two-hourly", ["OT"])
    two_hourly["timestamp"] = pd.date_range("2020-01-01", periods=len(two_hourly), freq="2h").astype(str)
    frame = pd.concat([hourly, two_hourly], ignore_index=True)
    result = forecaster.predict_df(frame, target="OT")

    by_item = {item: rows for item, rows in result.groupby("item_id", sort=False)}
    assert list(by_item) == ["hourly", "two-hourly"]
    assert by_item["hourly"]["timestamp"].iloc[0] == pd.Timestamp(hourly["timestamp"].iloc[-1]) + pd.Timedelta("1h")
    assert (by_item["two-hourly"]["timestamp"].diff().dropna() == pd.Timedelta("2h")).all()
    assert by_item["two-hourly"]["timestamp"].iloc[0] == pd.Timestamp("2020-01-07 16:00")

    # Rows of the two items interleaved (each item still in time order): the same forecasts.
    order = np.argsort(np.concatenate([np.arange(len(hourly)) * 2.0, np.arange(len(two_hourly)) * 2.0 + 1]))
    interleaved = forecaster.predict_df(frame.iloc[order], target="OT")
    pd.testing.assert_frame_equal(interleaved, result, check_exact=False, rtol=1e-6)
    with pytest.raises(ValueError, match=r"item 'two-hourly': the timestamps are irregular.*pass `freq=`"):
        forecaster.predict_df(frame.drop(index=[110, 111]), target="OT")
    daily = forecaster.predict_df(frame, target="OT", freq="D")
    for _, rows in daily.groupby("item_id"):
        assert (rows["timestamp"].diff().dropna() == pd.Timedelta("1D")).all()


def test_a_list_of_targets_gives_one_series_per_item_and_target(fast_folder, etth1):
    forecaster = BalmTsfForecaster.from_pretrained(fast_folder)
    frame = to_long(etth1.iloc[:100], "a", ["OT", "HUFL"])
    both = forecaster.predict_df(frame, target=["OT", "HUFL"])
    assert both["target_name"].tolist() == ["OT"] * PREDICTION_LENGTH + ["HUFL"] * PREDICTION_LENGTH
    alone = forecaster.predict_df(frame, target="HUFL")
    np.testing.assert_allclose(both["predictions"].to_numpy()[PREDICTION_LENGTH:], alone["predictions"], rtol=1e-5)


def test_chunks_give_the_forecasts_of_one_chunk_in_fast_mode(fast_folder, etth1, preprocessor, capsys):
    forecaster = BalmTsfForecaster.from_pretrained(fast_folder)
    frame = pd.concat(
        [to_long(etth1.iloc[100 * i : 100 * i + 90], f"s{i}", preprocessor.columns) for i in range(3)],
        ignore_index=True,
    )
    whole = forecaster.predict_df(frame, target=preprocessor.columns)
    chunked = forecaster.predict_df(frame, target=preprocessor.columns, batch_size=4, show_progress=True)
    assert "forecast" in capsys.readouterr().err  # the progress bar over 21 series in 6 chunks
    pd.testing.assert_frame_equal(chunked, whole, check_exact=False, rtol=1e-5, atol=1e-5)


def test_paper_mode_forecasts_repeat_exactly_for_one_batch_size(folder, etth1, preprocessor):
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    frame = pd.concat(
        [to_long(etth1.iloc[100 * i : 100 * i + 90], f"s{i}", preprocessor.columns) for i in range(2)],
        ignore_index=True,
    )
    first = forecaster.predict_df(frame, target=preprocessor.columns, batch_size=5)
    pd.testing.assert_frame_equal(forecaster.predict_df(frame, target=preprocessor.columns, batch_size=5), first)


def test_progress_bar_policy(monkeypatch, caplog):
    assert progress_enabled(True, 1) and not progress_enabled(False, 9)
    assert not progress_enabled(None, 1)
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    caplog.set_level(logging.INFO, logger="balm_hf")
    assert not progress_enabled(None, 2)
    caplog.set_level(logging.DEBUG, logger="balm_hf")  # balm-tsf --verbose
    assert progress_enabled(None, 2)
    caplog.set_level(logging.INFO, logger="balm_hf")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    assert progress_enabled(None, 2)


def long_history(etth1: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return pd.concat(
        [to_long(etth1.iloc[:100], "a", columns), to_long(etth1.iloc[300:400], "b", columns)], ignore_index=True
    )


@pytest.mark.parametrize(
    ("mutate", "kwargs", "message"),
    [
        (lambda f: f.drop(columns="timestamp"), {}, r"lacks the columns \['timestamp'\]"),
        (lambda f: f, {"target": "temperature"}, r"does not know the target columns \['temperature'\]"),
        (lambda f: f.assign(item_id=f["item_id"].where(f.index != 7)), {}, r"'item_id' is empty \(NaN\) in 1 rows"),
        (
            lambda f: f.drop(index=range(150, 200)),
            {},
            r"shorter than the model's context_length=64 rows.*: item 'b' \(50 rows\)",
        ),
        (
            lambda f: f.assign(OT=f["OT"].where(f.index != 190)),
            {},
            r"item 'b': NaN value in column 'OT' at row 190 of the input \(row 90 of the item\)",
        ),
        (lambda f: f.assign(OT=f["OT"].astype(object).where(f.index != 3, "warm")), {}, r"'OT'.*row 3.*'warm'"),
        (lambda f: f.iloc[[*range(150), 151, 150, *range(152, 200)]], {}, r"item 'b': unsorted timestamps"),
        (lambda f: f, {"target": ["OT", "OT"]}, r"names the columns \['OT'\] more than once"),
        (lambda f: f, {"batch_size": 0}, r"`batch_size` must be a positive integer"),
    ],
)
def test_bad_long_inputs_raise_errors_that_name_the_problem(folder, etth1, mutate, kwargs, message):
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    frame = mutate(long_history(etth1, ["OT"]))
    with pytest.raises(ValueError, match=message):
        forecaster.predict_df(frame, **{"target": "OT", **kwargs})


def test_multichannel_model_needs_exactly_its_columns(tmp_path, preprocessor, etth1):
    multichannel = build_trained_folder(tmp_path / "run", preprocessor, num_input_channels=7)
    forecaster = BalmTsfForecaster.from_pretrained(multichannel)
    with pytest.raises(ValueError, match=r"forecasts its 7 channels together.*must be exactly"):
        forecaster.predict_df(long_history(etth1, ["OT"]), target="OT")
    shuffled = list(reversed(preprocessor.columns))
    result = forecaster.predict_df(long_history(etth1, shuffled), target=shuffled)
    wide = forecaster.predict([etth1.iloc[:100], etth1.iloc[300:400]])
    for item, expected in zip("ab", wide, strict=True):
        for column in preprocessor.columns:
            rows = result[(result["item_id"] == item) & (result["target_name"] == column)]
            np.testing.assert_array_equal(rows["predictions"].to_numpy(), expected[column].to_numpy())


def test_non_finite_forecast_names_the_item_and_column(folder, etth1, monkeypatch):
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    original = forecaster.model.forward

    def overflowing(*args, **kwargs):
        outputs = original(*args, **kwargs)
        outputs.prediction_outputs[1, 2:] = float("nan")  # item 'a', second target
        return outputs

    monkeypatch.setattr(forecaster.model, "forward", overflowing)
    with pytest.raises(ValueError, match=r"item 'a', column 'HUFL': the forecast is NaN \(first at step 3 of"):
        forecaster.predict_df(long_history(etth1, ["OT", "HUFL"]), target=["OT", "HUFL"])


def test_quantiles_come_from_the_folder_calibration_in_data_units(calibrated_folder, etth1, preprocessor):
    forecaster = BalmTsfForecaster.from_pretrained(calibrated_folder)
    assert isinstance(forecaster.calibration, ConformalCalibration)
    frame = long_history(etth1, ["OT", "HUFL"])
    result = forecaster.predict_df(frame, target=["OT", "HUFL"], quantile_levels=LEVELS)
    assert list(result.columns) == ["item_id", "timestamp", "target_name", "predictions", "0.1", "0.5", "0.9"]
    point = forecaster.predict_df(frame, target=["OT", "HUFL"])
    pd.testing.assert_frame_equal(result[point.columns], point)

    offsets = forecaster.calibration.offsets_for(LEVELS)
    for column in ("OT", "HUFL"):
        channel = preprocessor.columns.index(column)
        std = preprocessor.std[channel]
        rows = result[(result["item_id"] == "b") & (result["target_name"] == column)]
        for index, level in enumerate(LEVELS):
            expected = rows["predictions"].to_numpy() + offsets[index, :, channel] * std
            np.testing.assert_allclose(rows[str(level)].to_numpy(), expected, rtol=1e-12)
    quantiles = result[["0.1", "0.5", "0.9"]].to_numpy()
    assert (np.diff(quantiles, axis=1) >= 0).all()
    width = (result["0.9"] - result["0.1"]).to_numpy().reshape(4, PREDICTION_LENGTH)
    assert (width[:, -1] > width[:, 0]).all()  # the calibration's residuals widen with the horizon

    with pytest.raises(ValueError, match="outside the calibrated range"):
        forecaster.predict_df(frame, target="OT", quantile_levels=[0.001])
    forecaster.calibration.offsets = forecaster.calibration.offsets[::-1].copy()  # levels in the wrong order
    with pytest.raises(ValueError, match=r"item 'a', column 'OT': the 0.1 quantile exceeds the 0.5 quantile"):
        forecaster.predict_df(frame, target="OT", quantile_levels=LEVELS)


def test_quantiles_without_a_calibration_name_the_command(folder, etth1):
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    assert forecaster.calibration is None
    with pytest.raises(MissingCalibrationError, match=rf"`balm-tsf calibrate {folder}`"):
        forecaster.predict_df(long_history(etth1, ["OT"]), target="OT", quantile_levels=LEVELS)


def test_a_calibration_of_another_checkpoint_is_refused(folder, preprocessor, tmp_path):
    copy = Path(shutil.copytree(folder, tmp_path / "run"))
    residuals = np.random.default_rng(1).normal(size=(50, PREDICTION_LENGTH + 1, len(preprocessor.columns)))
    ConformalCalibration.from_residuals(residuals, preprocessor.columns, levels=[0.1, 0.9]).save_pretrained(copy)
    with pytest.raises(ValueError, match=r"covers 17 steps but the model forecasts prediction_length=16"):
        BalmTsfForecaster.from_pretrained(copy)
    residuals = np.zeros((50, PREDICTION_LENGTH, 1))
    other = ConformalCalibration.from_residuals(residuals, ["y"], levels=[0.1, 0.9])
    with pytest.raises(ValueError, match=r"calibration is for the columns \['y'\]"):
        BalmTsfForecaster(tiny_model(), preprocessor, calibration=other)


def test_cli_forecast_long_round_trip_with_quantiles(calibrated_folder, etth1, tmp_path):
    frame = long_history(etth1, ["OT", "HUFL"]).rename(columns={"item_id": "site", "timestamp": "ds"})
    frame.to_csv(tmp_path / "long.csv", index=False)
    output, png = tmp_path / "forecast.csv", tmp_path / "forecast.png"
    arguments = ["forecast", "--model", str(calibrated_folder), "--input", str(tmp_path / "long.csv")]
    arguments += ["--output", str(output), "--format", "long", "--id-column", "site", "--timestamp-column", "ds"]
    arguments += ["--target", "OT", "HUFL", "--quantiles", *map(str, LEVELS), "--plot", str(png), "--plot-item", "b"]
    assert cli_main(arguments) == 0
    written = pd.read_csv(output, parse_dates=["ds"])
    expected = balm_hf.forecast(
        calibrated_folder,
        pd.read_csv(tmp_path / "long.csv"),
        format="long",
        id_column="site",
        timestamp_column="ds",
        target=["OT", "HUFL"],
        quantile_levels=LEVELS,
    )
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, check_exact=False, rtol=1e-12)
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert cli_main([*arguments[:-4], "--overwrite", "--format", "wide"]) == 1  # long-only options need --format long


def test_cli_long_plot_of_several_items_needs_the_item_and_writes_nothing_without_it(folder, etth1, tmp_path):
    long_history(etth1, ["OT"]).to_csv(tmp_path / "long.csv", index=False)
    output = tmp_path / "forecast.csv"
    arguments = ["forecast", "--model", str(folder), "--input", str(tmp_path / "long.csv"), "--format", "long"]
    arguments += ["--target", "OT", "--output", str(output), "--plot", str(tmp_path / "plot.png")]
    assert cli_main(arguments) == 1
    assert cli_main([*arguments, "--plot-item", "c"]) == 1
    assert not output.exists()


def test_plot_of_a_long_forecast_draws_the_band_and_a_title(calibrated_folder, etth1, tmp_path):
    frame = long_history(etth1, ["OT"])
    result = balm_hf.forecast(calibrated_folder, frame, format="long", target="OT", quantile_levels=LEVELS)
    path = plot_forecast(frame, result, tmp_path / "band.png", item_id="a", model_name="tiny")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert forecast_title("tiny", PREDICTION_LENGTH, "item_id 'a'") == "tiny: 16-step forecast of item_id 'a'"
    with pytest.raises(ValueError, match=r"holds 2 items \('a', 'b'\); choose one with `item_id=`"):
        plot_forecast(frame, result, tmp_path / "two.png")
    with pytest.raises(ValueError, match=r"no item 'c'"):
        plot_forecast(frame, result, tmp_path / "none.png", item_id="c")


def test_forecast_windows_takes_per_series_statistics(folder):
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    windows = np.ones((2, CONTEXT_LENGTH, 1))
    with pytest.raises(ValueError, match=r"shape \[series, 64, 7\]"):
        forecaster.forecast_windows(windows)
    with pytest.raises(ValueError, match="`std` must be finite and positive"):
        forecaster.forecast_windows(windows, mean=np.zeros((2, 1)), std=np.zeros((2, 1)))
    unit = forecaster.forecast_windows(windows, mean=np.zeros((2, 1)), std=np.ones((2, 1)))
    shifted = forecaster.forecast_windows(windows * 3 + 10, mean=np.full((2, 1), 10.0), std=np.full((2, 1), 3.0))
    assert unit.shape == (2, PREDICTION_LENGTH, 1) and unit.dtype == np.float64
    np.testing.assert_allclose(shifted, unit * 3 + 10, rtol=1e-12)


def test_items_without_trained_statistics_are_named_in_a_warning(etth1, caplog):
    """An id written otherwise than in the training data (1 for "001") would be scaled by its own rows: say so."""
    stored = {"001": {"mean": [5.0], "std": [2.0]}}
    preprocessor = BalmTsfPreprocessor(
        ["y"], "y", mean=[0.0], std=[1.0], scaling="per_series", series_statistics=stored
    )
    forecaster = BalmTsfForecaster(tiny_model(**FAST_MODE_SWITCHES).eval(), preprocessor)
    residuals = np.random.default_rng(0).normal(size=(200, PREDICTION_LENGTH, 1))
    forecaster.calibration = ConformalCalibration.from_residuals(residuals, ["y"])
    history = etth1.iloc[:120]
    frame = pd.DataFrame({"item_id": "001", "timestamp": history["date"], "y": history["OT"]})
    with caplog.at_level(logging.WARNING, logger="balm_hf.forecasting"):
        known = forecaster.predict_df(frame, target="y", quantile_levels=[0.1, 0.9])
    assert not caplog.records
    with caplog.at_level(logging.WARNING, logger="balm_hf.forecasting"):
        renamed = forecaster.predict_df(frame.assign(item_id=1), target="y", quantile_levels=[0.1, 0.9])
    assert "1 of 1 items ('1') have no statistics from training" in caplog.text
    # The point forecast does not depend on the scaling (the model normalises each window itself); the intervals do.
    width = {name: (result["0.9"] - result["0.1"]).to_numpy() for name, result in (("known", known), ("1", renamed))}
    np.testing.assert_allclose(width["1"], width["known"] * history["OT"].std(ddof=0) / 2.0, rtol=1e-9)


def test_cli_reads_series_ids_as_text(etth1, tmp_path):
    stored = {"001": {"mean": [5.0], "std": [2.0]}}
    preprocessor = BalmTsfPreprocessor(
        ["OT"], "OT", mean=[0.0], std=[1.0], scaling="per_series", series_statistics=stored
    )
    folder = build_trained_folder(tmp_path / "per_series", preprocessor, **FAST_MODE_SWITCHES)
    history = etth1.iloc[:120]
    frame = pd.DataFrame({"item_id": "001", "timestamp": history["date"], "OT": history["OT"]})
    frame.to_csv(tmp_path / "long.csv", index=False)
    output = tmp_path / "forecast.csv"
    arguments = ["forecast", "--model", str(folder), "--input", str(tmp_path / "long.csv"), "--output", str(output)]
    assert cli_main([*arguments, "--format", "long", "--target", "OT"]) == 0
    written = pd.read_csv(output, dtype={"item_id": str})
    expected = BalmTsfForecaster.from_pretrained(folder).predict_df(frame, target="OT")
    assert (written["item_id"] == "001").all()
    np.testing.assert_allclose(written["predictions"], expected["predictions"], rtol=1e-12)
