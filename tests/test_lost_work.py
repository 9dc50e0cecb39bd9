"""The run folder: no run is clobbered, one run at a time, resume from a complete checkpoint, atomic `final/`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_training import tiny_experiment

from balm_hf.training import ExperimentConfig, last_complete_checkpoint, resolve_resume_checkpoint, run_experiment
from balm_hf.training.run_folder import LOCK_FILE, check_output_dir, run_lock, write_folder_atomically


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _config(output_dir: Path, **training) -> ExperimentConfig:
    return ExperimentConfig.from_dict(tiny_experiment(output_dir, training={"num_train_epochs": 1, **training}))


def _fake_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"")
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def test_training_into_a_folder_that_holds_a_run_is_refused_and_nothing_is_touched(tmp_path):
    output_dir = tmp_path / "run"
    checkpoint = _fake_checkpoint(output_dir, 18)
    (output_dir / "final").mkdir()
    (output_dir / "final" / "eval_results.json").write_text("{}")
    with pytest.raises(ValueError, match=r"not empty \(checkpoint-18, final\).*--resume.*--overwrite"):
        run_experiment(_config(output_dir))
    assert checkpoint.is_dir() and (output_dir / "final" / "eval_results.json").read_text() == "{}"
    with pytest.raises(ValueError, match="not both|one of them"):
        run_experiment(_config(output_dir), resume_from_checkpoint=True, overwrite=True)


def test_overwrite_replaces_the_previous_run(tmp_path):
    output_dir = tmp_path / "run"
    _fake_checkpoint(output_dir, 999)
    (output_dir / "final").mkdir()
    (output_dir / "final" / "stale.txt").write_text("from the previous run")
    (output_dir / "notes.txt").write_text("the user's")
    result = run_experiment(_config(output_dir, overwrite=True))
    assert not (output_dir / "checkpoint-999").exists() and not (output_dir / "final" / "stale.txt").exists()
    assert (result.final_dir / "eval_results.json").is_file() and (output_dir / "notes.txt").is_file()
    assert not [path.name for path in output_dir.glob(".final-*")]  # no temporary folder left behind
    # the same through the function argument, which wins over `training.overwrite`
    run_experiment(_config(output_dir), overwrite=True)


def test_a_second_run_into_a_folder_in_use_fails_at_once(tmp_path):
    output_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom balm_hf.training.run_folder import run_lock\n"
            f"with run_lock({str(output_dir)!r}):\n    print('locked', flush=True)\n    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(ValueError, match="another training run is using"):
            run_experiment(_config(output_dir))
        assert time.perf_counter() - start < 10
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its process: the folder (holding only the lock file) is free again
    with run_lock(output_dir):
        check_output_dir(output_dir, resume=None, overwrite=False)


def test_only_the_main_process_takes_the_lock_and_every_process_refuses_alike(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with run_lock(tmp_path / "run"):
        assert not (tmp_path / "run" / LOCK_FILE).exists()
    _fake_checkpoint(tmp_path / "run", 3)
    with pytest.raises(ValueError, match="not empty"):
        check_output_dir(tmp_path / "run", resume=None, overwrite=False)


def test_resume_skips_a_checkpoint_cut_short_by_a_kill_and_names_the_one_it_uses(tmp_path, caplog):
    output_dir = tmp_path / "run"
    _fake_checkpoint(output_dir, 18)
    complete = _fake_checkpoint(output_dir, 36)
    cut_short = _fake_checkpoint(output_dir, 54, complete=False)
    assert last_complete_checkpoint(output_dir) == str(complete)
    with caplog.at_level("INFO", logger="balm_hf.training"):
        assert resolve_resume_checkpoint(output_dir, True) == str(complete)
    assert f"skipping the incomplete checkpoint {cut_short}" in caplog.text and str(complete) in caplog.text
    with pytest.raises(ValueError, match="incomplete checkpoint"):
        resolve_resume_checkpoint(output_dir, str(cut_short))


def test_resume_after_a_kill_during_a_save_continues_from_the_last_complete_checkpoint(tmp_path):
    output_dir = tmp_path / "run"
    first = run_experiment(_config(output_dir))
    last = Path(last_complete_checkpoint(output_dir))
    broken = output_dir / "checkpoint-999"
    shutil.copytree(last, broken)
    (broken / "trainer_state.json").write_text('{"global_st')  # killed while writing the trainer state
    resumed = run_experiment(_config(output_dir, num_train_epochs=2), resume_from_checkpoint=True)
    assert resumed.training_info["epochs_completed"] == 2.0
    assert [entry["step"] for entry in resumed.log_history if "eval_mse" in entry][0] == first.log_history[-1]["step"]


def test_final_folder_is_replaced_only_once_complete(tmp_path):
    final = tmp_path / "run" / "final"
    final.mkdir(parents=True)
    (final / "eval_results.json").write_text("previous")

    def fails_midway(folder: Path) -> None:
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(final, fails_midway)
    assert [path.name for path in final.iterdir()] == ["eval_results.json"]
    assert sorted(path.name for path in final.parent.iterdir()) == ["final"]

    def writes(folder: Path) -> None:
        folder.mkdir()
        (folder / "eval_results.json").write_text("new")

    write_folder_atomically(final, writes)
    assert (final / "eval_results.json").read_text() == "new"
    assert sorted(path.name for path in final.parent.iterdir()) == ["final"]


@pytest.mark.parametrize(
    ("section", "values", "message"),
    [
        ("data", {"dataset": "no_such_folder/series.csv"}, r"`data.dataset` 'no_such_folder/series.csv'"),
        ("model", {"backbone": "no_such_folder/backbone", "llm_config": None}, r"`model.backbone` 'no_such_folder"),
        ("model", {"tokenizer": "no_such_folder/tokenizer"}, r"`model.tokenizer` 'no_such_folder/tokenizer'"),
    ],
)
def test_bad_data_or_backbone_fails_with_one_clear_error_before_overwriting(tmp_path, section, values, message):
    output_dir = tmp_path / "run"
    previous = _fake_checkpoint(output_dir, 7)
    raw = tiny_experiment(output_dir, training={"overwrite": True})
    raw[section].update(values)
    if raw["model"].get("llm_config") is None:
        raw["model"].pop("tokenizer", None)
    with pytest.raises(ValueError, match=message.replace(".", r"\.")) as error:
        run_experiment(ExperimentConfig.from_dict(raw))
    assert "\n" not in str(error.value).strip()
    assert previous.is_dir()  # the run it would have replaced is still there


@pytest.mark.parametrize("disable_tqdm", [True, False])
def test_training_prints_one_line_per_evaluation_unless_verbose(tmp_path, capsys, disable_tqdm):
    from conftest import tiny_model
    from transformers import TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from balm_hf.training import BalmTsfTrainer
    from balm_hf.training.trainer import EvaluationLinePrinterCallback, EvaluationLineProgressCallback

    args = TrainingArguments(output_dir=str(tmp_path), disable_tqdm=disable_tqdm, report_to=[], use_cpu=True)
    quiet = BalmTsfTrainer(model=tiny_model(), args=args)
    stock = PrinterCallback if disable_tqdm else ProgressCallback
    line = EvaluationLinePrinterCallback if disable_tqdm else EvaluationLineProgressCallback
    classes = [type(callback) for callback in quiet.callback_handler.callbacks]
    assert line in classes and stock not in classes
    verbose = BalmTsfTrainer(model=tiny_model(), args=args, verbose=True)
    assert stock in [type(callback) for callback in verbose.callback_handler.callbacks]

    callback = next(c for c in quiet.callback_handler.callbacks if isinstance(c, line))
    state, control = TrainerState(), TrainerControl()
    callback.on_log(args, state, control, logs={"loss": 3.5, "learning_rate": 0.01, "epoch": 0.5})
    callback.on_log(args, state, control, logs={"eval_mse": 0.25, "eval_mae": 0.4, "eval_runtime": 1.0, "epoch": 1.0})
    assert capsys.readouterr().out == "epoch 1: validation mse=0.25 mae=0.4\n"
