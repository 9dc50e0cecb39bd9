"""Tests of many series: per-series scaling in the preprocessor, DataFrames (wide and long) in the loader."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import DATA_DIR
from test_cli import TINY_OVERRIDES

from balm_hf import BalmTsfForecaster, BalmTsfPreprocessor, load_forecasting_dataset
from balm_hf.artifacts import read_eval_results, validate_folder
from balm_hf.cli import main as cli_main
from balm_hf.data import item_series_index
from balm_hf.training import evaluate_pretrained, load_experiment_config


FIXTURE_FOLDER = Path(__file__).parent / "fixtures" / "checkpoint_v0_1_0"


def per_series_preprocessor() -> BalmTsfPreprocessor:
    return BalmTsfPreprocessor(
        columns=["temp", "load"],
        target="load",
        mean=[1.0, 10.0],
        std=[2.0, 4.0],
        id_column="item_id",
        scaling="per_series",
        series_statistics={"a": {"mean": [0.5, 8.0], "std": [1.5, 3.0]}, 7: {"mean": [2.0, 12.0], "std": [1.0, 5.0]}},
    )


def test_global_statistics_for_any_item():
    preprocessor = BalmTsfPreprocessor(columns=["temp", "load"], target="load", mean=[1.0, 10.0], std=[2.0, 4.0])
    assert preprocessor.scaling == "global" and preprocessor.id_column is None
    assert preprocessor.series_statistics is None
    for item in ("anything", 3, None):
        mean, std = preprocessor.statistics_for(item, ["load", "temp"])
        assert mean.dtype == np.float64 and std.dtype == np.float64
        np.testing.assert_array_equal(mean, [10.0, 1.0])
        np.testing.assert_array_equal(std, [4.0, 2.0])
    with pytest.raises(ValueError, match="'wind'"):
        preprocessor.statistics_for("a", ["load", "wind"])


def test_per_series_statistics_for_known_and_unknown_items():
    preprocessor = per_series_preprocessor()
    mean, std = preprocessor.statistics_for("a", ["load"])
    np.testing.assert_array_equal(mean, [8.0])
    np.testing.assert_array_equal(std, [3.0])
    # ids are compared as strings: the int 7 was stored as "7"
    mean, std = preprocessor.statistics_for(7, ["load", "temp"])
    np.testing.assert_array_equal(mean, [12.0, 2.0])
    np.testing.assert_array_equal(std, [5.0, 1.0])
    assert preprocessor.series_ids == ["a", "7"]
    # an unknown item: NaN-aware mean and population std of its history, a constant column gets std 1
    history = np.array([[1.0, 5.0], [3.0, 5.0], [np.nan, 5.0], [8.0, 5.0]])
    mean, std = preprocessor.statistics_for("new", ["load", "temp"], history=history)
    np.testing.assert_allclose(mean, [4.0, 5.0])
    np.testing.assert_allclose(std, [np.std([1.0, 3.0, 8.0]), 1.0])
    with pytest.raises(ValueError, match="'new'.*history"):
        preprocessor.statistics_for("new", ["load"])
    with pytest.raises(ValueError, match=r"shape \[rows, 2\]"):
        preprocessor.statistics_for("new", ["load", "temp"], history=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="'new' holds an infinite value in column 'temp' at row 1"):
        preprocessor.statistics_for("new", ["load", "temp"], history=np.array([[1.0, 2.0], [2.0, np.inf]]))
    with pytest.raises(ValueError, match=r"no finite value in column\(s\) \['temp'\]"):
        preprocessor.statistics_for("new", ["load", "temp"], history=np.array([[1.0, np.nan], [2.0, np.nan]]))
    with pytest.raises(ValueError, match="'wind'"):
        preprocessor.statistics_for("a", ["wind"])


def test_per_series_transform_needs_the_item():
    preprocessor = per_series_preprocessor()
    values = np.array([[0.5, 11.0], [2.0, 2.0]])
    np.testing.assert_allclose(preprocessor.transform(values, item_id="a"), [[0.0, 1.0], [1.0, -2.0]])
    np.testing.assert_allclose(
        preprocessor.inverse_transform(np.array([[1.0], [0.0]]), channel_index=1, item_id=7), [[17.0], [12.0]]
    )
    with pytest.raises(ValueError, match="item_id"):
        preprocessor.transform(values)


def test_per_series_arguments_are_checked():
    with pytest.raises(ValueError, match="`scaling`"):
        BalmTsfPreprocessor(columns=["y"], target="y", mean=[0.0], std=[1.0], scaling="per_item")
    with pytest.raises(ValueError, match="series_statistics"):
        BalmTsfPreprocessor(columns=["y"], target="y", mean=[0.0], std=[1.0], scaling="per_series")
    with pytest.raises(ValueError, match=r"series_statistics\['b'\].*one mean and std per column"):
        BalmTsfPreprocessor(
            columns=["y"],
            target="y",
            mean=[0.0],
            std=[1.0],
            scaling="per_series",
            series_statistics={"b": {"mean": [0.0, 1.0], "std": [1.0, 1.0]}},
        )
    with pytest.raises(ValueError, match=r"series_statistics\['b'\].*positive"):
        BalmTsfPreprocessor(
            columns=["y"],
            target="y",
            mean=[0.0],
            std=[1.0],
            scaling="per_series",
            series_statistics={"b": {"mean": [0.0], "std": [0.0]}},
        )


def test_per_series_preprocessor_round_trips(tmp_path):
    preprocessor = per_series_preprocessor()
    preprocessor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["scaling"] == "per_series" and saved["id_column"] == "item_id"
    assert saved["series_statistics"]["7"] == {"mean": [2.0, 12.0], "std": [1.0, 5.0]}
    loaded = BalmTsfPreprocessor.from_pretrained(tmp_path)
    assert loaded.scaling == "per_series" and loaded.id_column == "item_id"
    assert loaded.series_statistics == preprocessor.series_statistics
    assert loaded.series_ids == ["a", "7"]
    for item in ("a", "7"):
        for got, expected in zip(
            loaded.statistics_for(item, ["temp", "load"]),
            preprocessor.statistics_for(item, ["temp", "load"]),
            strict=True,
        ):
            np.testing.assert_array_equal(got, expected)


def test_files_without_the_keys_load_as_global(tmp_path):
    saved = json.loads((FIXTURE_FOLDER / "preprocessor_config.json").read_text())
    assert "scaling" not in saved and "series_statistics" not in saved
    loaded = BalmTsfPreprocessor.from_pretrained(FIXTURE_FOLDER)
    assert loaded.scaling == "global" and loaded.id_column is None and loaded.series_statistics is None
    mean, std = loaded.statistics_for("any item", ["OT"])
    np.testing.assert_array_equal(mean, saved["mean"])
    np.testing.assert_array_equal(std, saved["std"])


# -- DataFrames in the loader ---------------------------------------------------------------------------------------

L, H = 6, 3


def all_items(split) -> dict[str, np.ndarray]:
    """Every item of a split, as arrays."""
    return {key: np.asarray(value) for key, value in split[:].items()}


def assert_same_splits(first, second) -> None:
    for name in ("train", "validation", "test"):
        one, two = all_items(first[name]), all_items(second[name])
        assert one.keys() == two.keys()
        for key in one:
            np.testing.assert_array_equal(one[key], two[key], err_msg=f"{name}.{key}")


@pytest.fixture(scope="module")
def etth1_slice() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv.gz", nrows=600)


@pytest.mark.parametrize("dates", ["text", "datetime", "index"])
def test_a_wide_dataframe_loads_exactly_like_its_csv(tmp_path, etth1_slice, dates):
    frame = etth1_slice.copy()
    frame.loc[5, "HULL"] = np.nan  # filled forward the same way
    path = tmp_path / "dataframe.csv"
    frame.to_csv(path, index=False)
    if dates != "text":
        frame["date"] = pd.to_datetime(frame["date"])
    if dates == "index":
        frame = frame.set_index("date")
    kwargs = {"context_length": 48, "prediction_length": 12, "percent": 50, "missing": "ffill"}
    from_csv = load_forecasting_dataset(path, **kwargs)
    from_frame = load_forecasting_dataset(frame, **kwargs)
    assert_same_splits(from_csv, from_frame)
    expected = from_csv.preprocessor.to_dict()
    got = from_frame.preprocessor.to_dict()
    if dates != "text":  # datetime values are taken as they are, without a text format
        assert got.pop("date_format") is None and expected.pop("date_format") == "%Y-%m-%d %H:%M:%S"
    assert got == expected
    assert from_frame.preprocessor.dataset_name == "dataframe" and from_frame.preprocessor.scaling == "global"
    assert item_series_index(from_frame["test"]) is None


def test_a_dataframe_is_checked_like_a_csv(etth1_slice):
    kwargs = {"context_length": 48, "prediction_length": 12}
    with pytest.raises(ValueError, match="no 'when' column"):
        load_forecasting_dataset(etth1_slice, date_column="when", **kwargs)
    frame = etth1_slice.copy()
    frame["HULL"] = frame["HULL"].astype(object)
    frame.loc[7, "HULL"] = "n/a"
    with pytest.raises(ValueError, match=r"non-numeric values in column 'HULL' \(first at data row 7: 'n/a'\)"):
        load_forecasting_dataset(frame, **kwargs)
    with pytest.raises(ValueError, match="target column 'load' not found"):
        load_forecasting_dataset(etth1_slice, target="load", **kwargs)


def long_frame(lengths: dict[str, int], start: str = "2021-03-01", freq: str = "h", seed: int = 0) -> pd.DataFrame:
    """Long data: series `item` with `lengths[item]` hourly rows of a target `y` and a covariate `x`."""
    rng = np.random.default_rng(seed)
    parts = []
    for number, (item, length) in enumerate(lengths.items()):
        parts.append(
            pd.DataFrame(
                {
                    "item_id": item,
                    "timestamp": pd.date_range(start, periods=length, freq=freq),
                    "y": rng.normal(10.0 * (number + 1), 1.0 + number, length).round(3),
                    "x": rng.normal(-5.0 * number, 2.0, length).round(3),
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def series_values(frame: pd.DataFrame, item: str) -> np.ndarray:
    """The rows `[rows, (x, y)]` of one series, row-major float64 (the loader's layout, so sums match exactly)."""
    return np.ascontiguousarray(frame.loc[frame["item_id"] == item, ["x", "y"]].to_numpy(dtype=np.float64))


def load_long(data, **kwargs):
    kwargs = {
        "context_length": L,
        "prediction_length": H,
        "target": "y",
        "id_column": "item_id",
        "date_column": "timestamp",
        **kwargs,
    }
    return load_forecasting_dataset(data, **kwargs)


def expected_windows(frame: pd.DataFrame, borders: dict[str, dict[str, tuple[int, int]]], train_rows: dict[str, int]):
    """Hand computation: per split, the (series position, window) items in channel-major order and their values."""
    items = list(dict.fromkeys(frame["item_id"]))
    result = {}
    for split in ("train", "validation", "test"):
        windows = []  # (series position, scaled rows [L + H, channels]) in series order
        for position, item in enumerate(items):
            values = series_values(frame, item)
            train = values[: train_rows[item]]
            mean, std = train.mean(axis=0), train.std(axis=0)
            scaled = ((values - mean) / std).astype(np.float32)
            start, end = borders[item][split]
            for window in range(end - start - L - H + 1):
                windows.append((position, scaled[start + window : start + window + L + H]))
        past = np.stack([[rows[:L, channel] for _, rows in windows] for channel in range(2)])  # [channel, window, L]
        future = np.stack([[rows[L:, channel] for _, rows in windows] for channel in range(2)])
        series = np.array([position for position, _ in windows])
        result[split] = (past.reshape(-1, L), future.reshape(-1, H), np.tile(series, 2))
    return result


def test_long_data_is_split_and_scaled_per_series_exactly_as_by_hand():
    frame = long_frame({"b": 40, "a": 50})
    splits = load_long(frame)
    # 70/10/20 of each series' own rows: b has 28/4/8 rows, a 35/5/10; validation and test read L rows before
    borders = {
        "b": {"train": (0, 28), "validation": (28 - L, 32), "test": (32 - L, 40)},
        "a": {"train": (0, 35), "validation": (35 - L, 40), "test": (40 - L, 50)},
    }
    preprocessor = splits.preprocessor
    assert preprocessor.scaling == "per_series" and preprocessor.id_column == "item_id"
    assert preprocessor.series_ids == ["b", "a"] and preprocessor.columns == ["x", "y"]
    for item, train_rows in (("b", 28), ("a", 35)):
        train = series_values(frame, item)[:train_rows]
        assert preprocessor.series_statistics[item] == {
            "mean": train.mean(axis=0).tolist(),
            "std": train.std(axis=0).tolist(),
        }
    pooled = np.concatenate([series_values(frame, item)[:n] for item, n in (("b", 28), ("a", 35))])
    np.testing.assert_allclose(preprocessor.mean, pooled.mean(axis=0))
    assert preprocessor.frequency == "h" and preprocessor.num_rows == 90
    assert preprocessor.last_timestamp == "2021-03-03T01:00:00"
    expected = expected_windows(frame, borders, {"b": 28, "a": 35})
    for split, (past, future, series) in expected.items():
        items = all_items(splits[split])
        np.testing.assert_array_equal(items["past_values"][..., 0], past)
        np.testing.assert_array_equal(items["future_values"][..., 0], future)
        np.testing.assert_array_equal(items["series_index"], series)
        num_windows = len(past) // 2
        np.testing.assert_array_equal(items["channel_index"], np.repeat([0, 1], num_windows))
        np.testing.assert_array_equal(items["window_index"], np.tile(np.arange(num_windows), 2))
    # train: (28 - 9 + 1) + (35 - 9 + 1) windows of 2 channels
    assert splits["train"].num_rows == 2 * (20 + 27)
    np.testing.assert_array_equal(item_series_index(splits["test"]), expected["test"][2])
    np.testing.assert_array_equal(item_series_index(splits["test"].select([5, 0])), expected["test"][2][[5, 0]])


def test_rows_of_series_may_interleave_and_a_long_csv_loads_like_the_frame(tmp_path):
    frame = long_frame({"b": 40, "a": 50})
    splits = load_long(frame)
    interleaved = frame.sort_values(["timestamp", "item_id"], kind="stable", ascending=[True, False])
    assert not interleaved.index.equals(frame.index)
    assert_same_splits(splits, load_long(interleaved))
    path = tmp_path / "long.csv"
    frame.to_csv(path, index=False)
    from_csv = load_long(path)
    assert_same_splits(splits, from_csv)
    expected, got = splits.preprocessor.to_dict(), from_csv.preprocessor.to_dict()
    assert got.pop("dataset_name") == "long" and expected.pop("dataset_name") == "dataframe"
    assert got.pop("date_format") == "%Y-%m-%d %H:%M:%S" and expected.pop("date_format") is None
    assert got == expected
    # numbers as ids: read as text from the CSV, compared as text from the frame
    numbered = frame.assign(item_id=frame["item_id"].map({"b": 7, "a": 3}))
    assert load_long(numbered).preprocessor.series_ids == ["7", "3"]


def test_features_s_keeps_only_the_target_of_each_series():
    frame = long_frame({"a": 40, "b": 40}).assign(region="north")
    with pytest.raises(ValueError, match="non-numeric values in column 'region'.*features='S'"):
        load_long(frame)
    splits = load_long(frame, features="S")
    assert splits.preprocessor.columns == ["y"]
    assert set(all_items(splits["test"])["channel_index"]) == {0}


def test_cutoff_splits_every_series_at_the_same_timestamps():
    frame = long_frame({"a": 40, "b": 50})
    # a: 30 rows up to the cutoff, 10 after (5 validation, 5 test); b: 30 and 20 (10 and 10)
    splits = load_long(frame, cutoff="2021-03-02 05:00")
    assert splits.preprocessor.cutoff == "2021-03-02T05:00:00" and splits.preprocessor.test_cutoff is None
    windows = {
        "train": (30 - L - H + 1) * 2,
        "validation": (5 - H + 1) + (10 - H + 1),
        "test": (5 - H + 1) + (10 - H + 1),
    }
    assert {name: split.num_rows // 2 for name, split in splits.items()} == windows
    # the first test target of b is its row 40 (30 train + 10 validation rows)
    b_values = series_values(frame, "b")
    stats = splits.preprocessor.series_statistics["b"]
    test = all_items(splits["test"])
    first_b = int(np.flatnonzero((test["series_index"] == 1) & (test["channel_index"] == 1))[0])
    np.testing.assert_array_equal(
        test["future_values"][first_b, :, 0],
        ((b_values[40 : 40 + H, 1] - stats["mean"][1]) / stats["std"][1]).astype(np.float32),
    )
    np.testing.assert_allclose(stats["mean"], b_values[:30].mean(axis=0))
    # with test_cutoff: validation targets up to and including it, test targets after it
    splits = load_long(frame, cutoff="2021-03-02 05:00", test_cutoff="2021-03-02 08:00")
    assert splits["validation"].num_rows // 2 == 2 * (3 - H + 1)
    assert splits["test"].num_rows // 2 == (7 - H + 1) + (17 - H + 1)
    with pytest.raises(ValueError, match="`test_cutoff`.*must come after `cutoff`"):
        load_long(frame, cutoff="2021-03-02 05:00", test_cutoff="2021-03-02 05:00")
    with pytest.raises(ValueError, match="`test_cutoff` needs `cutoff`"):
        load_long(frame, test_cutoff="2021-03-02 05:00")


def test_a_cutoff_also_splits_one_wide_series(etth1_slice):
    splits = load_forecasting_dataset(etth1_slice, context_length=48, prediction_length=12, cutoff="2016-07-15 23:00")
    # 360 train rows (2016-07-01 00:00 to 2016-07-15 23:00), 240 after: 120 validation, 120 test targets
    assert splits.preprocessor.split_borders == {"train": [0, 360], "validation": [312, 480], "test": [432, 600]}
    assert splits.preprocessor.scaler_rows == [0, 360]


def test_short_series_are_an_error_naming_them_or_left_out_with_a_warning(caplog):
    frame = long_frame({"a": 40, "tiny": 12, "b": 45})
    with pytest.raises(
        ValueError, match=r"1 of 3 series are too short.*'tiny' \(12 rows, 8 in its train split\).*drop_short=True"
    ):
        load_long(frame)
    with caplog.at_level(logging.WARNING, logger="balm_hf.data.loading"):
        splits = load_long(frame, drop_short=True)
    assert "'tiny' (12 rows" in caplog.text and "left out" in caplog.text
    assert splits.preprocessor.series_ids == ["a", "b"] and "tiny" not in splits.preprocessor.series_statistics
    assert_same_splits(splits, load_long(frame[frame["item_id"] != "tiny"]))
    with pytest.raises(ValueError, match="no series is left"):
        load_long(long_frame({"tiny": 12}), drop_short=True)


def test_bad_long_data_is_an_error_naming_the_series_and_row():
    frame = long_frame({"a": 40, "b": 40})
    with pytest.raises(ValueError, match="empty 'item_id' value at data row 41"):
        load_long(frame.assign(item_id=frame["item_id"].where(frame.index != 41)))
    swapped = frame.copy()
    swapped.loc[[45, 46], "timestamp"] = swapped.loc[[46, 45], "timestamp"].to_numpy()
    with pytest.raises(
        ValueError, match=r"unsorted timestamps in 'timestamp' of series 'b': data row 46 .* after data row 45"
    ):
        load_long(swapped)
    repeated = frame.copy()
    repeated.loc[12, "timestamp"] = repeated.loc[11, "timestamp"]
    with pytest.raises(ValueError, match=r"duplicate timestamps in 'timestamp' of series 'a': data row 12"):
        load_long(repeated)
    gap = frame.drop(index=50).reset_index(drop=True)
    with pytest.raises(ValueError, match=r"series 'b' are irregular: data row 50 .* 0 days 02:00:00 after"):
        load_long(gap)
    daily = pd.concat([long_frame({"a": 40}), long_frame({"b": 40}, freq="D")], ignore_index=True)
    with pytest.raises(ValueError, match=r"different frequencies: 'h' \(e.g. series 'a'\), 'D' \(e.g. series 'b'\)"):
        load_long(daily)
    with pytest.raises(ValueError, match="target column 'load' not found"):
        load_long(frame, target="load")
    with pytest.raises(ValueError, match="no 'series' column"):
        load_long(frame, id_column="series")
    holes = frame.copy()
    holes.loc[47, "y"] = np.nan
    with pytest.raises(ValueError, match=r"NaN cell in column 'y' at data row 47 \(series 'b'\)"):
        load_long(holes)


def test_missing_values_are_filled_within_each_series():
    frame = long_frame({"a": 40, "b": 40})
    frame.loc[40:41, "y"] = np.nan  # the first two rows of b
    splits = load_long(frame, missing="ffill")
    b_train = series_values(frame, "b")[:28]
    b_train[:2, 1] = b_train[2, 1]  # filled backward from b's own first value, never from a's last
    assert splits.preprocessor.series_statistics["b"]["mean"] == b_train.mean(axis=0).tolist()
    masked = load_long(frame, missing="mask")
    items = all_items(masked["train"])
    first_b = int(np.flatnonzero((items["series_index"] == 1) & (items["channel_index"] == 1))[0])
    np.testing.assert_array_equal(items["past_observed_mask"][first_b, :3, 0], [0.0, 0.0, 1.0])
    observed = np.delete(frame.loc[frame["item_id"] == "b", "y"].to_numpy()[:28], [0, 1])
    assert masked.preprocessor.series_statistics["b"]["mean"][1] == pytest.approx(observed.mean(), rel=1e-12)


# -- training on a long CSV -----------------------------------------------------------------------------------------


def etth1_long(rows: int = 400) -> pd.DataFrame:
    """Three ETTh1 columns as three series of one long frame (`item_id`, `date`, `y`)."""
    wide = pd.read_csv(DATA_DIR / "ETTh1.csv.gz", nrows=rows)
    long = wide.melt(id_vars="date", value_vars=["HUFL", "MUFL", "OT"], var_name="item_id", value_name="y")
    return long[["item_id", "date", "y"]]


def test_training_on_a_long_csv_and_reevaluating_the_folder(tmp_path, capsys):
    csv = tmp_path / "long.csv"
    etth1_long().to_csv(csv, index=False)
    run = tmp_path / "run"
    arguments = ["train", "--data", str(csv), "--target", "y", "--set", "data.id_column=item_id"]
    status = cli_main([*arguments, "--output-dir", str(run), *TINY_OVERRIDES])
    assert status == 0, capsys.readouterr().err
    final = run / "final"
    trained = validate_folder(final)
    assert trained.preprocessor is not None and trained.preprocessor.series_ids == ["HUFL", "MUFL", "OT"]
    saved = json.loads((final / "preprocessor_config.json").read_text())
    assert saved["scaling"] == "per_series" and saved["id_column"] == "item_id"
    assert list(saved["series_statistics"]) == ["HUFL", "MUFL", "OT"] and saved["columns"] == ["y"]
    assert yaml.safe_load((final / "experiment.yaml").read_text())["data"]["id_column"] == "item_id"
    assert (final / "conformal_calibration.safetensors").is_file()  # intervals calibrated per series' scale
    rows = read_eval_results(final / "eval_results.json")
    # each series' test split: its last int(0.2 * 400) = 80 rows, 80 - 16 + 1 = 65 windows, x 3 series
    assert [row["num_items"] for row in rows] == [195]
    # re-evaluating the folder reloads the long CSV with the saved data settings and gives its numbers exactly
    reevaluated, _ = evaluate_pretrained(final, output_dir=tmp_path / "scratch")
    assert reevaluated == rows
    # the folder forecasts each series in its own units, from its own stored statistics
    forecaster = BalmTsfForecaster.from_pretrained(final)
    forecasts = forecaster.predict_df(etth1_long(), timestamp_column="date", target="y", quantile_levels=[0.1, 0.9])
    assert forecasts.groupby("item_id").size().to_dict() == {"HUFL": 16, "MUFL": 16, "OT": 16}
    assert np.isfinite(forecasts[["predictions", "0.1", "0.9"]].to_numpy()).all()


def test_the_data_section_passes_the_long_data_settings_to_the_loader(tmp_path, monkeypatch):
    from balm_hf.training import trainer

    seen: dict = {}
    monkeypatch.setattr(trainer, "load_forecasting_dataset", lambda *args, **kwargs: seen.update(kwargs) or "splits")
    experiment = tmp_path / "long.yaml"
    # YAML reads unquoted timestamps as dates; they are kept as text
    experiment.write_text("data:\n  dataset: long.csv\n  cutoff: 2021-03-01 12:00:00\n  test_cutoff: 2021-03-05\n")
    overrides = ["data.id_column=item_id", "data.drop_short=true"]
    config = load_experiment_config(experiment, overrides)
    assert trainer.build_datasets(config) == "splits"
    assert seen["id_column"] == "item_id" and seen["drop_short"] is True
    assert seen["cutoff"] == "2021-03-01 12:00:00" and seen["test_cutoff"] == "2021-03-05"
    assert load_experiment_config(None, ["data.cutoff=2021-03-01"]).data.cutoff == "2021-03-01"
    with pytest.raises(ValueError, match="`data.test_cutoff` needs `data.cutoff`"):
        load_experiment_config(None, ["data.test_cutoff=2021-03-01"])
    with pytest.raises(ValueError, match="`data.drop_short`.*needs `data.id_column`"):
        load_experiment_config(None, ["data.drop_short=true"])
