"""`evaluate` metric for point forecasts: MSE, MAE, MAPE, sMAPE and MASE over windows, horizon steps and channels."""

# This script is loaded by path with `evaluate.load(<this folder>)`, which copies it on its own into the evaluate
# modules cache: it must stay self-contained (no relative or `balm_hf` imports).

import datasets
import evaluate
import numpy as np


_CITATION = """\
@inproceedings{zhou2025balmtsf,
  title={BALM-TSF: Balanced Multimodal Alignment for LLM-Based Time Series Forecasting},
  author={Zhou, Shiqiao and Sch{\\"o}ner, Holger and Lyu, Huanbo and Fouch{\\'e}, Edouard and Wang, Shuo},
  booktitle={Proceedings of the 34th ACM International Conference on Information and Knowledge Management (CIKM)},
  year={2025}
}
@article{hyndman2006another,
  title={Another look at measures of forecast accuracy},
  author={Hyndman, Rob J. and Koehler, Anne B.},
  journal={International Journal of Forecasting},
  volume={22},
  number={4},
  pages={679--688},
  year={2006}
}
"""

_DESCRIPTION = """\
Point-forecast errors averaged over every window, horizon step and channel (one global mean over all observed
entries, not a mean of per-window means). With `p` the prediction, `y` the reference and `e = p - y`:

- `mse`   = mean(e^2)
- `mae`   = mean(|e|)
- `mape`  = 100 * mean(|e| / |y|), in percent, over entries with `y != 0` (entries with `y == 0` are left out).
- `smape` = 200 * mean(|e| / (|p| + |y|)), in percent (0 to 200), with `0 / 0 = 0` (both `p` and `y` zero).
- `mase`  = mean(|e| / s), the standard MASE of Hyndman & Koehler (2006): `s` is the in-sample mean absolute error
  of the seasonal-naive forecast over the series' whole history before the forecast origin (`insample_values`),
  `s = mean_t |x_t - x_{t - m}|` for that window and channel, with `m = seasonality` (`m = 1`: naive forecast).
  Only returned when `insample_values` is given.
- `mase_context` = mean(|e| / s_c), the same ratio with `s_c` computed on the window's own context (`past_values`,
  the `context_length` values the model read) instead of the whole history. It is not the standard MASE (its scale
  changes with the context length); only returned when `past_values` is given.

For both, entries of series whose scale is zero or undefined (a constant or all-missing history) are left out.

Missing references: a NaN in `references` marks an unobserved entry, and so does a `0` in `observed_mask`; such
entries are excluded from every mean. NaN in `predictions` is not masked: it propagates into the result. A metric
whose set of usable entries is empty is NaN.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` or `np.ndarray`):
        Forecasts, one sequence of floats per window: a `[windows, horizon]` array, or a `[windows, horizon, channels]`
        array with each window flattened in C order (`array.reshape(windows, -1)`). All windows must have the same
        length. Values are stored as float32.
    references (`list` or `np.ndarray`):
        True values, laid out as `predictions`. NaN marks a missing value.
    past_values (`np.ndarray`, *optional*):
        Context of each window, `[windows, context_length, channels]` (`[windows, context_length]` for one channel),
        needed for `mase_context`. Its channel count tells how each flattened window splits into
        `[horizon, channels]`. NaN entries are skipped when the scale is computed.
    insample_values (`np.ndarray` or `list` of `np.ndarray`, *optional*):
        The whole history of each window's series before the forecast origin, needed for `mase`: one
        `[history_length, channels]` (or `[history_length]`) array per window, lengths may differ, or one
        `[windows, history_length, channels]` array (NaN-padded in front). NaN entries are skipped.
    seasonality (`int`, *optional*, defaults to 1):
        Season length `m` of the seasonal-naive scales. Must be smaller than the context and history lengths.
    observed_mask (`np.ndarray`, *optional*):
        As many entries as `references` (any shape, read in C order), `1` where the reference is observed and `0`
        where it is missing.
Returns:
    `dict`: `mse`, `mae`, `mape`, `smape` (floats), `mase` when `insample_values` is given and `mase_context` when
    `past_values` is given.
Examples:
    >>> import numpy as np
    >>> metric = evaluate.load("balm_hf/metrics/forecasting_metrics")  # doctest: +SKIP
    >>> metric.compute(predictions=np.ones((2, 3)), references=np.zeros((2, 3)))  # doctest: +SKIP
    {'mse': 1.0, 'mae': 1.0, 'mape': nan, 'smape': 200.0}
"""

# One row per window: encoding and reading back cost one Python step per window, not per value (a flat `Value` column
# costs about 2 us per value, which is minutes on a full test set). `evaluate` only allows its numpy output format
# with flat `Value` features, so `_compute` receives lists and converts them once.
_FEATURES = datasets.Features(
    {
        "predictions": datasets.Sequence(datasets.Value("float32")),
        "references": datasets.Sequence(datasets.Value("float32")),
    }
)


# Windows per step of the accumulation loop: bounds the float64 temporaries on full test sets.
_CHUNK_WINDOWS = 4096
_METRICS = ("mse", "mae", "mape", "smape", "mase", "mase_context")


def _as_matrix(values, name: str) -> np.ndarray:
    """`[windows, values per window]` floating array of the windows (float32 input stays float32)."""
    try:
        array = np.asarray(values)
        if not np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float64)
    except ValueError:
        raise ValueError(f"the windows of `{name}` must all have the same length") from None
    if array.ndim != 2:
        raise ValueError(f"`{name}` must hold one sequence of floats per window, got shape {array.shape}")
    return array


def _check_seasonality(seasonality) -> None:
    if isinstance(seasonality, bool) or not isinstance(seasonality, (int, np.integer)) or seasonality < 1:
        raise ValueError(f"`seasonality` must be a positive integer, got {seasonality!r}")


def _naive_scale(values: np.ndarray, seasonality: int) -> np.ndarray:
    """Mean absolute seasonal difference over the time axis (axis -2) skipping NaN; NaN where zero or undefined."""
    seasonal_error = np.abs(values[..., seasonality:, :] - values[..., :-seasonality, :])
    counts = (~np.isnan(seasonal_error)).sum(axis=-2)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.nansum(seasonal_error, axis=-2) / counts
    return np.where(scale > 0, scale, np.nan)


def _check_layout(windows: int, channels: int, shape: tuple[int, int], name: str, given_shape) -> None:
    if windows != shape[0] or channels == 0 or shape[1] % channels != 0:
        raise ValueError(
            f"`predictions` {shape} cannot be laid out as [windows, horizon, channels] with the {windows} windows "
            f"and {channels} channels of `{name}` {given_shape}"
        )


def _seasonal_scale(past_values, seasonality, shape: tuple[int, int]) -> np.ndarray:
    """Seasonal-naive in-sample MAE of every (window, channel) context, `[windows, channels]`; NaN where undefined."""
    _check_seasonality(seasonality)
    past = np.asarray(past_values, dtype=np.float64)
    if past.ndim == 2:
        past = past[:, :, None]  # [windows x context_length] is one channel
    if past.ndim != 3:
        raise ValueError(
            f"`past_values` must be [windows, context_length, channels] or [windows, context_length], got "
            f"shape {np.shape(past_values)}"
        )
    windows, context_length, channels = past.shape
    _check_layout(windows, channels, shape, "past_values", np.shape(past_values))
    if context_length <= seasonality:
        raise ValueError(
            f"`seasonality`={seasonality} needs a context longer than the season, got context length {context_length}"
        )
    return _naive_scale(past, seasonality)


def _history_scale(insample_values, seasonality, shape: tuple[int, int]) -> np.ndarray:
    """Seasonal-naive MAE of every (window, channel) whole history, `[windows, channels]`; NaN where undefined."""
    _check_seasonality(seasonality)
    if isinstance(insample_values, np.ndarray) and insample_values.ndim == 3:
        histories = list(insample_values)
    elif isinstance(insample_values, (list, tuple)):
        histories = list(insample_values)
    else:
        raise ValueError(
            "`insample_values` must be a list with one [history_length, channels] array per window or a "
            f"[windows, history_length, channels] array, got {type(insample_values).__name__} of shape "
            f"{np.shape(insample_values)}"
        )
    if len(histories) != shape[0]:
        raise ValueError(f"`insample_values` has {len(histories)} windows of history for {shape[0]} windows")
    scales = []
    channels = 0
    for index, history in enumerate(histories):
        values = np.asarray(history, dtype=np.float64)
        if values.ndim == 1:
            values = values[:, None]
        if values.ndim != 2:
            raise ValueError(
                f"`insample_values` of window {index} must be [history_length, channels], got shape {values.shape}"
            )
        if len(values) <= seasonality:
            raise ValueError(
                f"`insample_values` of window {index} holds {len(values)} values: the seasonal-naive scale with "
                f"`seasonality`={seasonality} needs a longer history"
            )
        if index == 0:
            channels = values.shape[1]
            _check_layout(len(histories), channels, shape, "insample_values", values.shape)
        elif values.shape[1] != channels:
            raise ValueError(
                f"`insample_values` of window {index} has {values.shape[1]} channels, window 0 has {channels}"
            )
        scales.append(_naive_scale(values, seasonality))
    return np.stack(scales)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ForecastingMetrics(evaluate.Metric):
    """MSE, MAE, MAPE, sMAPE and MASE of point forecasts."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES,
            reference_urls=["https://otexts.com/fpp3/accuracy.html", "https://arxiv.org/abs/2509.00622"],
        )

    def _compute(
        self, predictions, references, past_values=None, seasonality: int = 1, observed_mask=None, insample_values=None
    ) -> dict:
        prediction = _as_matrix(predictions, "predictions")
        reference = _as_matrix(references, "references")
        if prediction.shape != reference.shape:
            raise ValueError(
                f"`predictions` {prediction.shape} and `references` {reference.shape} must have the same shape"
            )
        if prediction.size == 0:
            raise ValueError("no values to evaluate: `predictions` is empty")
        mask = None
        if observed_mask is not None:
            mask = np.asarray(observed_mask)
            if mask.size != reference.size:
                raise ValueError(f"`observed_mask` has {mask.size} entries, `references` {reference.size}")
            mask = mask.reshape(reference.shape)
        _check_seasonality(seasonality)
        scales = {}
        if insample_values is not None:
            scales["mase"] = _history_scale(insample_values, seasonality, prediction.shape)
        if past_values is not None:
            scales["mase_context"] = _seasonal_scale(past_values, seasonality, prediction.shape)

        sums = dict.fromkeys(_METRICS, 0.0)
        counts = dict.fromkeys(_METRICS, 0)

        def add(name: str, values: np.ndarray, valid: np.ndarray) -> None:
            sums[name] += float(values[valid].sum())
            counts[name] += int(valid.sum())

        for start in range(0, prediction.shape[0], _CHUNK_WINDOWS):
            rows = slice(start, start + _CHUNK_WINDOWS)
            p = prediction[rows].astype(np.float64)
            y = reference[rows].astype(np.float64)
            observed = ~np.isnan(y)
            if mask is not None:
                observed &= mask[rows] != 0
            error = np.abs(p - y)
            with np.errstate(divide="ignore", invalid="ignore"):
                absolute_sum = np.abs(p) + np.abs(y)
                # 0 / 0 counts as 0, but a NaN prediction still reaches the mean through `error`.
                symmetric = np.where(absolute_sum > 0, error / absolute_sum, error)
                add("mse", error**2, observed)
                add("mae", error, observed)
                add("mape", error / np.abs(y), observed & (y != 0))
                add("smape", symmetric, observed)
                for name, scale in scales.items():
                    chunk_scale = scale[rows]  # [windows x channels]
                    # Each window is flattened from [horizon, channels], so entry j belongs to channel j % channels.
                    entry_scale = np.tile(chunk_scale, (1, p.shape[1] // chunk_scale.shape[1]))
                    add(name, error / entry_scale, observed & ~np.isnan(entry_scale))

        factors = {"mse": 1.0, "mae": 1.0, "mape": 100.0, "smape": 200.0, "mase": 1.0, "mase_context": 1.0}
        names = [name for name in _METRICS if name in ("mse", "mae", "mape", "smape") or name in scales]
        return {name: factors[name] * sums[name] / counts[name] if counts[name] else float("nan") for name in names}
