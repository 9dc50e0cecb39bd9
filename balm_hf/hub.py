"""Model cards and Hub uploads of trained folders."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import yaml
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, constants
from safetensors import safe_open
from safetensors.torch import save_file

from .artifacts import (
    CONFIG_FILE,
    FINAL_FOLDER_NAME,
    MODEL_CARD_FILE,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    TrainedFolder,
    _as_folder,
    _finite_or_none,
    _load_config,
    _read_folder,
    _weight_files,
    validate_folder,
)
from .calibration import ConformalCalibration, interval_table
from .data import get_split_config
from .models.balm_tsf.backbones import _PACKAGED_BACKBONES, PAPER_BACKBONE, backbone_revision
from .models.balm_tsf.configuration_balm_tsf import BalmTsfConfig
from .models.balm_tsf.modeling_balm_tsf import LLM_REFERENCE_KEY, BalmTsfForForecasting, backbone_reference


HUB_TAGS = ("time-series", "forecasting", "balm-tsf", "llm", "multimodal", "contrastive-learning")


DEFAULT_LICENSE = "apache-2.0"


DEFAULT_COMMIT_MESSAGE = "Upload BALM-TSF checkpoint"


# The package is installed from its repository until it is published on PyPI.
INSTALL_REQUIREMENT = "balm-tsf[plot] @ git+https://github.com/balm-tsf/balm-tsf"


_HUB_ID_PATTERN = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def model_card_template_path() -> Path:
    """Path of the model card template shipped in the package (`balm_hf/resources/hub_cards/model_card_template.md`).

    The package copy is the single source of truth; `hub_cards/model_card_template.md` at the repository root is an
    identical copy for readers of the repository (a test keeps the two equal).
    """
    return Path(str(resources.files("balm_hf").joinpath("resources", "hub_cards", "model_card_template.md")))


def _find_value(mapping: Any, names: tuple[str, ...]) -> Any:
    """The value of the first of `names` found anywhere in nested mappings (depth-first), `None` if none is."""

    def search(node: Any, name: str) -> Any:
        if not isinstance(node, dict):
            return None
        if node.get(name) is not None and not isinstance(node[name], dict):
            return node[name]
        for value in node.values():
            found = search(value, name)
            if found is not None:
                return found
        return None

    for name in names:
        found = search(mapping, name)
        if found is not None:
            return found
    return None


def _format_number(value: Any) -> str | None:
    """`7.0` -> `"7"`, `4.99931` -> `"5"`, `0.0004005` -> `"0.0004"`; `None` for anything but a finite number."""
    number = _finite_or_none(value)
    if number is None:
        return None
    return str(int(number)) if number.is_integer() else f"{number:.3g}"


def _format_duration(value: Any) -> str:
    number = _finite_or_none(value)
    if number is None:
        return "not recorded"
    seconds = round(number)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02d} s"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def _format_hardware(hardware: Any) -> str:
    if not isinstance(hardware, dict) or not hardware:
        return "not recorded"
    device = hardware.get("device_name") or hardware.get("device") or "unknown device"
    parts = [f"{hardware.get('num_processes', 1)} x {device}"]
    if hardware.get("device") and hardware.get("device_name"):
        parts[0] += f" ({hardware['device']})"
    if hardware.get("cpu_count") is not None:
        parts.append(f"{hardware['cpu_count']} CPU cores")
    parts.append(f"mixed precision: {hardware.get('mixed_precision') or 'no'}")
    return ", ".join(parts)


def _format_count(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count >= 1e6 else f"{count:,}"


def _parameter_counts(config: BalmTsfConfig) -> tuple[int, int]:
    """`(trainable, total)` parameters: everything but the frozen language model is trained."""
    with torch.device("meta"):
        model = BalmTsfForForecasting(config)
    total = sum(parameter.numel() for parameter in model.parameters())
    frozen = sum(parameter.numel() for parameter in model.get_text_encoder().llm.parameters())
    return total - frozen, total


def _is_hub_id(name: str | None) -> bool:
    """A namespaced Hub id (`owner/name`). A saved folder records a local backbone by its folder name alone, which is
    therefore never taken for a Hub model."""
    text = str(name or "")
    return "/" in text and not Path(text).exists() and _HUB_ID_PATTERN.match(text) is not None


def _dataset_source(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return get_split_config(name).get("url")
    except ValueError:
        return None


def _eval_results(rows: list[dict[str, Any]]) -> list[EvalResult]:
    """Two `EvalResult`s (MSE, MAE) per row of `eval_results.json`; the setting goes into the dataset config."""
    results = []
    for row in rows:
        setting = f"L{row['context_length']}-H{row['prediction_length']}"
        if row["percent"] != 100:
            setting += f"-percent{row['percent']}"
        if row["drop_last"]:
            setting += "-drop_last"
        for metric in ("mse", "mae"):
            results.append(
                EvalResult(
                    task_type="time-series-forecasting",
                    task_name="Time Series Forecasting",
                    dataset_type=str(row["dataset"]),
                    dataset_name=f"{row['dataset']} ({setting})",
                    dataset_config=setting,
                    dataset_split=str(row["split"]),
                    dataset_args={
                        "context_length": row["context_length"],
                        "prediction_length": row["prediction_length"],
                        "percent": row["percent"],
                        "drop_last": bool(row["drop_last"]),
                        "num_windows": row["num_windows"],
                        "num_items": row["num_items"],
                    },
                    metric_type=metric,
                    metric_name=f"{metric.upper()} (standardised)",
                    metric_value=float(row[metric]),
                )
            )
    return results


def _interval_eval_results(results: dict[str, Any]) -> list[EvalResult]:
    """`EvalResult`s of the model's prediction intervals in `interval_results.json`: coverage and width per central
    interval, and the WQL; the setting (context, horizon, calibration split) goes into the dataset config."""
    if not results or not results.get("models"):
        return []
    model = results["models"][0]
    setting = f"L{results.get('context_length')}-H{results.get('prediction_length')}"
    metrics: list[tuple[str, str, Any]] = []
    for level in results.get("interval_levels", []):
        key, percent = f"{float(level):g}", f"{float(level) * 100:g}"
        metrics.append((f"coverage_{percent}", f"Coverage of the {percent}% interval", model["coverage"][key]))
        metrics.append(
            (f"interval_width_{percent}", f"Mean width of the {percent}% interval (standardised)", model["width"][key])
        )
    metrics.append(("wql", "WQL (levels 0.1-0.9, data units)", model.get("wql")))
    dataset = str(results.get("dataset"))
    return [
        EvalResult(
            task_type="time-series-forecasting",
            task_name="Time Series Forecasting",
            dataset_type=dataset,
            dataset_name=f"{dataset} ({setting}, prediction intervals)",
            dataset_config=f"{setting}-intervals",
            dataset_split=str(results.get("split", "test")),
            dataset_args={
                "context_length": results.get("context_length"),
                "prediction_length": results.get("prediction_length"),
                "calibration_split": results.get("calibration_split"),
                "calibration_windows": model.get("calibration_windows"),
                "num_windows": results.get("num_windows"),
            },
            metric_type=metric_type,
            metric_name=name,
            metric_value=float(value),
        )
        for metric_type, name, value in metrics
        if _finite_or_none(value) is not None
    ]


def _interval_context(trained: TrainedFolder, repo_id: str | None) -> dict[str, Any]:
    """What the card says about prediction intervals: the calibration, and the table of `interval_results.json`."""
    calibration, results = trained.calibration, trained.interval_results
    context: dict[str, Any] = {
        "calibrated": calibration is not None,
        # a local folder by its path; a Hub repository must be downloaded to a folder first
        "command": f"balm-tsf calibrate {trained.path.resolve() if repo_id is None else 'FOLDER'}",
    }
    if calibration is None:
        return context
    context.update(
        num_windows=calibration.num_windows,
        split=calibration.split,
        lowest=f"{calibration.levels[0]:g}",
        highest=f"{calibration.levels[-1]:g}",
    )
    if results:
        header, rows = interval_table(results)
        context.update(
            header=header,
            rows=rows,
            test_split=results.get("split", "test"),
            test_windows=results.get("num_windows"),
            season=results.get("season"),
        )
    return context


def _limitations(
    config: BalmTsfConfig,
    backbone: str,
    dataset_name: str | None,
    folded: bool,
    fine_tuned_from: dict[str, Any] | None = None,
    calibration: ConformalCalibration | None = None,
) -> list[str]:
    items = []
    if config.text_branch == "no_llm":
        items.append(
            "Ablation checkpoint (`text_branch='no_llm'`): the language model's blocks are skipped; the soft prompt "
            "and the token embeddings go straight to the read-out."
        )
    elif not config.prompt_attention_mask:
        items.append(
            "Paper mode: the language model gets no attention mask over the prompt, so padding tokens are attended "
            "like text and, with right padding, the read-out positions of short prompts can be padding. Prompts are "
            "padded to the longest one in the batch, so a series' forecast can depend slightly on the other series "
            "forecast with it."
        )
    if not config.contrastive_mask_own_positive:
        items.append(
            "Paper mode: the InfoNCE negatives are the positives rolled by one along the batch, so each sample's own "
            "positive is also among its negatives (this affects training, not inference)."
        )
    items.append(
        "The statistics prompt is rebuilt as text and re-tokenised on the CPU in every forward pass, so inference "
        "costs more than the network alone."
    )
    if config.llm_name_or_path != PAPER_BACKBONE or config.llm_layers != 6:
        items.append(
            f"Backbone: this checkpoint uses {backbone} ({config.llm_config.model_type}, {config.llm_layers} "
            f"blocks, width {config.d_llm}) instead of the paper's GPT-2 (`{PAPER_BACKBONE}`, first 6 blocks); its "
            "numbers are not directly comparable with the paper's."
        )
    if calibration is None:
        uncertainty = (
            "Point forecasts only: no prediction-interval calibration was saved with this checkpoint (`balm-tsf "
            "calibrate FOLDER` adds one from the validation split)"
        )
    else:
        uncertainty = (
            "Prediction intervals are split-conformal: valid on average when future forecast errors are exchangeable "
            "with the validation errors (not under drift or for a single window), per horizon step and channel (not "
            "for a whole trajectory at once)"
        )
    items.append(
        uncertainty
        + "; no covariates or calendar features"
        + (", and every channel is forecast on its own (no cross-channel information)." if folded else ".")
    )
    if fine_tuned_from is None:
        trained_on = f"Trained on {dataset_name or 'one dataset'} only, with its scaler"
    else:
        trained_on = (
            f"Fine-tuned on {dataset_name or 'one dataset'} from a model trained on "
            f"{fine_tuned_from['training_data'] or 'data that is not recorded'}, with "
            + ("the scaler of that model" if fine_tuned_from["scaler"] == "keep" else "a scaler refitted on this data")
        )
    items.append(
        f"{trained_on}; accuracy on other series is untested. The training data and the backbone come with their own "
        "licenses: check them before reuse."
    )
    return items


def _checkpoint_weights(config: BalmTsfConfig) -> str:
    """The card's word on the weights: a full checkpoint, or a lean one and where its verified backbone comes from."""
    reference = getattr(config, LLM_REFERENCE_KEY, None)
    if not isinstance(reference, dict):
        return "full checkpoint: `model.safetensors` holds the trained weights and the frozen backbone's"
    name = str(reference.get("name_or_path"))
    if name.startswith("./"):
        where = f"the local folder `{name}`, which is not on the Hub: load with `backbone_path=` a copy of it"
    else:
        where = f"[`{name}`]({constants.ENDPOINT}/{name}) on the Hub"
        if name in _PACKAGED_BACKBONES:
            where += f", or offline from the `{_PACKAGED_BACKBONES[name].requirement}` package"
    revision = reference.get("revision")
    return (
        f"lean checkpoint: `model.safetensors` holds the trained weights only. The frozen backbone (first "
        f"{reference.get('num_blocks')} blocks{f', revision `{revision}`' if revision else ''}) is loaded from "
        f"{where}, and each of its tensors is checked against the SHA-256 recorded in `config.json` "
        "(`llm_reference`): a backbone with other weights is refused"
    )


def _portable_source(source: str) -> str:
    """A Hub id unchanged; a local folder as `./` and its name (its parent's too for a `final/` folder)."""
    path = Path(source).expanduser()
    if _is_hub_id(source) or not (path.exists() or path.is_absolute() or source.startswith(("~", "."))):
        return source
    parts = path.resolve().parts
    return "./" + "/".join(parts[-2:] if parts[-1] == FINAL_FOLDER_NAME and len(parts) > 1 else parts[-1:])


def _fine_tuning_context(info: dict[str, Any]) -> dict[str, Any] | None:
    """What the card says of the checkpoint a fine-tuned model started from (`training_info.json`'s `init_from`)."""
    record = info.get("init_from")
    if not isinstance(record, dict) or not record.get("source"):
        return None
    source = str(record["source"])
    recorded = record.get("training_data")
    data: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
    training_data = data.get("dataset_name")
    percent = _finite_or_none(data.get("percent"))
    if training_data and percent is not None and percent != 100:
        training_data += f" ({_format_number(percent)}% of its train split)"
    is_hub = _is_hub_id(source) and not Path(source).expanduser().exists()
    return {
        "source": _portable_source(source),
        "link": f"{constants.ENDPOINT}/{source}" if is_hub else None,
        "hub_id": source if is_hub else None,
        "revision": record.get("commit") or record.get("revision"),
        "model_name": record.get("model_name"),
        "training_data": training_data,
        "scaler": "keep" if record.get("scaler") == "keep" else "refit",
    }


def _ordered_splits(borders: dict[str, Any] | None) -> dict[str, Any] | None:
    """Train, validation, test first (the JSON file stores them sorted by name), then any other split."""
    if not borders:
        return None
    order = {name: index for index, name in enumerate(("train", "validation", "test"))}
    return dict(sorted(borders.items(), key=lambda item: (order.get(item[0], len(order)), item[0])))


def _model_name(trained: TrainedFolder, repo_id: str | None) -> str:
    """The repository name, else the experiment's `name`, else the folder's name (its parent's for `final/`)."""
    if repo_id:
        return repo_id
    experiment = trained.experiment or trained.training_info.get("experiment") or {}
    name = experiment.get("name") if isinstance(experiment, dict) else None
    if isinstance(name, str) and name.strip():
        return name.strip()
    path = trained.path.resolve()
    return path.parent.name if path.name == FINAL_FOLDER_NAME and path.parent.name else path.name


def _card_context(trained: TrainedFolder, repo_id: str | None) -> dict[str, Any]:
    config, preprocessor, info = trained.config, trained.preprocessor, trained.training_info
    experiment = trained.experiment or info.get("experiment") or {}
    dataset_name = getattr(preprocessor, "dataset_name", None)
    if dataset_name is None and trained.eval_rows:
        dataset_name = str(trained.eval_rows[0]["dataset"])
    columns = list(preprocessor.columns) if preprocessor is not None else []
    folded = config.num_input_channels == 1
    if config.llm_name_or_path:
        backbone = f"`{config.llm_name_or_path}`"
        gguf_file = getattr(config, "llm_gguf_file", None)
        if gguf_file:
            backbone += f" (weights dequantised from the GGUF file `{gguf_file}`, not the original checkpoint)"
    else:
        backbone = f"a {config.llm_config.model_type} model whose weights' origin is not recorded"
    trainable, total = _parameter_counts(config)
    fine_tuned_from = _fine_tuning_context(info)
    max_steps = _find_value(experiment, ("max_steps",))
    return {
        "model_name": _model_name(trained, repo_id),
        # A local folder by its absolute path, so that the snippets run as written from any directory.
        "model_ref": repo_id or str(trained.path.resolve()),
        "is_local": repo_id is None,
        "install_requirement": INSTALL_REQUIREMENT,
        "dataset_name": dataset_name,
        "data_source": _dataset_source(dataset_name),
        "data_file": f"{dataset_name}.csv" if dataset_name else "history.csv",
        "date_column": getattr(preprocessor, "date_column", None) or "date",
        "columns": columns,
        "target": getattr(preprocessor, "target", None),
        "frequency": getattr(preprocessor, "frequency", None),
        "num_rows": getattr(preprocessor, "num_rows", None),
        "split_borders": _ordered_splits(getattr(preprocessor, "split_borders", None)),
        "scaler_rows": getattr(preprocessor, "scaler_rows", None),
        "percent": getattr(preprocessor, "percent", None),
        "context_length": config.context_length,
        "prediction_length": config.prediction_length,
        "num_input_channels": config.num_input_channels,
        "channels_folded": folded,
        "backbone": backbone,
        "backbone_type": config.llm_config.model_type,
        "checkpoint_weights": _checkpoint_weights(config),
        "llm_layers": config.llm_layers,
        "d_llm": config.d_llm,
        "text_branch": config.text_branch,
        "alignment_weight": config.alignment_weight,
        "contrastive_temperature": config.contrastive_temperature,
        "num_parameters": _format_count(total),
        "num_trainable_parameters": _format_count(trainable),
        "training_recorded": bool(info),
        "learning_rate": _find_value(experiment, ("learning_rate", "lr")),
        "lr_schedule": _find_value(experiment, ("lr_scheduler", "lr_scheduler_type", "lr_schedule", "lradj")),
        "batch_size": _find_value(experiment, ("per_device_train_batch_size", "train_batch_size", "batch_size")),
        "global_batch_size": _find_value(experiment, ("global_batch_size",)),
        "max_epochs": _format_number(
            _find_value(experiment, ("num_train_epochs", "max_epochs", "train_epochs", "epochs"))
        ),
        "max_steps": max_steps if isinstance(max_steps, int) and max_steps > 0 else None,
        "early_stopping_patience": _find_value(experiment, ("early_stopping_patience", "patience")),
        "epochs_completed": _format_number(info.get("epochs_completed")),
        "seed": info.get("seed"),
        "best_checkpoint": info.get("best_checkpoint"),
        "best_validation_mse": _finite_or_none(info.get("best_validation_mse")),
        "hardware_text": _format_hardware(info.get("hardware")),
        "wall_time_text": _format_duration(info.get("wall_time_s")),
        "train_samples_per_second": _finite_or_none(info.get("train_samples_per_second")),
        "git_revision": info.get("git_revision"),
        "versions": info.get("versions") if isinstance(info.get("versions"), dict) else {},
        "experiment_yaml": yaml.safe_dump(experiment, sort_keys=False).rstrip() if experiment else "",
        "results": trained.eval_rows,
        "fine_tuned_from": fine_tuned_from,
        "intervals": _interval_context(trained, repo_id),
        "limitations": _limitations(config, backbone, dataset_name, folded, fine_tuned_from, trained.calibration),
    }


def render_model_card(
    folder: str | os.PathLike,
    repo_id: str | None = None,
    license: str = DEFAULT_LICENSE,
    template_path: str | os.PathLike | None = None,
) -> ModelCard:
    r"""
    Render the model card of a trained folder from its files and write it to `folder/README.md`.

    Every number in the card comes from the folder: the shapes and backbone from `config.json`, the data and scaler
    from `preprocessor_config.json`, the setup from `training_info.json`/`experiment.yaml`, and the `model-index`
    results and the results table from `eval_results.json`. Only `config.json` is required; a card rendered without
    the other files says what is not recorded. Call [`validate_folder`] for the strict check before sharing.

    The metadata uses `library_name: transformers`: the folder loads with the `transformers` auto-classes and
    `trust_remote_code=True` without this package, which is what the Hub's code snippets and download counts know
    about (`balm-tsf` is not a library the Hub recognises, so it is a tag instead). `base_model` is the backbone id
    recorded in `config.llm_name_or_path` when it is a Hub id (not a local path); for a model fine-tuned from a Hub
    checkpoint (`init_from` in `training_info.json`) it is that checkpoint. The card of a fine-tuned model names the
    checkpoint it started from, the data that checkpoint was trained on and whether the scaler was kept or refitted.

    Args:
        folder (`str` or `os.PathLike`): the trained folder.
        repo_id (`str`, *optional*):
            The Hub repository the folder is (or will be) pushed to; used as the model name and in the usage snippets.
            Without it the card is for the local folder: the name is the experiment's `name` (else the folder's,
            the run folder's for `final/`) and the snippets load the folder by its absolute path.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the license identifier in the metadata.
        template_path (`str` or `os.PathLike`, *optional*):
            A Jinja template to use instead of the packaged one ([`model_card_template_path`]).

    Returns:
        `huggingface_hub.ModelCard`: the rendered card (also written to `folder/README.md`).
    """
    trained = _read_folder(folder, strict=False)
    context = _card_context(trained, repo_id)
    config = trained.config
    dataset_name = context["dataset_name"]
    interval_rows = _interval_eval_results(trained.interval_results)
    # A fine-tuned model's base is the Hub checkpoint it started from, else the backbone.
    fine_tuned_from = context["fine_tuned_from"]
    base_model = config.llm_name_or_path if _is_hub_id(config.llm_name_or_path) else None
    if fine_tuned_from is not None and fine_tuned_from["hub_id"]:
        base_model = fine_tuned_from["hub_id"]
    tags = list(HUB_TAGS)
    if dataset_name:
        tags.append(str(dataset_name).lower())
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="time-series-forecasting",
        license=license,
        tags=tags,
        datasets=[str(dataset_name)] if dataset_name else None,
        base_model=base_model,
        metrics=(["mse", "mae"] if trained.eval_rows else []) + (["coverage", "wql"] if interval_rows else []) or None,
        model_name=context["model_name"],
        eval_results=_eval_results(trained.eval_rows) + interval_rows or None,
    )
    template = Path(template_path) if template_path is not None else model_card_template_path()
    if not template.is_file():
        raise FileNotFoundError(f"model card template {template} not found")
    card = ModelCard.from_template(card_data, template_path=str(template), **context)
    card.save(trained.path / MODEL_CARD_FILE)
    return card


@dataclass
class HubPushResult:
    r"""
    What [`push_folder_to_hub`] did.

    Args:
        repo_id (`str`): the target repository.
        folder (`Path`): the prepared folder that was (or, with `dry_run`, would be) uploaded.
        files (`list[str]`): the files of `folder`.
        dry_run (`bool`): `True` if nothing was uploaded.
        commit_url (`str`, *optional*): the URL of the upload commit.
        repo_url (`str`, *optional*): the URL of the repository.
    """

    repo_id: str
    folder: Path
    files: list[str]
    dry_run: bool
    commit_url: str | None = None
    repo_url: str | None = None


def _offline_mode() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any(str(flag).upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def check_hub_connection(endpoint: str | None = None, timeout: float = 3.0) -> None:
    r"""
    Fail fast when the Hub cannot be reached, instead of after minutes of upload retries.

    Raises a `ConnectionError` when offline mode is on (`HF_HUB_OFFLINE`/`TRANSFORMERS_OFFLINE`) or when a single HTTP
    request to `endpoint` gets no answer within `timeout` seconds (DNS resolution included). Any HTTP answer counts as
    reachable. Proxies configured in the environment are used.

    Args:
        endpoint (`str`, *optional*): the Hub URL; defaults to `huggingface_hub.constants.ENDPOINT` (`HF_ENDPOINT`).
        timeout (`float`, *optional*, defaults to 3.0): seconds to wait.
    """
    endpoint = endpoint or constants.ENDPOINT
    if _offline_mode():
        raise ConnectionError(
            "cannot push to the Hub: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set); unset it, "
            "or use --dry-run to only prepare and validate the folder"
        )
    parsed = urlparse(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"invalid Hub endpoint {endpoint!r}: expected an http(s) URL")
    outcome: dict[str, BaseException | None] = {}

    def probe() -> None:
        request = urllib.request.Request(endpoint, method="HEAD")
        try:
            # urllib honours the proxy environment variables (HTTPS_PROXY, NO_PROXY, ...).
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            outcome["error"] = None
        except urllib.error.HTTPError:
            outcome["error"] = None  # the server answered: the Hub is reachable
        except Exception as error:  # any other failure means unreachable; the message names it
            outcome["error"] = error

    # A daemon thread bounds the wait, including DNS lookups that ignore socket timeouts.
    thread = threading.Thread(target=probe, name="balm-tsf-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if "error" not in outcome:
        raise ConnectionError(
            f"cannot reach the Hub at {endpoint}: no answer within {timeout:g} s; check the network or proxy, or use "
            "--dry-run to only prepare and validate the folder"
        )
    if outcome["error"] is not None:
        error = outcome["error"]
        raise ConnectionError(
            f"cannot reach the Hub at {endpoint} ({type(error).__name__}: {error}); check the network or proxy, or "
            "use --dry-run to only prepare and validate the folder"
        ) from error


def _write_lean_weights(source: Path, target: Path, config: BalmTsfConfig) -> None:
    """Write `target/model.safetensors` and `target/config.json`: the full folder `source` without its backbone."""
    if config.llm_name_or_path is None:
        raise ValueError(
            f"{source / CONFIG_FILE} records no backbone (`llm_name_or_path` is null), so a lean copy could not "
            "rebuild it: push it in full (`--full`, `lean=False`)"
        )
    if config.llm_name_or_path.startswith("./"):
        raise ValueError(
            f"the backbone of {source} is the local folder {config.llm_name_or_path!r}, which the users of a Hub "
            "repository cannot fetch: push it in full (`--full`, `lean=False`), which uploads the backbone with it"
        )
    with torch.device("meta"):
        prefix = BalmTsfForForecasting(config)._backbone_prefix()
    trained: dict[str, torch.Tensor] = {}
    frozen: dict[str, torch.Tensor] = {}
    for path in _weight_files(source):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():
                if key.startswith(prefix):
                    frozen[key.removeprefix(prefix)] = weights.get_tensor(key)
                else:
                    trained[key] = weights.get_tensor(key)
    # The hashes are those of the backbone tensors exactly as the full folder stores them; the revision is the commit
    # of the backbone in the local Hub cache, when it is there, so that users fetch the weights it was checked against.
    revision = backbone_revision(config.llm_name_or_path)
    reference = backbone_reference(
        frozen, config.llm_name_or_path, revision, config.llm_layers, getattr(config, "llm_gguf_file", None)
    )
    save_file(trained, str(target / WEIGHTS_FILE), metadata={"format": "pt"})
    raw = json.loads((source / CONFIG_FILE).read_text(encoding="utf-8"))
    raw[LLM_REFERENCE_KEY] = reference
    (target / CONFIG_FILE).write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_full_weights(source: Path, target: Path, backbone_path: str | os.PathLike | None) -> None:
    """Write `target/model.safetensors` and `target/config.json`: the lean folder `source` with its backbone."""
    kwargs: dict[str, Any] = {} if backbone_path is None else {"backbone_path": backbone_path}
    model = BalmTsfForForecasting.from_pretrained(source, **kwargs)
    with tempfile.TemporaryDirectory(prefix="balm-tsf-full-") as scratch:
        model.save_pretrained(scratch)
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.move(str(Path(scratch) / name), target / name)


def prepare_upload_folder(
    folder: str | os.PathLike,
    output_dir: str | os.PathLike,
    repo_id: str | None = None,
    render_card: bool = True,
    license: str = DEFAULT_LICENSE,
    lean: bool = True,
    backbone_path: str | os.PathLike | None = None,
) -> TrainedFolder:
    r"""
    Copy what a Hub repository should hold from a trained folder into `output_dir`, render its card and validate it.

    Copied: the top-level files of `folder` except pickled files (`*.bin`, `*.pt`, `*.pth`, `*.pkl`, `*.pickle`,
    `*.ckpt`, e.g. `training_args.bin`), hidden files and sub-folders (Trainer checkpoints, logs). Files are
    hard-linked when possible, so large weights are not duplicated on disk. `folder` itself is never modified.

    By default the copy is a lean checkpoint: the weights without the frozen backbone, and in `config.json` a
    reference to that backbone with the SHA-256 of each of its tensors (see `BalmTsfPreTrainedModel.save_pretrained`).
    The copy is validated by loading it, which rebuilds the backbone from the reference and checks every hash, so a
    lean copy is only prepared when it loads the very weights of `folder`. A backbone recorded as a local folder
    (`./name`) cannot be fetched by the users of a Hub repository and needs `lean=False`.

    Args:
        folder (`str` or `os.PathLike`): the trained folder (full or lean).
        output_dir (`str` or `os.PathLike`): an empty or new folder to fill.
        repo_id (`str`, *optional*): the target repository, for the card.
        render_card (`bool`, *optional*, defaults to `True`):
            Render a fresh `README.md` with [`render_model_card`]; `False` keeps the folder's own `README.md`.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the license in the card's metadata.
        lean (`bool`, *optional*, defaults to `True`):
            Prepare a lean copy; `False` prepares a full copy, the backbone's weights included (rebuilt and verified
            for a lean `folder`).
        backbone_path (`str` or `os.PathLike`, *optional*):
            Where to load the backbone from to verify (or, with `lean=False`, to include) it, instead of its recorded
            reference, e.g. a local copy of the Hub backbone when offline.

    Returns:
        [`TrainedFolder`]: the validated contents of `output_dir`.
    """
    source = _as_folder(folder)
    target = Path(output_dir)
    if target.resolve() == source.resolve():
        raise ValueError(f"`output_dir` must differ from the trained folder {source}")
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"`output_dir` {target} is not empty")
    config = _load_config(source)
    created = not target.exists()
    target.mkdir(parents=True, exist_ok=True)
    try:
        trained = _fill_upload_folder(source, target, config, render_card, lean, backbone_path)
    except BaseException:
        # Leave no half-prepared folder behind (the user's own `folder` is never touched).
        for path in list(target.iterdir()):
            path.unlink() if path.is_file() else shutil.rmtree(path)
        if created:
            target.rmdir()
        raise
    if render_card:
        render_model_card(target, repo_id=repo_id, license=license)
    elif not (target / MODEL_CARD_FILE).is_file():
        raise FileNotFoundError(f"{source / MODEL_CARD_FILE} is missing and `render_card=False`")
    return trained


def _fill_upload_folder(
    source: Path,
    target: Path,
    config: BalmTsfConfig,
    render_card: bool,
    lean: bool,
    backbone_path: str | os.PathLike | None,
) -> TrainedFolder:
    """The copy of [`prepare_upload_folder`], lean or full, validated; the card is rendered by the caller."""
    source_lean = getattr(config, LLM_REFERENCE_KEY, None) is not None
    rewrite = lean != source_lean
    weights = {WEIGHTS_FILE, WEIGHTS_INDEX_FILE} | {path.name for path in _weight_files(source)}
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.suffix in PICKLE_SUFFIXES:
            continue
        if render_card and path.name == MODEL_CARD_FILE:
            continue
        if rewrite and (path.name in weights or path.name == CONFIG_FILE):
            continue
        try:
            os.link(path, target / path.name)
        except OSError:
            shutil.copy2(path, target / path.name)
    if rewrite and lean:
        _write_lean_weights(source, target, config)
    elif rewrite:
        _write_full_weights(source, target, backbone_path)
    try:
        trained = validate_folder(target, backbone_path=backbone_path if lean else None)
    except (OSError, ValueError) as error:
        if not (lean and not source_lean):
            raise
        raise type(error)(
            f"the lean copy of {source} does not load with the backbone it references, so it is not prepared: "
            f"{error} To upload the backbone with the model instead, push it in full (`--full`, `lean=False`)."
        ) from error
    return trained


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    dry_run: bool = False,
    output_dir: str | os.PathLike | None = None,
    render_card: bool = True,
    license: str = DEFAULT_LICENSE,
    endpoint: str | None = None,
    connection_timeout: float = 3.0,
    lean: bool = True,
    backbone_path: str | os.PathLike | None = None,
) -> HubPushResult:
    r"""
    Push a trained folder (model, tokenizer, preprocessor, training info, results, card) to a Hub model repository.

    This is how a trained folder is shared. `BalmTsfForForecasting.push_to_hub` (inherited from transformers) pushes
    only the model and its tokenizer, without the fitted scaler, the training record or the results.

    Steps: prepare a copy of the folder without pickled files or sub-folders, lean unless `lean=False`, and with a
    fresh model card ([`prepare_upload_folder`]), validate it ([`validate_folder`]), then, unless `dry_run`, check
    that the Hub is reachable ([`check_hub_connection`], a few seconds at most), create the repository
    (`exist_ok=True`) and upload the prepared folder in one commit.

    Args:
        folder (`str` or `os.PathLike`): the trained folder.
        repo_id (`str`): `"user/name"` or `"org/name"`.
        token (`str`, *optional*): a Hub token with write access; defaults to the saved login or `HF_TOKEN`.
        private (`bool`, *optional*, defaults to `False`): create the repository as private.
        commit_message (`str`, *optional*): the message of the upload commit.
        dry_run (`bool`, *optional*, defaults to `False`): only prepare and validate; no network access.
        output_dir (`str` or `os.PathLike`, *optional*):
            Where to prepare the upload. Defaults to a temporary folder, deleted after a push and kept (and returned)
            after a dry run.
        render_card (`bool`, *optional*, defaults to `True`): render a fresh `README.md` for `repo_id`.
        license (`str`, *optional*, defaults to `"apache-2.0"`): the license in the card's metadata.
        endpoint (`str`, *optional*): the Hub URL; defaults to `HF_ENDPOINT` or `https://huggingface.co`.
        connection_timeout (`float`, *optional*, defaults to 3.0): seconds the connection check may take.
        lean (`bool`, *optional*, defaults to `True`):
            Upload a lean checkpoint: the trained weights and a verified reference to the frozen backbone, which
            loads from the backbone's own Hub repository (or the package that ships it) and forecasts exactly what
            the full folder forecasts. `False` uploads the backbone's weights too (`balm-tsf push --full`).
        backbone_path (`str` or `os.PathLike`, *optional*):
            A local copy of the backbone to verify the lean copy with (see [`prepare_upload_folder`]).

    Returns:
        [`HubPushResult`]: the prepared folder and its files, and the commit and repository URLs after a push.

    Example:

    ```python
    >>> from balm_hf.hub import push_folder_to_hub
    >>> result = push_folder_to_hub("runs/etth1_96", "me/balm-tsf-etth1-96", dry_run=True)  # doctest: +SKIP
    >>> sorted(result.files)  # doctest: +SKIP
    ['README.md', 'config.json', 'eval_results.csv', ...]
    ```
    """
    if not isinstance(repo_id, str) or not _HUB_ID_PATTERN.match(repo_id) or "/" not in repo_id:
        raise ValueError(f"`repo_id` must look like 'user/name', got {repo_id!r}")
    if dry_run:
        staging = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="balm-tsf-push-"))
        prepare_upload_folder(
            folder,
            staging,
            repo_id=repo_id,
            render_card=render_card,
            license=license,
            lean=lean,
            backbone_path=backbone_path,
        )
        files = sorted(path.name for path in staging.iterdir())
        return HubPushResult(repo_id=repo_id, folder=staging, files=files, dry_run=True)

    # Fail before copying gigabytes when the Hub is out of reach.
    check_hub_connection(endpoint, timeout=connection_timeout)
    with tempfile.TemporaryDirectory(prefix="balm-tsf-push-") as scratch:
        staging = Path(output_dir) if output_dir is not None else Path(scratch) / "upload"
        prepare_upload_folder(
            folder,
            staging,
            repo_id=repo_id,
            render_card=render_card,
            license=license,
            lean=lean,
            backbone_path=backbone_path,
        )
        files = sorted(path.name for path in staging.iterdir())
        api = HfApi(endpoint=endpoint, token=token)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=staging, commit_message=commit_message, repo_type="model"
        )
    return HubPushResult(
        repo_id=repo_id,
        folder=staging,
        files=files,
        dry_run=False,
        commit_url=getattr(commit, "commit_url", None),
        repo_url=str(repo_url),
    )


__all__ = [
    "DEFAULT_COMMIT_MESSAGE",
    "DEFAULT_LICENSE",
    "HUB_TAGS",
    "INSTALL_REQUIREMENT",
    "HubPushResult",
    "check_hub_connection",
    "model_card_template_path",
    "prepare_upload_folder",
    "push_folder_to_hub",
    "render_model_card",
]
