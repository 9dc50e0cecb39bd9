"""BALM-TSF: the configuration, the network and its losses, and the backbone loader.

These files are exactly what a saved checkpoint carries for `trust_remote_code=True`; they import only each other,
`torch` and `transformers`. Importing this package registers `balm_tsf` with the transformers auto-classes
(`AutoConfig`, `AutoModel`, `AutoModelForTimeSeriesPrediction`), and marks the classes so that saved folders carry
`auto_map` and load with `trust_remote_code=True` without the package.
"""

from transformers import AutoConfig, AutoModel, AutoModelForTimeSeriesPrediction

from .backbones import DEFAULT_BACKBONE, PAPER_BACKBONE, SMOLLM2_BACKBONE, load_backbone
from .configuration_balm_tsf import FAST_MODE_SWITCHES, PROMPT_TEMPLATES, BalmTsfConfig
from .modeling_balm_tsf import (
    BalmTsfForForecasting,
    BalmTsfForForecastingOutput,
    BalmTsfModel,
    BalmTsfModelOutput,
    BalmTsfPreTrainedModel,
)


AutoConfig.register(BalmTsfConfig.model_type, BalmTsfConfig, exist_ok=True)
AutoModel.register(BalmTsfConfig, BalmTsfModel, exist_ok=True)
AutoModelForTimeSeriesPrediction.register(BalmTsfConfig, BalmTsfForForecasting, exist_ok=True)
BalmTsfConfig.register_for_auto_class()
BalmTsfModel.register_for_auto_class("AutoModel")
BalmTsfForForecasting.register_for_auto_class("AutoModelForTimeSeriesPrediction")

__all__ = [
    "DEFAULT_BACKBONE",
    "FAST_MODE_SWITCHES",
    "PAPER_BACKBONE",
    "PROMPT_TEMPLATES",
    "SMOLLM2_BACKBONE",
    "BalmTsfConfig",
    "BalmTsfForForecasting",
    "BalmTsfForForecastingOutput",
    "BalmTsfModel",
    "BalmTsfModelOutput",
    "BalmTsfPreTrainedModel",
    "load_backbone",
]
