"""The trained folder: its file names, how it is written, read back and validated.

A trained folder holds what `save_pretrained` writes (config with `auto_map`, weights, tokenizer, modeling code),
`preprocessor_config.json` (the fitted scaler), `experiment.yaml`, `training_info.json` and `eval_results.json` /
`.csv`; the model card `README.md` is rendered from them by `balm_hf.hub`.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import yaml
from safetensors import SafetensorError, safe_open
from transformers import (
    AutoTokenizer,
)

from .calibration import CALIBRATION_FILE, INTERVAL_RESULTS_FILE, ConformalCalibration, calibration_sha256
from .data import (
    BalmTsfPreprocessor,
)
from .models.balm_tsf.configuration_balm_tsf import BalmTsfConfig
from .models.balm_tsf.modeling_balm_tsf import (
    LLM_REFERENCE_KEY,
    BalmTsfForForecasting,
    check_tokenizer_fits_backbone,
    prepare_tokenizer,
)


logger = logging.getLogger(__name__)


FINAL_FOLDER_NAME = "final"


EXPERIMENT_FILE = "experiment.yaml"


TRAINING_INFO_FILE = "training_info.json"


EVAL_RESULTS_JSON = "eval_results.json"


EVAL_RESULTS_CSV = "eval_results.csv"


PREPROCESSOR_FILE = "preprocessor_config.json"


EVAL_ROW_FIELDS = (
    "model",
    "dataset",
    "context_length",
    "prediction_length",
    "split",
    "mse",
    "mae",
    "num_windows",
    "num_items",
    "drop_last",
    "percent",
)


# The keys of `training_info.json` (see `collect_training_info`); `balm_hf.hub.validate_folder` requires all of them.
TRAINING_INFO_KEYS = (
    "experiment",
    "seed",
    "wall_time_s",
    "train_samples_per_second",
    "epochs_completed",
    "best_checkpoint",
    "best_validation_mse",
    "versions",
    "git_revision",
    "hardware",
)


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_revision(path: str | os.PathLike | None = None) -> str | None:
    """The git commit of the repository holding `path` (default: this package), or `None` outside a checkout."""
    folder = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def collect_environment_info(mixed_precision: str = "no", num_processes: int | None = None) -> dict[str, Any]:
    r"""
    `versions`, `git_revision` and `hardware` entries of `training_info.json`.

    Args:
        mixed_precision (`str`, *optional*, defaults to `"no"`): `"bf16"` or `"no"`.
        num_processes (`int`, *optional*): processes of the run; defaults to `$WORLD_SIZE` or 1.
    """
    from . import __version__

    cuda = torch.cuda.is_available()
    return {
        "versions": {
            "balm_tsf": __version__,
            "torch": torch.__version__,
            "transformers": _package_version("transformers"),
            "datasets": _package_version("datasets"),
            "accelerate": _package_version("accelerate"),
            "evaluate": _package_version("evaluate"),
            "huggingface_hub": _package_version("huggingface_hub"),
            "python": platform.python_version(),
        },
        "git_revision": git_revision(),
        "hardware": {
            "device": "cuda" if cuda else "cpu",
            "device_name": torch.cuda.get_device_name(0) if cuda else (platform.processor() or platform.machine()),
            "num_processes": int(num_processes if num_processes is not None else _world_size()),
            "cpu_count": os.cpu_count() or 1,
            "mixed_precision": mixed_precision,
        },
    }


def collect_training_info(
    experiment: Any,
    seed: int,
    wall_time_s: float,
    train_samples_per_second: float,
    epochs_completed: float,
    best_checkpoint: str | None,
    best_validation_mse: float | None,
    mixed_precision: str = "no",
    num_processes: int | None = None,
) -> dict[str, Any]:
    r"""
    The content of `training_info.json`: the resolved experiment config, seed, timings, best checkpoint, package
    versions, git revision and hardware.

    Args:
        experiment ([`ExperimentConfig`] or `dict`): the resolved configuration.
        seed (`int`): the run's seed.
        wall_time_s (`float`): wall time of the whole run (data, training, test), in seconds.
        train_samples_per_second (`float`): from `Trainer.train`'s metrics.
        epochs_completed (`float`): epochs trained (fractional when stopped by `max_steps`).
        best_checkpoint (`str`, *optional*): folder name of the checkpoint with the best validation MSE.
        best_validation_mse (`float`, *optional*): its validation MSE.
        mixed_precision (`str`, *optional*, defaults to `"no"`): `"bf16"` or `"no"`.
        num_processes (`int`, *optional*): processes of the run.
    """
    config = experiment.to_dict() if hasattr(experiment, "to_dict") else dict(experiment)
    info = {
        "experiment": config,
        "seed": int(seed),
        "wall_time_s": float(wall_time_s),
        "train_samples_per_second": float(train_samples_per_second),
        "epochs_completed": epochs_completed,
        "best_checkpoint": best_checkpoint,
        "best_validation_mse": None if best_validation_mse is None else float(best_validation_mse),
    }
    info.update(collect_environment_info(mixed_precision, num_processes))
    return info


def read_eval_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of an `eval_results.json` (`{"rows": [...]}`) or `eval_results.csv` file."""
    path = Path(path)
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for row in rows:
            for key in ("context_length", "prediction_length", "num_windows", "num_items", "percent"):
                row[key] = int(row[key])
            for key in ("mse", "mae"):
                row[key] = float(row[key])
            row["drop_last"] = str(row["drop_last"]).lower() == "true"
        return rows
    content = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(content, dict) or not isinstance(content.get("rows"), list):
        raise ValueError(f"{path}: expected a JSON object with a `rows` list")
    return content["rows"]


def write_eval_results(
    path: str | os.PathLike, rows: Sequence[Mapping[str, Any]], append: bool = False
) -> list[dict[str, Any]]:
    r"""
    Write evaluation rows (schema [`EVAL_ROW_FIELDS`]) as `eval_results.json` and `eval_results.csv`.

    Args:
        path (`str` or `os.PathLike`):
            A folder (both files are written into it) or a `.json`/`.csv` file path (the other format is written next
            to it with the same stem).
        rows (`Sequence[Mapping]`): the rows to write.
        append (`bool`, *optional*, defaults to `False`): keep the rows already in the file (JSON, else CSV) first.

    Returns:
        `list[dict]`: all rows written.
    """
    path = Path(path)
    if path.suffix in (".json", ".csv"):
        json_path, csv_path = path.with_suffix(".json"), path.with_suffix(".csv")
    else:
        json_path, csv_path = path / EVAL_RESULTS_JSON, path / EVAL_RESULTS_CSV
    for row in rows:
        missing = [key for key in EVAL_ROW_FIELDS if key not in row]
        if missing:
            raise ValueError(f"evaluation row {dict(row)} lacks the fields {missing}")
    previous: list[dict[str, Any]] = []
    if append:
        if json_path.is_file():
            previous = read_eval_results(json_path)
        elif csv_path.is_file():
            previous = read_eval_results(csv_path)
    all_rows = [{key: row[key] for key in EVAL_ROW_FIELDS} for row in [*previous, *rows]]
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"rows": all_rows}, indent=2) + "\n", encoding="utf-8")
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(EVAL_ROW_FIELDS))
        writer.writeheader()
        writer.writerows(all_rows)
    return all_rows


def save_experiment_folder(
    folder: str | os.PathLike,
    model: BalmTsfForForecasting,
    preprocessor: Any,
    experiment: Any,
    training_info: Mapping[str, Any],
    eval_rows: Sequence[Mapping[str, Any]],
    save_backbone: bool = True,
) -> Path:
    r"""
    Save the Hub-ready folder: `save_pretrained` (config with `auto_map`, weights, tokenizer, modeling code),
    `preprocessor_config.json`, `experiment.yaml`, `training_info.json`, `eval_results.json` and `eval_results.csv`.
    `save_backbone=False` writes a lean checkpoint (the frozen backbone by reference, see `save_pretrained`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, save_backbone=save_backbone)
    preprocessor.save_pretrained(folder)
    (folder / EXPERIMENT_FILE).write_text(experiment.to_yaml(), encoding="utf-8")
    (folder / TRAINING_INFO_FILE).write_text(json.dumps(training_info, indent=2) + "\n", encoding="utf-8")
    write_eval_results(folder, eval_rows)
    return folder


def _finite_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _world_size() -> int:
    return max(int(os.environ.get("WORLD_SIZE", "1")), 1)


CONFIG_FILE = "config.json"


WEIGHTS_FILE = "model.safetensors"


WEIGHTS_INDEX_FILE = "model.safetensors.index.json"


MODEL_CARD_FILE = "README.md"


# Every file a trained folder must hold besides the weights and the tokenizer (see `validate_folder`); the names, the
# `training_info.json` keys and the evaluation row fields are those `balm_hf.training` writes.
CONTRACT_FILES = (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    EXPERIMENT_FILE,
    TRAINING_INFO_FILE,
    EVAL_RESULTS_JSON,
    EVAL_RESULTS_CSV,
)


# Never uploaded: pickled objects (e.g. the `training_args.bin` that `Trainer.save_model` writes) can run code on load.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass
class TrainedFolder:
    r"""
    The parsed contents of a trained BALM-TSF folder, as returned by [`validate_folder`].

    Args:
        path (`Path`): the folder.
        config (`BalmTsfConfig`): the model configuration (`config.json`).
        preprocessor (`BalmTsfPreprocessor`, *optional*): the fitted scaler (`preprocessor_config.json`).
        training_info (`dict`): `training_info.json` (empty when absent and not required).
        experiment (`dict`): `experiment.yaml` (empty when absent and not required).
        eval_rows (`list[dict]`): the rows of `eval_results.json` (empty when absent and not required).
        weight_files (`list[str]`): the safetensors files holding the weights.
        lean (`bool`): a lean checkpoint: the weights leave out the frozen backbone, which `config.json`'s
            `llm_reference` names and hashes (see `BalmTsfPreTrainedModel.save_pretrained`).
        calibration ([`~calibration.ConformalCalibration`], *optional*): the prediction-interval calibration
            (`conformal_calibration.safetensors`), when the folder has one.
        interval_results (`dict`): `interval_results.json` (test coverage, width and WQL of the intervals), when the
            folder has one.
    """

    path: Path
    config: BalmTsfConfig
    preprocessor: BalmTsfPreprocessor | None = None
    training_info: dict[str, Any] = field(default_factory=dict)
    experiment: dict[str, Any] = field(default_factory=dict)
    eval_rows: list[dict[str, Any]] = field(default_factory=list)
    weight_files: list[str] = field(default_factory=list)
    lean: bool = False
    calibration: ConformalCalibration | None = None
    interval_results: dict[str, Any] = field(default_factory=dict)


def _as_folder(folder: str | os.PathLike) -> Path:
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder (expected a trained BALM-TSF folder)")
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error


def _load_config(folder: Path) -> BalmTsfConfig:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the folder holds no model configuration")
    raw = _read_json(path)
    if not isinstance(raw, dict) or raw.get("model_type") != BalmTsfConfig.model_type:
        found = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(f"{path}: `model_type` is {found!r}, expected {BalmTsfConfig.model_type!r}")
    try:
        return BalmTsfConfig.from_pretrained(folder)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path} does not describe a valid BALM-TSF model: {error}") from error


def _load_preprocessor(folder: Path, config: BalmTsfConfig) -> BalmTsfPreprocessor:
    path = folder / PREPROCESSOR_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the folder holds no fitted scaler")
    try:
        preprocessor = BalmTsfPreprocessor.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"{path} is not a valid BALM-TSF preprocessor: {error}") from error
    channels = preprocessor.num_channels
    if config.num_input_channels not in (1, channels):
        raise ValueError(
            f"{path} scales {channels} columns {preprocessor.columns} but {folder / CONFIG_FILE} expects "
            f"`num_input_channels`={config.num_input_channels} (must be 1, channel-independent, or {channels})"
        )
    for name in ("context_length", "prediction_length"):
        value = getattr(preprocessor, name, None)
        if value is not None and value != getattr(config, name):
            raise ValueError(
                f"{path} was fitted for `{name}`={value} but {folder / CONFIG_FILE} has "
                f"`{name}`={getattr(config, name)}"
            )
    return preprocessor


def _load_training_info(folder: Path, required: bool) -> dict[str, Any]:
    path = folder / TRAINING_INFO_FILE
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path} is missing (resolved config, versions, seed, hardware of the run)")
        return {}
    info = _read_json(path)
    if not isinstance(info, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(info).__name__}")
    if required:
        missing = [key for key in TRAINING_INFO_KEYS if key not in info]
        if missing:
            raise ValueError(f"{path} lacks the keys {missing} (expected {list(TRAINING_INFO_KEYS)})")
    return info


def _load_experiment(folder: Path, required: bool) -> dict[str, Any]:
    path = folder / EXPERIMENT_FILE
    if not path.is_file():
        if required:
            raise FileNotFoundError(f"{path} is missing (the resolved experiment configuration)")
        return {}
    try:
        experiment = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(experiment, dict):
        raise ValueError(f"{path} must hold a YAML mapping, got {type(experiment).__name__}")
    return experiment


def _check_eval_row(row: Any, index: int, path: Path) -> dict[str, Any]:
    if not isinstance(row, dict):
        raise ValueError(f"{path}: row {index} must be an object, got {type(row).__name__}")
    missing = [key for key in EVAL_ROW_FIELDS if key not in row]
    if missing:
        raise ValueError(f"{path}: row {index} lacks the keys {missing}")
    for key in ("mse", "mae"):
        if _finite_or_none(row[key]) is None:
            raise ValueError(f"{path}: row {index} has a non-finite or non-numeric `{key}`: {row[key]!r}")
    for key in ("context_length", "prediction_length", "num_windows", "num_items"):
        if isinstance(row[key], bool) or not isinstance(row[key], int):
            raise ValueError(f"{path}: row {index} `{key}` must be an integer, got {row[key]!r}")
    return row


def _load_eval_rows(folder: Path, config: BalmTsfConfig, required: bool) -> list[dict[str, Any]]:
    path = folder / EVAL_RESULTS_JSON
    if not path.is_file():
        if required:
            raise FileNotFoundError(
                f"{path} is missing (the test metrics written by `balm-tsf train` or `balm-tsf evaluate`)"
            )
        return []
    results = _read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ValueError(f'{path} must hold {{"rows": [...]}}')
    rows = [_check_eval_row(row, index, path) for index, row in enumerate(results["rows"])]
    for index, row in enumerate(rows):
        if (row["context_length"], row["prediction_length"]) != (config.context_length, config.prediction_length):
            raise ValueError(
                f"{path}: row {index} reports context_length={row['context_length']}, "
                f"prediction_length={row['prediction_length']}, but the model in {folder / CONFIG_FILE} has "
                f"{config.context_length} and {config.prediction_length}: the results belong to another model"
            )
    return rows


def _check_eval_csv(folder: Path) -> None:
    path = folder / EVAL_RESULTS_CSV
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (the CSV that `balm-tsf evaluate` writes next to the JSON)")
    try:
        frame = pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as error:
        raise ValueError(f"{path} is not a readable CSV: {error}") from error
    missing = [column for column in ("mse", "mae") if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing} (has {list(frame.columns)})")


def _weight_files(folder: Path) -> list[Path]:
    single, index = folder / WEIGHTS_FILE, folder / WEIGHTS_INDEX_FILE
    if single.is_file():
        return [single]
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no `weight_map`")
        shards = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [str(shard) for shard in shards if not shard.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} lists the shards {absent}, which are missing")
        return shards
    pickled = sorted(path.name for path in folder.iterdir() if path.suffix in PICKLE_SUFFIXES)
    hint = f" (found pickled files {pickled}, which are never loaded: re-save with safetensors)" if pickled else ""
    raise FileNotFoundError(f"{single} is missing: the folder holds no safetensors weights{hint}")


def _check_weights(folder: Path, config: BalmTsfConfig) -> list[Path]:
    """Open every safetensors file (never a pickle) and compare its tensors with the model `config.json` describes."""
    files = _weight_files(folder)
    stored: dict[str, tuple[int, ...]] = {}
    origin: dict[str, Path] = {}
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as weights:
                for key in weights.keys():
                    stored[key] = tuple(weights.get_slice(key).get_shape())
                    origin[key] = path
        except (SafetensorError, OSError) as error:
            raise ValueError(
                f"{path} is not a readable safetensors file (truncated or corrupted?): {error}"
            ) from error
    with torch.device("meta"):
        expected_model = BalmTsfForForecasting(config)
    expected = {key: tuple(tensor.shape) for key, tensor in expected_model.state_dict().items()}
    reference = getattr(config, LLM_REFERENCE_KEY, None)
    if reference is not None:
        # A lean checkpoint: the frozen backbone is referenced by name and hashes, not stored.
        prefix = expected_model._backbone_prefix()
        frozen = {key.removeprefix(prefix) for key in expected if key.startswith(prefix)}
        hashes = reference.get("sha256") if isinstance(reference, dict) else None
        if not isinstance(hashes, dict) or set(hashes) != frozen:
            listed = set(hashes) if isinstance(hashes, dict) else set()
            raise ValueError(
                f"{folder / CONFIG_FILE}: `{LLM_REFERENCE_KEY}` must hash every tensor of the backbone that "
                f"`llm_config` describes ({len(frozen)} tensors; not hashed: {sorted(frozen - listed)[:3]}, unknown: "
                f"{sorted(listed - frozen)[:3]})"
            )
        expected = {key: shape for key, shape in expected.items() if not key.startswith(prefix)}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    mismatched = sorted(key for key in set(expected) & set(stored) if expected[key] != stored[key])
    if missing or unexpected or mismatched:
        problems = []
        if mismatched:
            examples = "; ".join(
                f"{key}: file {stored[key]} vs config {expected[key]} ({origin[key].name})" for key in mismatched[:3]
            )
            problems.append(f"{len(mismatched)} tensors have other shapes (e.g. {examples})")
        if missing:
            problems.append(f"{len(missing)} tensors are missing (e.g. {missing[:3]})")
        if unexpected:
            problems.append(f"{len(unexpected)} tensors are unexpected (e.g. {unexpected[:3]})")
        names = ", ".join(str(path) for path in files)
        kind = (
            " (a lean checkpoint, whose weights leave out the frozen backbone that `llm_reference` names)"
            if reference is not None
            else ""
        )
        raise ValueError(
            f"{names} does not match {folder / CONFIG_FILE}{kind}: {'; '.join(problems)}. The weights come from a "
            "model with a different configuration."
        )
    return files


def _check_remote_code(folder: Path) -> None:
    """The `auto_map` modules and their relative imports must sit in the folder for `trust_remote_code=True`."""
    path = folder / CONFIG_FILE
    auto_map = _read_json(path).get("auto_map")
    if not isinstance(auto_map, dict) or "AutoModelForTimeSeriesPrediction" not in auto_map:
        raise ValueError(
            f"{path} has no `auto_map` entry for AutoModelForTimeSeriesPrediction, so the folder cannot load with "
            "`trust_remote_code=True`; re-save the model with `balm_hf` imported"
        )
    pending = [str(reference).split("--")[-1].split(".")[0] for reference in auto_map.values()]
    seen: set[str] = set()
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        source = folder / f"{module}.py"
        if not source.is_file():
            raise FileNotFoundError(f"{source} is missing: {path} `auto_map` or its modeling code needs it")
        pending.extend(re.findall(r"^\s*from\s+\.(\w+)\s+import", source.read_text(encoding="utf-8"), re.MULTILINE))


def _load_calibration(
    folder: Path, config: BalmTsfConfig, preprocessor: BalmTsfPreprocessor | None
) -> ConformalCalibration | None:
    """The folder's interval calibration, checked against the model's horizon and the preprocessor's columns."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    calibration = ConformalCalibration.from_file(path)  # a ValueError naming the file when it does not load
    if calibration.prediction_length != config.prediction_length:
        raise ValueError(
            f"{path} calibrates {calibration.prediction_length} horizon steps but {folder / CONFIG_FILE} has "
            f"`prediction_length`={config.prediction_length}: the calibration belongs to another model"
        )
    if preprocessor is not None and calibration.columns != list(preprocessor.columns):
        raise ValueError(
            f"{path} calibrates the columns {calibration.columns} but {folder / PREPROCESSOR_FILE} has "
            f"{list(preprocessor.columns)}: the calibration belongs to another model"
        )
    return calibration


def _load_interval_results(folder: Path, calibration: ConformalCalibration | None) -> dict[str, Any]:
    """`interval_results.json`, which must belong to the calibration the folder holds (its recorded SHA-256)."""
    path = folder / INTERVAL_RESULTS_FILE
    if not path.is_file():
        return {}
    results = _read_json(path)
    if not isinstance(results, dict) or not isinstance(results.get("models"), list):
        raise ValueError(f'{path} must hold a JSON object with a "models" list')
    if calibration is None:
        raise ValueError(f"{path} reports prediction intervals but {folder / CALIBRATION_FILE} is missing")
    if results.get("calibration_sha256") != calibration_sha256(folder):
        raise ValueError(
            f"{path} was computed with another calibration than {folder / CALIBRATION_FILE}; recompute it with "
            f"`balm-tsf calibrate {folder} --evaluate-test --overwrite`"
        )
    return results


def _read_folder(folder: str | os.PathLike, strict: bool) -> TrainedFolder:
    path = _as_folder(folder)
    config = _load_config(path)
    preprocessor_path = path / PREPROCESSOR_FILE
    preprocessor = _load_preprocessor(path, config) if strict or preprocessor_path.is_file() else None
    calibration = _load_calibration(path, config, preprocessor)
    return TrainedFolder(
        path=path,
        config=config,
        preprocessor=preprocessor,
        training_info=_load_training_info(path, required=strict),
        experiment=_load_experiment(path, required=strict),
        eval_rows=_load_eval_rows(path, config, required=strict),
        lean=getattr(config, LLM_REFERENCE_KEY, None) is not None,
        calibration=calibration,
        interval_results=_load_interval_results(path, calibration),
    )


def validate_folder(folder: str | os.PathLike, backbone_path: str | os.PathLike | None = None) -> TrainedFolder:
    r"""
    Check that a trained folder holds every file of the checkpoint contract and that each one loads.

    The contract (what `scripts/train.py` writes and what [`push_folder_to_hub`] uploads):

    - `config.json` with `model_type = "balm_tsf"` and an `auto_map`, plus the modeling code it names
      (`modeling_balm_tsf.py` and its relative imports), so the folder loads with `trust_remote_code=True`;
    - `model.safetensors` (or a safetensors index and its shards) whose tensors have exactly the names and shapes of
      the model `config.json` describes. Weights are only read as safetensors, never unpickled. A lean checkpoint
      (`config.json` with an `llm_reference`) holds every tensor but the frozen backbone's, and its reference hashes
      every tensor of that backbone; loading it rebuilds the backbone and checks the hashes;
    - the tokenizer files of the backbone;
    - `preprocessor_config.json` (the fitted scaler) for as many columns as the model has channels (or any number for
      a channel-independent model) and for the model's context and horizon;
    - `experiment.yaml`, `training_info.json` (with every key of `TRAINING_INFO_KEYS`), `eval_results.json` (rows for
      this model's context and horizon) and `eval_results.csv`;
    - when present, `conformal_calibration.safetensors` (the prediction-interval calibration) for the preprocessor's
      columns and the model's horizon, and `interval_results.json` computed with that calibration.

    Finally the model is loaded from the folder and run once on a synthetic window.

    Args:
        folder (`str` or `os.PathLike`): the trained folder.
        backbone_path (`str` or `os.PathLike`, *optional*):
            For a lean checkpoint: where to load its frozen backbone from instead of its recorded reference.

    Returns:
        [`TrainedFolder`]: the parsed configuration, preprocessor, training info, experiment and evaluation rows.

    Raises:
        `FileNotFoundError`: a contract file is missing (the message names it).
        `ValueError`: a file does not load or does not match the others (the message names it and says why).
    """
    trained = _read_folder(folder, strict=True)
    path = trained.path
    _check_eval_csv(path)
    _check_remote_code(path)
    trained.weight_files = [str(file) for file in _check_weights(path, trained.config)]
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as error:
        raise FileNotFoundError(
            f"{path} holds no loadable tokenizer files (tokenizer_config.json, ...): {error}"
        ) from error
    try:
        check_tokenizer_fits_backbone(prepare_tokenizer(tokenizer), trained.config.llm_config.vocab_size)
    except ValueError as error:
        raise ValueError(f"{path}: the tokenizer files do not fit the backbone: {error}") from error

    load_kwargs: dict[str, Any] = {} if backbone_path is None else {"backbone_path": backbone_path}
    model = BalmTsfForForecasting.from_pretrained(path, use_safetensors=True, **load_kwargs)
    if model.tokenizer is None:
        raise FileNotFoundError(f"{path}: the model loaded without a tokenizer; save the tokenizer next to it")
    config = trained.config
    # A smooth synthetic window: one forward pass checks that the tokenizer and the weights work together.
    steps = torch.arange(config.context_length, dtype=torch.float32)
    window = torch.sin(steps / 7.0)[None, :, None].expand(1, -1, config.num_input_channels).contiguous()
    with torch.no_grad():
        prediction = model(past_values=window).prediction_outputs
    if not bool(torch.isfinite(prediction).all()):
        raise ValueError(f"{path}: the model loaded from {WEIGHTS_FILE} produces non-finite forecasts")
    return trained


__all__ = [
    "CONFIG_FILE",
    "CONTRACT_FILES",
    "EVAL_RESULTS_CSV",
    "EVAL_RESULTS_JSON",
    "EVAL_ROW_FIELDS",
    "EXPERIMENT_FILE",
    "FINAL_FOLDER_NAME",
    "MODEL_CARD_FILE",
    "PICKLE_SUFFIXES",
    "PREPROCESSOR_FILE",
    "TRAINING_INFO_FILE",
    "TRAINING_INFO_KEYS",
    "TrainedFolder",
    "WEIGHTS_FILE",
    "WEIGHTS_INDEX_FILE",
    "collect_environment_info",
    "collect_training_info",
    "git_revision",
    "read_eval_results",
    "save_experiment_folder",
    "validate_folder",
    "write_eval_results",
]
