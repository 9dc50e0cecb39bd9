"""BALM-TSF: the configuration, the network and its losses, and the backbone loader.

These files are exactly what a saved checkpoint carries for `trust_remote_code=True`; they import only each other,
`torch` and `transformers`.
"""

from .backbones import DEFAULT_BACKBONE, PAPER_BACKBONE, SMOLLM2_BACKBONE, load_backbone
from .configuration_balm_tsf import FAST_MODE_SWITCHES, PROMPT_TEMPLATES, BalmTsfConfig
from .modeling_balm_tsf import (
    BalmTsfForForecasting,
    BalmTsfForForecastingOutput,
    BalmTsfModel,
    BalmTsfModelOutput,
    BalmTsfPreTrainedModel,
)


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
