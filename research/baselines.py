"""Baselines for the comparison: DLinear (a Hugging Face model), naive and seasonal-naive forecasters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction, PretrainedConfig, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from balm_hf.models.balm_tsf.losses import masked_mse_loss


_WEIGHT_INITS = ("pytorch", "average")


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}")


def _check_past_values(past_values: Any, min_length: int = 1) -> None:
    if not isinstance(past_values, torch.Tensor):
        raise TypeError(f"`past_values` must be a torch.Tensor, got {type(past_values).__name__}")
    if past_values.ndim != 3:
        raise ValueError(
            f"`past_values` must have shape [batch, context_length, channels], got {tuple(past_values.shape)}"
        )
    if past_values.shape[1] < min_length:
        raise ValueError(f"`past_values` has context length {past_values.shape[1]}, at least {min_length} is needed")


def _forecast_loss(
    prediction: torch.Tensor, future_values: torch.Tensor | None, future_observed_mask: torch.Tensor | None
) -> torch.Tensor | None:
    """Masked MSE of the forecast, or `None` without targets; shapes are checked against the forecast."""
    if future_values is None:
        return None
    expected = tuple(prediction.shape)
    if tuple(future_values.shape) != expected:
        raise ValueError(f"`future_values` must have shape {expected}, got {tuple(future_values.shape)}")
    if future_observed_mask is not None and tuple(future_observed_mask.shape) != expected:
        raise ValueError(f"`future_observed_mask` must have shape {expected}, got {tuple(future_observed_mask.shape)}")
    return masked_mse_loss(prediction, future_values.to(prediction.dtype), future_observed_mask)


# ---------------------------------------------------------------------------------------------------------------------
# DLinear
# ---------------------------------------------------------------------------------------------------------------------


class DLinearConfig(PretrainedConfig):
    r"""
    Configuration of [`DLinearForForecasting`], the DLinear model of Zeng et al., "Are Transformers Effective for Time
    Series Forecasting?" (AAAI 2023): a moving-average decomposition of the input into trend and remainder
    ("seasonal") parts, one linear map `context_length -> prediction_length` for each part, and the sum of the two.

    Args:
        context_length (`int`, *optional*, defaults to 512):
            Length `L` of the input window (`past_values.shape[1]`).
        prediction_length (`int`, *optional*, defaults to 96):
            Forecast horizon `H`.
        num_input_channels (`int`, *optional*, defaults to 1):
            Number of channels. Only binding with `individual=True`; the shared model takes any channel count.
        moving_average_kernel_size (`int`, *optional*, defaults to 25):
            Window of the moving average that extracts the trend. Must be odd: the series is padded with
            `(kernel - 1) // 2` copies of its first and last values, which keeps the length only for odd kernels (the
            original code silently shortens the trend by one for even kernels).
        individual (`bool`, *optional*, defaults to `False`):
            One pair of linear maps per channel (`True`) or one pair shared by all channels (`False`, the default of
            the paper's multivariate runs).
        weight_init (`str`, *optional*, defaults to `"pytorch"`):
            Initialisation of the linear weights: `"pytorch"` (PyTorch's default `nn.Linear` init, as in the authors'
            LTSF-Linear code) or `"average"` (every weight `1 / context_length`, as in Time-Series-Library). The biases
            always get PyTorch's default init.
        kwargs:
            Passed to [`PretrainedConfig`].

    Example:

    ```python
    >>> import torch
    >>> from research.baselines import DLinearConfig, DLinearForForecasting

    >>> config = DLinearConfig(context_length=96, prediction_length=24)
    >>> model = DLinearForForecasting(config)
    >>> model(past_values=torch.randn(4, 96, 7)).prediction_outputs.shape
    torch.Size([4, 24, 7])
    ```
    """

    model_type = "balm_dlinear"

    def __init__(
        self,
        context_length: int = 512,
        prediction_length: int = 96,
        num_input_channels: int = 1,
        moving_average_kernel_size: int = 25,
        individual: bool = False,
        weight_init: str = "pytorch",
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ("context_length", context_length),
            ("prediction_length", prediction_length),
            ("num_input_channels", num_input_channels),
            ("moving_average_kernel_size", moving_average_kernel_size),
        ):
            _check_positive_int(value, name)
        if moving_average_kernel_size % 2 == 0:
            raise ValueError(f"`moving_average_kernel_size` must be odd, got {moving_average_kernel_size}")
        if not isinstance(individual, bool):
            raise TypeError(f"`individual` must be a bool, got {individual!r}")
        if weight_init not in _WEIGHT_INITS:
            raise ValueError(f"`weight_init` must be one of {_WEIGHT_INITS}, got {weight_init!r}")
        self.context_length = context_length
        self.prediction_length = prediction_length
        self.num_input_channels = num_input_channels
        self.moving_average_kernel_size = moving_average_kernel_size
        self.individual = individual
        self.weight_init = weight_init
        super().__init__(**kwargs)


@dataclass
class DLinearForForecastingOutput(ModelOutput):
    r"""
    Output of [`DLinearForForecasting`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `future_values` is given):
            Mean squared error of `prediction_outputs` against `future_values` over observed entries (batch, horizon
            and channels), in the units of the inputs.
        prediction_outputs (`torch.FloatTensor` of shape `[batch, prediction_length, channels]`):
            The forecast: the sum of the seasonal and the trend forecasts.
    """

    loss: torch.Tensor | None = None
    prediction_outputs: torch.Tensor | None = None


class DLinearSeriesDecomposition(nn.Module):
    r"""
    Moving-average decomposition `x = seasonal + trend`: `trend` is the centred moving average of `x` over
    `kernel_size` steps, after padding both ends with `(kernel_size - 1) // 2` copies of the first and last values.

    Args:
        kernel_size (`int`): odd window of the moving average.
    """

    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.kernel_size = kernel_size

    def forward(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r"""
        Args:
            values (`torch.Tensor` of shape `[batch, length, channels]`): the series.

        Returns:
            `tuple[torch.Tensor, torch.Tensor]`: `seasonal` and `trend`, each of the shape of `values`.
        """
        pad = (self.kernel_size - 1) // 2
        front = values[:, :1].expand(-1, pad, -1)
        end = values[:, -1:].expand(-1, pad, -1)
        padded = torch.cat([front, values, end], dim=1)  # [batch x length + kernel - 1 x channels]
        trend = F.avg_pool1d(padded.transpose(1, 2), kernel_size=self.kernel_size, stride=1).transpose(1, 2)
        return values - trend, trend


class DLinearPreTrainedModel(PreTrainedModel):
    config_class = DLinearConfig
    base_model_prefix = "model"
    main_input_name = "past_values"
    supports_gradient_checkpointing = False

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the linear maps with `config.weight_init`; the decomposition has no parameters."""
        if isinstance(module, nn.Linear):
            if self.config.weight_init == "average":
                init.constant_(module.weight, 1.0 / module.in_features)
            else:
                init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1 / math.sqrt(module.in_features)
            init.uniform_(module.bias, -bound, bound)


class DLinearForForecasting(DLinearPreTrainedModel):
    r"""
    DLinear: trend/remainder decomposition and two linear maps over time, applied to every channel independently.
    Like the original, it forecasts raw inputs (no instance normalisation); our datasets are standardised already.

    Example:

    ```python
    >>> import torch
    >>> from research.baselines import DLinearConfig, DLinearForForecasting

    >>> model = DLinearForForecasting(DLinearConfig(context_length=96, prediction_length=24))
    >>> output = model(past_values=torch.randn(8, 96, 1), future_values=torch.randn(8, 24, 1))
    >>> output.loss.shape, output.prediction_outputs.shape
    (torch.Size([]), torch.Size([8, 24, 1]))
    ```
    """

    def __init__(self, config: DLinearConfig) -> None:
        super().__init__(config)
        self.decomposition = DLinearSeriesDecomposition(config.moving_average_kernel_size)
        length, horizon = config.context_length, config.prediction_length
        self.seasonal_linear: nn.Module
        self.trend_linear: nn.Module
        if config.individual:
            self.seasonal_linear = nn.ModuleList(nn.Linear(length, horizon) for _ in range(config.num_input_channels))
            self.trend_linear = nn.ModuleList(nn.Linear(length, horizon) for _ in range(config.num_input_channels))
        else:
            self.seasonal_linear = nn.Linear(length, horizon)
            self.trend_linear = nn.Linear(length, horizon)
        self.post_init()

    @staticmethod
    def _project(linear: nn.Module, series: torch.Tensor) -> torch.Tensor:
        """`[batch, channels, context_length] -> [batch, channels, prediction_length]`, per channel if individual."""
        if isinstance(linear, nn.ModuleList):
            return torch.stack([layer(series[:, channel]) for channel, layer in enumerate(linear)], dim=1)
        return linear(series)

    def forward(
        self,
        past_values: torch.Tensor,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> DLinearForForecastingOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            past_values (`torch.FloatTensor` of shape `[batch, context_length, channels]`):
                The input windows. Any channel count unless `config.individual`.
            future_values (`torch.FloatTensor` of shape `[batch, prediction_length, channels]`, *optional*):
                Targets; when given, the MSE loss is computed.
            future_observed_mask (`torch.Tensor` of the shape of `future_values`, *optional*):
                `1` where `future_values` is observed, `0` where it is missing (excluded from the loss).
            return_dict (`bool`, *optional*): return a [`DLinearForForecastingOutput`] instead of a tuple.
            kwargs: extra dataset columns (e.g. window or channel ids) are accepted and ignored.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        _check_past_values(past_values)
        if past_values.shape[1] != config.context_length:
            raise ValueError(
                f"`past_values` has context length {past_values.shape[1]} but the model expects "
                f"`context_length`={config.context_length}"
            )
        if config.individual and past_values.shape[2] != config.num_input_channels:
            raise ValueError(
                f"`past_values` has {past_values.shape[2]} channels but the individual model has "
                f"`num_input_channels`={config.num_input_channels}"
            )
        past_values = past_values.to(self.dtype)
        seasonal, trend = self.decomposition(past_values)  # [batch x context_length x channels] each
        seasonal_forecast = self._project(self.seasonal_linear, seasonal.transpose(1, 2))
        trend_forecast = self._project(self.trend_linear, trend.transpose(1, 2))
        prediction = (seasonal_forecast + trend_forecast).transpose(1, 2)  # [batch x prediction_length x channels]

        output = DLinearForForecastingOutput(
            loss=_forecast_loss(prediction, future_values, future_observed_mask), prediction_outputs=prediction
        )
        return output if return_dict else output.to_tuple()


# ---------------------------------------------------------------------------------------------------------------------
# Naive forecasters
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class NaiveForecasterOutput(ModelOutput):
    r"""
    Output of [`NaiveForecaster`] and [`SeasonalNaiveForecaster`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `future_values` is given):
            Mean squared error of `prediction_outputs` against `future_values` over observed entries.
        prediction_outputs (`torch.FloatTensor` of shape `[batch, prediction_length, channels]`):
            The forecast.
    """

    loss: torch.Tensor | None = None
    prediction_outputs: torch.Tensor | None = None


class SeasonalNaiveForecaster(nn.Module):
    r"""
    Seasonal-naive forecast: repeat the last `season_length` values of every channel,
    `prediction[t] = past[L - m + (t mod m)]` for `t = 0 .. H - 1`. Parameter-free; same call signature and output
    fields as the trained models, so one evaluation loop serves all of them.

    Args:
        season_length (`int`):
            Season length `m` (e.g. 24 for hourly data with a daily cycle, 96 for 15-minute data).
        prediction_length (`int`):
            Forecast horizon `H`.

    Example:

    ```python
    >>> import torch
    >>> from research.baselines import SeasonalNaiveForecaster

    >>> model = SeasonalNaiveForecaster(season_length=2, prediction_length=3)
    >>> model(past_values=torch.tensor([[[1.0], [2.0], [3.0]]])).prediction_outputs[0, :, 0]
    tensor([2., 3., 2.])
    ```
    """

    main_input_name = "past_values"

    def __init__(self, season_length: int, prediction_length: int) -> None:
        super().__init__()
        _check_positive_int(season_length, "season_length")
        _check_positive_int(prediction_length, "prediction_length")
        self.season_length = season_length
        self.prediction_length = prediction_length

    def forward(
        self,
        past_values: torch.Tensor,
        future_values: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        **kwargs: Any,
    ) -> NaiveForecasterOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            past_values (`torch.FloatTensor` of shape `[batch, context_length, channels]`):
                The input windows; `context_length` must be at least `season_length`.
            future_values (`torch.FloatTensor` of shape `[batch, prediction_length, channels]`, *optional*):
                Targets; when given, the MSE loss is computed.
            future_observed_mask (`torch.Tensor` of the shape of `future_values`, *optional*):
                `1` where `future_values` is observed, `0` where it is missing (excluded from the loss).
            return_dict (`bool`, *optional*, defaults to `True`):
                return a [`NaiveForecasterOutput`] instead of a tuple.
            kwargs: extra dataset columns are accepted and ignored.
        """
        _check_past_values(past_values, min_length=self.season_length)
        length = past_values.shape[1]
        steps = torch.arange(self.prediction_length, device=past_values.device)
        index = length - self.season_length + steps % self.season_length
        prediction = past_values[:, index, :]  # [batch x prediction_length x channels]
        output = NaiveForecasterOutput(
            loss=_forecast_loss(prediction, future_values, future_observed_mask), prediction_outputs=prediction
        )
        return output if return_dict else output.to_tuple()


class NaiveForecaster(SeasonalNaiveForecaster):
    r"""
    Naive forecast: repeat the last value of every channel over the horizon (the seasonal-naive forecast with
    `season_length=1`). Parameter-free.

    Args:
        prediction_length (`int`):
            Forecast horizon `H`.

    Example:

    ```python
    >>> import torch
    >>> from research.baselines import NaiveForecaster

    >>> NaiveForecaster(prediction_length=2)(past_values=torch.tensor([[[1.0], [5.0]]])).prediction_outputs[0, :, 0]
    tensor([5., 5.])
    ```
    """

    def __init__(self, prediction_length: int) -> None:
        super().__init__(season_length=1, prediction_length=prediction_length)


def register_dlinear() -> None:
    """Register `dlinear` in the transformers Auto classes (the comparison calls it before it builds DLinear)."""
    AutoConfig.register(DLinearConfig.model_type, DLinearConfig, exist_ok=True)
    AutoModel.register(DLinearConfig, DLinearForForecasting, exist_ok=True)
    AutoModelForTimeSeriesPrediction.register(DLinearConfig, DLinearForForecasting, exist_ok=True)


__all__ = [
    "register_dlinear",
    "DLinearConfig",
    "DLinearForForecasting",
    "DLinearForForecastingOutput",
    "DLinearPreTrainedModel",
    "DLinearSeriesDecomposition",
    "NaiveForecaster",
    "NaiveForecasterOutput",
    "SeasonalNaiveForecaster",
]
