"""Fine-tuning: start a run from a trained checkpoint (`model.init_from`) instead of a fresh model.

With `model.init_from` the run loads the trained model (weights, config and tokenizer) with
[`BalmTsfForForecasting.from_pretrained`]. The settings that define what the model computes come from the checkpoint:
an experiment may leave them out (they are filled in from the checkpoint) or repeat them, but a different value is
refused with the key and both values. Only the training switches [`FINE_TUNING_SWITCHES`] may differ.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from transformers.utils import cached_file

from ..data import BalmTsfPreprocessor
from ..models.balm_tsf.configuration_balm_tsf import BalmTsfConfig, _without_local_path
from ..models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting, _looks_like_repo_id


logger = logging.getLogger(__name__)


# `BalmTsfConfig` arguments that only change how the model is trained (regularisation, the loss weights, how the
# dropout masks and the prompt states are computed): a fine-tuning run may set them to other values than the
# checkpoint's.
FINE_TUNING_SWITCHES = (
    "dropout",
    "alignment_weight",
    "contrastive_mask_own_positive",
    "fast_dropout",
    "use_prefix_cache",
    "trim_last_block",
)

# Set from elsewhere in an experiment (`data.*`, `model.backbone`) or fixed by the data items.
_NOT_MODEL_CONFIG_KEYS = (
    "context_length",
    "prediction_length",
    "num_input_channels",
    "llm_config",
    "llm_name_or_path",
)


def architecture_keys() -> tuple[str, ...]:
    r"""
    The `model.config` keys that a fine-tuning run takes from the checkpoint: every [`BalmTsfConfig`] argument but the
    [`FINE_TUNING_SWITCHES`] and those set elsewhere (shapes such as `patch_length`, `d_model`, `d_ff`,
    `llm_layers`; the prompt (`prompt_template`, `num_lags`, ...); `text_branch`; `llm_dtype`; and the initial values
    `contrastive_temperature` and `init_std`, which the checkpoint's weights replace anyway). Together with
    `data.context_length`, `data.prediction_length` and `model.backbone` they are compared with the checkpoint.
    """
    parameters = inspect.signature(BalmTsfConfig.__init__).parameters
    excluded = {"self", "kwargs", *_NOT_MODEL_CONFIG_KEYS, *FINE_TUNING_SWITCHES}
    return tuple(name for name in parameters if name not in excluded)


def _checkpoint_file(source: str, filename: str, revision: str | None) -> Path | None:
    """The local path of `filename` in a folder or Hub repository (downloaded if needed), `None` when it has none."""
    kwargs: dict[str, Any] = {"_raise_exceptions_for_missing_entries": False}
    if revision is not None:
        kwargs["revision"] = revision
    found = cached_file(source, filename, **kwargs)
    return None if found is None else Path(found)


def _check_source(source: str, revision: str | None = None) -> None:
    path = Path(source).expanduser()
    if path.exists():
        if revision is not None:
            raise ValueError(
                f"`model.init_revision` {revision!r} is a Hub revision, but `model.init_from` {source!r} is a local "
                "folder"
            )
        if not path.is_dir():
            raise NotADirectoryError(f"`model.init_from` {source!r} is a file; give the trained folder (its final/)")
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"`model.init_from` {source!r} holds no config.json: not a trained BALM-TSF folder (give the final/ "
                "folder that `balm-tsf train` writes)"
            )
    elif not _looks_like_repo_id(source) or "/" not in source:
        raise FileNotFoundError(f"`model.init_from`: no folder {source!r} (and it is not a Hub id 'owner/name')")


def read_checkpoint_config(source: str, revision: str | None = None) -> BalmTsfConfig:
    r"""
    The [`BalmTsfConfig`] of the checkpoint a run starts from: a trained folder or a Hub id (only `config.json` is
    read, downloaded if needed).

    Raises:
        `FileNotFoundError`: no such folder, or a folder without `config.json`.
        `ValueError`: a `config.json` of another model type.
        `OSError`: a Hub id or revision that cannot be fetched.
    """
    source = str(source)
    _check_source(source, revision)
    path = _checkpoint_file(source, "config.json", revision)
    if path is None:
        raise FileNotFoundError(f"`model.init_from` {source!r} has no config.json")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or raw.get("model_type") != BalmTsfConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(
            f"`model.init_from` {source!r}: config.json has model_type {found!r}, not a BALM-TSF checkpoint "
            f"({BalmTsfConfig.model_type!r})"
        )
    return BalmTsfConfig.from_pretrained(path.parent)


def _architecture(checkpoint: BalmTsfConfig) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(experiment key path, checkpoint value) of every setting that a fine-tuning run takes from the checkpoint."""
    yield ("data", "context_length"), checkpoint.context_length
    yield ("data", "prediction_length"), checkpoint.prediction_length
    for key in architecture_keys():
        yield ("model", "config", key), getattr(checkpoint, key, None)


def merge_checkpoint_architecture(values: Mapping[str, Any], checkpoint: BalmTsfConfig, source: str) -> dict[str, Any]:
    r"""
    A copy of the raw experiment `values` with the checkpoint's architecture filled in where it is left out; the
    checkpoint's training switches too where the experiment does not set them.

    Raises:
        `ValueError`: a key of the architecture (or `model.backbone`) set to another value than the checkpoint's,
            naming the key and both values.
    """
    result: dict[str, Any] = json.loads(json.dumps(values))
    data = result.setdefault("data", {}) or {}
    model = result.setdefault("model", {}) or {}
    model_config = model.setdefault("config", {}) or {}
    result["data"], result["model"], model["config"] = data, model, model_config
    for path, value in _architecture(checkpoint):
        section = data if path[0] == "data" else model_config
        key = path[-1]
        if key not in section:
            section[key] = value
        elif section[key] != value:
            raise ValueError(
                f"`{'.'.join(path)}` is {section[key]!r} but the checkpoint {source} has {key}={value!r}: a "
                "fine-tuned model keeps the checkpoint's architecture (leave the key out or set it to the "
                "checkpoint's value)"
            )
    backbone = checkpoint.llm_name_or_path
    given = model.get("backbone")
    if given is None:
        model["backbone"] = backbone
    elif backbone is not None and _without_local_path(str(given)) != backbone:
        raise ValueError(
            f"`model.backbone` is {given!r} but the checkpoint {source} was built on {backbone!r}: a fine-tuned model "
            "keeps the checkpoint's backbone (leave `model.backbone` out)"
        )
    for key in FINE_TUNING_SWITCHES:
        model_config.setdefault(key, getattr(checkpoint, key))
    return result


def resolve_init_from(values: Mapping[str, Any]) -> dict[str, Any]:
    r"""
    For a raw experiment with `model.init_from`: read the checkpoint's config and fill in (or check) its architecture
    with [`merge_checkpoint_architecture`]. Other experiments are returned unchanged (as a copy).
    """
    model = values.get("model") if isinstance(values, Mapping) else None
    source = model.get("init_from") if isinstance(model, Mapping) else None
    if source is None:
        return json.loads(json.dumps(values))
    revision = model.get("init_revision") if isinstance(model, Mapping) else None
    checkpoint = read_checkpoint_config(str(source), revision=revision)
    return merge_checkpoint_architecture(values, checkpoint, str(source))


def load_init_model(config: Any) -> BalmTsfForForecasting:
    r"""
    The trained model of `config.model.init_from` (weights from safetensors, its tokenizer), with the experiment's
    [`FINE_TUNING_SWITCHES`] applied, after checking that the experiment's architecture is the checkpoint's.

    Raises:
        `ValueError`: an architecture key that differs from the checkpoint's (see [`merge_checkpoint_architecture`]).
        `FileNotFoundError` / `OSError`: a folder or Hub id that does not hold a loadable checkpoint.
    """
    source = str(config.model.init_from)
    _check_source(source, config.model.init_revision)
    switches = {key: config.model.config[key] for key in FINE_TUNING_SWITCHES if key in config.model.config}
    kwargs: dict[str, Any] = dict(switches)
    if config.model.init_revision is not None:
        kwargs["revision"] = config.model.init_revision
    model = BalmTsfForForecasting.from_pretrained(source, **kwargs)
    merge_checkpoint_architecture(config.to_dict(), model.config, source)
    revision = f" at revision {config.model.init_revision}" if config.model.init_revision else ""
    logger.info(f"fine-tuning the trained model {source}{revision} (scaler: {config.data.scaler})")
    if model.tokenizer is None and model.config.text_branch == "llm":
        raise FileNotFoundError(f"`model.init_from` {source!r} holds no tokenizer files next to the model")
    return model


def load_init_preprocessor(config: Any) -> BalmTsfPreprocessor:
    r"""
    The fitted scaler of the checkpoint (`preprocessor_config.json`), for `data.scaler: keep`.

    Raises:
        `FileNotFoundError`: the checkpoint has no `preprocessor_config.json`.
    """
    source = str(config.model.init_from)
    _check_source(source, config.model.init_revision)
    path = _checkpoint_file(source, "preprocessor_config.json", config.model.init_revision)
    if path is None:
        raise FileNotFoundError(
            f"`data.scaler: keep` reuses the scaler of the checkpoint, but {source!r} has no "
            "preprocessor_config.json; use `data.scaler: refit`"
        )
    return BalmTsfPreprocessor.from_pretrained(path.parent)


def check_source_outside(source: str, output_dir: str | Path) -> None:
    r"""
    Refuse an `--overwrite` run whose output folder holds the checkpoint it starts from (it would delete it).

    Raises:
        `ValueError`: `source` is a local folder inside `output_dir`.
    """
    path = Path(source).expanduser()
    if not path.is_dir():
        return
    folder, output = path.resolve(), Path(output_dir).expanduser().resolve()
    if folder == output or output in folder.parents:
        raise ValueError(
            f"`model.init_from` {source} lies inside the output folder {output_dir}, which --overwrite would delete: "
            "train into another folder"
        )


def _hub_commit(path: Path | None) -> str | None:
    """The commit of a file downloaded from the Hub (`.../snapshots/<commit>/<file>` in the cache), else `None`."""
    if path is None or path.parent.parent.name != "snapshots":
        return None
    return path.parent.name


def init_from_record(config: Any) -> dict[str, Any]:
    r"""
    What `training_info.json` records of the checkpoint a fine-tuning run started from (`init_from`): `source` (the
    folder or Hub id as given), `revision` (as given) and `commit` (the Hub commit the files came from, `None` for a
    folder), `model_name` (the checkpoint's experiment name), `training_data` (the dataset, percent and columns its
    scaler was fitted for, from its `preprocessor_config.json`) and `scaler` (`"refit"` or `"keep"`).
    """
    source = str(config.model.init_from)
    revision = config.model.init_revision
    config_path = _checkpoint_file(source, "config.json", revision)
    preprocessor_path = _checkpoint_file(source, "preprocessor_config.json", revision)
    info_path = _checkpoint_file(source, "training_info.json", revision)
    training_data = None
    if preprocessor_path is not None:
        preprocessor = json.loads(preprocessor_path.read_text(encoding="utf-8"))
        training_data = {
            key: preprocessor.get(key) for key in ("dataset_name", "percent", "columns", "target", "num_rows")
        }
    model_name = None
    if info_path is not None:
        experiment = json.loads(info_path.read_text(encoding="utf-8")).get("experiment")
        model_name = experiment.get("name") if isinstance(experiment, dict) else None
    return {
        "source": source,
        "revision": revision,
        "commit": _hub_commit(config_path),
        "model_name": model_name,
        "training_data": training_data,
        "scaler": config.data.scaler,
    }


__all__ = [
    "FINE_TUNING_SWITCHES",
    "architecture_keys",
    "check_source_outside",
    "init_from_record",
    "load_init_model",
    "load_init_preprocessor",
    "merge_checkpoint_architecture",
    "read_checkpoint_config",
    "resolve_init_from",
]
