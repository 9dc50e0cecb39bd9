"""Stacking window items into model batches; optionally building the statistics prompts in the DataLoader workers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .models.balm_tsf.modeling_balm_tsf import prepare_prompt_inputs


@dataclass
class BalmTsfDataCollator:
    r"""
    Stacks window items into the batch dict that `BalmTsfForForecasting.forward` takes.

    `past_values` becomes `[batch, context_length, 1]`, `future_values` `[batch, prediction_length, 1]` (float32), the
    observed masks likewise when present, and `window_index`/`channel_index` become `[batch]` long tensors (the model
    accepts and ignores them). Item values may be numpy arrays, tensors or nested lists; a 1-D value gains the channel
    axis.

    Args:
        value_keys (`tuple[str, ...]`, *optional*, defaults to the values and observed masks):
            Item keys stacked into float32 tensors when present in the items.
        id_keys (`tuple[str, ...]`, *optional*, defaults to `("window_index", "channel_index")`):
            Item keys stacked into long tensors when present in the items.
        model_config ([`BalmTsfConfig`], *optional*):
            With `tokenizer`, also build and tokenise the statistics prompts of the batch here (`prompt_input_ids`,
            `prompt_attention_mask`), so that this work runs in the DataLoader workers instead of the training step.
            The model then gives the same outputs as when it builds the prompts itself.
        tokenizer (`PreTrainedTokenizerBase`, *optional*):
            The model's tokenizer (`model.tokenizer`), required with `model_config`.
    """

    value_keys: tuple[str, ...] = ("past_values", "future_values", "past_observed_mask", "future_observed_mask")
    id_keys: tuple[str, ...] = ("window_index", "channel_index")
    model_config: Any = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        if (self.model_config is None) != (self.tokenizer is None):
            raise ValueError(
                "BalmTsfDataCollator needs both `model_config` and `tokenizer` to build prompts, or neither"
            )

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if len(features) == 0:
            raise ValueError("BalmTsfDataCollator got an empty list of items")
        if "past_values" not in features[0]:
            raise ValueError(f"Items must carry `past_values`; got keys {sorted(features[0])}")
        batch: dict[str, torch.Tensor] = {}
        for key in self.value_keys:
            if key in features[0]:
                stacked = torch.as_tensor(np.stack([np.asarray(item[key], dtype=np.float32) for item in features]))
                batch[key] = stacked.unsqueeze(-1) if stacked.ndim == 2 else stacked
        for key in self.id_keys:
            if key in features[0]:
                batch[key] = torch.as_tensor(np.asarray([item[key] for item in features], dtype=np.int64))
        if self.model_config is not None:
            batch.update(
                prepare_prompt_inputs(
                    batch["past_values"], self.model_config, self.tokenizer, batch.get("past_observed_mask")
                )
            )
        return batch


__all__ = ["BalmTsfDataCollator"]
