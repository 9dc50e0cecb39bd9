"""Test metrics of a trained model: forecasts of the whole test split, result rows and tables."""

from __future__ import annotations

import json
import logging
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from transformers import (
    TrainingArguments,
)

from ..artifacts import EVAL_RESULTS_JSON, EXPERIMENT_FILE, PREPROCESSOR_FILE, TRAINING_INFO_FILE, write_eval_results
from ..data import BalmTsfPreprocessor, load_forecasting_dataset
from ..metrics import compute_forecasting_metrics
from ..models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting
from .trainer import BalmTsfTrainer, ForecastOutput, build_data_collator


logger = logging.getLogger(__name__)


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


def _read_mixed_precision(folder: str) -> str | None:
    """The mixed precision that the training run of a local folder used (`training_info.json`), if recorded."""
    path = Path(folder) / TRAINING_INFO_FILE
    if not path.is_file():
        return None
    hardware = json.loads(path.read_text(encoding="utf-8")).get("hardware") or {}
    return hardware.get("mixed_precision")


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
    saved_series, series = saved.get("series_statistics") or {}, getattr(preprocessor, "series_statistics", None) or {}
    same_scaler = same_scaler and saved_series.keys() == series.keys()
    same_scaler = same_scaler and all(
        np.allclose(saved_series[item][key], series[item][key], rtol=1e-6)
        for item in series
        for key in ("mean", "std")
    )
    if same_series and not same_scaler:
        logger.warning(
            f"the scaler fitted on {preprocessor.dataset_name} differs from the one saved in {path}: the data file "
            "changed since training, so the metrics are not on the training run's scale"
        )


class SavedRun(typing.NamedTuple):
    r"""
    A saved model with its data and a prediction `Trainer`, as [`load_saved_run`] rebuilds them.

    Args:
        model ([`BalmTsfForForecasting`]): the model.
        splits ([`~data.BalmTsfDatasetDict`]): the `train`/`validation`/`test` splits and the refitted preprocessor.
        trainer ([`BalmTsfTrainer`]): a prediction `Trainer` with the run's eval batch size and precision.
        experiment (`dict`): the saved `experiment.yaml` (empty when the model has none).
        missing (`str`): the missing-value mode the data was loaded with.
    """

    model: BalmTsfForForecasting
    splits: Any
    trainer: BalmTsfTrainer
    experiment: dict[str, Any]
    missing: str


def load_saved_run(
    model_name_or_path: str | os.PathLike,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    prediction_length: int | None = None,
    target: str | None = None,
    features: str | None = None,
    batch_size: int | None = None,
    output_dir: str | os.PathLike | None = None,
    bf16: bool | None = None,
    missing: str | None = None,
) -> SavedRun:
    r"""
    Reload a saved model (a folder written by [`run_experiment`] or a Hub repository) with the data of its run.

    Every setting not given comes from the `experiment.yaml` saved with the model (dataset, data folder, split
    borders, target, features, missing-value mode, timestamp options, eval batch size) and from its config
    (`context_length`, `prediction_length`); see [`evaluate_pretrained`] for the arguments. [`evaluate_pretrained`]
    forecasts the test split of what this returns, `balm_hf.calibration.calibrate_folder` its validation split.
    """
    model_name_or_path = str(model_name_or_path)
    experiment = _read_experiment_yaml(model_name_or_path) or {}
    data = experiment.get("data") or {}
    training = experiment.get("training") or {}
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
    missing = missing if missing is not None else data.get("missing", "error")
    # A run fine-tuned with `data.scaler: keep` saved the statistics it kept; its own data is scaled with them again.
    kept_scaler = (
        BalmTsfPreprocessor.from_pretrained(model_name_or_path)
        if same_dataset and data.get("scaler") == "keep"
        else None
    )
    splits = load_forecasting_dataset(
        dataset,
        context_length=model_config.context_length,
        prediction_length=model_config.prediction_length,
        target=target if target is not None else data.get("target", "OT"),
        features=features if features is not None else data.get("features", "M"),
        data_dir=data_dir if data_dir is not None else (data.get("data_dir") if same_dataset else None),
        split_config=data.get("split_config") if same_dataset else None,
        missing=missing,
        scaler=kept_scaler,
        **{
            key: data[key]
            for key in (
                "date_column",
                "date_format",
                "utc",
                "duplicate_timestamps",
                "encoding",
                "id_column",
                "cutoff",
                "test_cutoff",
                "drop_short",
            )
            if same_dataset and data.get(key) is not None
        },
    )
    _check_saved_scaler(model_name_or_path, splits.preprocessor)
    if batch_size is None:
        batch_size = int(training.get("per_device_eval_batch_size", 64))
    if bf16 is None:
        bf16 = _read_mixed_precision(model_name_or_path) == "bf16"
    label_names = ["future_values"] + (["future_observed_mask"] if missing == "mask" else [])
    args = TrainingArguments(
        output_dir=str(output_dir) if output_dir is not None else "balm_tsf_evaluation",
        per_device_eval_batch_size=batch_size,
        label_names=label_names,
        remove_unused_columns=False,
        bf16=bool(bf16 and torch.cuda.is_available()),
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to="none",
    )
    trainer = BalmTsfTrainer(model=model, args=args, data_collator=build_data_collator(model))
    if splits.preprocessor is None or splits.preprocessor.dataset_name is None:
        raise RuntimeError("the splits were loaded without a preprocessor (fitted scaler) or its dataset name")
    return SavedRun(model=model, splits=splits, trainer=trainer, experiment=experiment, missing=missing)


def evaluate_pretrained(
    model_name_or_path: str | os.PathLike,
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    prediction_length: int | None = None,
    target: str | None = None,
    features: str | None = None,
    drop_last_test_batch: bool | None = None,
    drop_last_batch_size: int | None = None,
    batch_size: int | None = None,
    model_name: str | None = None,
    output_dir: str | os.PathLike | None = None,
    bf16: bool | None = None,
    missing: str | None = None,
) -> tuple[list[dict[str, Any]], ForecastOutput]:
    r"""
    Evaluate a saved model (a folder written by [`run_experiment`] or a Hub repository) on the whole test split.

    Every setting not given comes from the `experiment.yaml` saved with the model (dataset, data folder, split
    borders, target, features, missing-value mode, percent, eval batch size, the drop-last protocol and its batch
    size) and from its config (`context_length`, `prediction_length`), so that re-evaluating a folder written by
    [`run_experiment`] on the same machine type reproduces its `eval_results.json`. In paper mode the statistics
    prompts of a batch are padded together (`docs/protocol.md` §2): another `batch_size` changes the forecasts, and
    so the metrics, slightly.

    Args:
        model_name_or_path (`str` or `os.PathLike`): folder or Hub id.
        dataset (`str`, *optional*): benchmark name or CSV path; defaults to the experiment's.
        data_dir (`str` or `os.PathLike`, *optional*): folder of the benchmark files.
        prediction_length (`int`, *optional*):
            Must equal the model's `prediction_length` (the head is fixed); checked for a clear error.
        target (`str`, *optional*), features (`str`, *optional*): as in [`~data.load_forecasting_dataset`].
        drop_last_test_batch (`bool`, *optional*):
            Also report the original's drop-last metrics; defaults to the experiment's
            `evaluation.drop_last_test_batch`.
        drop_last_batch_size (`int`, *optional*):
            Its batch size; defaults to the experiment's `evaluation.drop_last_batch_size`, else its
            `training.per_device_train_batch_size` (the original's test loader used the training batch, 24).
        batch_size (`int`, *optional*):
            Items per device and forward pass; defaults to the experiment's `training.per_device_eval_batch_size`,
            else 64.
        model_name (`str`, *optional*): the `model` column; defaults to the experiment name, else the path or id.
        output_dir (`str` or `os.PathLike`, *optional*): scratch folder of the prediction `Trainer`.
        bf16 (`bool`, *optional*):
            bf16 autocast (CUDA only); defaults to what the training run used (`training_info.json`).
        missing (`str`, *optional*):
            Empty cells: `"error"`, `"ffill"` or `"mask"` (masked entries are left out of the metrics); defaults to the
            experiment's `data.missing`.

    Returns:
        `tuple[list[dict], ForecastOutput]`: the `eval_results` rows and the forecasts.
    """
    model_name_or_path = str(model_name_or_path)
    run = load_saved_run(
        model_name_or_path,
        dataset=dataset,
        data_dir=data_dir,
        prediction_length=prediction_length,
        target=target,
        features=features,
        batch_size=batch_size,
        output_dir=output_dir,
        bf16=bf16,
        missing=missing,
    )
    training = run.experiment.get("training") or {}
    evaluation = run.experiment.get("evaluation") or {}
    if drop_last_test_batch is None:
        drop_last_test_batch = bool(evaluation.get("drop_last_test_batch", False))
    if drop_last_test_batch and drop_last_batch_size is None:
        drop_last_batch_size = evaluation.get("drop_last_batch_size") or training.get(
            "per_device_train_batch_size", 24
        )
    forecasts = run.trainer.predict_forecasts(run.splits["test"])
    rows = forecast_metrics_rows(
        forecasts,
        model_name=model_name or run.experiment.get("name") or model_name_or_path,
        dataset_name=run.splits.preprocessor.dataset_name,
        context_length=run.model.config.context_length,
        percent=int((run.experiment.get("data") or {}).get("percent", 100)),
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
    ([`results_table`]) next to it with the suffix `.md`. This is what `balm-tsf evaluate` does.

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
    "EvaluationResults",
    "HORIZONS",
    "drop_last_item_count",
    "evaluate_pretrained",
    "evaluate_to_results",
    "forecast_metrics_rows",
    "load_saved_run",
    "results_table",
    "SavedRun",
]
