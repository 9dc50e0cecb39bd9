"""balm-tsf: BALM-TSF time series forecasting as a Hugging Face model.

The top-level names are imported on first use (PEP 562 `__getattr__`), so that `import balm_hf` and the `balm-tsf`
command's `--help` do not import torch. Using a model or config class imports `balm_hf.models.balm_tsf`, which
registers `balm_tsf` with the transformers auto-classes.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


__version__ = "0.1.0"

# Each exported name and the submodule that defines it.
_EXPORTS: dict[str, str] = {
    "validate_folder": "artifacts",
    "BacktestResult": "backtesting",
    "backtest": "backtesting",
    "plot_backtest": "backtesting",
    "BalmTsfDataCollator": "collator",
    "BalmTsfPreprocessor": "data",
    "load_forecasting_dataset": "data",
    "BalmTsfForecaster": "forecasting",
    "forecast": "forecasting",
    "plot_forecast": "forecasting",
    "push_folder_to_hub": "hub",
    "render_model_card": "hub",
    "compute_forecasting_metrics": "metrics",
    "load_forecasting_metric": "metrics",
    "make_compute_metrics": "metrics",
    "weighted_quantile_loss": "metrics",
    "DEFAULT_BACKBONE": "models.balm_tsf",
    "FAST_MODE_SWITCHES": "models.balm_tsf",
    "PAPER_BACKBONE": "models.balm_tsf",
    "BalmTsfConfig": "models.balm_tsf",
    "BalmTsfForForecasting": "models.balm_tsf",
    "BalmTsfForForecastingOutput": "models.balm_tsf",
    "BalmTsfModel": "models.balm_tsf",
    "BalmTsfModelOutput": "models.balm_tsf",
    "BalmTsfPreTrainedModel": "models.balm_tsf",
    "load_backbone": "models.balm_tsf",
    "BalmTsfTrainer": "training",
    "ExperimentConfig": "training",
    "evaluate_pretrained": "training",
    "load_experiment_config": "training",
    "run_experiment": "training",
}

# Submodules reachable as attributes (`balm_hf.training.run_experiment`) after a bare `import balm_hf`.
_SUBMODULES = frozenset(
    ("artifacts", "backtesting", "cli", "conversion", "data", "forecasting", "hub", "metrics", "models", "training")
)

__all__ = [
    "DEFAULT_BACKBONE",
    "FAST_MODE_SWITCHES",
    "PAPER_BACKBONE",
    "BacktestResult",
    "BalmTsfConfig",
    "BalmTsfDataCollator",
    "BalmTsfForecaster",
    "BalmTsfForForecasting",
    "BalmTsfForForecastingOutput",
    "BalmTsfModel",
    "BalmTsfModelOutput",
    "BalmTsfPreTrainedModel",
    "BalmTsfPreprocessor",
    "BalmTsfTrainer",
    "ExperimentConfig",
    "backtest",
    "compute_forecasting_metrics",
    "evaluate_pretrained",
    "forecast",
    "load_backbone",
    "load_experiment_config",
    "load_forecasting_dataset",
    "load_forecasting_metric",
    "make_compute_metrics",
    "plot_backtest",
    "plot_forecast",
    "push_folder_to_hub",
    "render_model_card",
    "run_experiment",
    "validate_folder",
    "weighted_quantile_loss",
]

if TYPE_CHECKING:
    from .artifacts import validate_folder
    from .backtesting import BacktestResult, backtest, plot_backtest
    from .collator import BalmTsfDataCollator
    from .data import BalmTsfPreprocessor, load_forecasting_dataset
    from .forecasting import BalmTsfForecaster, forecast, plot_forecast
    from .hub import push_folder_to_hub, render_model_card
    from .metrics import (
        compute_forecasting_metrics,
        load_forecasting_metric,
        make_compute_metrics,
        weighted_quantile_loss,
    )
    from .models.balm_tsf import (
        DEFAULT_BACKBONE,
        FAST_MODE_SWITCHES,
        PAPER_BACKBONE,
        BalmTsfConfig,
        BalmTsfForForecasting,
        BalmTsfForForecastingOutput,
        BalmTsfModel,
        BalmTsfModelOutput,
        BalmTsfPreTrainedModel,
        load_backbone,
    )
    from .training import (
        BalmTsfTrainer,
        ExperimentConfig,
        evaluate_pretrained,
        load_experiment_config,
        run_experiment,
    )


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module_name}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
