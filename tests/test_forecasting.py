"""Forecasting new data from a trained folder: units, time axis, batches, input errors, plots and the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA_DIR, tiny_model
from test_hub import CONTEXT_LENGTH, PREDICTION_LENGTH, build_trained_folder, eval_rows

import balm_hf
from balm_hf import (
    BalmTsfForecaster,
    BalmTsfForForecasting,
    forecast,
    plot_forecast,
    training,
)
from balm_hf.cli import main as cli_main


@pytest.fixture(scope="module")
def folder(tmp_path_factory, preprocessor) -> Path:
    return build_trained_folder(tmp_path_factory.mktemp("trained") / "run", preprocessor)


@pytest.fixture(scope="module")
def etth1() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv.gz")


@pytest.fixture
def history(etth1) -> pd.DataFrame:
    """The tail of ETTh1: three contexts' worth of hourly rows."""
    return etth1.tail(3 * CONTEXT_LENGTH).reset_index(drop=True)


def manual_forecast(model: BalmTsfForForecasting, preprocessor, frame: pd.DataFrame) -> np.ndarray:
    """Scale with the train statistics, run the model on the last context, invert the scaling: by hand."""
    mean, std = np.array(preprocessor.mean), np.array(preprocessor.std)
    values = frame[preprocessor.columns].to_numpy(dtype=np.float64)[-CONTEXT_LENGTH:]
    scaled = torch.tensor((values - mean) / std, dtype=torch.float32)  # [context x channels]
    if model.config.num_input_channels == 1:
        past_values = scaled.T.reshape(len(mean), CONTEXT_LENGTH, 1).contiguous()  # one series per channel
    else:
        past_values = scaled.unsqueeze(0).contiguous()
    model.eval()
    with torch.no_grad():
        prediction = model(past_values=past_values).prediction_outputs.double().numpy()
    if model.config.num_input_channels == 1:
        prediction = prediction[..., 0].T  # [horizon x channels]
    else:
        prediction = prediction[0]
    return prediction * std + mean


@pytest.mark.parametrize("num_input_channels", [1, 7])
def test_forecast_inverts_the_scaler_and_continues_the_hourly_time_axis(
    tmp_path, preprocessor, history, num_input_channels
):
    folder = build_trained_folder(tmp_path / "run", preprocessor, num_input_channels=num_input_channels)
    result = forecast(folder, history)

    assert list(result.columns) == ["date", *preprocessor.columns]
    assert result.shape == (PREDICTION_LENGTH, 1 + len(preprocessor.columns))
    last = pd.Timestamp(history["date"].iloc[-1])
    expected_dates = pd.date_range(last + pd.Timedelta(hours=1), periods=PREDICTION_LENGTH, freq="h")
    pd.testing.assert_index_equal(pd.DatetimeIndex(result["date"]), expected_dates, check_names=False)

    model = BalmTsfForForecasting.from_pretrained(folder)
    expected = manual_forecast(model, preprocessor, history)
    np.testing.assert_allclose(result[preprocessor.columns].to_numpy(), expected, rtol=1e-6, atol=1e-6)
    # Original units, not the standardised scale: the oil temperature forecast sits near the data's level.
    assert abs(result["OT"].mean() - history["OT"].tail(CONTEXT_LENGTH).mean()) < 3 * history["OT"].std()


def test_saved_folder_gives_the_forecasts_of_the_model_that_was_saved(tmp_path, preprocessor, history):
    model = tiny_model()
    in_memory = forecast(model, history, preprocessor=preprocessor)
    model.save_pretrained(tmp_path / "run")
    preprocessor.save_pretrained(tmp_path / "run")
    reloaded = BalmTsfForecaster.from_pretrained(tmp_path / "run").predict(history)
    pd.testing.assert_frame_equal(in_memory, reloaded, check_exact=True)


def test_column_order_and_extra_columns_do_not_change_the_forecast(folder, history):
    shuffled = history[["OT", "date", *reversed(history.columns[1:-1])]].assign(extra=1.0)
    pd.testing.assert_frame_equal(forecast(folder, shuffled), forecast(folder, history), check_exact=True)


def test_datetime_index_and_array_inputs(folder, history):
    reference = forecast(folder, history)
    forecaster = BalmTsfForecaster.from_pretrained(folder)

    indexed = history.set_index(pd.to_datetime(history["date"])).drop(columns="date")
    pd.testing.assert_frame_equal(forecaster.predict(indexed), reference, check_exact=True)

    array = history[forecaster.columns].to_numpy()
    by_step = forecaster.predict(array)
    assert by_step["step"].tolist() == list(range(1, PREDICTION_LENGTH + 1))
    np.testing.assert_array_equal(by_step[forecaster.columns].to_numpy(), reference[forecaster.columns].to_numpy())
    dated = forecaster.predict(array, last_timestamp=history["date"].iloc[-1])
    pd.testing.assert_frame_equal(dated, reference, check_exact=True)


def test_batches_of_series_agree_across_input_formats(tmp_path, preprocessor, etth1):
    # Masked, left-padded prompts make each series' forecast independent of the series batched with it.
    folder = build_trained_folder(
        tmp_path / "run", preprocessor, prompt_attention_mask=True, prompt_padding_side="left"
    )
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    first, second = etth1.iloc[:100].reset_index(drop=True), etth1.iloc[1000:1200].reset_index(drop=True)

    listed = forecaster.predict([first, second])
    assert isinstance(listed, list) and len(listed) == 2
    for frame, source in zip(listed, (first, second), strict=True):
        assert frame["date"].iloc[0] == pd.Timestamp(source["date"].iloc[-1]) + pd.Timedelta(hours=1)

    stacked = pd.concat([first.assign(item="a"), second.assign(item="b")], ignore_index=True)
    long = forecaster.predict(stacked, id_column="item")
    assert long["item"].tolist() == ["a"] * PREDICTION_LENGTH + ["b"] * PREDICTION_LENGTH
    pd.testing.assert_frame_equal(long.drop(columns="item"), pd.concat(listed, ignore_index=True), check_exact=True)

    cube = np.stack([frame[forecaster.columns].to_numpy()[-CONTEXT_LENGTH:] for frame in (first, second)])
    arrays = forecaster.predict(cube)
    for from_array, from_frame in zip(arrays, listed, strict=True):
        np.testing.assert_array_equal(from_array[forecaster.columns].to_numpy(), from_frame[forecaster.columns])

    for alone, batched in zip((forecaster.predict(first), forecaster.predict(second)), listed, strict=True):
        np.testing.assert_allclose(alone[forecaster.columns], batched[forecaster.columns], rtol=1e-4, atol=1e-4)


def test_irregular_timestamps_fall_back_to_the_training_frequency(folder, history):
    gappy = history.drop(index=[10, 11, 50]).reset_index(drop=True)
    result = forecast(folder, gappy)
    assert pd.infer_freq(pd.to_datetime(gappy["date"])) is None
    assert (pd.DatetimeIndex(result["date"]).to_series().diff().dropna() == pd.Timedelta(hours=1)).all()
    last = pd.Timestamp(gappy["date"].iloc[-1])
    assert result["date"].iloc[0] == last + pd.Timedelta(hours=1)
    two_hourly = forecast(folder, gappy, freq="2h")["date"]
    assert two_hourly.iloc[1] == last + pd.Timedelta(hours=4)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda frame: frame.tail(CONTEXT_LENGTH - 1), r"has 63 rows but the model needs at least context_length=64"),
        (lambda frame: frame.drop(columns=["OT", "LULL"]), r"lacks the channels \['LULL', 'OT'\]"),
        (
            lambda frame: frame.assign(HULL=frame["HULL"].where(frame.index != 150)),
            r"NaN value in column 'HULL' at row 150",
        ),
        (lambda frame: frame.iloc[[*range(100), 101, 100, *range(102, len(frame))]], r"goes back in time at row 101"),
        (lambda frame: frame.drop(columns="date"), r"has no 'date' column"),
        (lambda frame: frame.assign(OT="warm"), r"column 'OT' holds non-numeric values"),
    ],
)
def test_bad_inputs_raise_errors_that_name_the_problem(folder, history, mutate, message):
    with pytest.raises(ValueError, match=message):
        forecast(folder, mutate(history))


def test_model_object_needs_its_preprocessor(folder, history):
    model = BalmTsfForForecasting.from_pretrained(folder)
    with pytest.raises(ValueError, match="pass `preprocessor=`"):
        forecast(model, history)
    pd.testing.assert_frame_equal(
        forecast(model, history, preprocessor=folder), forecast(folder, history), check_exact=True
    )


def test_folder_without_preprocessor_is_rejected(folder, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for path in folder.iterdir():
        if path.name != "preprocessor_config.json":
            (bare / path.name).write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json is missing"):
        BalmTsfForecaster.from_pretrained(bare)


def test_plot_forecast_writes_a_png(folder, history, tmp_path):
    result = forecast(folder, history)
    path = plot_forecast(history, result, tmp_path / "plots" / "forecast.png", columns=["OT", "HUFL"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_forecast_without_matplotlib_names_the_extra(folder, history, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"balm-tsf\[plot\]"):
        plot_forecast(history, forecast(folder, history), tmp_path / "forecast.png")


def test_cli_forecast_writes_csv_and_png(folder, history, tmp_path):
    history.to_csv(tmp_path / "history.csv", index=False)
    output, png = tmp_path / "out" / "forecast.csv", tmp_path / "forecast.png"
    status = cli_main(
        ["forecast", "--model", str(folder), "--input", str(tmp_path / "history.csv"), "--output", str(output)]
        + ["--plot", str(png)]
    )
    assert status == 0
    written = pd.read_csv(output, parse_dates=["date"])
    expected = forecast(folder, pd.read_csv(tmp_path / "history.csv"))
    pd.testing.assert_frame_equal(written, expected, check_dtype=False, check_exact=False, rtol=1e-12)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_forecast_reports_a_missing_input(folder, tmp_path, capsys):
    status = cli_main(["forecast", "--model", str(folder), "--input", str(tmp_path / "absent.csv")])
    assert status == 1
    assert "absent.csv does not exist" in capsys.readouterr().err


def test_cli_train_and_evaluate_call_the_training_library(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run_experiment(config, output_dir=None, resume_from_checkpoint=None):
        seen.update(config=config, output_dir=output_dir, resume=resume_from_checkpoint)
        return SimpleNamespace(eval_rows=eval_rows(), final_dir=Path(output_dir) / "final")

    def fake_evaluate_pretrained(model_name_or_path, **kwargs):
        seen.update(model=model_name_or_path, **kwargs)
        return eval_rows(), None

    monkeypatch.setattr(training, "run_experiment", fake_run_experiment)
    monkeypatch.setattr(training.evaluation, "evaluate_pretrained", fake_evaluate_pretrained)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("data:\n  dataset: ETTh1\n  context_length: 64\n  prediction_length: 16\n")

    status = cli_main(
        ["train", "--config", str(experiment), "--set", "training.learning_rate=0.005"]
        + ["--output-dir", str(tmp_path / "run"), "--resume"]
    )
    assert status == 0
    assert seen["config"].training.learning_rate == 0.005 and seen["config"].data.context_length == 64
    assert seen["resume"] is True and seen["output_dir"] == tmp_path / "run"
    assert f"saved {tmp_path / 'run' / 'final'}" in capsys.readouterr().out

    assert cli_main(["train", "--config", str(experiment), "--set", "training.lr=1"]) == 2
    assert "training.lr" in capsys.readouterr().err

    results = tmp_path / "results" / "eval_results.json"
    status = cli_main(["evaluate", "someone/balm-tsf-etth1", "--drop-last-test-batch", "--results", str(results)])
    assert status == 0
    assert seen["model"] == "someone/balm-tsf-etth1" and seen["drop_last_test_batch"] is True
    assert json.loads(results.read_text())["rows"] == eval_rows()
    assert results.with_suffix(".csv").is_file() and "ETTh1" in results.with_suffix(".md").read_text()


def test_package_exports_the_forecasting_api():
    assert balm_hf.forecast is forecast and balm_hf.BalmTsfForecaster is BalmTsfForecaster
    assert {"forecast", "BalmTsfForecaster", "plot_forecast", "push_folder_to_hub", "render_model_card"} <= set(
        balm_hf.__all__
    )
