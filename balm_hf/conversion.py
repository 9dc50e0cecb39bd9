"""Conversion of checkpoints of the authors' original BALM-TSF implementation."""

from __future__ import annotations

from collections.abc import Mapping

import torch


# Trainable tensors of the original `models/BALM.py` and their names in `BalmTsfForForecasting`.
ORIGINAL_TO_BALM_HF = {
    "learnable_prompt": "model.text_encoder.learnable_prompt",
    "patch_embedding.value_embedding.tokenConv.weight": "model.patch_embedding.conv.weight",
    "tsprojection.weight": "model.mapping.weight",
    "tsprojection.bias": "model.mapping.bias",
    "output_projection.linear.weight": "head.linear.weight",
    "output_projection.linear.bias": "head.linear.bias",
    "LearnableTemperatureInfoNCELoss.log_temperature": "log_temperature",
}
_ORIGINAL_LLM_PREFIX = "llm_model."


def convert_original_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    r"""
    Rename the tensors of an original BALM-TSF state dict (trainable tensors, optionally the `llm_model.*` backbone) to
    the names of [`BalmTsfForForecasting`]. A `module.` prefix left by `DistributedDataParallel` is stripped.

    Raises:
        `ValueError`: for a tensor name that belongs to neither part.
    """
    converted: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        key = name.removeprefix("module.")
        if key in ORIGINAL_TO_BALM_HF:
            converted[ORIGINAL_TO_BALM_HF[key]] = tensor
        elif key.startswith(_ORIGINAL_LLM_PREFIX):
            converted["model.text_encoder.llm." + key[len(_ORIGINAL_LLM_PREFIX) :]] = tensor
        else:
            raise ValueError(f"unknown tensor {name!r} in the original state dict")
    return converted


__all__ = ["ORIGINAL_TO_BALM_HF", "convert_original_state_dict"]
