"""Training and evaluation: experiment configs, schedules, Trainer runs, resume, saved folders and 2-process runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import DATA_DIR, REPO_ROOT, TOKENIZER_DIR, tiny_llm_config
from transformers import AutoTokenizer, GPT2Model

from balm_hf.artifacts import EVAL_ROW_FIELDS, read_eval_results, write_eval_results
from balm_hf.calibration import (
    CALIBRATION_FILE,
    INTERVAL_RESULTS_FILE,
    ConformalCalibration,
    calibrate_folder,
    calibration_sha256,
)
from balm_hf.cli import main as cli_main
from balm_hf.data import load_forecasting_dataset
from balm_hf.training import (
    ExperimentConfig,
    ForecastOutput,
    apply_overrides,
    build_training_arguments,
    canonical_item_order,
    create_paper_scheduler,
    drop_last_item_count,
    evaluate_pretrained,
    forecast_metrics_rows,
    load_experiment_config,
    results_table,
    run_experiment,
)


CONFIG_DIR = REPO_ROOT / "configuration"
CONTRACT_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer_config.json",
    "modeling_balm_tsf.py",
    "preprocessor_config.json",
    "experiment.yaml",
    "training_info.json",
    "eval_results.json",
    "eval_results.csv",
)
TRAINING_INFO_KEYS = {
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
}
# ETTh1, target only, L=64, H=16: the test split has 2880 - 16 + 1 = 2865 windows (one channel).
TEST_ITEMS = 2865
LLM_CONFIG = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 30522, "n_positions": 512}


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    # The test machines are small and shared; one intra-op thread is several times faster there and deterministic.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> Path:
    """A 2-block GPT-2 (dropout off) with the fixture tokenizer, saved like a pretrained backbone."""
    folder = tmp_path_factory.mktemp("tiny_backbone")
    torch.manual_seed(0)
    GPT2Model(tiny_llm_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    return folder


def tiny_experiment(output_dir: Path, backbone: Path | None = None, **sections) -> dict:
    """A raw experiment config that trains in seconds: ETTh1 target only, L=64, H=16, 5% of the train split."""
    config: dict[str, Any] = {
        "name": "tiny-etth1",
        "data": {
            "dataset": "ETTh1",
            "data_dir": str(DATA_DIR),
            "context_length": 64,
            "prediction_length": 16,
            "percent": 5,  # 413 training windows
            "features": "S",
        },
        "model": {
            "config": {"llm_layers": 2, "patch_length": 8, "patch_stride": 4, "d_model": 8, "d_ff": 16, "dropout": 0.0}
        },
        "training": {
            "output_dir": str(output_dir),
            "learning_rate": 0.01,
            "num_train_epochs": 2,
            "per_device_train_batch_size": 24,
            "per_device_eval_batch_size": 64,
            "logging_steps": 1,
            "disable_tqdm": True,
            "bf16": False,
        },
        "evaluation": {"max_validation_items": 200, "drop_last_test_batch": True},
    }
    if backbone is not None:
        config["model"]["backbone"] = str(backbone)
    else:
        config["model"].update(llm_config=dict(LLM_CONFIG), tokenizer=str(TOKENIZER_DIR))
    for section, values in sections.items():
        config[section].update(values)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_backbone):
    """One uninterrupted 2-epoch run, shared by several tests."""
    output_dir = tmp_path_factory.mktemp("run") / "uninterrupted"
    config = ExperimentConfig.from_dict(tiny_experiment(output_dir, backbone=tiny_backbone))
    return run_experiment(config)


# -- configuration ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainng.learning_rate=0.1", "trainng"),
        ("training.learnig_rate=0.1", "training.learnig_rate"),
        ("model.config.d_fff=16", "model.config.d_fff"),
        ("model.config.context_length=32", "data.context_length"),
        ("training.extra_training_args.not_a_field=1", "training.extra_training_args.not_a_field"),
        ("data.context_length=0", "data.context_length"),
        ("data.percent=150", "data.percent"),
        ("data.features=X", "data.features"),
        ("data.dataset=NotABenchmark", "data.dataset"),
        ("training.learning_rate=-0.01", "training.learning_rate"),
        ("training.learning_rate=fast", "training.learning_rate"),
        ("training.lr_scheduler=sometimes", "training.lr_scheduler"),
        ("training.max_steps=0", "training.max_steps"),
        ("training.global_batch_size=30", "training.global_batch_size"),
        ("training.bf16=maybe", "training.bf16"),
        ("model.config.d_ff=64", "d_ff"),  # wider than the 32-wide tiny backbone
        ("model.config.dropout=1.5", "dropout"),
        ("data.prediction_length=2", "prompt_length"),  # int(9 * 2 / 64) = 0 prompt tokens
    ],
)
def test_config_with_unknown_key_or_impossible_value_is_refused_naming_it(tmp_path, override, message):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(tiny_experiment(tmp_path / "out")))
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_experiment_config(path, [override])


def test_shipped_experiment_configs_load_with_the_paper_protocol():
    paths = sorted((CONFIG_DIR / "long_term").glob("*.yaml")) + sorted((CONFIG_DIR / "few_shot").glob("*.yaml"))
    assert len(paths) == 24 + 16
    configs = {(path.parent.name, path.stem): load_experiment_config(path) for path in paths}
    for (setting, _), config in configs.items():
        assert config.data.context_length == 512
        assert config.data.percent == (100 if setting == "long_term" else 10)
        assert config.model.backbone == "openai-community/gpt2" and config.model.config["llm_layers"] == 6
        assert config.training.seed == 2021 and config.training.bf16
        assert config.evaluation.drop_last_test_batch
    etth1 = [configs["long_term", f"etth1_{h}"].training.learning_rate for h in (96, 192, 336, 720)]
    assert etth1 == [0.01, 0.02, 0.01, 0.01]
    few = [configs["few_shot", f"etth1_{h}"].training for h in (96, 192, 336, 720)]
    assert [t.learning_rate for t in few] == [0.01, 0.02, 0.002, 0.02]
    assert [t.per_device_train_batch_size for t in few] == [16, 8, 8, 8]
    default = load_experiment_config(CONFIG_DIR / "default.yaml")
    assert default.model.backbone is None and default.evaluation.max_validation_items is not None


# `TrainingArguments` fields that the experiment configs resolved to before `training:` went straight into
# `TrainingArguments` (all fields the package sets; `bf16` as resolved on a CPU-only machine).
_PROTOCOL_ARGUMENTS = {
    "per_device_train_batch_size": 24,
    "max_steps": -1,
    "learning_rate": 0.01,
    "lr_scheduler_type": "constant",
    "lr_scheduler_kwargs": {},
    "warmup_steps": 0,
    "optim": "adamw_torch",
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "max_grad_norm": 0.0,
    "logging_strategy": "steps",
    "disable_tqdm": False,
    "report_to": [],
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "mse",
    "greater_is_better": False,
    "seed": 2021,
    "use_cpu": False,
    "dataloader_num_workers": 0,
    "remove_unused_columns": False,
    "label_names": ["future_values"],
}
_RESOLVED_ARGUMENTS = {
    "default.yaml": {
        **_PROTOCOL_ARGUMENTS,
        "output_dir": "outputs/balm-tsf-default-etth1-96-96",
        "num_train_epochs": 2.0,
        "gradient_accumulation_steps": 1,
        "logging_steps": 20,
        "per_device_eval_batch_size": 128,
    },
    "long_term/etth1_96.yaml": {
        **_PROTOCOL_ARGUMENTS,
        "output_dir": "outputs/balm-tsf-etth1-512-96",
        "num_train_epochs": 100.0,
        "gradient_accumulation_steps": 4,
        "logging_steps": 50,
        "per_device_eval_batch_size": 64,
    },
}


@pytest.mark.parametrize("name", sorted(_RESOLVED_ARGUMENTS))
def test_shipped_configs_resolve_to_the_same_training_arguments(monkeypatch, name):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = build_training_arguments(load_experiment_config(CONFIG_DIR / name))
    resolved = {key: getattr(args, key) for key in _RESOLVED_ARGUMENTS[name]}
    resolved = {key: getattr(value, "value", value) for key, value in resolved.items()}  # enums as their strings
    assert resolved == _RESOLVED_ARGUMENTS[name]
    if not torch.cuda.is_available():
        assert not args.bf16 and not args.dataloader_pin_memory


def test_every_shipped_config_loads_and_round_trips_through_its_saved_yaml(tmp_path):
    paths = [CONFIG_DIR / "default.yaml", *sorted(CONFIG_DIR.glob("*_*/*.yaml"))]
    assert len(paths) == 41
    for path in paths:
        config = load_experiment_config(path)
        saved = tmp_path / "experiment.yaml"
        saved.write_text(config.to_yaml())
        assert load_experiment_config(saved).to_dict() == config.to_dict(), path


def test_any_training_arguments_field_is_a_training_key_coerced_by_its_type(tmp_path):
    overrides = ["training.full_determinism=true", "training.run_name=demo", "training.learning_rate='1e-3'"]
    overrides.append("training.eval_accumulation_steps=4")
    config = load_experiment_config(None, [f"training.output_dir={tmp_path}", *overrides])
    assert config.training.learning_rate == 0.001 and isinstance(config.training.learning_rate, float)
    args = build_training_arguments(config)
    assert (args.full_determinism, args.run_name, args.eval_accumulation_steps) == (True, "demo", 4)
    # the layout of folders saved by 0.1.0 still loads
    legacy = ExperimentConfig.from_dict({"training": {"extra_training_args": {"eval_accumulation_steps": 2}}})
    assert legacy.training.eval_accumulation_steps == 2


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.eval_strategy=no", "training.eval_strategy` is fixed"),
        ("training.lr_scheduler_type=linear", "training.lr_scheduler"),
        ("training.optim=not_an_optimizer", "not_an_optimizer"),
        ("training.full_determinism=sometimes", "training.full_determinism"),
        ("training.not_a_field=1", "training.not_a_field"),
    ],
)
def test_training_keys_are_validated_against_training_arguments(override, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_experiment_config(None, [override])


def test_a_config_without_backbone_means_the_offline_default():
    assert ExperimentConfig.from_dict({}).model.backbone is None
    assert load_experiment_config(None).model.backbone is None


def test_paper_config_keeps_the_authors_global_batch_on_any_number_of_processes(monkeypatch, tmp_path):
    config = load_experiment_config(CONFIG_DIR / "long_term" / "etth1_96.yaml", [f"training.output_dir={tmp_path}"])
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = build_training_arguments(config)
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (24, 4)  # 4 GPUs x 24 on one
    assert args.label_names == ["future_values"] and not args.remove_unused_columns
    assert (args.eval_strategy, args.save_strategy, args.metric_for_best_model) == ("epoch", "epoch", "mse")
    assert args.load_best_model_at_end and not args.greater_is_better and args.max_grad_norm == 0.0
    if not torch.cuda.is_available():
        assert not args.bf16  # bf16 is requested, but applies on CUDA only
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert build_training_arguments(config).gradient_accumulation_steps == 1
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="global_batch_size"):
        build_training_arguments(config)


# -- schedules --------------------------------------------------------------------------------------------------------


def _rates(kind: str, steps_per_epoch: int, epochs: int, lr: float = 0.01) -> list[float]:
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = create_paper_scheduler(kind, optimizer, steps_per_epoch, steps_per_epoch * epochs)
    rates = []
    for _ in range(steps_per_epoch * epochs):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_halving_schedule_halves_the_rate_after_every_epoch():
    rates = _rates("halving", steps_per_epoch=3, epochs=4)
    np.testing.assert_allclose(rates, np.repeat([0.01, 0.005, 0.0025, 0.00125], 3))


def test_original_schedules_follow_the_authors_code():
    # type1 as run: OneCycleLR's constructor leaves lr / 25, kept for epoch 2, then halved per epoch.
    np.testing.assert_allclose(_rates("original_type1", 2, 4), np.repeat([4e-4, 4e-4, 2e-4, 1e-4], 2))
    cosine = _rates("original_cos", 1, 21, lr=5e-4)
    np.testing.assert_allclose(cosine[0], 5e-4)
    np.testing.assert_allclose(cosine[10], 1e-8 + (5e-4 - 1e-8) / 2)
    np.testing.assert_allclose(cosine[20], 1e-8, atol=1e-15)
    one_cycle = _rates("original_tst", 10, 2)
    assert one_cycle[0] == pytest.approx(0.01 / 25) and max(one_cycle) == pytest.approx(0.01)
    assert int(np.argmax(one_cycle)) == 3  # torch peaks at step pct_start * total_steps - 1 = 0.2 * 20 - 1


def test_patchtst_schedule_keeps_the_rate_for_four_epochs_then_decays_by_0_9():
    # PatchTST's `lradj=type3`: after epoch e (from 1) its code sets `lr if e < 3 else lr * 0.9 ** (e - 3)`.
    expected = [1e-4] * 4 + [1e-4 * 0.9, 1e-4 * 0.81, 1e-4 * 0.729]
    np.testing.assert_allclose(_rates("patchtst_type3", 2, 7, lr=1e-4), np.repeat(expected, 2))


# -- end-to-end training ----------------------------------------------------------------------------------------------


def test_training_lowers_the_loss_and_logs_its_parts(trained):
    history = trained.log_history
    train_logs = [entry for entry in history if "loss" in entry and "mse_loss" in entry]
    evals = [entry for entry in history if "eval_mse" in entry]
    assert len(evals) == 2
    assert evals[1]["eval_mse"] < evals[0]["eval_mse"]
    first = np.mean([entry["loss"] for entry in train_logs if entry["epoch"] <= 1])
    second = np.mean([entry["loss"] for entry in train_logs if entry["epoch"] > 1])
    assert second < first
    for entry in train_logs:  # total = mse + alignment_weight (1) * alignment, averaged the same way
        assert entry["loss"] == pytest.approx(entry["mse_loss"] + entry["alignment_loss"], rel=1e-4)
    assert {entry["learning_rate"] for entry in train_logs if entry["epoch"] <= 1} == {0.01}
    assert {entry["learning_rate"] for entry in train_logs if entry["epoch"] > 1} == {0.005}


def test_training_saves_the_hub_folder_contract(trained):
    final = trained.final_dir
    for name in CONTRACT_FILES:
        assert (final / name).is_file(), name
    assert "auto_map" in json.loads((final / "config.json").read_text())
    info = json.loads((final / "training_info.json").read_text())
    assert set(info) == TRAINING_INFO_KEYS
    assert info["seed"] == 2021 and info["epochs_completed"] == 2.0
    assert info["best_checkpoint"].startswith("checkpoint-") and info["best_validation_mse"] > 0
    assert info["hardware"]["device"] in ("cpu", "cuda") and info["hardware"]["num_processes"] == 1
    assert set(info["versions"]) == {
        "balm_tsf",
        "torch",
        "transformers",
        "datasets",
        "accelerate",
        "evaluate",
        "huggingface_hub",
        "python",
    }
    assert yaml.safe_load((final / "experiment.yaml").read_text()) == info["experiment"]
    rows = read_eval_results(final / "eval_results.json")
    assert rows == read_eval_results(final / "eval_results.csv")
    assert [row["drop_last"] for row in rows] == [False, True]
    assert all(set(row) == set(EVAL_ROW_FIELDS) and row["split"] == "test" for row in rows)


def test_training_calibrates_its_final_folder_as_calibrate_folder_does(trained, tmp_path):
    final = trained.final_dir
    saved = ConformalCalibration.from_pretrained(final)
    assert saved.columns == ["OT"] and saved.prediction_length == 16
    assert saved.split == "validation" and saved.num_windows == TEST_ITEMS  # the whole validation split, 2865 windows
    results = json.loads((final / INTERVAL_RESULTS_FILE).read_text())
    assert results["calibration_sha256"] == calibration_sha256(final)
    assert [model["model"] for model in results["models"]] == ["BALM-TSF", "seasonal naive (season 24)"]
    assert results["num_windows"] == TEST_ITEMS and 0 < results["models"][0]["coverage"]["0.9"] <= 1
    card = (final / "README.md").read_text()
    assert "## Prediction intervals" in card and "| BALM-TSF |" in card and "Point forecasts only" not in card
    # Calibrating the saved folder again, from its files, gives the same offsets.
    copy = Path(shutil.copytree(final, tmp_path / "final"))
    again = calibrate_folder(copy, overwrite=True)
    np.testing.assert_allclose(again.offsets, saved.offsets, rtol=0, atol=1e-6)
    assert again.levels == saved.levels


def test_test_split_is_evaluated_in_full_and_drop_last_drops_the_incomplete_batch(trained):
    full, dropped = trained.eval_rows
    assert full["num_items"] == full["num_windows"] == TEST_ITEMS
    assert dropped["num_items"] == TEST_ITEMS - TEST_ITEMS % 24 == 2856
    forecasts = trained.forecasts
    assert np.array_equal(forecasts.window_index, np.arange(TEST_ITEMS))
    # The drop-last row is the metric of the first 2856 items of the original's (channel-major) order.
    prefix = forecasts.predictions[:2856] - forecasts.references[:2856]
    assert dropped["mse"] == pytest.approx(float(np.mean(prefix.astype(np.float64) ** 2)), rel=1e-6)


def test_drop_last_rows_follow_channel_major_item_order():
    assert drop_last_item_count(19495, 24) == 19488
    assert drop_last_item_count(48, 24) == 48
    windows, channels, horizon = 5, 3, 2
    references = np.zeros((windows * channels, horizon, 1), dtype=np.float32)
    predictions = references.copy()
    predictions[-3:] = 1.0  # the last 3 items: windows 2..4 of the last channel
    forecasts = ForecastOutput(
        predictions=predictions,
        references=references,
        window_index=np.tile(np.arange(windows), channels),
        channel_index=np.repeat(np.arange(channels), windows),
        num_windows=windows,
        num_channels=channels,
    )
    full, dropped = forecast_metrics_rows(forecasts, "m", "d", 8, 100, drop_last_batch_size=4)
    assert (full["num_items"], dropped["num_items"]) == (15, 12)
    assert full["mse"] == pytest.approx(3 / 15) and dropped["mse"] == 0.0


def test_item_ids_must_cover_the_split_exactly_once():
    windows, channels = 4, 2
    window_index = np.tile(np.arange(windows), channels)
    channel_index = np.repeat(np.arange(channels), windows)
    shuffled = np.random.default_rng(0).permutation(windows * channels)
    order, num_windows, num_channels = canonical_item_order(window_index[shuffled], channel_index[shuffled], 8)
    assert (num_windows, num_channels) == (windows, channels)
    np.testing.assert_array_equal(window_index[shuffled][order], window_index)
    # A padded distributed batch repeats the first items; a lost batch misses some.
    repeated = (np.concatenate([window_index, window_index[:2]]), np.concatenate([channel_index, channel_index[:2]]))
    with pytest.raises(RuntimeError, match="exactly once"):
        canonical_item_order(*repeated, 8)
    with pytest.raises(RuntimeError, match="exactly once"):
        canonical_item_order(window_index[:-1], channel_index[:-1], 8)


def test_saved_folder_reloads_to_the_same_test_metrics(trained, tmp_path):
    results = tmp_path / "results" / "eval_results.json"
    assert cli_main(["evaluate", str(trained.final_dir), "--drop-last-test-batch", "--results", str(results)]) == 0
    rows = read_eval_results(results)
    assert [(row["num_items"], row["drop_last"]) for row in rows] == [(TEST_ITEMS, False), (2856, True)]
    for reloaded, original in zip(rows, trained.eval_rows, strict=True):
        assert reloaded["mse"] == pytest.approx(original["mse"], rel=1e-6)
        assert reloaded["mae"] == pytest.approx(original["mae"], rel=1e-6)
        assert reloaded["model"] == original["model"] == "tiny-etth1"
    assert "| ETTh1 |" in results.with_suffix(".md").read_text()
    # A second evaluation is appended to the same results file (the whole test split only; by default evaluate
    # repeats the trained run's drop-last protocol too).
    assert cli_main(["evaluate", str(trained.final_dir), "--no-drop-last-test-batch", "--results", str(results)]) == 0
    assert len(read_eval_results(results.with_suffix(".csv"))) == 3


def assert_reevaluation_reproduces_the_saved_rows(final_dir: Path, scratch: Path) -> None:
    """Re-evaluating a trained folder with its saved experiment's settings gives its `eval_results.json` exactly."""
    saved = read_eval_results(final_dir / "eval_results.json")
    rows, _ = evaluate_pretrained(final_dir, output_dir=scratch)
    assert rows == saved


def test_reevaluating_a_trained_folder_reproduces_its_eval_results_exactly(trained, tmp_path):
    saved = read_eval_results(trained.final_dir / "eval_results.json")
    assert [row["drop_last"] for row in saved] == [False, True]
    assert_reevaluation_reproduces_the_saved_rows(trained.final_dir, tmp_path / "scratch")


def test_evaluation_warns_when_the_data_no_longer_matches_the_saved_scaler(trained, tmp_path, caplog):
    folder = tmp_path / "final"
    shutil.copytree(trained.final_dir, folder)
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    preprocessor["mean"] = [value + 1.0 for value in preprocessor["mean"]]
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    with caplog.at_level(logging.WARNING, logger="balm_hf.training"):
        rows, _ = evaluate_pretrained(folder, output_dir=tmp_path / "scratch")
    assert "differs from the one saved" in caplog.text
    assert rows[0]["mse"] == pytest.approx(trained.eval_rows[0]["mse"], rel=1e-6)
    with pytest.raises(ValueError, match="prediction_length"):
        evaluate_pretrained(folder, prediction_length=32)


def test_interrupted_training_resumes_to_the_uninterrupted_final_state(trained, tmp_path, tiny_backbone):
    raw = tiny_experiment(tmp_path / "interrupted", backbone=tiny_backbone)
    first = apply_overrides(raw, ["training.num_train_epochs=1"])  # stops after epoch 1, as if killed in epoch 2
    first = apply_overrides(first, ["evaluation.calibrate=false"])  # no prediction-interval calibration
    run_experiment(ExperimentConfig.from_dict(first))
    assert (tmp_path / "interrupted" / "final" / "eval_results.json").is_file()
    assert not (tmp_path / "interrupted" / "final" / CALIBRATION_FILE).exists()
    resumed = run_experiment(ExperimentConfig.from_dict(raw), resume_from_checkpoint=True)
    assert resumed.training_info["epochs_completed"] == 2.0
    assert resumed.eval_rows[0]["mse"] == trained.eval_rows[0]["mse"]
    np.testing.assert_array_equal(resumed.forecasts.predictions, trained.forecasts.predictions)
    losses = [entry["loss"] for entry in resumed.log_history if "loss" in entry]
    assert losses == [entry["loss"] for entry in trained.log_history if "loss" in entry]
    assert_reevaluation_reproduces_the_saved_rows(resumed.final_dir, tmp_path / "scratch")


def test_d_ff_wider_than_the_backbone_fails_before_training_naming_it(tmp_path, tiny_backbone):
    raw = tiny_experiment(tmp_path / "run", backbone=tiny_backbone)
    raw["model"]["config"]["d_ff"] = 64  # the tiny backbone is 32 wide
    with pytest.raises(ValueError, match=r"`model.config` does not fit the backbone .*`d_ff` \(64\)"):
        run_experiment(ExperimentConfig.from_dict(raw))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_resume_without_checkpoint_is_refused(tmp_path):
    config = ExperimentConfig.from_dict(tiny_experiment(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no checkpoint"):
        run_experiment(config, resume_from_checkpoint=True)


# -- results files and table ------------------------------------------------------------------------------------------


def test_results_table_has_the_paper_layout(tmp_path):
    rows = []
    for horizon, mse in zip((96, 192, 336, 720), (0.1, 0.2, 0.3, 0.4), strict=True):
        rows.append(
            {
                "model": "m",
                "dataset": "ETTh1",
                "context_length": 512,
                "prediction_length": horizon,
                "split": "test",
                "mse": mse,
                "mae": mse / 2,
                "num_windows": 10,
                "num_items": 70,
                "drop_last": False,
                "percent": 100,
            }
        )
    rows.append({**rows[0], "dataset": "ETTh2"})
    written = write_eval_results(tmp_path / "results.json", rows[:2])
    written = write_eval_results(tmp_path / "results.csv", rows[2:], append=True)
    assert written == rows
    table = results_table(read_eval_results(tmp_path / "results.json")).splitlines()
    assert table[0] == "| dataset | 96 | 192 | 336 | 720 | Avg |"
    assert table[2] == "| ETTh1 | 0.100/0.050 | 0.200/0.100 | 0.300/0.150 | 0.400/0.200 | 0.250/0.125 |"
    assert table[3] == "| ETTh2 | 0.100/0.050 | - | - | - | - |"


# -- two processes ----------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_cpu_processes_train_evaluate_each_test_item_once_and_match_one_process(tmp_path, tiny_backbone):
    # Equivalence needs the per-item computation to be independent of the batch split: no alignment loss (its
    # negatives come from the per-process batch), no dropout (per-process RNG streams), and attention-masked,
    # left-padded prompts (the paper's unmasked padding depends on the longest prompt in the batch). Then one process
    # with batch 24 and two with 12 each take the same optimizer steps on the same items, up to float summation order.
    raw = tiny_experiment(
        tmp_path / "unused",
        backbone=tiny_backbone,
        training={"learning_rate": 0.001, "max_steps": 8, "logging_steps": 2},
    )
    raw["model"]["config"].update(alignment_weight=0.0, prompt_attention_mask=True, prompt_padding_side="left")
    config_path = tmp_path / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    env["HF_EVALUATE_OFFLINE"] = "1"
    script = str(REPO_ROOT / "scripts" / "train.py")
    single = [sys.executable, script, "--config", str(config_path), "--output-dir", str(tmp_path / "one")]
    accelerate = Path(sys.executable).with_name("accelerate")
    launcher = (
        [str(accelerate), "launch"] if accelerate.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]
    )
    double = [
        *launcher,
        "--multi_gpu",
        "--num_processes",
        "2",
        "--main_process_port",
        str(_free_port()),
        script,
        "--config",
        str(config_path),
        "--output-dir",
        str(tmp_path / "two"),
        "--set",
        "training.per_device_train_batch_size=12",
    ]
    for command, extra in ((single, {}), (double, {"ACCELERATE_USE_CPU": "true"})):
        result = subprocess.run(command, env={**env, **extra}, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    one = read_eval_results(tmp_path / "one" / "final" / "eval_results.json")
    two = read_eval_results(tmp_path / "two" / "final" / "eval_results.json")
    info = json.loads((tmp_path / "two" / "final" / "training_info.json").read_text())
    assert info["hardware"]["num_processes"] == 2
    history = json.loads((tmp_path / "two" / "log_history.json").read_text())
    assert max(entry["step"] for entry in history) == 8 and any("mse_loss" in entry for entry in history)
    # 2865 test items over 2 processes x 64 per batch: the sampler pads the last round with repeated items, which
    # gather_for_metrics drops; predict_forecasts checks the window ids (each item exactly once) or fails the run.
    assert TEST_ITEMS % (2 * 64) != 0
    assert [row["num_items"] for row in two] == [row["num_items"] for row in one] == [TEST_ITEMS, 2856]
    split = load_forecasting_dataset("ETTh1", 64, 16, features="S", data_dir=DATA_DIR)["test"]
    assert len(split) == TEST_ITEMS
    for a, b in zip(one, two, strict=True):
        assert b["mse"] == pytest.approx(a["mse"], rel=1e-5)
        assert b["mae"] == pytest.approx(a["mae"], rel=1e-5)
    # The validation forecasts of the interval calibration are gathered the same way: each window once.
    calibrations = [ConformalCalibration.from_pretrained(tmp_path / name / "final") for name in ("one", "two")]
    assert calibrations[0].num_windows == calibrations[1].num_windows == TEST_ITEMS
    np.testing.assert_allclose(calibrations[1].offsets, calibrations[0].offsets, rtol=0, atol=1e-4)
    assert_reevaluation_reproduces_the_saved_rows(tmp_path / "one" / "final", tmp_path / "scratch")


def test_the_data_section_passes_the_timestamp_options_to_the_loader(tmp_path, monkeypatch):
    from balm_hf.training import trainer

    seen: dict = {}
    monkeypatch.setattr(trainer, "load_forecasting_dataset", lambda *args, **kwargs: seen.update(kwargs) or "splits")
    raw = tiny_experiment(tmp_path / "run")
    raw["data"].update(date_format="%d/%m/%Y %H:%M", utc=True, duplicate_timestamps="warn", encoding="latin-1")
    config = ExperimentConfig.from_dict(raw)
    assert trainer.build_datasets(config) == "splits"
    assert seen["date_format"] == "%d/%m/%Y %H:%M" and seen["utc"] is True
    assert seen["duplicate_timestamps"] == "warn" and seen["encoding"] == "latin-1" and seen["date_column"] == "date"
    raw["data"]["duplicate_timestamps"] = "ignore"
    with pytest.raises(ValueError, match="duplicate_timestamps"):
        ExperimentConfig.from_dict(raw)
