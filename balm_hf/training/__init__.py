"""Training and evaluation of BALM-TSF experiments.

- `experiment`: the schema of an experiment YAML (`data`, `model`, `training`, `evaluation`) and `--set` overrides;
- `schedules`: the learning-rate schedules of the paper and of the original code;
- `trainer`: [`BalmTsfTrainer`] and the builders of its datasets, model, collator and `TrainingArguments`;
- `evaluation`: forecasts of the whole test split, metric rows, re-evaluation of a saved model, result tables;
- `run_folder`: the output folder of a run (no clobbering, one run at a time, complete checkpoints, atomic `final/`);
- `runner`: [`run_experiment`], one whole run from the config to the Hub-ready folder.
"""

from ..artifacts import (
    EVAL_ROW_FIELDS,
    TRAINING_INFO_KEYS,
    collect_environment_info,
    collect_training_info,
    read_eval_results,
    save_experiment_folder,
    write_eval_results,
)
from .evaluation import (
    EvaluationResults,
    drop_last_item_count,
    evaluate_pretrained,
    evaluate_to_results,
    forecast_metrics_rows,
    results_table,
)
from .experiment import (
    DataArguments,
    EvaluationArguments,
    ExperimentConfig,
    ModelArguments,
    TrainingSettings,
    apply_overrides,
    load_experiment_config,
)
from .run_folder import last_complete_checkpoint, resolve_resume_checkpoint
from .runner import ExperimentResult, run_experiment
from .schedules import PAPER_SCHEDULES, EpochLrLambda, create_paper_scheduler
from .trainer import (
    BalmTsfTrainer,
    ForecastOutput,
    build_data_collator,
    build_datasets,
    build_model,
    build_trainer,
    build_training_arguments,
    canonical_item_order,
)


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
    "build_data_collator",
    "build_datasets",
    "build_model",
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
    "last_complete_checkpoint",
    "load_experiment_config",
    "read_eval_results",
    "resolve_resume_checkpoint",
    "results_table",
    "run_experiment",
    "save_experiment_folder",
    "write_eval_results",
]
