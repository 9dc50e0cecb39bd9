"""Tests of the forecasting metrics: the evaluate module, the helper and the Trainer `compute_metrics`."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from transformers import EvalPrediction

from balm_hf.metrics import (
    FORECASTING_METRIC_PATH,
    compute_forecasting_metrics,
    load_forecasting_metric,
    make_compute_metrics,
    weighted_quantile_loss,
)


# Two windows, three steps, two channels; one zero reference for MAPE and one 0/0 entry for sMAPE.
PREDICTIONS = np.array(
    [
        [[1.0, 0.0], [2.0, -1.0], [4.0, 3.0]],
        [[0.5, 2.0], [-2.0, 1.0], [3.0, 0.0]],
    ]
)
REFERENCES = np.array(
    [
        [[2.0, 0.0], [2.0, 1.0], [1.0, 4.0]],
        [[1.0, 0.0], [-1.0, 1.5], [2.0, 2.0]],
    ]
)
PAST = np.array(
    [
        [[0.0, 1.0], [1.0, 1.0], [3.0, 2.0], [2.0, 5.0]],
        [[1.0, 0.0], [1.0, 4.0], [2.0, 2.0], [5.0, 2.0]],
    ]
)


def numpy_reference(prediction, reference, past=None, seasonality=1, observed=None):
    """The definitions written out entry by entry in plain Python."""
    p, y = prediction.ravel(), reference.ravel()
    keep = np.ones_like(y, dtype=bool) if observed is None else observed.ravel().astype(bool)
    entries = [(a, b) for a, b, k in zip(p, y, keep, strict=True) if k]
    e = [abs(a - b) for a, b in entries]
    result = {
        "mse": sum(x**2 for x in e) / len(e),
        "mae": sum(e) / len(e),
        "mape": 100 * np.mean([abs(a - b) / abs(b) for a, b in entries if b != 0]),
        "smape": 200 * np.mean([abs(a - b) / (abs(a) + abs(b)) if abs(a) + abs(b) > 0 else 0.0 for a, b in entries]),
    }
    if past is not None:
        scaled = []
        for w in range(prediction.shape[0]):
            for c in range(prediction.shape[2]):
                x = past[w, :, c]
                scale = np.mean([abs(x[t] - x[t - seasonality]) for t in range(seasonality, len(x))])
                for h in range(prediction.shape[1]):
                    if observed is None or observed[w, h, c]:
                        scaled.append(abs(prediction[w, h, c] - reference[w, h, c]) / scale)
        result["mase_context"] = float(np.mean(scaled))
    return result


def test_metrics_equal_hand_computed_numpy_values():
    result = compute_forecasting_metrics(PREDICTIONS, REFERENCES, past_values=PAST)
    expected = numpy_reference(PREDICTIONS, REFERENCES, past=PAST)
    assert set(result) == {"mse", "mae", "mape", "smape", "mase_context"}
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-12), name
    # Worked out by hand: the absolute errors are 1, 0, 0, 2, 3, 1, 0.5, 2, 1, 0.5, 1, 2.
    assert result["mse"] == pytest.approx((1 + 0 + 0 + 4 + 9 + 1 + 0.25 + 4 + 1 + 0.25 + 1 + 4) / 12)
    assert result["mae"] == pytest.approx(14 / 12)


def test_mase_context_uses_seasonal_difference_of_each_window_and_channel():
    past = np.arange(10.0)[None, :, None] ** 2  # differences at lag 2: (t)^2 - (t-2)^2 = 4t - 4, t = 2..9 -> mean 18
    prediction = np.full((1, 2, 1), 4.0)
    reference = np.ones((1, 2, 1))
    result = compute_forecasting_metrics(prediction, reference, past_values=past, seasonality=2)
    assert "mase" not in result  # the standard MASE needs the whole history, not the window's context
    assert result["mase_context"] == pytest.approx(3.0 / 18.0)
    expected = numpy_reference(prediction, reference, past, seasonality=2)["mase_context"]
    assert result["mase_context"] == pytest.approx(expected)


def test_mase_context_leaves_out_series_with_a_constant_context():
    past = np.stack([np.zeros(5), np.arange(5.0)])[:, :, None]  # window 0 has scale 0, window 1 has scale 1
    prediction = np.full((2, 3, 1), 2.0)
    reference = np.zeros((2, 3, 1))
    assert compute_forecasting_metrics(prediction, reference, past_values=past)["mase_context"] == pytest.approx(2.0)
    assert math.isnan(compute_forecasting_metrics(prediction[:1], reference[:1], past_values=past[:1])["mase_context"])


def test_mase_scales_by_the_whole_in_sample_history_of_each_series():
    # Two windows of one channel whose histories have different lengths (Hyndman & Koehler's in-sample scale).
    first = np.array([1.0, 3.0, 2.0, 6.0, 4.0])  # lag-2 differences |2-1|, |6-3|, |4-2| -> scale 2
    second = np.array([0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 5.0, 5.0])  # lag 2: 0, 0, 0, 0, 5, 4 -> scale 1.5
    prediction = np.array([[[3.0], [1.0]], [[2.0], [2.0]]])
    reference = np.array([[[1.0], [1.0]], [[5.0], [2.0]]])  # |e|: 2, 0 and 3, 0
    result = compute_forecasting_metrics(prediction, reference, insample_values=[first, second], seasonality=2)
    assert result["mase"] == pytest.approx((2 / 2 + 0 / 2 + 3 / 1.5 + 0 / 1.5) / 4)
    assert "mase_context" not in result
    # The same histories padded in front with NaN to one array give the same scale.
    padded = np.full((2, 8, 1), np.nan)
    padded[0, 3:, 0], padded[1, :, 0] = first, second
    assert compute_forecasting_metrics(prediction, reference, insample_values=padded, seasonality=2)[
        "mase"
    ] == pytest.approx(result["mase"])
    # The window's own context (its last 4 values) gives other scales: lag 2 of [3, 2, 6, 4] -> 2.5, of
    # [0, 1, 5, 5] -> 4.5.
    context = np.stack([first[-4:], second[-4:]])[:, :, None]
    both = compute_forecasting_metrics(
        prediction, reference, past_values=context, insample_values=[first, second], seasonality=2
    )
    assert both["mase"] == pytest.approx(result["mase"])
    assert both["mase_context"] == pytest.approx((2 / 2.5 + 0 + 3 / 4.5 + 0) / 4)


def test_mase_in_sample_history_per_channel_and_errors():
    history = np.array([[0.0, 10.0], [2.0, 10.0], [4.0, 13.0]])  # naive scale: channel 0 -> 2, channel 1 -> 1.5
    prediction = np.array([[[5.0, 10.0]]])
    reference = np.array([[[4.0, 13.0]]])
    assert compute_forecasting_metrics(prediction, reference, insample_values=[history])["mase"] == pytest.approx(
        (1 / 2 + 3 / 1.5) / 2
    )
    with pytest.raises(ValueError, match="window 0 .* 3 values"):
        compute_forecasting_metrics(prediction, reference, insample_values=[history], seasonality=3)
    with pytest.raises(ValueError, match="2 windows of history for 1 windows"):
        compute_forecasting_metrics(prediction, reference, insample_values=[history, history])
    with pytest.raises(ValueError, match="channels"):
        compute_forecasting_metrics(prediction, reference, insample_values=[history[:, :1]])


# -- weighted quantile loss -------------------------------------------------------------------------------------------

# One series, two steps, levels 0.1 / 0.5 / 0.9; worked out by hand in the test below.
WQL_REFERENCES = np.array([[2.0, 4.0]])
WQL_QUANTILES = np.array([[[1.0, 2.0, 4.0], [3.0, 5.0, 6.0]]])
WQL_LEVELS = [0.1, 0.5, 0.9]


def test_weighted_quantile_loss_equals_hand_computed_value():
    # 2 * pinball per level, summed over the steps, over sum |y| = 6:
    # 0.1: y above both quantiles, 2 * (0.1 * 1 + 0.1 * 1) = 0.4; 0.5: 2 * (0 + 0.5 * 1) = 1.0;
    # 0.9: y below both, 2 * (0.1 * 2 + 0.1 * 2) = 0.8. Mean over the levels: (0.4 + 1.0 + 0.8) / 6 / 3.
    result = weighted_quantile_loss(WQL_QUANTILES, WQL_REFERENCES, WQL_LEVELS)
    assert result == pytest.approx(2.2 / 18)
    assert isinstance(result, float)
    # torch input and a [steps] layout give the same number.
    assert weighted_quantile_loss(torch.from_numpy(WQL_QUANTILES[0]), WQL_REFERENCES[0], WQL_LEVELS) == pytest.approx(
        result
    )


def test_weighted_quantile_loss_of_the_median_alone_is_weighted_absolute_error():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(3, 5, 2))
    median = reference + rng.normal(size=reference.shape)
    result = weighted_quantile_loss(median[..., None], reference, [0.5])
    assert result == pytest.approx(np.abs(median - reference).sum() / np.abs(reference).sum())


def test_weighted_quantile_loss_leaves_out_missing_references():
    reference = np.array([[2.0, 4.0, np.nan]])
    quantiles = np.concatenate([WQL_QUANTILES, np.full((1, 1, 3), 100.0)], axis=1)
    assert weighted_quantile_loss(quantiles, reference, WQL_LEVELS) == pytest.approx(2.2 / 18)
    observed = np.array([[1, 1, 0]])
    filled = np.nan_to_num(reference, nan=-50.0)
    assert weighted_quantile_loss(quantiles, filled, WQL_LEVELS, observed_mask=observed) == pytest.approx(2.2 / 18)
    assert math.isnan(weighted_quantile_loss(np.ones((1, 2, 1)), np.zeros((1, 2)), [0.5]))  # sum |y| = 0


@pytest.mark.parametrize(
    ("quantiles", "references", "levels", "match"),
    [
        (WQL_QUANTILES, WQL_REFERENCES, [0.1, 0.5], "last axis of the 2 quantile levels"),
        (WQL_QUANTILES, WQL_REFERENCES, [0.1, 0.5, 1.0], "between 0 and 1"),
        (WQL_QUANTILES, WQL_REFERENCES, [0.1, 0.5, 0.5], "distinct"),
        (WQL_QUANTILES, WQL_REFERENCES, [], "at least one"),
        (WQL_QUANTILES, np.array([[2.0, 4.0, 1.0]]), WQL_LEVELS, "shape"),
        (WQL_QUANTILES, np.array([[2.0, np.inf]]), WQL_LEVELS, "infinite"),
        (np.zeros((0, 2, 1)), np.zeros((0, 2)), [0.5], "no values"),
    ],
)
def test_weighted_quantile_loss_rejects_bad_input(quantiles, references, levels, match):
    with pytest.raises(ValueError, match=match):
        weighted_quantile_loss(quantiles, references, levels)


def test_smape_counts_zero_over_zero_as_zero_and_mape_skips_zero_references():
    result = compute_forecasting_metrics(np.array([[0.0, 1.0]]), np.array([[0.0, 2.0]]))
    assert result["smape"] == pytest.approx(200 * (0.0 + 1.0 / 3.0) / 2)
    assert result["mape"] == pytest.approx(50.0)
    assert math.isnan(compute_forecasting_metrics(np.ones((1, 2)), np.zeros((1, 2)))["mape"])


def test_masked_entries_are_excluded_from_every_metric():
    observed = np.ones_like(REFERENCES)
    observed[0, 2, :] = 0
    observed[1, 0, 1] = 0
    corrupted = REFERENCES.copy()
    corrupted[observed == 0] = 1e6  # values under the mask must not matter
    result = compute_forecasting_metrics(PREDICTIONS, corrupted, past_values=PAST, observed_mask=observed)
    expected = numpy_reference(PREDICTIONS, REFERENCES, past=PAST, observed=observed)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-12), name
    with_nan = REFERENCES.copy()
    with_nan[observed == 0] = np.nan
    assert compute_forecasting_metrics(PREDICTIONS, with_nan, past_values=PAST) == pytest.approx(result)


def test_nan_predictions_propagate():
    prediction = PREDICTIONS.copy()
    prediction[0, 0, 0] = np.nan
    result = compute_forecasting_metrics(prediction, REFERENCES, past_values=PAST)
    assert all(math.isnan(value) for value in result.values())


@pytest.mark.parametrize("layout", ["numpy", "torch", "torch_bfloat16", "two_dims", "one_dim"])
def test_input_layouts_agree(layout):
    prediction, reference, past = PREDICTIONS[..., :1], REFERENCES[..., :1], PAST[..., :1]
    expected = compute_forecasting_metrics(prediction, reference, past_values=past)
    if layout == "torch":
        prediction, reference, past = (torch.from_numpy(x) for x in (prediction, reference, past))
    elif layout == "torch_bfloat16":
        # Values exactly representable in bfloat16, so the result is unchanged.
        prediction, reference = (torch.from_numpy(x).to(torch.bfloat16) for x in (prediction, reference))
    elif layout == "two_dims":
        prediction, reference, past = prediction[..., 0], reference[..., 0], past[..., 0]
    elif layout == "one_dim":
        expected = compute_forecasting_metrics(prediction[:1], reference[:1], past_values=past[:1])
        prediction, reference, past = prediction[0, :, 0], reference[0, :, 0], past[0, :, 0]
    result = compute_forecasting_metrics(prediction, reference, past_values=past)
    assert result == pytest.approx(expected)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"predictions": np.zeros((2, 3, 1)), "references": np.zeros((2, 4, 1))}, "same shape"),
        ({"predictions": np.zeros((2, 3, 1)), "references": np.zeros((2, 3))}, "same shape"),
        ({"predictions": np.zeros((1, 2, 3, 1)), "references": np.zeros((1, 2, 3, 1))}, "1 to 3 dimensions"),
        ({"predictions": np.zeros((0, 3, 1)), "references": np.zeros((0, 3, 1))}, "no values"),
        (
            {"predictions": np.zeros((2, 3, 1)), "references": np.zeros((2, 3, 1)), "observed_mask": np.ones((2, 3))},
            "observed_mask",
        ),
        (
            {"predictions": np.zeros((2, 3, 1)), "references": np.zeros((2, 3, 1)), "past_values": np.ones((3, 5, 1))},
            "windows and channels",
        ),
        (
            {"predictions": np.zeros((2, 3, 1)), "references": np.zeros((2, 3, 1)), "past_values": np.ones((2, 5))},
            "as many dimensions",
        ),
        (
            {
                "predictions": np.zeros((2, 3, 1)),
                "references": np.zeros((2, 3, 1)),
                "past_values": np.ones((2, 4, 1)),
                "seasonality": 4,
            },
            "context longer than the season",
        ),
        ({"predictions": np.zeros((2, 3)), "references": np.zeros((2, 3)), "seasonality": 0}, "positive integer"),
    ],
)
def test_invalid_inputs_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_forecasting_metrics(**kwargs)


def test_non_array_input_raises_type_error():
    with pytest.raises(TypeError, match="predictions"):
        compute_forecasting_metrics("1.0", np.zeros(1))


def test_evaluate_module_loads_offline_by_path_and_accumulates_batches(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    metric = load_forecasting_metric(keep_in_memory=True)
    assert metric.name == FORECASTING_METRIC_PATH.name
    assert (FORECASTING_METRIC_PATH / "forecasting_metrics.py").is_file()
    windows = PREDICTIONS.shape[0]
    # The module's own layout: one flattened [horizon, channels] window per row, stored as float32.
    for w in range(windows):
        metric.add_batch(
            predictions=PREDICTIONS[w : w + 1].reshape(1, -1), references=REFERENCES[w : w + 1].reshape(1, -1)
        )
    result = metric.compute(past_values=PAST, seasonality=1)
    expected = compute_forecasting_metrics(PREDICTIONS, REFERENCES, past_values=PAST)
    assert result == pytest.approx(expected, rel=1e-6)


def test_evaluate_module_compute_rejects_mismatched_windows():
    metric = load_forecasting_metric(keep_in_memory=True)
    with pytest.raises(ValueError):
        metric.compute(predictions=np.zeros((2, 3)), references=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="same shape"):
        metric.compute(predictions=np.zeros((2, 3)), references=np.zeros((2, 4)))


def test_compute_metrics_picks_prediction_outputs_from_the_output_tuple():
    compute_metrics = make_compute_metrics(prediction_index=2)
    labels = REFERENCES[..., :1]
    forecast = PREDICTIONS[..., :1]
    # What Trainer gathers for BalmTsfForForecasting: mse_loss, alignment_loss, prediction_outputs, loc, scale.
    gathered = (np.ones(2), np.ones(2), forecast, np.zeros((2, 1, 1)), np.ones((2, 1, 1)))
    result = compute_metrics(EvalPrediction(predictions=gathered, label_ids=labels))
    assert set(result) == {"mse", "mae"}
    assert result["mse"] == pytest.approx(np.mean((forecast - labels) ** 2))
    assert result["mae"] == pytest.approx(np.mean(np.abs(forecast - labels)))
    assert compute_metrics(EvalPrediction(predictions=forecast, label_ids=labels)) == pytest.approx(result)


def test_compute_metrics_uses_observed_mask_and_inputs():
    compute_metrics = make_compute_metrics(metrics=("mse", "mase_context"), seasonality=1)
    observed = np.ones_like(REFERENCES)
    observed[1] = 0
    result = compute_metrics(
        EvalPrediction(predictions=PREDICTIONS, label_ids=(REFERENCES, observed), inputs=PAST),
    )
    expected = compute_forecasting_metrics(PREDICTIONS[:1], REFERENCES[:1], past_values=PAST[:1])
    assert result == pytest.approx({"mse": expected["mse"], "mase_context": expected["mase_context"]})


def test_compute_metrics_ambiguous_or_missing_forecast_raises():
    labels = np.zeros((2, 1, 1))
    ambiguous = (np.ones((2, 1, 1)), np.zeros((2, 1, 1)))
    with pytest.raises(ValueError, match="prediction_index"):
        make_compute_metrics()(EvalPrediction(predictions=ambiguous, label_ids=labels))
    result = make_compute_metrics(prediction_index=0)(EvalPrediction(predictions=ambiguous, label_ids=labels))
    assert result["mse"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="include_for_metrics"):
        make_compute_metrics(metrics=("mase_context",))(
            EvalPrediction(predictions=np.ones((2, 1, 1)), label_ids=labels)
        )


def test_make_compute_metrics_refuses_mase_and_names_the_context_variant():
    # The Trainer sees context windows only, never a series' whole history: the standard MASE cannot be computed there.
    with pytest.raises(ValueError, match="mase_context"):
        make_compute_metrics(metrics=("mse", "mase"))


@pytest.mark.parametrize(("metrics", "error"), [("mse", TypeError), (("mse", "rmse"), ValueError), ((), ValueError)])
def test_make_compute_metrics_rejects_bad_metric_names(metrics, error):
    with pytest.raises(error):
        make_compute_metrics(metrics=metrics)


def _windows(count: int, context_length: int, horizon: int) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    series = torch.randn(count + context_length + horizon, generator=generator).cumsum(0) / 10
    return [
        {
            "past_values": series[s : s + context_length, None],
            "future_values": series[s + context_length : s + context_length + horizon, None],
        }
        for s in range(count)
    ]


@pytest.mark.parametrize("model_name", ["dlinear", "balm_tsf"])
def test_trainer_evaluate_reports_metrics_over_every_window(tmp_path, model_name):
    from conftest import tiny_model
    from transformers import Trainer, TrainingArguments

    from research.baselines import DLinearConfig, DLinearForForecasting

    if model_name == "dlinear":
        torch.manual_seed(0)
        model = DLinearForForecasting(DLinearConfig(context_length=64, prediction_length=16))
    else:
        model = tiny_model()  # context 64, horizon 16; gathers a tuple of five output fields
    model.eval()
    items = _windows(10, 64, 16)  # batches of 4, 4 and 2: the last, incomplete batch must count
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=4,
        label_names=["future_values"],
        prediction_loss_only=False,
        include_for_metrics=["inputs"],
        report_to=[],
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=items,
        compute_metrics=make_compute_metrics(metrics=("mse", "mae", "mase_context")),
    )
    metrics = trainer.evaluate()

    past = torch.stack([item["past_values"] for item in items])
    future = torch.stack([item["future_values"] for item in items])
    with torch.no_grad():
        # Batch by batch as the Trainer does: in paper mode, BALM-TSF pads the prompts to the longest in the batch.
        prediction = torch.cat([model(past_values=past[s : s + 4]).prediction_outputs for s in range(0, 10, 4)])
    expected = compute_forecasting_metrics(prediction, future, past_values=past)
    assert metrics["eval_mse"] == pytest.approx(expected["mse"], rel=1e-5)
    assert metrics["eval_mae"] == pytest.approx(expected["mae"], rel=1e-5)
    assert metrics["eval_mase_context"] == pytest.approx(expected["mase_context"], rel=1e-5)


def test_the_model_config_alone_says_which_output_is_the_forecast(tmp_path):
    from conftest import tiny_model
    from transformers import Trainer, TrainingArguments

    from balm_hf.models.balm_tsf.modeling_balm_tsf import BalmTsfForForecastingOutput

    model = tiny_model()
    fields = {f.name for f in dataclasses.fields(BalmTsfForForecastingOutput)}
    assert fields - set(model.config.keys_to_ignore_at_inference) == {"loss", "prediction_outputs"}
    args = TrainingArguments(output_dir=str(tmp_path), label_names=["future_values"], report_to=[], use_cpu=True)
    output = Trainer(model=model, args=args).predict(_windows(3, 64, 16))
    assert isinstance(output.predictions, np.ndarray) and output.predictions.shape == (3, 16, 1)
    # A tuple of outputs is never guessed from its shapes.
    labels = np.zeros((2, 16, 1))
    gathered = (np.ones(2), np.ones((2, 16, 1)), np.zeros((2, 1, 1)))
    with pytest.raises(ValueError, match="keys_to_ignore_at_inference"):
        make_compute_metrics()(EvalPrediction(predictions=gathered, label_ids=labels))
