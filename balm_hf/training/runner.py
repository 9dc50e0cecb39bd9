"""One whole experiment: train, test the best checkpoint, and save the Hub-ready folder."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import (
    set_seed,
)
from transformers.utils import logging as transformers_logging

from ..artifacts import FINAL_FOLDER_NAME, collect_training_info, save_experiment_folder
from ..models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting
from .evaluation import forecast_metrics_rows
from .experiment import ExperimentConfig
from .fine_tuning import check_source_outside, init_from_record
from .intervals import calibrate_after_training, write_interval_files
from .run_folder import (
    check_output_dir,
    clear_run,
    is_main_process,
    resolve_resume_checkpoint,
    run_lock,
    write_folder_atomically,
)
from .trainer import ForecastOutput, build_datasets, build_model, build_trainer


logger = logging.getLogger(__name__)


@contextmanager
def _transformers_verbosity(verbose: bool) -> Iterator[None]:
    """`transformers` at info level (config dumps, load reports) when `verbose`, else errors only; restored after."""
    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity(transformers_logging.INFO if verbose else transformers_logging.ERROR)
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)


@contextmanager
def _weight_progress_bars(verbose: bool) -> Iterator[None]:
    """Hide the bars of `transformers`' weight loading and writing unless `verbose` (the training bars stay)."""
    enabled = transformers_logging.is_progress_bar_enabled()
    if not verbose:
        transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            transformers_logging.enable_progress_bar()


def render_model_card_if_available(folder: str | os.PathLike) -> bool:
    """Call `balm_hf.hub.render_model_card(folder)` when that module and function exist; returns whether it ran."""
    try:
        from .. import hub
    except ImportError:
        return False
    render = getattr(hub, "render_model_card", None)
    if render is None:
        return False
    render(folder)
    return True


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


def run_experiment(
    config: ExperimentConfig,
    output_dir: str | os.PathLike | None = None,
    resume_from_checkpoint: str | bool | None = None,
    overwrite: bool | None = None,
    verbose: bool = False,
) -> ExperimentResult:
    r"""
    Train and test one experiment and save the Hub-ready folder to `<output_dir>/final`.

    Steps: seed (`transformers.set_seed`), load the splits, build the model (a new one, or with `model.init_from` the
    trained checkpoint, recorded as `init_from` in `training_info.json`), train with [`BalmTsfTrainer`]
    (validation every epoch, early stopping, best checkpoint reloaded at the end), forecast the **whole** test split
    once with the best checkpoint, compute MSE/MAE over every test item, step and channel (plus the original's
    drop-last variant if `evaluation.drop_last_test_batch`), with `evaluation.calibrate` forecast the whole validation
    split to calibrate prediction intervals and score them on the test forecasts (`conformal_calibration.safetensors`,
    `interval_results.json`; [`~intervals.calibrate_after_training`]), and save the folder on the main process.

    The output folder is protected: a folder that holds anything (a finished or interrupted run) is refused unless
    resuming or overwriting, and the main process holds a lock in it for the whole run, so that a second run into the
    same folder fails at once. Resuming picks the newest *complete* checkpoint (one cut short by a kill during its
    save is skipped), and `final/` is written to a temporary folder and renamed into place.

    Args:
        config ([`ExperimentConfig`]): the resolved experiment.
        output_dir (`str` or `os.PathLike`, *optional*): overrides `training.output_dir`.
        resume_from_checkpoint (`str` or `bool`, *optional*):
            `True` resumes from the newest complete checkpoint in the output folder, a path from that checkpoint.
        overwrite (`bool`, *optional*):
            Train into an output folder that holds a run, deleting its checkpoints, `final/` and log history first;
            defaults to `training.overwrite`.
        verbose (`bool`, *optional*, defaults to `False`):
            Also print every training log, the configs that `transformers` dumps and its weight-loading reports. By
            default the console shows the progress bars and one line per evaluation; the log history is complete
            either way.

    Raises:
        `ValueError`: for an output folder that holds a run (without `resume_from_checkpoint` or `overwrite`), one
            that another run is using, or no complete checkpoint to resume from.
    """
    start = time.perf_counter()
    output_dir = Path(output_dir if output_dir is not None else config.output_dir)
    if output_dir != Path(config.output_dir):
        config = dataclasses.replace(config, training=dataclasses.replace(config.training, output_dir=str(output_dir)))
    overwrite = config.training.overwrite if overwrite is None else overwrite
    if overwrite and resume_from_checkpoint not in (None, False):
        raise ValueError("--overwrite deletes the checkpoints that --resume would continue from: give one of them")
    if overwrite and config.model.init_from is not None:
        check_source_outside(config.model.init_from, output_dir)
    check_output_dir(output_dir, resume_from_checkpoint, overwrite)
    resume = resolve_resume_checkpoint(output_dir, resume_from_checkpoint)

    with run_lock(output_dir), _weight_progress_bars(verbose):
        # Data and backbone errors surface here, before the previous run is removed and before any training.
        set_seed(config.training.seed)
        splits = build_datasets(config)
        preprocessor = splits.preprocessor
        if preprocessor is None or preprocessor.dataset_name is None:
            raise RuntimeError("the datasets were built without a preprocessor (fitted scaler) or its dataset name")
        with _transformers_verbosity(verbose):
            model = build_model(config)
        if overwrite and is_main_process():
            clear_run(output_dir)
        trainer = build_trainer(config, model, splits, output_dir=output_dir, verbose=verbose)
        train_output = trainer.train(resume_from_checkpoint=resume)

        forecasts = trainer.predict_forecasts(splits["test"])
        drop_last_batch_size = None
        if config.evaluation.drop_last_test_batch:
            drop_last_batch_size = (
                config.evaluation.drop_last_batch_size or config.training.per_device_train_batch_size
            )
        rows = forecast_metrics_rows(
            forecasts,
            model_name=config.name,
            dataset_name=preprocessor.dataset_name,
            context_length=config.data.context_length,
            percent=config.data.percent,
            drop_last_batch_size=drop_last_batch_size,
        )
        calibration = intervals = None
        if config.evaluation.calibrate:
            calibration, intervals = calibrate_after_training(trainer, splits, forecasts, config.name)
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
        if config.model.init_from is not None:
            info["init_from"] = init_from_record(config)
        final_dir = output_dir / FINAL_FOLDER_NAME
        if trainer.is_world_process_zero():
            # `Trainer.model` is typed loosely; it is the `BalmTsfForForecasting` that `build_model` made
            final_model = typing.cast(BalmTsfForForecasting, trainer.model)

            def write_final(folder: Path) -> None:
                save_experiment_folder(
                    folder, final_model, preprocessor, config, info, rows, save_backbone=config.training.save_backbone
                )
                if calibration is not None:
                    write_interval_files(folder, calibration, intervals)
                render_model_card_if_available(folder)

            write_folder_atomically(final_dir, write_final)
            (output_dir / "log_history.json").write_text(json.dumps(state.log_history, indent=2) + "\n")
        trainer.accelerator.wait_for_everyone()
    return ExperimentResult(
        output_dir=output_dir,
        final_dir=final_dir,
        eval_rows=rows,
        training_info=info,
        log_history=list(state.log_history),
        forecasts=forecasts,
    )


__all__ = [
    "ExperimentResult",
    "render_model_card_if_available",
    "run_experiment",
]
