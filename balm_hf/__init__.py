"""balm-tsf: BALM-TSF time series forecasting as a Hugging Face model."""

from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction

from .artifacts import validate_folder
from .collator import BalmTsfDataCollator
from .data import BalmTsfPreprocessor, load_forecasting_dataset
from .forecasting import BalmTsfForecaster, forecast, plot_forecast
from .hub import push_folder_to_hub, render_model_card
from .metrics import compute_forecasting_metrics, load_forecasting_metric, make_compute_metrics
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
from .training import BalmTsfTrainer, ExperimentConfig, evaluate_pretrained, load_experiment_config, run_experiment


__version__ = "0.1.0"

AutoConfig.register(BalmTsfConfig.model_type, BalmTsfConfig, exist_ok=True)
AutoModel.register(BalmTsfConfig, BalmTsfModel, exist_ok=True)
AutoModelForTimeSeriesPrediction.register(BalmTsfConfig, BalmTsfForForecasting, exist_ok=True)
# Saved folders carry `auto_map` and the modeling code: they load with `trust_remote_code=True` without the package.
BalmTsfConfig.register_for_auto_class()
BalmTsfModel.register_for_auto_class("AutoModel")
BalmTsfForForecasting.register_for_auto_class("AutoModelForTimeSeriesPrediction")

__all__ = [
    "DEFAULT_BACKBONE",
    "FAST_MODE_SWITCHES",
    "PAPER_BACKBONE",
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
    "compute_forecasting_metrics",
    "evaluate_pretrained",
    "forecast",
    "load_backbone",
    "load_experiment_config",
    "load_forecasting_dataset",
    "load_forecasting_metric",
    "make_compute_metrics",
    "plot_forecast",
    "push_folder_to_hub",
    "render_model_card",
    "run_experiment",
    "validate_folder",
]
