"""Backtests: rolling cutoffs, no look-ahead, metrics from the forecasts, the CLI and the plot."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from conftest import DATA_DIR, REPO_ROOT, tiny_model

import balm_hf
from balm_hf import BalmTsfForecaster, BalmTsfPreprocessor
from balm_hf.backtesting import BacktestResult, backtest, default_season_length, plot_backtest
from balm_hf.calibration import ConformalCalibration, MissingCalibrationError
from balm_hf.cli import main as cli_main


CONTEXT, HORIZON = 64, 16  # the tiny model's sizes
LEVELS = [0.1, 0.5, 0.9]


@pytest.fixture(scope="module")
def etth1() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv.gz", nrows=400)


@pytest.fixture(scope="module")
def forecaster(preprocessor) -> BalmTsfForecaster:
    return BalmTsfForecaster(tiny_model(), preprocessor)


@pytest.fixture(scope="module")
def calibrated(preprocessor) -> BalmTsfForecaster:
    # Offsets -1, 0, +1 standard deviations, widening with the step: a valid calibration built in memory.
    widen = 1 + np.arange(HORIZON) / HORIZON
    offsets = np.array([-1.0, 0.0, 1.0])[:, None, None] * widen[None, :, None] * np.ones((1, 1, 7))
    calibration = ConformalCalibration(preprocessor.columns, LEVELS, offsets, num_windows=100)
    return BalmTsfForecaster(tiny_model(), preprocessor, calibration=calibration)


def long_frame(etth1: pd.DataFrame, lengths: dict[str, int], offset: int = 0) -> pd.DataFrame:
    """Items cut from ETTh1 (each starting `offset` rows later than the previous), in the long layout."""
    frames = []
    for index, (item, length) in enumerate(lengths.items()):
        part = etth1.iloc[index * offset : index * offset + length].rename(columns={"date": "timestamp"})
        frames.append(part.assign(item_id=item)[["item_id", "timestamp", "OT", "HUFL"]])
    return pd.concat(frames, ignore_index=True)


def test_cutoffs_are_step_rows_apart_and_the_last_leaves_one_horizon(forecaster, etth1):
    data = long_frame(etth1, {"a": 150, "b": 130}, offset=40)
    result = backtest(forecaster, data, n_windows=3, step=5, target="OT")
    assert isinstance(result, BacktestResult) and (result.step, result.n_windows) == (5, 3)
    forecasts = result.forecasts
    assert list(forecasts.columns) == [
        "item_id",
        "timestamp",
        "cutoff",
        "target_name",
        "target_value",
        "predictions",
    ]
    assert len(forecasts) == 2 * 3 * HORIZON
    for item, length, first in (("a", 150, 0), ("b", 130, 40)):
        times = pd.to_datetime(etth1["date"].iloc[first : first + length]).reset_index(drop=True)
        rows = forecasts[forecasts["item_id"] == item]
        # Cutoffs are the last rows seen: n - H - 10, n - H - 5 and n - H rows.
        expected = [times[length - HORIZON - back - 1] for back in (10, 5, 0)]
        assert sorted(rows["cutoff"].unique()) == expected
        for cutoff, window in rows.groupby("cutoff"):
            seen = int(np.flatnonzero(times == cutoff)[0]) + 1
            assert list(window["timestamp"]) == list(times[seen : seen + HORIZON])
            raw = etth1["OT"].iloc[first + seen : first + seen + HORIZON].to_numpy()
            np.testing.assert_array_equal(window["target_value"].to_numpy(), raw)
        assert rows["timestamp"].max() == times.iloc[-1]  # the last cutoff's forecast ends with the item
    # The default step is the horizon: side-by-side windows.
    default = backtest(forecaster, data, n_windows=2, target="OT")
    cutoffs = sorted(default.forecasts.loc[default.forecasts["item_id"] == "a", "cutoff"].unique())
    assert cutoffs[1] - cutoffs[0] == pd.Timedelta(hours=HORIZON) and default.step == HORIZON


def test_each_cutoff_forecast_equals_predict_df_on_the_rows_up_to_it(forecaster, etth1):
    data = long_frame(etth1, {"a": 120, "b": 120}, offset=0)
    result = backtest(forecaster, data, n_windows=2, target=["OT", "HUFL"])
    first_cutoff = result.forecasts["cutoff"].min()
    cut = pd.concat([item.iloc[: len(item) - 2 * HORIZON] for _, item in data.groupby("item_id", sort=False)])
    direct = forecaster.predict_df(cut, target=["OT", "HUFL"])
    window = result.forecasts[result.forecasts["cutoff"] == first_cutoff]
    merged = window.merge(direct, on=["item_id", "timestamp", "target_name"], suffixes=("", "_direct"))
    assert len(merged) == len(window) == 2 * 2 * HORIZON
    np.testing.assert_array_equal(merged["predictions"], merged["predictions_direct"])


@pytest.mark.parametrize("scaling", ["global", "per_series"])
def test_changing_values_after_a_cutoff_does_not_change_its_forecast(preprocessor, etth1, scaling):
    if scaling == "global":
        forecaster = BalmTsfForecaster(tiny_model(), preprocessor)
    else:
        # Item "new" is unknown to the per-series scaler: it is scaled by its own rows up to each cutoff.
        stats = {"known": {"mean": [0.0] * 7, "std": [1.0] * 7}}
        per_series = BalmTsfPreprocessor(
            **{**preprocessor.to_dict(), "scaling": "per_series", "series_statistics": stats, "id_column": "item_id"}
        )
        forecaster = BalmTsfForecaster(tiny_model(), per_series)
    data = long_frame(etth1, {"new": 140})
    before = backtest(forecaster, data, n_windows=3, target="OT")
    changed = data.copy()
    first_cutoff_row = 140 - HORIZON - 2 * HORIZON  # rows seen at the first cutoff
    changed.loc[first_cutoff_row:, "OT"] = changed.loc[first_cutoff_row:, "OT"] * 3 + 50
    after = backtest(forecaster, changed, n_windows=3, target="OT")
    cutoffs = sorted(before.forecasts["cutoff"].unique())
    for frame in (before, after):
        frame.forecasts.set_index(["cutoff", "timestamp"], inplace=True)
    first = cutoffs[0]
    np.testing.assert_array_equal(
        before.forecasts.loc[first, "predictions"].to_numpy(), after.forecasts.loc[first, "predictions"].to_numpy()
    )
    # The later cutoffs see the changed rows, and the actuals are the changed values.
    assert not np.allclose(
        before.forecasts.loc[cutoffs[2], "predictions"].to_numpy(),
        after.forecasts.loc[cutoffs[2], "predictions"].to_numpy(),
    )
    assert not np.allclose(before.forecasts["target_value"], after.forecasts["target_value"])


def hand_metrics(result: BacktestResult, data: pd.DataFrame, preprocessor, season: int) -> pd.DataFrame:
    """Every metric recomputed with plain numpy from `.forecasts` and the input rows."""
    rows = []
    forecasts = result.forecasts
    # Window k holds every item's k-th cutoff.
    window = forecasts.groupby(["item_id", "target_name"])["cutoff"].rank(method="dense").astype(int)
    groups = [(k, forecasts[window == k]) for k in sorted(window.unique())]
    for label, part in [*groups, ("overall", forecasts)]:
        errors, scaled, ratios, losses = [], [], [], {level: 0.0 for level in LEVELS if str(level) in part}
        total = 0.0
        for (item, target, cutoff), series in part.groupby(["item_id", "target_name", "cutoff"]):
            item_rows = data[data["item_id"] == item].reset_index(drop=True)
            history = item_rows.loc[pd.to_datetime(item_rows["timestamp"]) <= cutoff, target].to_numpy()
            scale = np.mean(np.abs(history[season:] - history[:-season]))
            index = preprocessor.columns.index(target)
            mean, std = preprocessor.mean[index], preprocessor.std[index]
            for _, row in series.iterrows():
                y, p = row["target_value"], row["predictions"]
                errors.append(p - y)
                scaled.append((p - mean) / std - (y - mean) / std)
                ratios.append(abs(p - y) / scale)
                total += abs(y)
                for level in losses:
                    q = row[str(level)]
                    losses[level] += 2 * abs((y - q) * ((y <= q) - level))
        row = {
            "window": label,
            "mse": np.mean(np.square(errors)),
            "mae": np.mean(np.abs(errors)),
            "mse_scaled": np.mean(np.square(scaled)),
            "mae_scaled": np.mean(np.abs(scaled)),
            "mase": np.mean(ratios),
        }
        if losses:
            row["wql"] = np.mean([loss / total for loss in losses.values()])
        rows.append(row)
    return pd.DataFrame(rows)


def test_metrics_equal_a_hand_computation_from_the_forecasts(calibrated, preprocessor, etth1):
    data = long_frame(etth1, {"a": 140, "b": 124}, offset=30)
    result = backtest(calibrated, data, n_windows=2, step=8, target=["OT", "HUFL"], quantile_levels=LEVELS)
    assert result.season_length == 24  # ETTh1 is hourly
    metrics = result.metrics
    assert metrics["window"].tolist() == [1, 2, "overall"]
    assert list(metrics.columns) == [
        "window",
        "cutoff",
        "num_series",
        "num_values",
        "mse",
        "mae",
        "mse_scaled",
        "mae_scaled",
        "mase",
        "wql",
        "season_length",
    ]
    expected = hand_metrics(result, data, preprocessor, season=24)
    assert len(metrics) == len(expected) == 3
    for name in ("mse", "mae", "mse_scaled", "mae_scaled", "mase", "wql"):
        np.testing.assert_allclose(metrics[name].to_numpy(float), expected[name].to_numpy(float), rtol=1e-10)
    assert metrics["num_series"].tolist() == [4, 4, 8]
    # Items a and b end at different times: their cutoffs differ, so a window names none.
    assert metrics["cutoff"].isna().all()
    assert metrics["num_values"].iloc[-1] == 8 * HORIZON
    assert (metrics["season_length"] == 24).all()
    assert result.overall["mase"] == pytest.approx(expected["mase"].iloc[-1])
    # The quantile columns come from the calibration: point + offset * std in the data's units.
    std = preprocessor.std[preprocessor.columns.index("OT")]
    ot = result.forecasts[result.forecasts["target_name"] == "OT"]
    np.testing.assert_allclose(ot["0.9"] - ot["predictions"], np.tile(1 + np.arange(HORIZON) / HORIZON, 4) * std)


def test_mase_scale_comes_from_the_whole_history_before_the_cutoff(forecaster, etth1):
    data = long_frame(etth1, {"a": 300})
    result = backtest(forecaster, data, n_windows=1, target="OT", season_length=24)
    history = data["OT"].to_numpy()[: 300 - HORIZON]
    forecasts = result.forecasts
    errors = np.abs(forecasts["predictions"] - forecasts["target_value"]).to_numpy()
    in_sample = np.mean(np.abs(history[24:] - history[:-24]))
    context = history[-CONTEXT:]
    context_scale = np.mean(np.abs(context[24:] - context[:-24]))
    assert result.overall["mase"] == pytest.approx(np.mean(errors / in_sample), rel=1e-12)
    assert not math.isclose(in_sample, context_scale, rel_tol=1e-3)  # not the context-window variant
    # The season is stated, and another one gives another scale.
    naive = backtest(forecaster, data, n_windows=1, target="OT", season_length=1)
    assert naive.season_length == 1 and naive.metrics["season_length"].iloc[-1] == 1
    assert naive.overall["mase"] == pytest.approx(np.mean(errors / np.mean(np.abs(np.diff(history)))), rel=1e-12)


def test_wql_only_with_quantiles(forecaster, calibrated, etth1):
    data = long_frame(etth1, {"a": 120})
    point = backtest(forecaster, data, n_windows=2, target="OT")
    assert "wql" not in point.metrics.columns and point.quantile_levels == []
    assert not {"0.1", "0.5", "0.9"} & set(point.forecasts.columns)
    with_quantiles = backtest(calibrated, data, n_windows=2, target="OT", quantile_levels=LEVELS)
    assert np.isfinite(with_quantiles.metrics["wql"]).all()
    assert list(with_quantiles.forecasts.columns[-3:]) == ["0.1", "0.5", "0.9"]
    with pytest.raises(MissingCalibrationError, match="balm-tsf calibrate"):
        backtest(forecaster, data, n_windows=2, target="OT", quantile_levels=LEVELS)


def test_missing_actuals_are_left_out_of_the_metrics(forecaster, etth1):
    data = long_frame(etth1, {"a": 120})
    data.loc[119, "OT"] = np.nan  # the last actual of the last cutoff
    result = backtest(forecaster, data, n_windows=2, target="OT")
    assert result.forecasts["target_value"].isna().sum() == 1
    assert result.metrics["num_values"].tolist() == [HORIZON, HORIZON - 1, 2 * HORIZON - 1]
    # One item: each window's cutoff is its cutoff.
    assert result.metrics["cutoff"].tolist()[:2] == sorted(result.forecasts["cutoff"].unique())
    assert pd.isna(result.metrics["cutoff"].iloc[-1])
    assert np.isfinite(result.metrics[["mse", "mae", "mase"]].to_numpy(float)).all()


def test_default_season_length_follows_the_frequency():
    assert [default_season_length(f) for f in ("h", "1h", "15min", "D", "W", "MS", "10min", None)] == [
        24,
        24,
        96,
        7,
        1,
        1,
        1,
        1,
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_windows": 0}, "`n_windows` must be a positive integer"),
        ({"n_windows": True}, "`n_windows` must be a positive integer"),
        ({"n_windows": 2.0}, "`n_windows` must be a positive integer"),
        ({"n_windows": 2, "step": 0}, "`step` must be a positive integer"),
        ({"n_windows": 2, "season_length": -1}, "`season_length` must be a positive integer"),
        ({"n_windows": 2, "season_length": 68}, "season_length=68 .* item 'short' has 68 rows before its first"),
        ({"n_windows": 2, "target": "LUFL"}, r"lacks the columns \['LUFL'\]"),
        ({"n_windows": 4}, r"at least 128 rows.*item 'short' \(100 rows\)"),
        ({"n_windows": 2, "step": 30}, r"1 of 2 items .* at least 110 rows"),
    ],
)
def test_invalid_backtests_raise_clear_errors(forecaster, etth1, kwargs, match):
    data = long_frame(etth1, {"long": 200, "short": 100})
    kwargs.setdefault("target", "OT")
    with pytest.raises(ValueError, match=match):
        backtest(forecaster, data, **kwargs)


def test_a_gap_after_a_cutoff_is_named_instead_of_scoring_the_wrong_rows(forecaster, etth1):
    # One hour missing after the cutoff: with `freq` the forecast steps are placed, and the mismatch is named.
    data = long_frame(etth1, {"a": 121}).drop(index=110).reset_index(drop=True)
    with pytest.raises(ValueError, match=r"item 'a'.*step 7 at 2016-07-05 14:00:00.*row 110 .* 15:00:00"):
        backtest(forecaster, data, n_windows=1, target="OT", freq="h")
    # One hour missing before it: predict_df's error, with the cutoff it happened at.
    data = long_frame(etth1, {"a": 121}).drop(index=80).reset_index(drop=True)
    with pytest.raises(ValueError, match="backtest, the cutoff at 2016-07-05 08:00:00: .*irregular"):
        backtest(forecaster, data, n_windows=1, target="OT")


def test_a_model_object_is_refused_with_the_way_to_wrap_it(etth1, preprocessor):
    with pytest.raises(TypeError, match=r"BalmTsfForecaster\(model, preprocessor\)"):
        backtest(tiny_model(), long_frame(etth1, {"a": 120}), n_windows=1, target="OT")


def test_top_level_export():
    assert balm_hf.backtest is backtest and balm_hf.plot_backtest is plot_backtest
    assert "backtest" in balm_hf.__all__ and "BacktestResult" in balm_hf.__all__


def test_plot_writes_a_png(calibrated, etth1, tmp_path):
    pytest.importorskip("matplotlib")
    data = long_frame(etth1, {"a": 130, "b": 130})
    result = backtest(calibrated, data, n_windows=3, step=8, target=["OT", "HUFL"], quantile_levels=LEVELS)
    path = plot_backtest(result, tmp_path / "plots" / "backtest.png", item="b", target="OT")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_backtest(result, tmp_path / "all.png").stat().st_size > 0  # first item, every target
    with pytest.raises(ValueError, match="item 'c' is not in the backtest"):
        plot_backtest(result, tmp_path / "c.png", item="c")
    with pytest.raises(ValueError, match="no target"):
        plot_backtest(result, tmp_path / "x.png", target="LUFL")


def test_cli_backtest_round_trip_on_wide_and_long_csv(tmp_path, preprocessor, etth1):
    from test_hub import build_trained_folder

    folder = build_trained_folder(tmp_path / "run", preprocessor)
    wide = tmp_path / "wide.csv"
    etth1.iloc[:150].to_csv(wide, index=False)
    forecasts, metrics, plot = tmp_path / "out" / "f.csv", tmp_path / "out" / "m.csv", tmp_path / "out" / "b.png"
    argv = ["backtest", "--model", str(folder), "--input", str(wide), "--n-windows", "2", "--step", "8"]
    outputs = ["--output", str(forecasts), "--metrics", str(metrics), "--plot", str(plot)]
    assert cli_main([*argv, *outputs]) == 0
    written = pd.read_csv(forecasts)
    # A wide table is one item named after the file, every channel a target.
    assert set(written["item_id"]) == {"wide"} and set(written["target_name"]) == set(preprocessor.columns)
    assert len(written) == 2 * 7 * HORIZON
    expected = backtest(
        folder,
        etth1.iloc[:150].assign(item_id="wide"),
        2,
        step=8,
        timestamp_column="date",
        target=preprocessor.columns,
    )
    np.testing.assert_allclose(written["predictions"], expected.forecasts["predictions"], rtol=1e-12)
    table = pd.read_csv(metrics)
    assert table["window"].astype(str).tolist() == ["1", "2", "overall"]
    np.testing.assert_allclose(table["mase"], expected.metrics["mase"], rtol=1e-12)
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # Existing outputs are refused without --overwrite, before any work, and nothing is changed.
    before = forecasts.read_bytes()
    assert cli_main([*argv, *outputs]) == 1
    assert forecasts.read_bytes() == before
    assert cli_main([*argv, *outputs, "--overwrite"]) == 0
    assert cli_main([*argv, "--output", str(wide)]) == 1  # never the input
    # The long layout, with the columns named.
    long_csv = tmp_path / "long.csv"
    long_frame(etth1, {"x": 120, "y": 110}, offset=50).to_csv(long_csv, index=False)
    long_out = tmp_path / "long_forecasts.csv"
    argv = ["backtest", "--model", str(folder), "--input", str(long_csv), "--n-windows", "2", "--target", "OT"]
    assert cli_main([*argv, "--output", str(long_out)]) == 0
    assert set(pd.read_csv(long_out)["item_id"]) == {"x", "y"}


def test_cli_backtest_help_answers_without_importing_torch():
    code = (
        "import sys\n"
        "from balm_hf.cli import main\n"
        "try:\n"
        "    main(['backtest', '--help'])\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode == 0, completed.stderr
    assert (
        "--n-windows" in completed.stdout and "--quantiles" in completed.stdout and "--overwrite" in completed.stdout
    )
    assert completed.stdout.rstrip().endswith("torch imported: False")


def test_cli_backtest_errors_are_one_line(tmp_path, capsys, preprocessor, etth1):
    from test_hub import build_trained_folder

    folder = build_trained_folder(tmp_path / "run", preprocessor)
    wide = tmp_path / "wide.csv"
    etth1.iloc[:100].to_csv(wide, index=False)
    capsys.readouterr()  # what building the folder printed
    assert cli_main(["backtest", "--model", str(folder), "--input", str(wide), "--n-windows", "3"]) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "item 'wide' (100 rows)" in error and "at least 112 rows" in error
    assert (
        cli_main(["backtest", "--model", str(folder), "--input", str(tmp_path / "none.csv"), "--n-windows", "1"]) == 1
    )
    assert "does not exist" in capsys.readouterr().err
