"""Tests of the data layer: split protocol, scaling, windows, bad inputs, preprocessor and collator."""

from __future__ import annotations

import gzip
import json
import logging
import os
import pickle

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA_DIR, tiny_model

from balm_hf import BalmTsfDataCollator, BalmTsfPreprocessor, load_forecasting_dataset
from balm_hf.data import BalmTsfDatasetDict, compute_split_borders, get_split_config, list_benchmarks


ETT_COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
L, H = 512, 96


def window_counts(splits: datasets.DatasetDict, channels: int) -> dict[str, int]:
    counts = {}
    for name, split in splits.items():
        assert split.num_rows % channels == 0
        counts[name] = split.num_rows // channels
    return counts


def write_csv(path, num_rows: int = 200, start: str = "2021-03-01", freq: str = "h", date_format: str | None = None):
    """A small 3-column CSV with a `load` target first; returns the frame as written."""
    rng = np.random.default_rng(0)
    dates = pd.date_range(start, periods=num_rows, freq=freq)
    frame = pd.DataFrame(
        {
            "date": dates.strftime(date_format) if date_format else dates.astype(str),
            "load": rng.normal(10.0, 2.0, num_rows).round(3),
            "temp": rng.normal(0.0, 5.0, num_rows).round(3),
            "price": np.linspace(1.0, 3.0, num_rows).round(4),
        }
    )
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def etth1_raw() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv.gz")


@pytest.fixture(scope="module")
def etth1() -> BalmTsfDatasetDict:
    return load_forecasting_dataset("ETTh1", context_length=L, prediction_length=H, data_dir=DATA_DIR)


def scaled_reference(raw: pd.DataFrame, columns: list[str], train_end: int) -> np.ndarray:
    values = raw[columns].to_numpy(dtype=np.float64)
    train = raw[columns].iloc[:train_end]
    return (values - train.mean().to_numpy()) / train.std(ddof=0).to_numpy()


# -- protocol ---------------------------------------------------------------------------------------------------------


def test_etth1_split_sizes_follow_the_month_borders(etth1):
    assert set(etth1) == {"train", "validation", "test"}
    assert window_counts(etth1, 7) == {"train": 8033, "validation": 2785, "test": 2785}
    assert etth1["train"].num_rows == 8033 * 7
    assert etth1.preprocessor.split_borders == {
        "train": [0, 8640],
        "validation": [8640 - L, 11520],
        "test": [11520 - L, 14400],
    }
    assert etth1.preprocessor.columns == ETT_COLUMNS
    assert etth1.preprocessor.frequency == "h"


def test_ettm1_split_sizes_follow_the_15_minute_month_borders():
    splits = load_forecasting_dataset("ettm1", context_length=L, prediction_length=H, data_dir=DATA_DIR)
    month = 30 * 24 * 4
    expected = {
        "train": 12 * month - L - H + 1,
        "validation": (16 * month - (12 * month - L)) - L - H + 1,
        "test": (20 * month - (16 * month - L)) - L - H + 1,
    }
    assert expected == {"train": 33953, "validation": 11425, "test": 11425}
    assert window_counts(splits, 7) == expected
    assert splits.preprocessor.frequency == "15min"


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_first_and_last_windows_equal_scaled_csv_rows(etth1, etth1_raw, split):
    reference = scaled_reference(etth1_raw, ETT_COLUMNS, 8640)
    start, end = etth1.preprocessor.split_borders[split]
    dataset = etth1[split]
    num_windows = dataset.num_rows // 7
    first, second_channel, last = dataset[0], dataset[num_windows], dataset[dataset.num_rows - 1]
    # channel-major order: item i is channel i // num_windows, window i % num_windows
    assert (first["channel_index"], first["window_index"]) == (0, 0)
    assert (second_channel["channel_index"], second_channel["window_index"]) == (1, 0)
    assert (last["channel_index"], last["window_index"]) == (6, num_windows - 1)
    assert first["past_values"].shape == (L, 1) and first["future_values"].shape == (H, 1)
    assert first["past_values"].dtype == np.float32
    np.testing.assert_allclose(first["past_values"][:, 0], reference[start : start + L, 0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        first["future_values"][:, 0], reference[start + L : start + L + H, 0], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        second_channel["past_values"][:, 0], reference[start : start + L, 1], rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(last["past_values"][:, 0], reference[end - H - L : end - H, 6], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(last["future_values"][:, 0], reference[end - H : end, 6], rtol=1e-6, atol=1e-6)


def test_scaler_statistics_equal_pandas_over_the_train_rows(etth1, etth1_raw):
    train = etth1_raw[ETT_COLUMNS].iloc[:8640]
    np.testing.assert_allclose(etth1.preprocessor.mean, train.mean().to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(etth1.preprocessor.std, train.std(ddof=0).to_numpy(), rtol=1e-12)
    assert etth1.preprocessor.scaler_rows == [0, 8640]


def test_few_shot_percent_trims_only_the_train_split(etth1):
    few = load_forecasting_dataset("ETTh1", context_length=L, prediction_length=H, percent=10, data_dir=DATA_DIR)
    train_end = (8640 - L) * 10 // 100 + L
    assert few.preprocessor.split_borders["train"] == [0, train_end]
    assert window_counts(few, 7) == {"train": train_end - L - H + 1, "validation": 2785, "test": 2785}
    # the scaler still uses the full train border, as the original does
    assert few.preprocessor.mean == etth1.preprocessor.mean
    assert few.preprocessor.std == etth1.preprocessor.std
    np.testing.assert_array_equal(few["test"][100]["past_values"], etth1["test"][100]["past_values"])


def test_compute_split_borders_ratio_protocol_matches_the_original_arithmetic():
    borders, scaler_end = compute_split_borders(get_split_config("Weather"), 52696, context_length=L)
    assert borders == {"train": (0, 36887), "validation": (36887 - L, 42157), "test": (42157 - L, 52696)}
    assert scaler_end == 36887
    assert {"ETTh1", "ETTh2", "ETTm1", "ETTm2", "Weather", "Exchange"} == set(list_benchmarks())


def test_features_s_keeps_only_the_target_channel(etth1_raw):
    splits = load_forecasting_dataset("ETTh1", context_length=L, prediction_length=H, features="S", data_dir=DATA_DIR)
    assert splits.preprocessor.columns == ["OT"]
    assert window_counts(splits, 1) == {"train": 8033, "validation": 2785, "test": 2785}
    reference = scaled_reference(etth1_raw, ["OT"], 8640)
    item = splits["validation"][0]
    assert item["channel_index"] == 0
    np.testing.assert_allclose(item["past_values"][:, 0], reference[8640 - L : 8640, 0], rtol=1e-6, atol=1e-6)


# -- user CSVs and sources ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("date_format", "option", "suffix"),
    [
        ("%d/%m/%Y %H:%M", None, ".csv"),
        ("%Y-%m-%dT%H:%M:%S", None, ".csv.gz"),
        ("%Y%m%d %H%M", "%Y%m%d %H%M", ".csv"),
    ],
)
def test_user_csv_uses_the_ratio_protocol_and_moves_the_target_last(tmp_path, date_format, option, suffix):
    path = tmp_path / f"mine{suffix}"
    raw = write_csv(path, num_rows=200, date_format=date_format)
    splits = load_forecasting_dataset(
        path, context_length=24, prediction_length=12, target="load", date_format=option, cache_dir=tmp_path / "cache"
    )
    preprocessor = splits.preprocessor
    assert preprocessor.columns == ["temp", "price", "load"]
    assert preprocessor.frequency == "h"
    assert preprocessor.last_timestamp == "2021-03-09T07:00:00"
    # n = 200: n_train = 140, n_test = 40, n_val = 20
    assert preprocessor.split_borders == {"train": [0, 140], "validation": [140 - 24, 160], "test": [160 - 24, 200]}
    assert window_counts(splits, 3) == {"train": 140 - 35, "validation": 44 - 35, "test": 64 - 35}
    reference = scaled_reference(raw, ["temp", "price", "load"], 140)
    last = splits["test"][splits["test"].num_rows - 1]
    assert last["channel_index"] == 2
    np.testing.assert_allclose(last["future_values"][:, 0], reference[188:200, 2], rtol=1e-5, atol=1e-6)
    first_price = splits["train"][splits["train"].num_rows // 3]  # channel 1, window 0
    assert (first_price["channel_index"], first_price["window_index"]) == (1, 0)
    np.testing.assert_allclose(first_price["past_values"][:, 0], reference[0:24, 1], rtol=1e-5, atol=1e-6)


def test_benchmark_with_ratio_protocol_is_found_by_name_in_data_dir(tmp_path):
    write_csv(tmp_path / "exchange_rate.csv", num_rows=300, freq="D").rename(columns={"load": "OT"}).to_csv(
        tmp_path / "exchange_rate.csv", index=False
    )
    splits = load_forecasting_dataset("Exchange", 48, 24, data_dir=tmp_path, cache_dir=tmp_path / "cache")
    assert splits.preprocessor.dataset_name == "Exchange"
    assert splits.preprocessor.columns[-1] == "OT"
    assert splits.preprocessor.frequency == "D"
    # n = 300: n_train = 210, n_test = 60, n_val = 30
    assert splits.preprocessor.split_borders == {"train": [0, 210], "validation": [162, 240], "test": [192, 300]}


def test_data_folder_from_the_environment_variable(monkeypatch):
    monkeypatch.setenv("BALM_TSF_DATA_DIR", str(DATA_DIR))
    splits = load_forecasting_dataset("ETTh2", context_length=L, prediction_length=H)
    assert window_counts(splits, 7) == {"train": 8033, "validation": 2785, "test": 2785}


def test_path_with_split_config_uses_the_benchmark_borders():
    splits = load_forecasting_dataset(DATA_DIR / "ETTh1.csv.gz", L, H, split_config="ETTh1")
    assert window_counts(splits, 7) == {"train": 8033, "validation": 2785, "test": 2785}


def test_missing_ett_file_offline_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv("BALM_TSF_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"offline mode.*ETTh1\.csv\(\.gz\).*data_dir.*BALM_TSF_DATA_DIR"):
        load_forecasting_dataset("ETTh1", L, H, data_dir=tmp_path)


def test_ett_download_goes_through_datasets_and_failures_are_explained(tmp_path, monkeypatch):
    monkeypatch.delenv("BALM_TSF_DATA_DIR", raising=False)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    requested = []

    def fail(self, url):
        requested.append(url)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets.DownloadManager, "download", fail)
    with pytest.raises(FileNotFoundError, match=r"downloading .*ETTm2\.csv failed.*no route to host.*data_dir"):
        load_forecasting_dataset("ETTm2", L, H)
    assert requested == ["https://raw.githubusercontent.com/zhouhaoyi/ETDataset/main/ETT-small/ETTm2.csv"]

    monkeypatch.setattr(datasets.DownloadManager, "download", lambda self, url: str(DATA_DIR / "ETTh1.csv.gz"))
    splits = load_forecasting_dataset("ETTh1", L, H)
    assert window_counts(splits, 7)["train"] == 8033


# -- bad input ------------------------------------------------------------------------------------------------------


def corrupt(frame: pd.DataFrame, case: str) -> pd.DataFrame:
    frame = frame.copy()
    if case == "no_date":
        frame = frame.rename(columns={"date": "time"})
    elif case == "bad_date":
        frame.loc[7, "date"] = "not a date"
    elif case == "non_numeric":
        frame["temp"] = frame["temp"].astype(object)
        frame.loc[3, "temp"] = "n/a-ish"
    elif case == "nan":
        frame.loc[5, "price"] = np.nan
    elif case == "duplicate":
        frame.loc[9, "date"] = frame.loc[8, "date"]
    elif case == "unsorted":
        frame.loc[[9, 10], "date"] = frame.loc[[10, 9], "date"].to_numpy()
    return frame


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("no_date", r"bad\.csv: no 'date' column"),
        ("bad_date", r"bad\.csv: cannot parse the 'date' column"),
        ("non_numeric", r"bad\.csv: non-numeric values in columns 'temp' \(first at data row 3: 'n/a-ish'\)"),
        ("nan", r"bad\.csv: empty or NaN cell in column 'price' at data row 5"),
        ("duplicate", r"bad\.csv: duplicate timestamps in 'date': data row 9"),
        ("unsorted", r"bad\.csv: unsorted timestamps in 'date': data row 10"),
    ],
)
def test_bad_csv_raises_naming_the_file_and_problem(tmp_path, case, match):
    path = tmp_path / "bad.csv"
    corrupt(write_csv(tmp_path / "good.csv"), case).to_csv(path, index=False)
    with pytest.raises(ValueError, match=match):
        load_forecasting_dataset(path, 24, 12, target="load", cache_dir=tmp_path / "cache")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"target": "OT"}, ValueError, r"target column 'OT' not found"),
        ({"context_length": 130}, ValueError, r"the train split reads rows \[0, 140\) \(140 rows\).*130 \+ 12 = 142"),
        ({"percent": 0}, ValueError, r"`percent` must be in \(0, 100\], got 0"),
        ({"percent": 150}, ValueError, r"`percent` must be in \(0, 100\], got 150"),
        ({"features": "MS"}, ValueError, r"`features` must be one of"),
        ({"missing": "zero"}, ValueError, r"`missing` must be one of"),
        ({"prediction_length": 0}, ValueError, r"`prediction_length` must be positive"),
        ({"context_length": 24.0}, TypeError, r"`context_length` must be an int"),
        ({"date_format": "%d.%m.%Y"}, ValueError, r"cannot parse 'date' with date_format='%d.%m.%Y'"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, error, match):
    path = tmp_path / "good.csv"
    write_csv(path)
    arguments = {"context_length": 24, "prediction_length": 12, "target": "load", **kwargs}
    with pytest.raises(error, match=match):
        load_forecasting_dataset(path, cache_dir=tmp_path / "cache", **arguments)


def test_unknown_names_and_missing_paths_raise(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown dataset name 'ETTh3'.*ETTh1"):
        load_forecasting_dataset("ETTh3", L, H)
    with pytest.raises(FileNotFoundError, match=r"No CSV file at .*missing\.csv"):
        load_forecasting_dataset(tmp_path / "missing.csv", L, H)


def test_ett_test_split_too_short_for_the_horizon_names_the_split(tmp_path):
    raw = pd.read_csv(DATA_DIR / "ETTh1.csv.gz").iloc[:12000]
    raw.to_csv(tmp_path / "ETTh1.csv", index=False)
    with pytest.raises(ValueError, match=r"the test split reads rows \[11008, 14400\).*of 12000"):
        load_forecasting_dataset("ETTh1", L, H, data_dir=tmp_path, cache_dir=tmp_path / "cache")


def test_missing_ffill_fills_forward_then_backward(tmp_path):
    frame = write_csv(tmp_path / "good.csv")
    frame.loc[[0, 1], "temp"] = np.nan
    frame.loc[50, "price"] = np.nan
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    splits = load_forecasting_dataset(
        tmp_path / "gaps.csv", 24, 12, target="load", missing="ffill", cache_dir=tmp_path / "cache"
    )
    preprocessor = splits.preprocessor
    filled = frame.copy()
    filled["temp"] = filled["temp"].bfill()
    filled["price"] = filled["price"].ffill()
    reference = scaled_reference(filled, ["temp", "price", "load"], 140)
    temp = splits["train"][0]
    price = splits["train"][splits["train"].num_rows // 3 + 40]  # window 40 covers row 50
    np.testing.assert_allclose(temp["past_values"][:, 0], reference[0:24, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(price["past_values"][:, 0], reference[40:64, 1], rtol=1e-5, atol=1e-6)
    assert "past_observed_mask" not in temp
    assert preprocessor.missing == "ffill"


def test_missing_mask_yields_observed_masks_and_fits_scaler_on_observed_values(tmp_path):
    frame = write_csv(tmp_path / "good.csv")
    frame.loc[30, "load"] = np.nan
    frame.to_csv(tmp_path / "gaps.csv", index=False)
    splits = load_forecasting_dataset(
        tmp_path / "gaps.csv", 24, 12, target="load", missing="mask", cache_dir=tmp_path / "cache"
    )
    num_windows = splits["train"].num_rows // 3
    item = splits["train"][2 * num_windows + 10]  # load channel, window 10: past rows 10..33
    assert item["channel_index"] == 2
    assert np.isfinite(item["past_values"]).all()
    expected_mask = np.ones((24, 1), dtype=np.float32)
    expected_mask[20] = 0.0
    np.testing.assert_array_equal(item["past_observed_mask"], expected_mask)
    np.testing.assert_array_equal(item["future_observed_mask"], np.ones((12, 1), dtype=np.float32))
    train_load = frame["load"].iloc[:140]
    np.testing.assert_allclose(splits.preprocessor.mean[2], train_load.mean(), rtol=1e-12)
    np.testing.assert_allclose(splits.preprocessor.std[2], train_load.std(ddof=0), rtol=1e-12)
    batch = BalmTsfDataCollator()([item, splits["train"][0]])
    assert batch["future_observed_mask"].shape == (2, 12, 1)


# -- preprocessor and collator --------------------------------------------------------------------------------------


def test_preprocessor_json_roundtrip_and_inverse_transform_recovers_raw_values(etth1, etth1_raw, tmp_path):
    preprocessor = etth1.preprocessor
    preprocessor.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["columns"] == ETT_COLUMNS and saved["split_borders"]["test"] == [11520 - L, 14400]
    reloaded = BalmTsfPreprocessor.from_pretrained(tmp_path)
    assert reloaded.to_dict() == preprocessor.to_dict()

    num_windows = etth1["test"].num_rows // 7
    items = etth1["test"][[0, 3 * num_windows + 5, 7 * num_windows - 1]]
    start = preprocessor.split_borders["test"][0]
    raw = etth1_raw[ETT_COLUMNS].to_numpy()
    expected = np.stack(
        [raw[start : start + L, 0], raw[start + 5 : start + 5 + L, 3], raw[14400 - H - L : 14400 - H, 6]]
    )
    recovered = reloaded.inverse_transform(items["past_values"], channel_index=items["channel_index"])
    np.testing.assert_allclose(recovered[..., 0], expected, rtol=1e-5, atol=1e-5)
    as_tensor = reloaded.inverse_transform(
        torch.from_numpy(items["past_values"]), channel_index=torch.from_numpy(items["channel_index"])
    )
    assert as_tensor.dtype == torch.float32
    np.testing.assert_allclose(as_tensor[..., 0].numpy(), expected, rtol=1e-5, atol=1e-5)

    scaled = reloaded.transform(etth1_raw.iloc[:10])
    np.testing.assert_allclose(reloaded.inverse_transform(scaled), raw[:10], rtol=1e-12)
    with pytest.raises(ValueError, match="last dimension of 7 channels"):
        reloaded.transform(np.zeros((4, 3)))


def test_collator_batches_feed_the_model_and_datasets_pickle():
    splits = load_forecasting_dataset("ETTh1", context_length=64, prediction_length=16, data_dir=DATA_DIR)
    train = pickle.loads(pickle.dumps(splits["train"]))  # what a DataLoader worker receives
    np.testing.assert_array_equal(train[123]["past_values"], splits["train"][123]["past_values"])
    loader = torch.utils.data.DataLoader(train, batch_size=6, shuffle=True, collate_fn=BalmTsfDataCollator())
    batch = next(iter(loader))
    assert batch["past_values"].shape == (6, 64, 1) and batch["past_values"].dtype == torch.float32
    assert batch["future_values"].shape == (6, 16, 1)
    assert batch["window_index"].dtype == torch.long and batch["channel_index"].shape == (6,)
    model = tiny_model(context_length=64, prediction_length=16)
    with torch.no_grad():
        output = model(**batch)
    assert output.loss is not None and torch.isfinite(output.loss)
    assert output.prediction_outputs.shape == (6, 16, 1)


@pytest.mark.parametrize("missing", ["error", "mask"])
def test_collator_built_prompts_give_the_same_output_as_the_model_building_them(missing, tmp_path):
    frame = pd.read_csv(DATA_DIR / "ETTh1.csv.gz").iloc[:2000]
    if missing == "mask":
        frame.loc[700:705, "HUFL"] = np.nan
    path = tmp_path / "holes.csv"
    frame.to_csv(path, index=False)
    splits = load_forecasting_dataset(path, context_length=64, prediction_length=16, missing=missing)
    model = tiny_model(context_length=64, prediction_length=16).eval()
    items = [splits["train"][i] for i in range(630, 650)]
    plain = BalmTsfDataCollator()(items)
    with_prompts = BalmTsfDataCollator(model_config=model.config, tokenizer=model.tokenizer)(items)
    assert with_prompts["prompt_input_ids"].shape[0] == 20
    with torch.no_grad():
        torch.testing.assert_close(
            model(**with_prompts).prediction_outputs, model(**plain).prediction_outputs, rtol=0, atol=0
        )
    with pytest.raises(ValueError, match="both"):
        BalmTsfDataCollator(model_config=model.config)


def test_collator_rejects_items_without_past_values():
    with pytest.raises(ValueError, match="empty list"):
        BalmTsfDataCollator()([])
    with pytest.raises(ValueError, match="must carry `past_values`"):
        BalmTsfDataCollator()([{"future_values": np.zeros((4, 1))}])


# -- timestamps, duplicates, cache and unreadable files ------------------------------------------------------------


def test_loader_records_the_date_format_it_found_or_was_given(tmp_path):
    write_csv(tmp_path / "day_first.csv", date_format="%d/%m/%Y %H:%M")
    found = load_forecasting_dataset(tmp_path / "day_first.csv", 24, 12, target="load", cache_dir=tmp_path / "c")
    assert found.preprocessor.date_format == "%d/%m/%Y %H:%M"
    assert found.preprocessor.last_timestamp == "2021-03-09T07:00:00"
    given = load_forecasting_dataset(
        tmp_path / "day_first.csv", 24, 12, target="load", date_format="%d/%m/%Y %H:%M", cache_dir=tmp_path / "c"
    )
    assert given.preprocessor.date_format == "%d/%m/%Y %H:%M"
    given.preprocessor.save_pretrained(tmp_path / "saved")
    assert BalmTsfPreprocessor.from_pretrained(tmp_path / "saved").date_format == "%d/%m/%Y %H:%M"


def test_integer_date_column_is_an_error_unless_a_format_is_given(tmp_path):
    frame = write_csv(tmp_path / "good.csv", freq="D")
    frame.assign(date=np.arange(len(frame))).to_csv(tmp_path / "numbers.csv", index=False)
    with pytest.raises(ValueError, match=r"numbers\.csv: the 'date' column holds plain numbers \(first: '0'\)"):
        load_forecasting_dataset(tmp_path / "numbers.csv", 24, 12, target="load", cache_dir=tmp_path / "c")
    digits = pd.to_datetime(frame["date"]).dt.strftime("%Y%m%d").astype(int)
    frame.assign(date=digits).to_csv(tmp_path / "digits.csv", index=False)
    splits = load_forecasting_dataset(
        tmp_path / "digits.csv", 24, 12, target="load", date_format="%Y%m%d", cache_dir=tmp_path / "c"
    )
    assert splits.preprocessor.frequency == "D"
    assert splits.preprocessor.last_timestamp == "2021-09-16T00:00:00"


def test_utc_offsets_changing_across_daylight_saving_need_utc(tmp_path):
    frame = write_csv(tmp_path / "good.csv")
    paris = pd.date_range("2021-03-20", periods=len(frame), freq="h", tz="Europe/Paris")
    frame.assign(date=paris.strftime("%Y-%m-%d %H:%M:%S%z")).to_csv(tmp_path / "dst.csv", index=False)
    with pytest.raises(ValueError, match=r"dst\.csv: the 'date' timestamps carry different UTC offsets.*utc=True"):
        load_forecasting_dataset(tmp_path / "dst.csv", 24, 12, target="load", cache_dir=tmp_path / "c")
    splits = load_forecasting_dataset(tmp_path / "dst.csv", 24, 12, target="load", utc=True, cache_dir=tmp_path / "c")
    assert splits.preprocessor.utc is True
    assert splits.preprocessor.frequency == "h"
    assert splits.preprocessor.last_timestamp == paris[-1].tz_convert("UTC").isoformat()


def write_weather(path, num_rows: int = 52_696, duplicate_row: int = 19_043) -> pd.DataFrame:
    """A Weather-shaped file (date, 21 channels ending in OT, 10-minute steps) repeating one row like the real one."""
    rng = np.random.default_rng(2)
    dates = pd.date_range("2020-01-01 00:10:00", periods=num_rows - 1, freq="10min")
    columns = [f"c{index}" for index in range(20)] + ["OT"]
    frame = pd.DataFrame(rng.normal(size=(num_rows - 1, 21)).round(3), columns=columns)
    frame.insert(0, "date", dates.astype(str))
    frame = pd.concat([frame.iloc[: duplicate_row + 1], frame.iloc[duplicate_row:]], ignore_index=True)
    frame.to_csv(path, index=False)
    return frame


def test_weather_with_its_repeated_timestamp_loads_with_the_published_split(tmp_path, caplog):
    raw = write_weather(tmp_path / "weather.csv")
    assert raw["date"].iloc[19_043] == raw["date"].iloc[19_044] == "2020-05-12 06:00:00"
    with caplog.at_level(logging.WARNING):
        splits = load_forecasting_dataset("Weather", 96, 96, data_dir=tmp_path, cache_dir=tmp_path / "c")
    assert (
        "repeated timestamps in 'date', rows kept in file order: 2020-05-12 06:00:00 (data rows 19043 and 19044)"
        in (caplog.text)
    )
    assert splits.preprocessor.num_rows == 52_696
    assert splits.preprocessor.frequency == "10min"
    # n_train = 36,887, n_val = 5,270, n_test = 10,539
    assert splits.preprocessor.split_borders == {
        "train": [0, 36_887],
        "validation": [36_887 - 96, 36_887 + 5_270],
        "test": [52_696 - 10_539 - 96, 52_696],
    }
    assert window_counts(splits, 21) == {"train": 36_887 - 191, "validation": 5_270 - 95, "test": 10_539 - 95}


def test_user_csv_keeps_the_strict_duplicate_check_unless_asked(tmp_path, caplog):
    write_weather(tmp_path / "weather.csv", num_rows=400, duplicate_row=100)
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match=r"weather\.csv: duplicate timestamps.*duplicate_timestamps='warn'"):
            load_forecasting_dataset(tmp_path / "weather.csv", 24, 12, cache_dir=tmp_path / "c")
        splits = load_forecasting_dataset(
            tmp_path / "weather.csv", 24, 12, duplicate_timestamps="warn", cache_dir=tmp_path / "c"
        )
    assert splits.preprocessor.num_rows == 400
    assert "split with the 70/10/20 ratio protocol" not in caplog.text  # Weather's own protocol is the same
    with pytest.raises(ValueError, match=r"`duplicate_timestamps` must be one of \('error', 'warn'\), got 'drop'"):
        load_forecasting_dataset(tmp_path / "weather.csv", 24, 12, duplicate_timestamps="drop")


def test_exchange_by_path_gets_no_protocol_warning_but_ett_does(tmp_path, caplog):
    write_csv(tmp_path / "exchange_rate.csv", num_rows=300, freq="D")
    write_csv(tmp_path / "ETTh1.csv", num_rows=300)
    with caplog.at_level(logging.WARNING):
        load_forecasting_dataset(tmp_path / "exchange_rate.csv", 24, 12, target="load", cache_dir=tmp_path / "c")
        assert "looks like" not in caplog.text
        load_forecasting_dataset(tmp_path / "ETTh1.csv", 24, 12, target="load", cache_dir=tmp_path / "c")
    assert "looks like the ETTh1 benchmark but is split with the 70/10/20 ratio protocol" in caplog.text


def test_a_csv_rewritten_with_its_old_modification_time_is_read_again(tmp_path):
    path = tmp_path / "mine.csv"
    raw = write_csv(path)
    first = load_forecasting_dataset(path, 24, 12, target="load", cache_dir=tmp_path / "c")
    stat = path.stat()
    changed = raw.assign(load=raw["load"][::-1].to_numpy())  # same cells in another order: same size
    changed.to_csv(path, index=False)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    second = load_forecasting_dataset(path, 24, 12, target="load", cache_dir=tmp_path / "c")
    last = second["test"][second["test"].num_rows - 1]["future_values"][:, 0]
    reference = scaled_reference(changed, ["temp", "price", "load"], 140)[188:200, 2]
    np.testing.assert_allclose(last, reference, rtol=1e-5, atol=1e-6)
    assert not np.allclose(first["test"][first["test"].num_rows - 1]["future_values"][:, 0], last)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        (
            "header.csv",
            b"date,load,temp\n",
            r"header\.csv: the file has a header \(\['date', 'load', 'temp'\]\) but no",
        ),
        (
            "plain.csv.gz",
            b"date,load\n2021-01-01,1\n",
            r"plain\.csv\.gz: the name ends in \.gz but the file is not gzip",
        ),
        ("packed.csv", gzip.compress(b"date,load\n2021-01-01,1\n"), r"packed\.csv: the file is gzip-compressed but"),
        (
            "cut.csv.gz",
            gzip.compress(b"date,load\n" + b"2021-01-01,1\n" * 500)[:60],
            r"cut\.csv\.gz: the gzip data is",
        ),
        (
            "latin.csv",
            "date,température\n2021-01-01,1\n".encode("latin-1"),
            r"latin\.csv: the file is not valid utf-8",
        ),
    ],
)
def test_unreadable_files_raise_naming_the_file(tmp_path, name, content, match):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_forecasting_dataset(tmp_path / name, 2, 1, target="load", cache_dir=tmp_path / "c")


def test_encoding_option_reads_a_latin_1_file(tmp_path):
    frame = write_csv(tmp_path / "good.csv").rename(columns={"temp": "température"})
    frame.to_csv(tmp_path / "latin.csv", index=False, encoding="latin-1")
    splits = load_forecasting_dataset(
        tmp_path / "latin.csv", 24, 12, target="load", encoding="latin-1", cache_dir=tmp_path / "c"
    )
    assert splits.preprocessor.columns == ["température", "price", "load"]
