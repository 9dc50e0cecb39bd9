"""The `Trainer` of BALM-TSF and the builders of its datasets, model, collator and arguments."""

from __future__ import annotations

import logging
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoTokenizer,
    EarlyStoppingCallback,
    Trainer,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..artifacts import _world_size
from ..collator import BalmTsfDataCollator
from ..data import BalmTsfDatasetDict, load_forecasting_dataset
from ..metrics import make_compute_metrics
from ..models.balm_tsf.backbones import DEFAULT_BACKBONE
from ..models.balm_tsf.configuration_balm_tsf import BalmTsfConfig
from ..models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting
from .experiment import ExperimentConfig
from .fine_tuning import load_init_model, load_init_preprocessor
from .schedules import PAPER_SCHEDULES, create_paper_scheduler


logger = logging.getLogger(__name__)


ID_COLUMNS = ("window_index", "channel_index")


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


def format_evaluation_line(logs: Mapping[str, Any]) -> str:
    """One line for the logs of an evaluation: epoch, step and the `eval_*` metrics (not the runtime counters)."""
    skip = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second")
    metrics = " ".join(
        f"{key.removeprefix('eval_')}={value:.6g}"
        for key, value in logs.items()
        if key.startswith("eval_") and key not in skip and isinstance(value, (int, float))
    )
    epoch = logs.get("epoch")
    where = f"epoch {epoch:g}" if isinstance(epoch, (int, float)) else "evaluation"
    return f"{where}: validation {metrics}"


class EvaluationLineProgressCallback(ProgressCallback):
    """The progress bars, and one line per evaluation instead of a dict per log."""

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs and any(key.startswith("eval_") for key in logs):
            line = format_evaluation_line(logs)
            if self.training_bar is not None:
                self.training_bar.write(line)
            else:
                print(line)


class EvaluationLinePrinterCallback(PrinterCallback):
    """Without progress bars (`disable_tqdm`): one line per evaluation instead of a dict per log."""

    def on_log(self, args: TrainingArguments, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs and any(key.startswith("eval_") for key in logs):
            print(format_evaluation_line(logs))


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
        verbose (`bool`, *optional*, defaults to `False`):
            Print every log (training losses, learning rate) as the stock `Trainer` does; by default the console shows
            the progress bars and one line per evaluation (every log still reaches `report_to` and the log history).
        args, kwargs: as for `transformers.Trainer`.
    """

    def __init__(
        self, *args: Any, paper_lr_scheduler: str | None = None, verbose: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        if not verbose:
            for stock, quiet in (
                (ProgressCallback, EvaluationLineProgressCallback),
                (PrinterCallback, EvaluationLinePrinterCallback),
            ):
                if self.pop_callback(stock) is not None:
                    self.add_callback(quiet)
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
            # `ignore_keys=None`: Trainer leaves out the model config's `keys_to_ignore_at_inference`
            output = self.predict(dataset, metric_key_prefix="test")
        finally:
            self.label_names, self.compute_metrics = saved
        if isinstance(output.predictions, (tuple, list)):
            raise RuntimeError(
                f"the model returned {len(output.predictions)} outputs instead of the forecast alone: its config's "
                "`keys_to_ignore_at_inference` must list every output field but `prediction_outputs`"
            )
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
    The `TrainingArguments` of `config`: the `TrainingArguments` fields of its `training` section (with the package's
    defaults) plus the fields fixed by the paper protocol.

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
    arguments = dict(training.arguments)
    arguments.setdefault("dataloader_pin_memory", torch.cuda.is_available() and not training.use_cpu)
    arguments.update(
        output_dir=str(output_dir if output_dir is not None else config.output_dir),
        lr_scheduler_type=scheduler_type,
        gradient_accumulation_steps=gradient_accumulation_steps,
        bf16=use_bf16(config),
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="mse",
        greater_is_better=False,
        label_names=label_names,
        remove_unused_columns=False,
    )
    return TrainingArguments(**arguments)


def subsample_evenly(dataset: Any, max_items: int | None) -> Any:
    """At most `max_items` items of `dataset`, evenly spaced (so every channel is represented); all if `None`."""
    if max_items is None or len(dataset) <= max_items:
        return dataset
    indices = np.unique(np.linspace(0, len(dataset) - 1, max_items).round().astype(np.int64))
    return dataset.select(indices.tolist())


def _one_line(error: BaseException) -> str:
    """The message of `error` on one line (library messages often span several)."""
    return " ".join(str(error).split())


def build_datasets(config: ExperimentConfig) -> BalmTsfDatasetDict:
    r"""
    Load the experiment's train/validation/test splits (with the fitted preprocessor as `.preprocessor`). With
    `data.scaler: keep` the data is scaled with the statistics of the `model.init_from` checkpoint.

    Raises:
        `ValueError`: for a data file that does not exist or cannot be read, naming `data.dataset` and the file.
    """
    data = config.data
    scaler = None
    if data.scaler == "keep":
        scaler = load_init_preprocessor(config)
    try:
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
            date_column=data.date_column,
            date_format=data.date_format,
            utc=data.utc,
            duplicate_timestamps=data.duplicate_timestamps,
            encoding=data.encoding,
            scaler=scaler,
            id_column=data.id_column,
            cutoff=data.cutoff,
            test_cutoff=data.test_cutoff,
            drop_short=data.drop_short,
        )
    except (OSError, ValueError) as error:
        raise ValueError(f"`data.dataset` {data.dataset!r}: {_one_line(error)}") from None


def build_model(config: ExperimentConfig) -> BalmTsfForForecasting:
    r"""
    A new [`BalmTsfForForecasting`] for `config`: around the pretrained `model.backbone` (frozen, with its tokenizer),
    or around a randomly initialised backbone built from `model.llm_config` with the tokenizer `model.tokenizer`.
    Call `transformers.set_seed` first for a reproducible initialisation. With `model.init_from` it is the trained
    model of that folder or Hub id instead ([`~fine_tuning.load_init_model`]).

    Raises:
        `ValueError`: for a backbone or tokenizer that cannot be loaded, or `model.config` values that do not fit the
            backbone (e.g. a `d_ff` wider than its hidden size), naming them.
    """
    if config.model.init_from is not None:
        return load_init_model(config)
    kwargs = dict(config.model.config)
    kwargs.update(context_length=config.data.context_length, prediction_length=config.data.prediction_length)
    if config.model.llm_config is not None:
        model = BalmTsfForForecasting(BalmTsfConfig(llm_config=config.model.llm_config, **kwargs))
        try:
            tokenizer = AutoTokenizer.from_pretrained(config.model.tokenizer)
        except OSError as error:
            raise ValueError(
                f"`model.tokenizer` {config.model.tokenizer!r} cannot be loaded: {_one_line(error)}"
            ) from None
        model.set_tokenizer(tokenizer)
        return model
    backbone = config.model.backbone if config.model.backbone is not None else DEFAULT_BACKBONE
    try:
        return BalmTsfForForecasting.from_backbone_pretrained(
            config.model.backbone, random_init=config.model.random_init, **kwargs
        )
    except OSError as error:
        raise ValueError(f"`model.backbone` {backbone!r} cannot be loaded: {_one_line(error)}") from None
    except ValueError as error:
        raise ValueError(f"`model.config` does not fit the backbone {backbone!r}: {_one_line(error)}") from None


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
    verbose: bool = False,
) -> BalmTsfTrainer:
    r"""
    The [`BalmTsfTrainer`] of an experiment: the protocol's `TrainingArguments`, validation MSE/MAE from the
    `forecasting_metrics` evaluate module, early stopping on validation MSE and the configured schedule. `verbose`
    prints every log; by default the console shows the progress bars and one line per evaluation.
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
        verbose=verbose,
    )


__all__ = [
    "BalmTsfTrainer",
    "ForecastOutput",
    "ID_COLUMNS",
    "build_data_collator",
    "build_datasets",
    "build_model",
    "build_trainer",
    "build_training_arguments",
    "canonical_item_order",
    "format_evaluation_line",
    "subsample_evenly",
    "use_bf16",
]
