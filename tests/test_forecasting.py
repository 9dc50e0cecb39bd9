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


def manual_forecast(
    model: BalmTsfForForecasting, preprocessor, frame: pd.DataFrame, dtype: torch.dtype = torch.float32
) -> np.ndarray:
    """Scale with the train statistics, run the model (in `dtype`) on the last context, invert the scaling: by hand."""
    mean, std = np.array(preprocessor.mean), np.array(preprocessor.std)
    values = frame[preprocessor.columns].to_numpy(dtype=np.float64)[-CONTEXT_LENGTH:]
    scaled = torch.tensor((values - mean) / std, dtype=dtype)  # [context x channels]
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


def test_irregular_timestamps_are_an_error_unless_freq_is_given(folder, history):
    gappy = history.drop(index=[10, 11, 50]).reset_index(drop=True)
    assert pd.infer_freq(pd.to_datetime(gappy["date"])) is None
    with pytest.raises(
        ValueError,
        match=r"input: the timestamps are irregular.*row 10 \(2018-06-19 08:00:00\) comes 0 days 03:00:00 after row 9,"
        r" most rows are 0 days 01:00:00 apart; pass `freq=`",
    ):
        forecast(folder, gappy)
    result = forecast(folder, gappy, freq="h")
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

    def fake_run_experiment(config, output_dir=None, resume_from_checkpoint=None, overwrite=None, verbose=False):
        seen.update(config=config, output_dir=output_dir, resume=resume_from_checkpoint, overwrite=overwrite)
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


# -- timestamps, series ids, dtypes and non-finite forecasts --------------------------------------------------------

FIXTURE_DIR = Path(__file__).parent / "fixtures"


def day_first_history(path: Path, num_rows: int = 200) -> pd.DataFrame:
    """An hourly `dd/mm/YYYY HH:MM` CSV from 01/03/2021 whose days are all 12 or less; returns it as text."""
    rng = np.random.default_rng(1)
    dates = pd.date_range("2021-03-01", periods=num_rows, freq="h")
    frame = pd.DataFrame(
        {
            "date": dates.strftime("%d/%m/%Y %H:%M"),
            "load": rng.normal(10.0, 2.0, num_rows).round(3),
            "temp": rng.normal(0.0, 5.0, num_rows).round(3),
        }
    )
    frame.to_csv(path, index=False)
    return pd.read_csv(path)


@pytest.fixture
def day_first(tmp_path):
    """A day-first CSV, the preprocessor fitted on it, and a folder with a tiny model and that preprocessor."""
    history = day_first_history(tmp_path / "day_first.csv")
    splits = balm_hf.load_forecasting_dataset(
        tmp_path / "day_first.csv", CONTEXT_LENGTH, PREDICTION_LENGTH, target="load", cache_dir=tmp_path / "cache"
    )
    folder = tmp_path / "run"
    tiny_model().save_pretrained(folder)
    splits.preprocessor.save_pretrained(folder)
    return SimpleNamespace(history=history, preprocessor=splits.preprocessor, folder=folder, path=tmp_path)


def test_day_first_dates_are_read_day_first_at_forecast_time(day_first):
    assert day_first.preprocessor.date_format == "%d/%m/%Y %H:%M"
    assert BalmTsfForecaster.from_pretrained(day_first.folder).preprocessor.date_format == "%d/%m/%Y %H:%M"
    expected = pd.date_range("2021-03-09 08:00", periods=PREDICTION_LENGTH, freq="h")  # after 09/03/2021 07:00
    result = forecast(day_first.folder, day_first.history)
    pd.testing.assert_index_equal(pd.DatetimeIndex(result["date"]), expected, check_names=False)

    output = day_first.path / "forecast.csv"
    status = cli_main(
        ["forecast", "--model", str(day_first.folder), "--input", str(day_first.path / "day_first.csv")]
        + ["--output", str(output)]
    )
    assert status == 0
    pd.testing.assert_index_equal(
        pd.DatetimeIndex(pd.read_csv(output, parse_dates=["date"])["date"]), expected, check_names=False
    )


def test_preprocessor_without_a_recorded_format_still_reads_day_first(day_first):
    legacy = json.loads((day_first.folder / "preprocessor_config.json").read_text())
    del legacy["date_format"], legacy["utc"]
    (day_first.folder / "preprocessor_config.json").write_text(json.dumps(legacy))
    forecaster = BalmTsfForecaster.from_pretrained(day_first.folder)
    assert forecaster.preprocessor.date_format is None
    result = forecaster.predict(day_first.history)
    assert result["date"].iloc[0] == pd.Timestamp("2021-03-09 08:00")


def test_recorded_date_format_is_used_and_a_mismatch_names_it(day_first):
    iso = day_first.history.assign(date=pd.to_datetime(day_first.history["date"], dayfirst=True).astype(str))
    with pytest.raises(ValueError, match=r"cannot parse 'date' with date_format='%d/%m/%Y %H:%M'.*recorded in the"):
        forecast(day_first.folder, iso)
    reference = forecast(day_first.folder, day_first.history)
    pd.testing.assert_frame_equal(forecast(day_first.folder, iso, date_format="%Y-%m-%d %H:%M:%S"), reference)


def test_integer_date_column_is_not_read_as_nanoseconds(folder, history):
    with pytest.raises(ValueError, match=r"input: the 'date' column holds plain numbers \(first: '0'\)"):
        forecast(folder, history.assign(date=np.arange(len(history))))


def test_checkpoint_saved_by_0_1_0_keeps_its_forecast(etth1):
    expected = pd.read_csv(FIXTURE_DIR / "checkpoint_v0_1_0_forecast.csv", parse_dates=["date"])
    result = forecast(FIXTURE_DIR / "checkpoint_v0_1_0", etth1.iloc[1000:1040])
    pd.testing.assert_frame_equal(result, expected, check_exact=False, rtol=1e-6, atol=1e-6)


def test_stacked_series_with_an_empty_id_are_an_error_naming_the_rows(folder, history):
    stacked = pd.concat([history.assign(site="a"), history.assign(site="b")], ignore_index=True)
    stacked.loc[[3, 200], "site"] = np.nan
    with pytest.raises(ValueError, match=r"`id_column` 'site' is empty \(NaN\) in 2 rows of the input \(rows 3, 200,"):
        forecast(folder, stacked, id_column="site")


def test_missing_local_folder_is_reported_as_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"No trained folder at .*absent.*no such folder"):
        BalmTsfForecaster.from_pretrained(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match=r"No trained folder at 'runs/absent_run': there is no such local"):
        forecast("runs/absent_run", pd.DataFrame())
    with pytest.raises(FileNotFoundError, match=r"No preprocessor at .*absent.*no such folder or file"):
        forecast(tiny_model(), pd.DataFrame(), preprocessor=tmp_path / "absent")


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_models_in_other_dtypes_forecast_in_the_data_units(folder, preprocessor, history, dtype):
    model = BalmTsfForForecasting.from_pretrained(folder).to(dtype)
    result = forecast(model, history, preprocessor=folder)
    values = result[preprocessor.columns].to_numpy()
    assert values.dtype == np.float64 and np.isfinite(values).all()
    pd.testing.assert_series_equal(result["date"], forecast(folder, history)["date"])
    np.testing.assert_allclose(values, manual_forecast(model, preprocessor, history, dtype), rtol=1e-6, atol=1e-6)


def test_non_finite_forecast_is_an_error_naming_the_column(folder, history, monkeypatch):
    forecaster = BalmTsfForecaster.from_pretrained(folder)
    original = forecaster.model.forward

    def overflowing(*args, **kwargs):
        outputs = original(*args, **kwargs)
        outputs.prediction_outputs[5, 3:] = float("inf")  # series 0, channel 5 of the folded batch
        return outputs

    monkeypatch.setattr(forecaster.model, "forward", overflowing)
    column = forecaster.columns[5]
    with pytest.raises(
        ValueError, match=rf"input: the forecast of column '{column}' is infinite \(first at step 4 of"
    ):
        forecaster.predict(history)


def test_nan_weights_are_an_error_and_the_cli_writes_nothing(folder, history, tmp_path):
    model = BalmTsfForForecasting.from_pretrained(folder)
    with torch.no_grad():
        next(parameter for parameter in model.parameters() if parameter.ndim == 2).fill_(float("nan"))
    with pytest.raises(ValueError, match=r"input: the forecast of column 'HUFL' is NaN .*weights hold NaN"):
        forecast(model, history, preprocessor=folder)
    broken = tmp_path / "broken"
    model.save_pretrained(broken)
    BalmTsfForecaster.from_pretrained(folder).preprocessor.save_pretrained(broken)
    history.to_csv(tmp_path / "history.csv", index=False)
    output = tmp_path / "forecast.csv"
    status = cli_main(
        ["forecast", "--model", str(broken), "--input", str(tmp_path / "history.csv"), "--output", str(output)]
    )
    assert status == 1
    assert not output.exists()
