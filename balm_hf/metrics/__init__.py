"""Forecasting metrics (MSE, MAE, MAPE, sMAPE, MASE) through a local `evaluate` module, and `Trainer` glue."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import torch
from transformers import EvalPrediction


FORECASTING_METRIC_PATH = Path(__file__).resolve().parent / "forecasting_metrics"
FORECASTING_METRIC_NAMES = ("mse", "mae", "mape", "smape", "mase")


def load_forecasting_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    r"""
    Load the package's `forecasting_metrics` evaluate module from its folder (no Hub access needed).

    The module computes MSE, MAE, MAPE (percent), sMAPE (percent, `200 * mean(|p - y| / (|p| + |y|))` with `0 / 0 = 0`)
    and, when `past_values` is given, MASE with a seasonal-naive in-sample scale; see its description
    (`load_forecasting_metric().description`) for the exact definitions. Its features are one float sequence per
    window, so a `[windows, horizon, channels]` array goes in as `array.reshape(windows, -1)`.

    Args:
        kwargs:
            Passed to `evaluate.load`, e.g. `keep_in_memory=True`, or `num_process`/`process_id`/`experiment_id` for
            distributed accumulation.

    Example:

    ```python
    >>> import numpy as np
    >>> from balm_hf.metrics import load_forecasting_metric

    >>> metric = load_forecasting_metric(keep_in_memory=True)
    >>> metric.add_batch(predictions=np.ones((2, 3)), references=np.zeros((2, 3)))
    >>> metric.compute()["mse"]
    1.0
    ```
    """
    return evaluate.load(str(FORECASTING_METRIC_PATH), **kwargs)


def _to_numpy(values: Any, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.is_floating_point() and values.dtype not in (torch.float32, torch.float64):
            values = values.float()  # numpy has no bfloat16
        return values.numpy()
    if isinstance(values, (np.ndarray, list, tuple)):
        return np.asarray(values)
    raise TypeError(f"`{name}` must be a numpy array, a torch.Tensor or a list, got {type(values).__name__}")


def _as_windows(values: np.ndarray, name: str) -> np.ndarray:
    """`[windows, steps, channels]` view of a `[steps]`, `[windows, steps]` or `[windows, steps, channels]` array."""
    if values.ndim == 1:
        return values[None, :, None]
    if values.ndim == 2:
        return values[:, :, None]
    if values.ndim == 3:
        return values
    raise ValueError(f"`{name}` must have 1 to 3 dimensions [windows, steps, channels], got shape {values.shape}")


def compute_forecasting_metrics(
    predictions: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    past_values: np.ndarray | torch.Tensor | None = None,
    seasonality: int = 1,
    observed_mask: np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    r"""
    MSE, MAE, MAPE, sMAPE and (with `past_values`) MASE of point forecasts, each one mean over every window, horizon
    step and channel.

    The numbers come from the `forecasting_metrics` evaluate module (loaded with [`load_forecasting_metric`]). Its
    computation runs directly on the arrays: `evaluate`'s Arrow cache, which is only needed to accumulate batches or to
    gather across processes, costs a Python object per value and would take minutes on a full test set. Use
    `load_forecasting_metric().add_batch(...)`/`.compute(...)` for that; both paths give the same numbers.

    Definitions (`p` prediction, `y` reference, `e = p - y`, means over observed entries): `mse = mean(e^2)`,
    `mae = mean(|e|)`, `mape = 100 * mean(|e| / |y|)` over entries with `y != 0`,
    `smape = 200 * mean(|e| / (|p| + |y|))` with `0 / 0 = 0`, `mase = mean(|e| / s)` with `s` the mean absolute
    seasonal difference `|x_t - x_{t-m}|` of the window's own context for that channel (`m = seasonality`; series with
    `s = 0` are left out). A metric with no usable entry is NaN; NaN predictions propagate.

    Args:
        predictions (`np.ndarray` or `torch.Tensor` of shape `[windows, horizon, channels]`):
            Forecasts. `[windows, horizon]` (one channel) and `[horizon]` (one window, one channel) are accepted too.
        references (`np.ndarray` or `torch.Tensor` of the shape of `predictions`):
            True values. NaN marks a missing value (excluded, as with `observed_mask`).
        past_values (`np.ndarray` or `torch.Tensor`, *optional*):
            The context of each window, `[windows, context_length, channels]`, with as many dimensions as
            `predictions` (`[windows, context_length]` or `[context_length]`). Needed for MASE; without it the result
            has no `"mase"` key.
        seasonality (`int`, *optional*, defaults to 1):
            Season length `m` of the MASE scale (`1`: naive forecast; e.g. `24` for hourly data with a daily cycle).
        observed_mask (`np.ndarray` or `torch.Tensor` of the shape of `references`, *optional*):
            `1` where the reference is observed, `0` where it is missing (excluded from every mean).

    Returns:
        `dict[str, float]`: `"mse"`, `"mae"`, `"mape"`, `"smape"` and, with `past_values`, `"mase"`.

    Example:

    ```python
    >>> import numpy as np
    >>> from balm_hf.metrics import compute_forecasting_metrics

    >>> compute_forecasting_metrics(np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]]))["mae"]
    1.0
    ```
    """
    prediction = _to_numpy(predictions, "predictions")
    reference = _to_numpy(references, "references")
    if prediction.shape != reference.shape:
        raise ValueError(
            f"`predictions` {prediction.shape} and `references` {reference.shape} must have the same shape"
        )
    prediction = _as_windows(prediction, "predictions")
    reference = _as_windows(reference, "references")
    windows, horizon, channels = prediction.shape
    if prediction.size == 0:
        raise ValueError(f"no values to evaluate: `predictions` has shape {tuple(np.shape(predictions))}")

    mask = None
    if observed_mask is not None:
        mask = _to_numpy(observed_mask, "observed_mask")
        if mask.shape != np.shape(references):
            raise ValueError(
                f"`observed_mask` {mask.shape} must have the shape of `references` {tuple(np.shape(references))}"
            )
        mask = mask.reshape(windows, -1)
    past = None
    if past_values is not None:
        past = _to_numpy(past_values, "past_values")
        if past.ndim != np.ndim(predictions):
            raise ValueError(
                f"`past_values` {past.shape} must have as many dimensions as `predictions` "
                f"{tuple(np.shape(predictions))}"
            )
        past = _as_windows(past, "past_values")
        if past.shape[0] != windows or past.shape[2] != channels:
            raise ValueError(
                f"`past_values` {tuple(np.shape(past_values))} must have the windows and channels of `predictions` "
                f"{tuple(np.shape(predictions))}"
            )
    if isinstance(seasonality, bool) or not isinstance(seasonality, (int, np.integer)) or seasonality < 1:
        raise ValueError(f"`seasonality` must be a positive integer, got {seasonality!r}")

    metric = load_forecasting_metric(keep_in_memory=True)
    # Each window flattened from [horizon, channels] in C order: the module's per-window layout.
    results = metric._compute(
        predictions=prediction.reshape(windows, horizon * channels),
        references=reference.reshape(windows, horizon * channels),
        past_values=past,
        seasonality=int(seasonality),
        observed_mask=mask,
    )
    return {name: float(value) for name, value in results.items()}


def _select_predictions(predictions: Any, prediction_index: int | None) -> np.ndarray:
    """The forecast among what `Trainer` gathered: the one array, or the output at `prediction_index` of a tuple."""
    if not isinstance(predictions, (tuple, list)):
        return np.asarray(predictions)
    if prediction_index is None:
        shapes = [tuple(getattr(item, "shape", ())) for item in predictions]
        raise ValueError(
            f"the model returned {len(predictions)} outputs (shapes {shapes}) instead of the forecast alone: list "
            "every output field but the forecast in the model config's `keys_to_ignore_at_inference` (Trainer then "
            "gathers the forecast only), or pass `prediction_index`"
        )
    if not -len(predictions) <= prediction_index < len(predictions):
        raise ValueError(f"`prediction_index`={prediction_index} is out of range for {len(predictions)} outputs")
    return np.asarray(predictions[prediction_index])


def make_compute_metrics(
    metrics: Sequence[str] = ("mse", "mae"),
    seasonality: int = 1,
    prediction_index: int | None = None,
) -> Callable[[EvalPrediction], dict[str, float]]:
    r"""
    Build a `compute_metrics` function for `transformers.Trainer`.

    Set up the `Trainer` so that it hands the forecasts and targets over:

    - `TrainingArguments(label_names=["future_values"], prediction_loss_only=False)`: our models have no argument
      named like a label, so without `label_names` the Trainer finds no labels and never calls `compute_metrics`.
      With `label_names=["future_values", "future_observed_mask"]` the mask is passed too and masked entries are left
      out of every metric.
    - Predictions: `Trainer` leaves out the output fields that the model config lists in
      `keys_to_ignore_at_inference` (for [`BalmTsfForForecasting`]: every field but `prediction_outputs`), so the
      forecast arrives alone. A model whose config does not list them hands over a tuple of outputs: pass the
      forecast's position as `prediction_index`.
    - MASE needs the context windows: add `include_for_metrics=["inputs"]` to the `TrainingArguments` (the inputs are
      `past_values`, the models' `main_input_name`).

    Every metric is one mean over all evaluated windows, horizon steps and channels (see
    [`compute_forecasting_metrics`]). Batches are not dropped: with `dataloader_drop_last=False` (the default) every
    window counts.

    Args:
        metrics (`Sequence[str]`, *optional*, defaults to `("mse", "mae")`):
            Names to return, among `"mse"`, `"mae"`, `"mape"`, `"smape"` and `"mase"`.
        seasonality (`int`, *optional*, defaults to 1):
            Season length of the MASE scale.
        prediction_index (`int`, *optional*):
            Position of the forecast in the tuple of gathered outputs, for a model whose config does not list its other
            outputs in `keys_to_ignore_at_inference`.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: the `compute_metrics` function.
    """
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        raise TypeError(f"`metrics` must be a sequence of metric names, got {metrics!r}")
    unknown = [name for name in metrics if name not in FORECASTING_METRIC_NAMES]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {FORECASTING_METRIC_NAMES}, got {list(metrics)}")
    if isinstance(seasonality, bool) or not isinstance(seasonality, int) or seasonality < 1:
        raise ValueError(f"`seasonality` must be a positive integer, got {seasonality!r}")
    names = tuple(metrics)

    def compute_metrics(eval_prediction: EvalPrediction) -> dict[str, float]:
        labels = eval_prediction.label_ids
        observed_mask = None
        if isinstance(labels, (tuple, list)):
            if len(labels) != 2:
                raise ValueError(
                    f"expected the labels `future_values` and optionally `future_observed_mask`, got {len(labels)} "
                    "label arrays; check `label_names`"
                )
            labels, observed_mask = labels
        if labels is None:
            raise ValueError("no labels reached compute_metrics: set `label_names=['future_values']`")
        labels = np.asarray(labels)
        predictions = _select_predictions(eval_prediction.predictions, prediction_index)
        past_values: np.ndarray | None = None
        if "mase" in names:
            inputs = eval_prediction.inputs
            if inputs is None:
                raise ValueError("MASE needs the context windows: set `include_for_metrics=['inputs']`")
            past_values = np.asarray(inputs) if isinstance(inputs, tuple) else inputs
        results = compute_forecasting_metrics(
            predictions,
            labels,
            past_values=past_values,
            seasonality=seasonality,
            observed_mask=observed_mask,
        )
        return {name: results[name] for name in names}

    return compute_metrics


__all__ = [
    "FORECASTING_METRIC_NAMES",
    "FORECASTING_METRIC_PATH",
    "compute_forecasting_metrics",
    "load_forecasting_metric",
    "make_compute_metrics",
]
