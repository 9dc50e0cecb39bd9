"""Tests of the baselines: DLinear, naive and seasonal-naive forecasters."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction

from research.baselines import (
    DLinearConfig,
    DLinearForForecasting,
    DLinearSeriesDecomposition,
    NaiveForecaster,
    SeasonalNaiveForecaster,
    register_dlinear,
)


def small_dlinear(**overrides) -> DLinearForForecasting:
    kwargs: dict[str, Any] = dict(context_length=12, prediction_length=4, moving_average_kernel_size=5)
    kwargs.update(overrides)
    torch.manual_seed(0)
    return DLinearForForecasting(DLinearConfig(**kwargs)).eval()


@pytest.mark.parametrize(
    ("kernel_size", "expected_trend"),
    [
        # padded [1, 1, 2, 4, 8, 16, 16], means over 3
        (3, [4 / 3, 7 / 3, 14 / 3, 28 / 3, 40 / 3]),
        # padded [1, 1, 1, 2, 4, 8, 16, 16, 16], means over 5
        (5, [9 / 5, 16 / 5, 31 / 5, 46 / 5, 60 / 5]),
    ],
)
def test_decomposition_equals_hand_computed_moving_average(kernel_size, expected_trend):
    series = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0], dtype=torch.float64)
    values = torch.stack([series, -series], dim=-1)[None]  # [1 x 5 x 2]
    seasonal, trend = DLinearSeriesDecomposition(kernel_size)(values)
    expected = torch.tensor(expected_trend, dtype=torch.float64)
    torch.testing.assert_close(trend[0, :, 0], expected)
    torch.testing.assert_close(trend[0, :, 1], -expected)
    torch.testing.assert_close(seasonal + trend, values)


def test_forecast_is_sum_of_linear_maps_of_the_two_parts():
    model = small_dlinear()
    past = torch.randn(3, 12, 2)
    seasonal, trend = model.decomposition(past)
    expected = (
        torch.einsum("hl,blc->bhc", model.seasonal_linear.weight, seasonal) + model.seasonal_linear.bias[:, None]
    )
    expected = (
        expected + torch.einsum("hl,blc->bhc", model.trend_linear.weight, trend) + model.trend_linear.bias[:, None]
    )
    torch.testing.assert_close(model(past_values=past).prediction_outputs, expected)


def test_shared_model_is_channel_independent_for_any_channel_count():
    model = small_dlinear()
    past = torch.randn(2, 12, 3)
    joint = model(past_values=past).prediction_outputs
    for channel in range(3):
        alone = model(past_values=past[:, :, channel : channel + 1]).prediction_outputs
        torch.testing.assert_close(joint[:, :, channel : channel + 1], alone)


def test_individual_model_uses_each_channels_own_weights():
    model = small_dlinear(individual=True, num_input_channels=2)
    past = torch.randn(2, 12, 2)
    prediction = model(past_values=past).prediction_outputs
    seasonal, trend = model.decomposition(past)
    for channel in range(2):
        expected = model.seasonal_linear[channel](seasonal[:, :, channel]) + model.trend_linear[channel](
            trend[:, :, channel]
        )
        torch.testing.assert_close(prediction[:, :, channel], expected)
    assert not torch.equal(model.seasonal_linear[0].weight, model.seasonal_linear[1].weight)


def test_average_init_sets_weights_to_one_over_context_length():
    model = small_dlinear(weight_init="average")
    torch.testing.assert_close(model.trend_linear.weight, torch.full((4, 12), 1 / 12))
    bound = 1 / math.sqrt(12)
    assert model.trend_linear.bias.abs().max() <= bound


def test_loss_is_masked_mse_and_absent_without_targets():
    model = small_dlinear()
    past, future = torch.randn(2, 12, 1), torch.randn(2, 4, 1)
    prediction = model(past_values=past).prediction_outputs
    assert model(past_values=past).loss is None
    output = model(past_values=past, future_values=future)
    torch.testing.assert_close(output.loss, ((prediction - future) ** 2).mean())
    mask = torch.ones_like(future)
    mask[0, :2] = 0
    corrupted = future.clone()
    corrupted[0, :2] = float("nan")
    masked = model(past_values=past, future_values=corrupted, future_observed_mask=mask).loss
    torch.testing.assert_close(masked, ((prediction - future) ** 2)[mask.bool()].mean())


def test_dlinear_training_reduces_loss_on_a_sine():
    torch.manual_seed(0)
    model = DLinearForForecasting(DLinearConfig(context_length=48, prediction_length=12)).train()
    time = torch.arange(200, dtype=torch.float32)
    series = torch.sin(2 * math.pi * time / 12)
    starts = torch.arange(0, 200 - 60)
    past = torch.stack([series[s : s + 48] for s in starts])[:, :, None]
    future = torch.stack([series[s + 48 : s + 60] for s in starts])[:, :, None]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = model(past_values=past, future_values=future).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses)
    assert losses[-1] < 0.1 * losses[0]


def test_save_load_roundtrip_preserves_outputs(tmp_path):
    model = small_dlinear(individual=True, num_input_channels=2)
    past = torch.randn(2, 12, 2)
    expected = model(past_values=past).prediction_outputs
    model.save_pretrained(tmp_path)
    reloaded, info = DLinearForForecasting.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"]
    assert not info["unexpected_keys"]
    torch.testing.assert_close(reloaded.eval()(past_values=past).prediction_outputs, expected)
    assert reloaded.config.to_diff_dict() | {"_name_or_path": ""} == model.config.to_diff_dict() | {
        "_name_or_path": ""
    }


def test_auto_classes_resolve_dlinear(tmp_path):
    register_dlinear()
    model = small_dlinear()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), DLinearConfig)
    for auto_class in (AutoModel, AutoModelForTimeSeriesPrediction):
        loaded = auto_class.from_pretrained(tmp_path)
        assert isinstance(loaded, DLinearForForecasting)
        torch.testing.assert_close(loaded.seasonal_linear.weight, model.seasonal_linear.weight)


def test_tuple_output_equals_dict_output():
    model = small_dlinear()
    past, future = torch.randn(2, 12, 1), torch.randn(2, 4, 1)
    as_dict = model(past_values=past, future_values=future)
    as_tuple = model(past_values=past, future_values=future, return_dict=False)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.prediction_outputs)


def test_naive_repeats_last_value():
    past = torch.tensor([[[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]])
    prediction = NaiveForecaster(prediction_length=4)(past_values=past).prediction_outputs
    torch.testing.assert_close(prediction, torch.tensor([[[3.0, 30.0]] * 4]))


def test_seasonal_naive_repeats_last_season():
    past = torch.arange(1.0, 7.0)[None, :, None]  # 1 .. 6
    model = SeasonalNaiveForecaster(season_length=3, prediction_length=5)
    prediction = model(past_values=past).prediction_outputs
    torch.testing.assert_close(prediction[0, :, 0], torch.tensor([4.0, 5.0, 6.0, 4.0, 5.0]))
    future = torch.tensor([4.0, 5.0, 6.0, 4.0, 7.0])[None, :, None]
    output = model(past_values=past, future_values=future)
    torch.testing.assert_close(output.loss, torch.tensor(4.0 / 5.0))
    assert list(model.parameters()) == []


@pytest.mark.parametrize(
    ("model", "kwargs", "error", "match"),
    [
        (small_dlinear(), {"past_values": torch.randn(2, 10, 1)}, ValueError, "context length"),
        (small_dlinear(), {"past_values": torch.randn(2, 12)}, ValueError, "shape"),
        (small_dlinear(), {"past_values": [[0.0] * 12]}, TypeError, "torch.Tensor"),
        (
            small_dlinear(),
            {"past_values": torch.randn(2, 12, 1), "future_values": torch.randn(2, 5, 1)},
            ValueError,
            "future_values",
        ),
        (
            small_dlinear(),
            {
                "past_values": torch.randn(2, 12, 1),
                "future_values": torch.randn(2, 4, 1),
                "future_observed_mask": torch.ones(2, 4, 2),
            },
            ValueError,
            "future_observed_mask",
        ),
        (
            small_dlinear(individual=True, num_input_channels=2),
            {"past_values": torch.randn(2, 12, 3)},
            ValueError,
            "channels",
        ),
        (
            SeasonalNaiveForecaster(season_length=4, prediction_length=2),
            {"past_values": torch.randn(1, 3, 1)},
            ValueError,
            "at least 4",
        ),
        (
            NaiveForecaster(prediction_length=2),
            {"past_values": torch.randn(1, 3, 1), "future_values": torch.randn(1, 3, 1)},
            ValueError,
            "future_values",
        ),
    ],
)
def test_mismatched_inputs_raise(model, kwargs, error, match):
    with pytest.raises(error, match=match):
        model(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"moving_average_kernel_size": 24}, ValueError, "odd"),
        ({"context_length": 0}, ValueError, "context_length"),
        ({"prediction_length": 2.5}, ValueError, "prediction_length"),
        ({"weight_init": "xavier"}, ValueError, "weight_init"),
        ({"individual": "yes"}, TypeError, "individual"),
    ],
)
def test_invalid_config_raises(kwargs, error, match):
    with pytest.raises(error, match=match):
        DLinearConfig(**kwargs)


@pytest.mark.parametrize(("season_length", "prediction_length"), [(0, 4), (2, 0), (True, 4)])
def test_invalid_naive_arguments_raise(season_length, prediction_length):
    with pytest.raises(ValueError):
        SeasonalNaiveForecaster(season_length=season_length, prediction_length=prediction_length)
