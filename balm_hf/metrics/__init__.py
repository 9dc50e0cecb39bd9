"""Forecasting metrics (MSE, MAE, MAPE, sMAPE, MASE) through a local `evaluate` module, the weighted quantile loss of
probabilistic forecasts, and `Trainer` glue."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import evaluate
import numpy as np
import torch
from transformers import EvalPrediction


FORECASTING_METRIC_PATH = Path(__file__).resolve().parent / "forecasting_metrics"
FORECASTING_METRIC_NAMES = ("mse", "mae", "mape", "smape", "mase", "mase_context")


def load_forecasting_metric(**kwargs: Any) -> evaluate.EvaluationModule:
    r"""
    Load the package's `forecasting_metrics` evaluate module from its folder (no Hub access needed).

    The module computes MSE, MAE, MAPE (percent), sMAPE (percent, `200 * mean(|p - y| / (|p| + |y|))` with
    `0 / 0 = 0`), with `insample_values` (each series' whole history before the forecast origin) the standard MASE,
    and with `past_values` (each window's context) `mase_context`; see its description
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


@functools.lru_cache(maxsize=1)
def _metric_module() -> evaluate.EvaluationModule:
    """The module [`compute_forecasting_metrics`] computes with, loaded once (its `_compute` keeps no state)."""
    return load_forecasting_metric(keep_in_memory=True)


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
    insample_values: Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor | None = None,
) -> dict[str, float]:
    r"""
    MSE, MAE, MAPE, sMAPE and MASE of point forecasts, each one mean over every window, horizon step and channel.

    The numbers come from the `forecasting_metrics` evaluate module (loaded with [`load_forecasting_metric`]). Its
    computation runs directly on the arrays: `evaluate`'s Arrow cache, which is only needed to accumulate batches or to
    gather across processes, costs a Python object per value and would take minutes on a full test set. Use
    `load_forecasting_metric().add_batch(...)`/`.compute(...)` for that; both paths give the same numbers.

    Definitions (`p` prediction, `y` reference, `e = p - y`, means over observed entries): `mse = mean(e^2)`,
    `mae = mean(|e|)`, `mape = 100 * mean(|e| / |y|)` over entries with `y != 0`,
    `smape = 200 * mean(|e| / (|p| + |y|))` with `0 / 0 = 0`, and two scaled errors `mean(|e| / s)` that differ in
    where the scale `s` (a mean absolute seasonal difference `|x_t - x_{t-m}|`, `m = seasonality`, per window and
    channel) is measured:

    - `mase`, the standard MASE (Hyndman & Koehler, 2006): on the series' whole history before the forecast origin,
      `insample_values`;
    - `mase_context`: on the window's own context, `past_values` (the `context_length` values the model read). It is
      not the standard MASE (its scale depends on the context length), but it is what a `Trainer` evaluation can
      compute, since it sees context windows only.

    Series whose scale is 0 are left out of the scaled errors. A metric with no usable entry is NaN; NaN predictions
    propagate.

    Args:
        predictions (`np.ndarray` or `torch.Tensor` of shape `[windows, horizon, channels]`):
            Forecasts. `[windows, horizon]` (one channel) and `[horizon]` (one window, one channel) are accepted too.
        references (`np.ndarray` or `torch.Tensor` of the shape of `predictions`):
            True values. NaN marks a missing value (excluded, as with `observed_mask`).
        past_values (`np.ndarray` or `torch.Tensor`, *optional*):
            The context of each window, `[windows, context_length, channels]`, with as many dimensions as
            `predictions` (`[windows, context_length]` or `[context_length]`). Without it the result has no
            `"mase_context"` key.
        seasonality (`int`, *optional*, defaults to 1):
            Season length `m` of the scales (`1`: naive forecast; e.g. `24` for hourly data with a daily cycle).
        observed_mask (`np.ndarray` or `torch.Tensor` of the shape of `references`, *optional*):
            `1` where the reference is observed, `0` where it is missing (excluded from every mean).
        insample_values (sequence of `np.ndarray` or `torch.Tensor`, or one array, *optional*):
            The whole history of each window's series up to the forecast origin: one `[history_length, channels]`
            array per window (`[history_length]` for one channel; the lengths may differ), or one
            `[windows, history_length, channels]` array, NaN-padded in front where histories are shorter. NaN
            entries are skipped. Without it the result has no `"mase"` key.

    Returns:
        `dict[str, float]`: `"mse"`, `"mae"`, `"mape"`, `"smape"`, `"mase"` with `insample_values` and
        `"mase_context"` with `past_values`.

    Example:

    ```python
    >>> import numpy as np
    >>> from balm_hf.metrics import compute_forecasting_metrics

    >>> compute_forecasting_metrics(np.array([[1.0, 3.0]]), np.array([[2.0, 2.0]]))["mae"]
    1.0
    >>> history = np.array([0.0, 1.0, 3.0, 2.0])  # naive errors 1, 2, 1: scale 4/3
    >>> compute_forecasting_metrics(np.array([[4.0]]), np.array([[2.0]]), insample_values=[history])["mase"]
    1.5
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
    insample: list[np.ndarray] | np.ndarray | None = None
    if insample_values is not None:
        if isinstance(insample_values, (np.ndarray, torch.Tensor)):
            insample = _to_numpy(insample_values, "insample_values")
            if insample.ndim == 2 and channels == 1:
                insample = insample[:, :, None]
            if insample.ndim != 3:
                raise ValueError(
                    "`insample_values` as one array must be [windows, history_length, channels], got shape "
                    f"{insample.shape}"
                )
        elif isinstance(insample_values, Sequence) and not isinstance(insample_values, str):
            insample = [_to_numpy(history, "insample_values") for history in insample_values]
            for index, history in enumerate(insample):
                history_channels = 1 if history.ndim == 1 else history.shape[-1]
                if history.ndim > 2 or history_channels != channels:
                    raise ValueError(
                        f"`insample_values` of window {index} has shape {history.shape}: it must be "
                        f"[history_length, {channels}] for the {channels} channels of `predictions`"
                    )
        else:
            raise TypeError(
                "`insample_values` must be a sequence of per-window arrays or one array, got "
                f"{type(insample_values).__name__}"
            )

    metric = _metric_module()
    # Each window flattened from [horizon, channels] in C order: the module's per-window layout.
    results = metric._compute(
        predictions=prediction.reshape(windows, horizon * channels),
        references=reference.reshape(windows, horizon * channels),
        past_values=past,
        seasonality=int(seasonality),
        observed_mask=mask,
        insample_values=insample,
    )
    return {name: float(value) for name, value in results.items()}


def weighted_quantile_loss(
    quantile_predictions: np.ndarray | torch.Tensor,
    references: np.ndarray | torch.Tensor,
    quantile_levels: Sequence[float],
    observed_mask: np.ndarray | torch.Tensor | None = None,
) -> float:
    r"""
    Weighted quantile loss (WQL) of quantile forecasts, as GluonTS (`mean_weighted_sum_quantile_loss`) and Chronos
    report it: for each level `q`, twice the pinball loss summed over every series, step and channel, divided by the
    sum of `|y|` over the same entries, then the mean over the levels:

    `WQL = mean_q [ 2 * sum |(y - p_q) * (1{y <= p_q} - q)| / sum |y| ]`

    Lower is better; a forecast of the median alone (`q = 0.5`) gives `sum |y - p| / sum |y|` (the weighted absolute
    percentage error). The sums run over observed entries only: NaN references and `0` in `observed_mask` are left
    out of both sums. NaN predictions propagate; with `sum |y| = 0` (or no observed entry) the result is NaN.

    Args:
        quantile_predictions (`np.ndarray` or `torch.Tensor`):
            The quantiles, shaped like `references` plus a last axis of one entry per level (e.g.
            `[series, horizon, channels, levels]`).
        references (`np.ndarray` or `torch.Tensor`):
            True values, any shape. NaN marks a missing value; infinite values are an error.
        quantile_levels (`Sequence[float]`):
            The levels of the last axis of `quantile_predictions`, distinct, each strictly between 0 and 1.
        observed_mask (`np.ndarray` or `torch.Tensor` of the shape of `references`, *optional*):
            `1` where the reference is observed, `0` where it is missing.

    Returns:
        `float`: the WQL.

    Example:

    ```python
    >>> import numpy as np
    >>> from balm_hf.metrics import weighted_quantile_loss

    >>> quantiles = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, 6.0]])  # two steps, levels 0.1 / 0.5 / 0.9
    >>> round(weighted_quantile_loss(quantiles, np.array([2.0, 4.0]), [0.1, 0.5, 0.9]), 6)
    0.122222
    ```
    """
    quantiles = _to_numpy(quantile_predictions, "quantile_predictions").astype(np.float64)
    reference = _to_numpy(references, "references").astype(np.float64)
    if isinstance(quantile_levels, (str, bytes)) or not isinstance(quantile_levels, (Sequence, np.ndarray)):
        raise TypeError(f"`quantile_levels` must be a sequence of floats, got {quantile_levels!r}")
    levels = np.asarray(quantile_levels, dtype=np.float64)
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(f"`quantile_levels` must hold at least one level, got {list(quantile_levels)}")
    if not np.all((levels > 0) & (levels < 1)):
        raise ValueError(f"`quantile_levels` must lie strictly between 0 and 1, got {levels.tolist()}")
    if len(np.unique(levels)) != len(levels):
        raise ValueError(f"`quantile_levels` must be distinct, got {levels.tolist()}")
    if quantiles.shape != reference.shape + (len(levels),):
        raise ValueError(
            f"`quantile_predictions` of shape {quantiles.shape} must have the shape of `references` "
            f"{reference.shape} plus a last axis of the {len(levels)} quantile levels {levels.tolist()}"
        )
    if reference.size == 0:
        raise ValueError(f"no values to evaluate: `references` has shape {reference.shape}")
    if np.isinf(reference).any():
        position = tuple(int(i) for i in np.argwhere(np.isinf(reference))[0])
        raise ValueError(f"`references` holds an infinite value at index {position}")
    observed = ~np.isnan(reference)
    if observed_mask is not None:
        mask = _to_numpy(observed_mask, "observed_mask")
        if mask.shape != reference.shape:
            raise ValueError(f"`observed_mask` {mask.shape} must have the shape of `references` {reference.shape}")
        observed &= mask != 0
    y = np.where(observed, reference, 0.0)[..., None]
    indicator = (y <= quantiles).astype(np.float64)
    pinball = np.abs((y - quantiles) * (indicator - levels))
    pinball = np.where(observed[..., None], pinball, 0.0)
    # NaN predictions of observed entries must reach the result: np.where above keeps them.
    losses = 2.0 * pinball.reshape(-1, len(levels)).sum(axis=0)
    denominator = float(np.abs(y).sum())
    if denominator == 0:
        return float("nan")
    return float(np.mean(losses / denominator))


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
    - `mase_context` needs the context windows: add `include_for_metrics=["inputs"]` to the `TrainingArguments` (the
      inputs are `past_values`, the models' `main_input_name`). The standard `"mase"` is not available here: its
      scale comes from each series' whole history, which the Trainer never sees; compute it with
      [`compute_forecasting_metrics`] and `insample_values`, or with [`~balm_hf.backtest`].

    Every metric is one mean over all evaluated windows, horizon steps and channels (see
    [`compute_forecasting_metrics`]). Batches are not dropped: with `dataloader_drop_last=False` (the default) every
    window counts.

    Args:
        metrics (`Sequence[str]`, *optional*, defaults to `("mse", "mae")`):
            Names to return, among `"mse"`, `"mae"`, `"mape"`, `"smape"` and `"mase_context"`.
        seasonality (`int`, *optional*, defaults to 1):
            Season length of the `mase_context` scale.
        prediction_index (`int`, *optional*):
            Position of the forecast in the tuple of gathered outputs, for a model whose config does not list its other
            outputs in `keys_to_ignore_at_inference`.

    Returns:
        `Callable[[EvalPrediction], dict[str, float]]`: the `compute_metrics` function.
    """
    if isinstance(metrics, str) or not isinstance(metrics, Sequence):
        raise TypeError(f"`metrics` must be a sequence of metric names, got {metrics!r}")
    if "mase" in metrics:
        raise ValueError(
            "the standard 'mase' scales by each series' whole history before the forecast origin, which a Trainer "
            "evaluation does not see; ask for 'mase_context' (scaled by each window's own context), or compute "
            "'mase' with compute_forecasting_metrics(..., insample_values=...) or balm_hf.backtest"
        )
    allowed = tuple(name for name in FORECASTING_METRIC_NAMES if name != "mase")
    unknown = [name for name in metrics if name not in allowed]
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {allowed}, got {list(metrics)}")
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
        if "mase_context" in names:
            inputs = eval_prediction.inputs
            if inputs is None:
                raise ValueError("mase_context needs the context windows: set `include_for_metrics=['inputs']`")
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
    "weighted_quantile_loss",
]
