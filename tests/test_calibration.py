"""Split-conformal calibration: ranks, coverage, files and errors; calibrating and scoring a trained folder, its CLI,
folder contract and card."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from test_hub import CONTEXT_LENGTH, PREDICTION_LENGTH, build_trained_folder

from balm_hf import BalmTsfForForecasting, load_forecasting_dataset, training
from balm_hf.artifacts import validate_folder
from balm_hf.calibration import (
    CALIBRATION_FILE,
    DEFAULT_LEVELS,
    INTERVAL_RESULTS_FILE,
    ConformalCalibration,
    MissingCalibrationError,
    calibrate_folder,
    calibration_sha256,
    conformal_rank,
    evaluate_intervals,
    supported_levels,
)
from balm_hf.cli import main as cli_main
from balm_hf.hub import push_folder_to_hub, render_model_card
from balm_hf.training.intervals import calibrate_after_training, calibrate_forecasts


def test_conformal_rank_is_the_finite_sample_quantile():
    assert conformal_rank(9, 0.9) == 9  # ceil(10 * 0.9)
    assert conformal_rank(9, 0.1) == 1  # floor(10 * 0.1)
    assert conformal_rank(99, 0.95) == 95
    assert conformal_rank(99, 0.05) == 5
    assert conformal_rank(10, 0.99) == 10  # clipped to n
    assert conformal_rank(10, 0.01) == 1


def test_intervals_cover_new_exchangeable_residuals_at_their_level():
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 2.0, 4)[None, :, None]  # residuals widen with the horizon
    held_out = rng.standard_t(df=4, size=(2000, 4, 2)) * scale
    new = rng.standard_t(df=4, size=(20000, 4, 2)) * scale
    calibration = ConformalCalibration.from_residuals(held_out, ["a", "b"])
    low, high = calibration.offsets_for([0.05, 0.95])
    coverage = ((new >= low) & (new <= high)).mean(axis=0)
    assert np.all(np.abs(coverage - 0.9) < 0.02), coverage
    width = (high - low).mean(axis=1)  # per step
    assert np.all(np.diff(width) > 0)


def test_offsets_are_stored_levels_or_interpolated_between_them():
    residuals = np.random.default_rng(1).normal(size=(500, 3, 1))
    calibration = ConformalCalibration.from_residuals(residuals, ["x"])
    stored = calibration.offsets[calibration.levels.index(0.1)]
    np.testing.assert_array_equal(calibration.offsets_for([0.1])[0], stored)
    between = calibration.offsets_for([0.105])[0]
    lower, upper = calibration.offsets_for([0.1, 0.11])
    np.testing.assert_allclose(between, 0.5 * (lower + upper))
    with pytest.raises(ValueError, match="outside the calibrated range"):
        calibration.offsets_for([0.001])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        calibration.offsets_for([1.0])


def test_missing_targets_are_left_out_and_too_few_windows_are_refused():
    residuals = np.random.default_rng(2).normal(size=(300, 2, 1))
    residuals[:50, 0, 0] = np.nan
    calibration = ConformalCalibration.from_residuals(residuals, ["x"])
    expected = np.sort(residuals[50:, 0, 0])[conformal_rank(250, 0.9) - 1]
    assert calibration.offsets_for([0.9])[0, 0, 0] == expected
    with pytest.raises(ValueError, match="'x' has 20 residuals at step 1"):
        ConformalCalibration.from_residuals(residuals[-20:], ["x"])
    with pytest.raises(ValueError, match="infinite"):
        ConformalCalibration.from_residuals(np.full((300, 1, 1), np.inf), ["x"])


def test_a_calibration_round_trips_through_its_file(tmp_path):
    residuals = np.random.default_rng(3).normal(size=(400, 5, 2))
    calibration = ConformalCalibration.from_residuals(
        residuals, ["HUFL", "OT"], metadata={"dataset": "ETTh1", "rows": [8545, 11425]}
    )
    path = calibration.save_pretrained(tmp_path)
    assert path.name == CALIBRATION_FILE
    loaded = ConformalCalibration.from_pretrained(tmp_path)
    assert loaded.columns == ["HUFL", "OT"] and loaded.levels == list(DEFAULT_LEVELS)
    assert loaded.num_windows == 400 and loaded.metadata == {"dataset": "ETTh1", "rows": [8545, 11425]}
    np.testing.assert_allclose(loaded.offsets, calibration.offsets, rtol=1e-6)


def test_a_folder_without_calibration_names_the_command_that_adds_it(tmp_path):
    with pytest.raises(MissingCalibrationError, match=f"balm-tsf calibrate {tmp_path}"):
        ConformalCalibration.from_pretrained(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a valid prediction-interval calibration"):
        ConformalCalibration.from_pretrained(tmp_path)


# -- calibrating a trained folder -------------------------------------------------------------------------------------
# A tiny trained folder on a small hourly CSV of two channels: 800 rows split 70/10/20, so that with L=64, H=16 the
# validation split has 65 windows per channel and the test split 145; forecasting both takes seconds.

NUM_ROWS = 800
VALIDATION_WINDOWS, TEST_WINDOWS = 65, 145
SEASON = 24  # hourly data


def write_hourly_csv(path: Path) -> Path:
    steps = np.arange(NUM_ROWS)
    rng = np.random.default_rng(7)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2021-01-01", periods=NUM_ROWS, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "load": 10 + 3 * np.sin(2 * np.pi * steps / 24) + rng.normal(0, 0.5, NUM_ROWS),
            "OT": 5 + np.sin(2 * np.pi * steps / 24 + 1) + 0.002 * steps + rng.normal(0, 0.3, NUM_ROWS),
        }
    )
    frame.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory) -> Path:
    """A trained folder (no calibration yet) whose saved experiment reads the hourly CSV."""
    root = tmp_path_factory.mktemp("intervals")
    csv = write_hourly_csv(root / "hourly.csv")
    preprocessor = load_forecasting_dataset(str(csv), CONTEXT_LENGTH, PREDICTION_LENGTH).preprocessor
    # The masked, left-padded prompt makes each forecast independent of the other series in its batch.
    folder = build_trained_folder(root / "final", preprocessor, prompt_attention_mask=True, prompt_padding_side="left")
    experiment = training.load_experiment_config(folder / "experiment.yaml", [f"data.dataset={json.dumps(str(csv))}"])
    (folder / "experiment.yaml").write_text(experiment.to_yaml(), encoding="utf-8")
    return folder


@pytest.fixture
def folder(source_folder, tmp_path) -> Path:
    return Path(shutil.copytree(source_folder, tmp_path / "final"))


def split_rows(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The scaled rows of `split` (cut from the CSV with the saved scaler and borders) and the targets of its windows,
    `[windows, H, channels]`."""
    scaler = json.loads((folder / "preprocessor_config.json").read_text())
    experiment = yaml.safe_load((folder / "experiment.yaml").read_text())
    values = pd.read_csv(experiment["data"]["dataset"])[scaler["columns"]].to_numpy(dtype=np.float64)
    scaled = ((values - np.array(scaler["mean"])) / np.array(scaler["std"])).astype(np.float32)
    start, end = scaler["split_borders"][split]
    rows = scaled[start:end]
    windows = len(rows) - CONTEXT_LENGTH - PREDICTION_LENGTH + 1
    future = np.stack([rows[w + CONTEXT_LENGTH : w + CONTEXT_LENGTH + PREDICTION_LENGTH] for w in range(windows)])
    return rows, future


def forecast_by_hand(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The model's forecasts and the targets of every window of `split`, `[windows, H, channels]` (standardised)."""
    rows, future = split_rows(folder, split)
    windows, channels = len(future), rows.shape[1]
    past = np.stack([rows[w : w + CONTEXT_LENGTH] for w in range(windows)])
    items = past.transpose(2, 0, 1).reshape(channels * windows, CONTEXT_LENGTH, 1)  # channel-major, as the splits
    model = BalmTsfForForecasting.from_pretrained(folder).eval()
    with torch.no_grad():
        outputs = [
            model(past_values=torch.from_numpy(np.ascontiguousarray(items[i : i + 64]))).prediction_outputs.numpy()
            for i in range(0, len(items), 64)
        ]
    predictions = np.concatenate(outputs)[..., 0].reshape(channels, windows, PREDICTION_LENGTH).transpose(1, 2, 0)
    return predictions.astype(np.float64), future.astype(np.float64)


def seasonal_naive_by_hand(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Each target step repeats the value one season before it, from the last season of the context."""
    rows, future = split_rows(folder, split)
    positions = CONTEXT_LENGTH - SEASON + np.arange(PREDICTION_LENGTH) % SEASON
    forecasts = np.stack([rows[w + positions] for w in range(len(future))])
    return forecasts.astype(np.float64), future.astype(np.float64)


def conformal_offsets_by_hand(residuals: np.ndarray, levels: list[float]) -> np.ndarray:
    ordered = np.sort(residuals, axis=0)
    return np.stack([ordered[conformal_rank(len(residuals), level) - 1] for level in levels])


def test_calibrate_folder_saves_the_conformal_quantiles_of_validation_residuals(folder):
    calibration = calibrate_folder(folder)
    predictions, targets = forecast_by_hand(folder, "validation")
    assert predictions.shape == (VALIDATION_WINDOWS, PREDICTION_LENGTH, 2)
    saved = ConformalCalibration.from_pretrained(folder)
    # 65 windows resolve the levels 0.02 ... 0.98 of the default grid (0.01 and 0.99 need 99, 0.005 and 0.995 199)
    assert saved.levels == supported_levels(VALIDATION_WINDOWS) == calibration.levels
    assert saved.levels[0] == 0.02 and saved.levels[-1] == 0.98
    expected = conformal_offsets_by_hand(targets - predictions, saved.levels)
    np.testing.assert_allclose(saved.offsets, expected, rtol=0, atol=1e-5)
    scaler = json.loads((folder / "preprocessor_config.json").read_text())
    assert saved.columns == scaler["columns"] == ["load", "OT"]
    assert saved.split == "validation" and saved.num_windows == VALIDATION_WINDOWS
    assert saved.metadata["dataset"] == "hourly" and saved.metadata["model"] == str(folder)
    assert saved.metadata["split_rows"] == scaler["split_borders"]["validation"]
    assert saved.metadata["git_revision"] and saved.metadata["batch_size"] == 64


def test_calibrate_folder_refuses_to_replace_a_calibration_without_overwrite(folder):
    calibrate_folder(folder, levels=[0.1, 0.5, 0.9])
    before = (folder / CALIBRATION_FILE).read_bytes()
    with pytest.raises(FileExistsError, match=r"conformal_calibration.safetensors already exists; pass --overwrite"):
        calibrate_folder(folder)
    assert (folder / CALIBRATION_FILE).read_bytes() == before
    with pytest.raises(ValueError, match="`split` must be one of"):
        calibrate_folder(folder, split="train", overwrite=True)
    # Replacing the calibration removes the interval results computed with the old one.
    (folder / INTERVAL_RESULTS_FILE).write_text('{"models": []}')
    replaced = calibrate_folder(folder, overwrite=True)
    assert replaced.levels == supported_levels(VALIDATION_WINDOWS)
    assert not (folder / INTERVAL_RESULTS_FILE).exists()
    with pytest.raises(ValueError, match="5 windows with an observed target .* too few"):
        calibrate_forecasts(constant_forecasts(5), ["x"])
    assert calibrate_forecasts(constant_forecasts(19), ["x"]).levels == supported_levels(19)


def constant_forecasts(windows: int):
    """Forecasts of `windows` windows of one channel, 4 steps, all off by 1."""
    from balm_hf.training import ForecastOutput

    return ForecastOutput(
        predictions=np.zeros((windows, 4, 1)),
        references=np.ones((windows, 4, 1)),
        window_index=np.arange(windows),
        channel_index=np.zeros(windows, dtype=np.int64),
        num_windows=windows,
        num_channels=1,
    )


def test_interval_results_equal_a_hand_computation(folder):
    calibrate_folder(folder)
    results = evaluate_intervals(folder)
    calibration = ConformalCalibration.from_pretrained(folder)
    scaler = json.loads((folder / "preprocessor_config.json").read_text())
    mean, std = np.array(scaler["mean"]), np.array(scaler["std"])
    predictions, targets = forecast_by_hand(folder, "test")
    naive_validation, naive_validation_targets = seasonal_naive_by_hand(folder, "validation")
    naive_test, naive_targets = seasonal_naive_by_hand(folder, "test")
    wql_levels = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    model_offsets = {level: calibration.offsets_for([level])[0] for level in [0.05, 0.95, *wql_levels]}
    naive_residuals = naive_validation_targets - naive_validation
    naive_offsets = {level: conformal_offsets_by_hand(naive_residuals, [level])[0] for level in model_offsets}

    for entry, forecast, target, offsets in (
        (results["models"][0], predictions, targets, model_offsets),
        (results["models"][1], naive_test, naive_targets, naive_offsets),
    ):
        residuals = target - forecast
        for level, (low, high) in {"0.8": (0.1, 0.9), "0.9": (0.05, 0.95)}.items():
            inside = (residuals >= offsets[low]) & (residuals <= offsets[high])
            width = offsets[high] - offsets[low]
            assert entry["coverage"][level] == pytest.approx(inside.mean(), abs=1e-12)
            assert entry["width"][level] == pytest.approx(width.mean(), rel=1e-5)
            assert entry["width_data_units"][level] == pytest.approx((width * std).mean(), rel=1e-5)
            assert entry["coverage_by_channel"][level]["OT"] == pytest.approx(inside[..., 1].mean(), abs=1e-12)
        # WQL in the data's units: 2 * pinball summed over every entry / sum |y|, averaged over the levels
        y = target * std + mean
        losses = []
        for level in wql_levels:
            quantile = (forecast + offsets[level]) * std + mean
            losses.append(
                2 * np.sum(np.maximum(level * (y - quantile), (level - 1) * (y - quantile))) / np.abs(y).sum()
            )
        assert entry["wql"] == pytest.approx(np.mean(losses), rel=1e-5)
    assert [entry["model"] for entry in results["models"]] == ["BALM-TSF", f"seasonal naive (season {SEASON})"]
    assert results["num_windows"] == TEST_WINDOWS and results["season"] == SEASON
    assert results["calibration_sha256"] == calibration_sha256(folder)
    assert json.loads((folder / INTERVAL_RESULTS_FILE).read_text()) == results


def test_cli_calibrates_evaluates_and_refuses_to_overwrite(folder, capsys):
    assert cli_main(["calibrate", str(folder), "--evaluate-test"]) == 0
    output = capsys.readouterr().out
    assert f"saved {folder / CALIBRATION_FILE}: {VALIDATION_WINDOWS} validation windows x 2 channels" in output
    assert "| model | coverage 80% | width 80% | coverage 90% | width 90% | WQL |" in output
    assert "| BALM-TSF |" in output and "| seasonal naive (season 24) |" in output
    trained = validate_folder(folder)
    assert trained.calibration is not None and trained.calibration.num_windows == VALIDATION_WINDOWS
    assert trained.interval_results["models"][0]["model"] == "BALM-TSF"
    assert not (folder / "README.md").exists()  # a card is re-rendered, never added

    assert cli_main(["calibrate", str(folder)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert cli_main(["calibrate", str(folder), "--evaluate-test"]) == 1
    assert "interval_results.json already exists; pass --overwrite" in capsys.readouterr().err
    assert cli_main(["calibrate", str(folder), "--overwrite"]) == 0
    assert "saved" in capsys.readouterr().out and not (folder / INTERVAL_RESULTS_FILE).exists()

    # The upload carries the calibration, so that quantiles work from the Hub copy too.
    # In full: the tiny folder's random backbone is on no Hub, so a lean copy could not rebuild it.
    pushed = push_folder_to_hub(folder, "me/intervals", dry_run=True, output_dir=folder.parent / "upload", lean=False)
    assert CALIBRATION_FILE in pushed.files
    assert ConformalCalibration.from_pretrained(pushed.folder).levels == supported_levels(VALIDATION_WINDOWS)


def test_validate_folder_rejects_a_calibration_of_other_columns_or_horizon(folder):
    residuals = np.random.default_rng(4).normal(size=(50, PREDICTION_LENGTH, 2))
    ConformalCalibration.from_residuals(residuals, ["OT", "load"], levels=[0.1, 0.9]).save_pretrained(folder)
    with pytest.raises(ValueError, match=r"calibrates the columns \['OT', 'load'\] but .* has \['load', 'OT'\]"):
        validate_folder(folder)
    short = ConformalCalibration.from_residuals(residuals[:, :8], ["load", "OT"], levels=[0.1, 0.9])
    short.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"calibrates 8 horizon steps but .* has `prediction_length`=16"):
        validate_folder(folder)
    ConformalCalibration.from_residuals(residuals, ["load", "OT"], levels=[0.1, 0.9]).save_pretrained(folder)
    (folder / INTERVAL_RESULTS_FILE).write_text(json.dumps({"models": [], "calibration_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="computed with another calibration"):
        validate_folder(folder)
    (folder / CALIBRATION_FILE).unlink()
    with pytest.raises(ValueError, match="conformal_calibration.safetensors is missing"):
        validate_folder(folder)


def test_model_card_states_the_intervals_or_the_command_that_adds_them(folder):
    card = str(render_model_card(folder))
    assert "No prediction-interval calibration was saved with this checkpoint" in card
    assert f"`balm-tsf calibrate {folder.resolve()}`" in card
    assert "Point forecasts only" in card

    calibrate_folder(folder)
    results = evaluate_intervals(folder)  # re-renders the card rendered above
    card = (folder / "README.md").read_text()
    assert "Point forecasts only" not in card and "Prediction intervals are split-conformal" in card
    assert f"the {VALIDATION_WINDOWS} windows of the validation split" in card
    model, naive = results["models"]
    row = (
        f"| BALM-TSF | {model['coverage']['0.8']:.3f} | {model['width']['0.8']:.3f} | {model['coverage']['0.9']:.3f} "
        f"| {model['width']['0.9']:.3f} | {model['wql']:.4f} |"
    )
    assert row in card and f"| seasonal naive (season 24) | {naive['coverage']['0.8']:.3f} |" in card
    metadata = yaml.safe_load(re.match(r"^---\n(.*?)\n---\n", card, re.DOTALL).group(1))
    entries = [
        entry for entry in metadata["model-index"][0]["results"] if entry["dataset"]["config"].endswith("intervals")
    ]
    assert len(entries) == 1
    values = {metric["type"]: metric["value"] for metric in entries[0]["metrics"]}
    assert values == {
        "coverage_80": model["coverage"]["0.8"],
        "interval_width_80": model["width"]["0.8"],
        "coverage_90": model["coverage"]["0.9"],
        "interval_width_90": model["width"]["0.9"],
        "wql": model["wql"],
    }
    assert {"coverage", "wql"} <= set(metadata["metrics"])


def test_training_saves_a_model_without_intervals_when_validation_is_too_short(caplog):
    forecasts = constant_forecasts(5)  # the 80% interval needs 9 windows

    class Trainer:
        args = type("Args", (), {"per_device_eval_batch_size": 8})()

        def predict_forecasts(self, dataset):
            return forecasts

    class Splits(dict):
        preprocessor = type("Preprocessor", (), {"columns": ["x"], "split_borders": {}, "dataset_name": "tiny"})()

    with caplog.at_level("WARNING", logger="balm_hf.training.intervals"):
        assert calibrate_after_training(Trainer(), Splits(validation=None), forecasts, "tiny") == (None, None)
    assert "no prediction-interval calibration" in caplog.text and "too few" in caplog.text


def test_a_folder_trained_on_many_series_is_calibrated_and_scored_in_each_series_units(tmp_path):
    # Two series of the hourly CSV in the long layout; the second is the first scaled by 10 and shifted, so that
    # its intervals are 10 times wider in data units for the same standardised offsets.
    wide = pd.read_csv(write_hourly_csv(tmp_path / "hourly.csv"))
    second = wide.assign(load=wide["load"] * 10 + 100, OT=wide["OT"] * 10 - 50)
    long = pd.concat([wide.assign(item_id="a"), second.assign(item_id="b")])[["item_id", "date", "load", "OT"]]
    csv = tmp_path / "long.csv"
    long.to_csv(csv, index=False)
    splits = load_forecasting_dataset(str(csv), CONTEXT_LENGTH, PREDICTION_LENGTH, id_column="item_id")
    preprocessor = splits.preprocessor
    assert preprocessor.scaling == "per_series"
    folder = build_trained_folder(
        tmp_path / "final", preprocessor, prompt_attention_mask=True, prompt_padding_side="left"
    )
    experiment = training.load_experiment_config(
        folder / "experiment.yaml", [f"data.dataset={json.dumps(str(csv))}", "data.id_column=item_id"]
    )
    (folder / "experiment.yaml").write_text(experiment.to_yaml(), encoding="utf-8")

    calibration = calibrate_folder(folder)
    assert calibration.columns == ["load", "OT"] and calibration.num_windows == 2 * VALIDATION_WINDOWS
    results = evaluate_intervals(folder)
    assert results["num_windows"] == 2 * TEST_WINDOWS
    low, high = calibration.offsets_for([0.05, 0.95])
    std_a, std_b = (preprocessor.statistics_for(item, ["load", "OT"])[1] for item in ("a", "b"))
    np.testing.assert_allclose(std_b, 10 * std_a, rtol=1e-9)
    # both series have 145 test windows: the mean width in data units averages their widths
    expected = 0.5 * (((high - low) * std_a).mean() + ((high - low) * std_b).mean())
    assert results["models"][0]["width_data_units"]["0.9"] == pytest.approx(expected, rel=1e-5)
    assert results["models"][0]["width"]["0.9"] == pytest.approx((high - low).mean(), rel=1e-5)
