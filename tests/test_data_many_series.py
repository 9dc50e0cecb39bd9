"""Tests of many series: per-series scaling in the preprocessor, DataFrames (wide and long) in the loader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from balm_hf import BalmTsfPreprocessor


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
