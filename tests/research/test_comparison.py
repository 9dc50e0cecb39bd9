"""End-to-end test of the comparison benchmark (`research/compare.py`, `research.comparison`) on a tiny setting."""

from __future__ import annotations

import csv
import importlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA_DIR, TOKENIZER_DIR, tiny_llm_config
from transformers import AutoTokenizer, GPT2Model

from balm_hf import BalmTsfForForecasting
from research.comparison import (
    DEFAULT_MODELS,
    MODEL_NAMES,
    README_END,
    README_START,
    ComparisonSettings,
    build_collator,
    build_comparison_model,
    model_label,
    read_results,
    render_markdown,
    run_comparison,
    update_readme,
)


CONTEXT, HORIZON, ROWS = 64, 16, 700
TINY_BALM = ["llm_layers=2", "d_model=8", "d_ff=16", "patch_length=8", "patch_stride=4"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short CSV cut from ETTh1 (70/10/20 split protocol, so the test split is small) and a tiny GPT-2 backbone."""
    folder = tmp_path_factory.mktemp("compare")
    pd.read_csv(DATA_DIR / "ETTh1.csv.gz").iloc[:ROWS].to_csv(folder / "etth1_short.csv", index=False)
    GPT2Model(tiny_llm_config()).save_pretrained(folder / "backbone")
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder / "backbone")
    return folder


def _load_script():
    return importlib.import_module("research.compare")


def _tiny_cli_args(workspace: Path) -> list[str]:
    """`research/compare.py` arguments of the tiny setting: the short CSV, L and H, the tiny backbone and BALM-TSF."""
    return [
        "--dataset",
        str(workspace / "etth1_short.csv"),
        "--context-length",
        str(CONTEXT),
        "--prediction-length",
        str(HORIZON),
        "--backbone",
        str(workspace / "backbone"),
        *[arg for item in TINY_BALM for arg in ("--balm-config", item)],
    ]


def _three_dlinear_epochs(workspace: Path, **extra: Any) -> dict[str, Any]:
    """`ComparisonSettings` arguments of a short DLinear run on the tiny CSV: 3 epochs, patience 5."""
    return dict(
        dataset=str(workspace / "etth1_short.csv"),
        context_length=CONTEXT,
        prediction_length=HORIZON,
        models=("dlinear",),
        max_epochs=3,
        patience=5,
        command="test",
        **extra,
    )


def _naive_mse_by_hand(csv_path: Path) -> float:
    """Last-value forecast MSE on the 70/10/20 test split, scaled with train statistics: numpy only."""
    values = pd.read_csv(csv_path).drop(columns="date").to_numpy(dtype=np.float64)
    n = len(values)
    n_train, n_test = int(0.7 * n), int(0.2 * n)
    train = values[:n_train]
    scaled = (values - train.mean(axis=0)) / train.std(axis=0)
    test = scaled[n - n_test - CONTEXT :]
    errors = []
    for start in range(len(test) - CONTEXT - HORIZON + 1):
        last = test[start + CONTEXT - 1]
        future = test[start + CONTEXT : start + CONTEXT + HORIZON]
        errors.append((future - last) ** 2)
    return float(np.mean(errors))


def test_comparison_script_writes_every_model_row_and_naive_mse_matches_numpy(workspace: Path) -> None:
    output = workspace / "results"
    argv = [
        *_tiny_cli_args(workspace),
        "--patchtst-config",
        "d_model=8",
        "--max-epochs",
        "1",
        "--max-train-items-per-epoch",
        "48",
        "--max-validation-items",
        "48",
        "--num-workers",
        "0",
        "--output-dir",
        str(output),
        "--work-dir",
        str(workspace / "checkpoints"),
    ]
    _load_script().main(argv)

    stem = f"etth1_short_L{CONTEXT}_H{HORIZON}"
    rows = read_results(output / f"{stem}.json")
    assert [row["model"] for row in rows] == list(DEFAULT_MODELS)
    with (output / f"{stem}.csv").open(encoding="utf-8") as handle:
        assert [row["model"] for row in csv.DictReader(handle)] == list(DEFAULT_MODELS)
    markdown = (output / f"{stem}.md").read_text(encoding="utf-8")
    assert "PatchTST (transformers)" in markdown and "CAPPED" in markdown and "python -m research.compare" in markdown

    test_items = 7 * (int(0.2 * ROWS) - HORIZON + 1)
    for row in rows:
        assert row["test_items"] == test_items, row["model"]  # the whole test split, every model
        assert np.isfinite(row["mse"]) and np.isfinite(row["mae"])
        assert row["run"]["git_revision"] is None or len(row["run"]["git_revision"]) == 40
        assert "CPU" in row["run"]["machine"] or "GPU" in row["run"]["machine"]
    by_model = {row["model"]: row for row in rows}
    for name in ("balm_tsf", "balm_tsf_no_llm", "patchtst", "dlinear"):
        row = by_model[name]
        assert row["trainable_parameters"] > 0 and row["epochs_run"] == 1
        assert row["train_items_per_epoch"] == 48 and row["validation_items"] == 48
        assert row["paper_protocol"] is False and row["caps"]["max_train_items_per_epoch"] == 48
    assert by_model["balm_tsf"]["total_parameters"] > by_model["balm_tsf"]["trainable_parameters"]  # frozen LLM
    assert "fast-mode switches" in by_model["balm_tsf"]["notes"]
    assert by_model["naive"]["trainable_parameters"] == 0
    assert by_model["naive"]["mse"] == pytest.approx(_naive_mse_by_hand(workspace / "etth1_short.csv"), rel=1e-5)


def _dlinear_with_a_tiny_time_budget(workspace: Path, folder: str, max_epochs: int) -> tuple[ComparisonSettings, dict]:
    """DLinear under a budget that every epoch overruns; returns the settings and the row."""
    settings = ComparisonSettings(
        dataset=str(workspace / "etth1_short.csv"),
        context_length=CONTEXT,
        prediction_length=HORIZON,
        models=("dlinear",),
        max_epochs=max_epochs,
        time_budget_minutes={"dlinear": 1e-6},
        output_dir=str(workspace / folder),
        command="test",
    )
    (row,) = run_comparison(settings, log=lambda message: None)
    return settings, row


def test_time_budget_stops_at_the_first_epoch_boundary_and_is_reported(workspace: Path) -> None:
    settings, row = _dlinear_with_a_tiny_time_budget(workspace, "budget", max_epochs=5)
    assert row["stop_reason"] == "time_budget" and row["epochs_run"] == 1
    assert row["paper_protocol"] is False
    saved = json.loads((workspace / "budget" / f"{settings.stem}.json").read_text())
    assert saved["rows"][0]["caps"] == {"max_epochs": 5, "time_budget_minutes": 1e-6}
    assert "CAPPED" in (workspace / "budget" / f"{settings.stem}.md").read_text()

    readme = workspace / "budget" / "README.md"
    readme.write_text(f"intro\n\n{README_START}\nstale\n{README_END}\noutro\n")
    text = update_readme(readme, workspace / "budget").read_text()
    assert text.startswith("intro") and text.rstrip().endswith("outro") and "stale" not in text
    # One column per model with a result, and no published number for a CSV.
    assert "| setting | published BALM-TSF (GPT-2, paper protocol) | DLinear |" in text
    assert "| etth1_short L=64 H=16 | - | " in text and "no result" not in text


def test_a_run_that_reaches_max_epochs_is_not_reported_as_stopped_by_its_time_budget(workspace: Path) -> None:
    """The budget would stop training after the last epoch too, but that epoch ends the run anyway."""
    settings, row = _dlinear_with_a_tiny_time_budget(workspace, "budget_last_epoch", max_epochs=1)
    assert row["epochs_run"] == 1 and row["stop_reason"] == "max_epochs"
    assert "stopped by max_epochs" in (workspace / "budget_last_epoch" / f"{settings.stem}.md").read_text()


def test_smollm2_row_is_optional_and_labels_name_the_backbone(monkeypatch) -> None:
    assert "balm_tsf_smollm2" in MODEL_NAMES and "balm_tsf_smollm2" not in DEFAULT_MODELS
    assert ComparisonSettings().models == DEFAULT_MODELS
    settings = ComparisonSettings(models=("balm_tsf", "balm_tsf_smollm2"), backbone="/models/my-llm")
    assert model_label(settings, "balm_tsf") == "BALM-TSF (my-llm backbone)"
    assert model_label(settings, "balm_tsf_smollm2") == "BALM-TSF (SmolLM2-135M backbone)"
    assert model_label(ComparisonSettings(), "balm_tsf") == "BALM-TSF (MiniLM backbone)"
    assert settings.learning_rate("balm_tsf_smollm2") == 0.01 and settings.batch_size("balm_tsf_smollm2") == 24
    loaded = []
    monkeypatch.setattr(
        BalmTsfForForecasting, "from_backbone_pretrained", classmethod(lambda cls, name, **kwargs: loaded.append(name))
    )
    build_comparison_model(settings, "balm_tsf_smollm2")
    build_comparison_model(settings, "balm_tsf")
    assert loaded == ["HuggingFaceTB/SmolLM2-135M-Instruct", "/models/my-llm"]


def test_unknown_model_and_bad_caps_raise_value_error() -> None:
    with pytest.raises(ValueError, match="unknown model 'arima'"):
        ComparisonSettings(models=("arima",))
    with pytest.raises(ValueError, match="naive"):
        ComparisonSettings(max_train_items_per_epoch={"naive": 10})
    with pytest.raises(ValueError, match="-3"):
        ComparisonSettings(time_budget_minutes={"*": -3})


def test_patchtst_baseline_uses_the_flatten_head_of_the_paper() -> None:
    """Every patch embedding reaches the linear head (`PatchTSTConfig` defaults to mean-pooling the patches)."""
    settings = ComparisonSettings(dataset="ETTh1", context_length=512, prediction_length=96, models=("patchtst",))
    model: Any = build_comparison_model(settings, "patchtst")
    num_patches = (512 - 16) // 8 + 1
    assert model.config.pooling_type is None
    assert model.head.projection.in_features == 16 * num_patches
    assert model.head.projection.out_features == 96


def test_resume_continues_a_budget_stopped_run_in_a_second_piece(workspace: Path) -> None:
    common = _three_dlinear_epochs(
        workspace, output_dir=str(workspace / "pieces"), work_dir=str(workspace / "pieces_checkpoints")
    )
    (first,) = run_comparison(ComparisonSettings(**common, time_budget_minutes={"dlinear": 1e-6}), log=lambda m: None)
    assert first["epochs_run"] == 1 and first["stop_reason"] == "time_budget" and "pieces" not in first
    (second,) = run_comparison(ComparisonSettings(**common, resume=True), log=lambda m: None)
    assert second["epochs_run"] == 3 and second["stop_reason"] == "max_epochs"
    assert second["pieces"] == 2 and "2 pieces" in second["notes"]
    assert second["train_wall_time_s"] > first["train_wall_time_s"]
    assert second["train_items_total"] == 3 * second["train_items_per_epoch"]
    # A fresh run in the same work dir without `resume` starts again from epoch 0.
    (fresh,) = run_comparison(ComparisonSettings(**{**common, "max_epochs": 1}), log=lambda m: None)
    assert fresh["epochs_run"] == 1 and "pieces" not in fresh


def test_both_balm_variants_get_their_prompts_from_the_collator_and_baselines_do_not(workspace: Path) -> None:
    settings = ComparisonSettings(
        context_length=CONTEXT,
        prediction_length=HORIZON,
        backbone=str(workspace / "backbone"),
        balm_config={"llm_layers": 2, "d_model": 8, "d_ff": 16, "patch_length": 8, "patch_stride": 4},
    )
    items = [{"past_values": np.random.randn(CONTEXT), "future_values": np.random.randn(HORIZON)} for _ in range(3)]
    for name in ("balm_tsf", "balm_tsf_no_llm"):
        model = build_comparison_model(settings, name)
        batch = build_collator(model)(items)
        assert batch["prompt_input_ids"].shape[0] == 3, name
        with torch.no_grad():  # the same forecast as building the prompts in forward
            model.eval()
            inside = model(past_values=batch["past_values"]).prediction_outputs
            torch.testing.assert_close(model(**batch).prediction_outputs, inside, rtol=0, atol=0)
    assert "prompt_input_ids" not in build_collator(build_comparison_model(settings, "dlinear"))(items)


def test_a_table_from_runs_on_two_machines_names_both() -> None:
    settings = ComparisonSettings(prediction_length=HORIZON, context_length=CONTEXT)
    base = {
        "dataset": "ETTh1", "context_length": CONTEXT, "prediction_length": HORIZON, "test_windows": 2,
        "test_items": 14, "mse": 0.5, "mae": 0.5, "trainable_parameters": 0, "train_wall_time_s": 0.0,
        "inference_samples_per_s": 1.0, "stop_reason": "not trained", "caps": {},
    }  # fmt: skip
    rows = [
        {**base, "model": "naive", "label": "Naive", "run": {"machine": "2-core CPU (A)", "command": "a",
                                                             "git_revision": "1", "date": "d"}},
        {**base, "model": "seasonal_naive", "label": "Seasonal", "run": {"machine": "2-core CPU (B)", "command": "b",
                                                                        "git_revision": "2", "date": "d"}},
    ]  # fmt: skip
    text = render_markdown(rows)
    assert "Machines: 2-core CPU (A), 2-core CPU (B) (per run below)" in text
    assert "Machine: 2-core CPU (A)." in render_markdown(rows[:1])
    assert settings.stem == f"ETTh1_L{CONTEXT}_H{HORIZON}"


def test_gradient_accumulation_makes_one_optimizer_step_per_accumulated_batches(workspace: Path) -> None:
    def steps_of_first_epoch(folder: str, accumulation: int) -> tuple[int, int]:
        settings = ComparisonSettings(
            dataset=str(workspace / "etth1_short.csv"),
            context_length=CONTEXT,
            prediction_length=HORIZON,
            models=("dlinear",),
            max_epochs=1,
            batch_sizes={"dlinear": 8},
            gradient_accumulation_steps={"dlinear": accumulation},
            output_dir=str(workspace / folder),
            command="test",
        )
        (row,) = run_comparison(settings, log=lambda message: None)
        assert row["gradient_accumulation_steps"] == accumulation
        text = (workspace / folder / f"{settings.stem}.md").read_text()
        assert ("0.005 / 8 x 4" in text) == (accumulation == 4)
        (checkpoint,) = (workspace / folder / "checkpoints" / settings.stem / "dlinear").glob("checkpoint-*")
        return int(checkpoint.name.split("-")[1]), row["train_items_per_epoch"]

    plain, items = steps_of_first_epoch("accumulation_1", 1)
    accumulated, _ = steps_of_first_epoch("accumulation_4", 4)
    assert plain == math.ceil(items / 8) and accumulated == math.ceil(plain / 4)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        ComparisonSettings(gradient_accumulation_steps={"naive": 2})


def test_a_per_model_schedule_drives_training_and_is_recorded(workspace: Path) -> None:
    output = workspace / "schedule"
    module = _load_script()
    argv = [
        *_tiny_cli_args(workspace),
        "--models",
        "dlinear",
        "--max-epochs",
        "5",
        "--learning-rate",
        "dlinear=0.001",
        "--lr-schedule",
        "dlinear=patchtst_type3",
        "--output-dir",
        str(output),
    ]
    module.main(argv)
    (row,) = json.loads(next(output.glob("*.json")).read_text())["rows"]
    assert row["lr_schedule"] == "patchtst_type3" and "PatchTST's own schedule" in row["notes"]
    assert "0.001 / 32 (patchtst_type3)" in next(output.glob("*.md")).read_text()
    last = max((output / "checkpoints").glob("*/dlinear/checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    rates: dict[int, set[float]] = {}
    for entry in json.loads((last / "trainer_state.json").read_text())["log_history"]:
        if "learning_rate" in entry and entry["epoch"] % 1:  # logged inside an epoch, not at its boundary
            rates.setdefault(math.ceil(entry["epoch"]), set()).add(round(entry["learning_rate"], 12))
    assert rates[1] == rates[4] == {0.001} and rates[5] == {round(0.001 * 0.9, 12)}
    with pytest.raises(ValueError, match="lr_schedules.*'cyclic'"):
        ComparisonSettings(lr_schedules={"patchtst": "cyclic"})
    with pytest.raises(ValueError, match="lr_schedules.*naive"):
        ComparisonSettings(lr_schedules={"naive": "halving"})
    assert ComparisonSettings().lr_schedule("patchtst") == "halving"


def test_test_every_epoch_reports_each_epochs_test_and_leaves_training_and_the_result_unchanged(
    workspace: Path,
) -> None:
    common = _three_dlinear_epochs(workspace)
    (plain,) = run_comparison(ComparisonSettings(**common, output_dir=str(workspace / "plain")), log=lambda m: None)
    settings = ComparisonSettings(**common, output_dir=str(workspace / "each_epoch"), test_every_epoch=True)
    (row,) = run_comparison(settings, log=lambda message: None)
    assert "test_per_epoch" not in plain and "test_mse_min_over_epochs" not in plain

    tests = row["test_per_epoch"]
    assert [entry["epoch"] for entry in tests] == [1.0, 2.0, 3.0]
    # Early stopping and the tested checkpoint still follow validation: same run, same result as without the flag.
    assert row["best_epoch"] == plain["best_epoch"] and row["mse"] == pytest.approx(plain["mse"], rel=1e-6)
    assert row["best_validation_mse"] == pytest.approx(min(entry["validation_mse"] for entry in tests))
    best = next(entry for entry in tests if entry["epoch"] == row["best_epoch"])
    assert best["validation_mse"] == pytest.approx(row["best_validation_mse"])
    # The per-epoch test of the best epoch is the reported whole-test result (same weights, same items).
    assert best["test_mse"] == pytest.approx(row["mse"], rel=1e-5)
    assert best["test_mae"] == pytest.approx(row["mae"], rel=1e-5)
    lowest = min(tests, key=lambda entry: entry["test_mse"])
    assert row["test_mse_min_over_epochs"] == lowest["test_mse"] and row["test_min_epoch"] == lowest["epoch"]
    saved = read_results(workspace / "each_epoch" / f"{settings.stem}.json")[0]
    assert saved["test_per_epoch"] == tests
    with (workspace / "each_epoch" / f"{settings.stem}.csv").open() as handle:
        (flat,) = list(csv.DictReader(handle))
    assert float(flat["test_mse_min_over_epochs"]) == pytest.approx(lowest["test_mse"])
    assert "test MSE by epoch: 1: " in (workspace / "each_epoch" / f"{settings.stem}.md").read_text()


def test_compare_script_tests_balm_tsf_every_epoch(workspace: Path) -> None:
    output = workspace / "balm_each_epoch"
    argv = [
        *_tiny_cli_args(workspace),
        "--models",
        "balm_tsf",
        "--max-epochs",
        "2",
        "--max-train-items-per-epoch",
        "48",
        "--num-workers",
        "0",
        "--test-every-epoch",
        "--output-dir",
        str(output),
        "--work-dir",
        str(workspace / "balm_each_epoch_checkpoints"),
    ]
    assert _load_script().parse_args(argv[:2]).test_every_epoch is False
    _load_script().main(argv)
    (row,) = read_results(next(output.glob("*.json")))
    assert [entry["epoch"] for entry in row["test_per_epoch"]] == [1.0, 2.0]
    best = next(entry for entry in row["test_per_epoch"] if entry["epoch"] == row["best_epoch"])
    assert best["test_mse"] == pytest.approx(row["mse"], rel=1e-5)
    assert "--test-every-epoch" in row["run"]["command"]


def test_few_shot_runs_train_on_the_shortened_split_with_the_papers_few_shot_rates(workspace: Path) -> None:
    settings = ComparisonSettings(
        dataset=str(workspace / "etth1_short.csv"),
        context_length=CONTEXT,
        prediction_length=HORIZON,
        models=("dlinear", "seasonal_naive"),
        max_epochs=1,
        percent=10,
        seed=3,
        output_dir=str(workspace / "few_shot"),
        command="test",
    )
    assert settings.stem == f"etth1_short_L{CONTEXT}_H{HORIZON}_p10_seed3"
    rows = run_comparison(settings, log=lambda message: None)
    n_train = int(0.7 * ROWS)
    windows = (n_train - CONTEXT) * 10 // 100 + CONTEXT - CONTEXT - HORIZON + 1
    assert rows[0]["train_items_per_epoch"] == windows * 7
    assert [(row["percent"], row["seed"]) for row in rows] == [(10, 3), (10, 3)]
    full = run_comparison(
        ComparisonSettings(**{**settings.__dict__, "percent": 100, "seed": 2021, "models": ("seasonal_naive",)}),
        log=lambda message: None,
    )
    assert full[0]["mse"] == rows[1]["mse"]  # the test split does not depend on the train percentage
    assert "10% of the train split, seed 3" in (workspace / "few_shot" / f"{settings.stem}.md").read_text()
    few_shot = ComparisonSettings(dataset="ETTh2", prediction_length=336, percent=10)
    assert few_shot.learning_rate("balm_tsf") == 0.002 and few_shot.batch_size("balm_tsf_no_llm") == 8
    assert few_shot.learning_rate("dlinear") == 0.005 and few_shot.batch_size("dlinear") == 32
    assert ComparisonSettings(prediction_length=336).batch_size("balm_tsf") == 24
    with pytest.raises(ValueError, match="percent"):
        ComparisonSettings(percent=0)


def test_a_piece_stopped_between_checkpoints_still_counts_its_time_when_resumed(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from research import comparison

    common = _three_dlinear_epochs(
        workspace, output_dir=str(workspace / "killed"), work_dir=str(workspace / "killed_checkpoints")
    )
    original = comparison.ProgressCallback.on_save

    def stop_after_second_checkpoint(self, args, state, control, **kwargs):
        result = original(self, args, state, control, **kwargs)
        if state.epoch >= 2:
            raise KeyboardInterrupt("stopped from outside")
        return result

    monkeypatch.setattr(comparison.ProgressCallback, "on_save", stop_after_second_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_comparison(ComparisonSettings(**common), log=lambda m: None)
    progress_file = workspace / "killed_checkpoints" / "etth1_short_L64_H16" / "dlinear" / "comparison_progress.json"
    recorded = json.loads(progress_file.read_text())
    assert recorded["pieces"] == 1 and recorded["train_wall_time_s"] > 0
    monkeypatch.setattr(comparison.ProgressCallback, "on_save", original)
    (resumed,) = run_comparison(ComparisonSettings(**common, resume=True), log=lambda m: None)
    assert resumed["epochs_run"] == 3 and resumed["pieces"] == 2
    assert resumed["train_wall_time_s"] > recorded["train_wall_time_s"]
    # Without the record, the row says that its wall time covers the last piece only.
    progress_file.unlink()
    (checkpoint,) = [path for path in progress_file.parent.glob("checkpoint-*") if path.name.endswith("-3") or True][
        :1
    ]
    (again,) = run_comparison(ComparisonSettings(**{**common, "max_epochs": 4}, resume=True), log=lambda m: None)
    assert "no record of the earlier training time" in again["notes"] and "pieces" not in again
