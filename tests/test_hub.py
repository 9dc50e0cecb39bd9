"""Sharing trained folders: the checkpoint contract, the model card, dry-run pushes and failing fast offline."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import DATA_DIR, REPO_ROOT, TOKENIZER_DIR, tiny_model
from huggingface_hub import ModelCard

import balm_hf
from balm_hf import BalmTsfForForecasting, load_forecasting_dataset, training
from balm_hf.artifacts import TRAINING_INFO_KEYS, validate_folder
from balm_hf.cli import main as cli_main
from balm_hf.hub import model_card_template_path, push_folder_to_hub, render_model_card


CONTEXT_LENGTH, PREDICTION_LENGTH = 64, 16
BACKBONE_ID = "openai-community/gpt2"


def eval_rows(context_length: int = CONTEXT_LENGTH, prediction_length: int = PREDICTION_LENGTH) -> list[dict]:
    """Two result rows as `balm-tsf evaluate` writes them: all windows, and the original's drop-last protocol."""
    common = dict(
        model="balm_tsf",
        dataset="ETTh1",
        context_length=context_length,
        prediction_length=prediction_length,
        split="test",
        percent=100,
    )
    return [
        dict(
            common, mse=0.4123456789012345, mae=0.4321098765432109, num_windows=2865, num_items=20055, drop_last=False
        ),
        dict(common, mse=0.40987654321, mae=0.42876543210, num_windows=2856, num_items=19992, drop_last=True),
    ]


def build_trained_folder(folder: Path, preprocessor=None, **config_overrides) -> Path:
    """A trained folder around a tiny model, written by the same functions `balm-tsf train` uses."""
    if preprocessor is None:
        preprocessor = load_forecasting_dataset(
            "ETTh1", context_length=CONTEXT_LENGTH, prediction_length=PREDICTION_LENGTH, data_dir=DATA_DIR
        ).preprocessor
    config_overrides.setdefault("llm_name_or_path", BACKBONE_ID)
    model = tiny_model(**config_overrides)
    experiment = training.load_experiment_config(
        None,
        [
            f"data.context_length={CONTEXT_LENGTH}",
            f"data.prediction_length={PREDICTION_LENGTH}",
            "training.learning_rate=0.0123",
            "training.num_train_epochs=7",
            "training.early_stopping_patience=3",
        ],
    )
    info = training.collect_training_info(
        experiment,
        seed=2021,
        wall_time_s=3725.4,
        train_samples_per_second=812.5,
        epochs_completed=5.0,
        best_checkpoint="checkpoint-300",
        best_validation_mse=0.71234,
    )
    training.save_experiment_folder(folder, model, preprocessor, experiment, info, eval_rows())
    return folder


@pytest.fixture(scope="module")
def trained_folder(tmp_path_factory, preprocessor) -> Path:
    return build_trained_folder(tmp_path_factory.mktemp("trained") / "run", preprocessor)


@pytest.fixture
def folder_copy(trained_folder, tmp_path) -> Path:
    """A private copy of the trained folder that a test may corrupt."""
    return Path(shutil.copytree(trained_folder, tmp_path / "run"))


def split_card(text: str) -> dict:
    match = re.match(r"^---\n(.*?)\n---\n", text, re.DOTALL)
    assert match is not None, "the card must start with a YAML metadata block"
    return yaml.safe_load(match.group(1))


# -- template ---------------------------------------------------------------------------------------------------------


def test_packaged_template_is_identical_to_repository_copy():
    packaged = model_card_template_path()
    assert packaged.is_file()
    assert packaged.read_bytes() == (REPO_ROOT / "hub_cards" / "model_card_template.md").read_bytes()


# -- model card -------------------------------------------------------------------------------------------------------


def test_model_card_metadata_comes_from_the_folder_files(folder_copy):
    card = render_model_card(folder_copy)
    written = (folder_copy / "README.md").read_text(encoding="utf-8")
    assert written == str(card)
    metadata = split_card(written)
    config = BalmTsfForForecasting.config_class.from_pretrained(folder_copy)

    assert metadata["library_name"] == "transformers"
    assert metadata["pipeline_tag"] == "time-series-forecasting"
    assert {"time-series", "forecasting", "balm-tsf", "llm"} <= set(metadata["tags"])
    assert metadata["license"] == "apache-2.0"
    assert metadata["datasets"] == ["ETTh1"]
    assert metadata["base_model"] == config.llm_name_or_path == BACKBONE_ID

    # Every metric value in `model-index` equals the results file, row by row.
    rows = json.loads((folder_copy / "eval_results.json").read_text())["rows"]
    results = metadata["model-index"][0]["results"]
    assert len(results) == len(rows)
    for row in rows:
        matching = [result for result in results if result["dataset"]["args"]["drop_last"] == row["drop_last"]]
        assert len(matching) == 1
        result = matching[0]
        assert result["task"]["type"] == "time-series-forecasting"
        assert result["dataset"]["type"] == row["dataset"] and result["dataset"]["split"] == row["split"]
        assert result["dataset"]["args"]["context_length"] == row["context_length"]
        assert result["dataset"]["args"]["prediction_length"] == row["prediction_length"]
        assert {metric["type"]: metric["value"] for metric in result["metrics"]} == {
            "mse": row["mse"],
            "mae": row["mae"],
        }

    # The Hub's own parser reads the same metadata back.
    loaded = ModelCard.load(folder_copy / "README.md")
    assert loaded.data.base_model == BACKBONE_ID
    assert sorted(result.metric_value for result in loaded.data.eval_results) == sorted(
        value for row in rows for value in (row["mse"], row["mae"])
    )


def test_model_card_body_reports_setup_results_limitations_and_citation(folder_copy):
    text = str(render_model_card(folder_copy, repo_id="someone/balm-tsf-etth1"))
    info = json.loads((folder_copy / "training_info.json").read_text())
    expected_texts = [
        "someone/balm-tsf-etth1",
        'balm_hf.forecast("someone/balm-tsf-etth1", history)',
        "trust_remote_code=True",
        "learning rate 0.0123 (schedule `halving`)",  # from the experiment config
        "up to 7 epochs, 5 epochs completed, early stopping patience 3",
        "Seed:** 2021",
        "checkpoint-300 (validation MSE 0.7123)",
        "1 h 02 min 05 s (812.5 training samples per second)",
        info["hardware"]["device_name"],
        f"torch {torch.__version__}",
        "train `[0, 8640)`",
        "| 0.4123 | 0.4321 |",  # the results table, from eval_results.json
        "no attention mask",
        "own positive",
        "re-tokenised",
        "instead of the paper's GPT-2",
        "2509.00622",
        "CIKM",
    ]
    if info["git_revision"]:
        expected_texts.append(f"`{info['git_revision']}`")
    for expected in expected_texts:
        assert expected in text, expected


def test_local_card_is_named_after_the_model_and_its_snippets_run_as_written(tmp_path, preprocessor, monkeypatch):
    folder = build_trained_folder(tmp_path / "runs" / "etth1" / "final", preprocessor)
    text = str(render_model_card(folder))
    name = training.load_experiment_config(folder / "experiment.yaml").name
    assert name != "final"
    assert re.search(rf"^# {re.escape(name)}$", text, re.MULTILINE)
    assert split_card(text)["model-index"][0]["name"] == name
    assert 'pip install "balm-tsf[plot] @ git+https://github.com/balm-tsf/balm-tsf"' in text
    snippets = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert len(snippets) == 2 and all(str(folder.resolve()) in snippet for snippet in snippets)

    # Run each snippet as written from another directory, next to the data file it names.
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    history = pd.read_csv(DATA_DIR / "ETTh1.csv.gz").tail(3 * CONTEXT_LENGTH)
    history.to_csv(work / "ETTh1.csv", index=False)
    expected = balm_hf.forecast(folder, history)
    package_scope: dict = {}
    exec(compile(snippets[0], "card-package-snippet", "exec"), package_scope)
    pd.testing.assert_frame_equal(package_scope["forecast"], expected)
    assert (work / "forecast.png").read_bytes()[:4] == b"\x89PNG"
    transformers_scope: dict = {}
    exec(compile(snippets[1], "card-transformers-snippet", "exec"), transformers_scope)
    np.testing.assert_allclose(
        transformers_scope["forecast"], expected[preprocessor.columns].to_numpy(), rtol=1e-5, atol=1e-5
    )


def test_card_named_by_the_run_folder_when_the_experiment_has_no_name(tmp_path):
    folder = tmp_path / "my-run" / "final"
    tiny_model().save_pretrained(folder)
    assert re.search(r"^# my-run$", str(render_model_card(folder)), re.MULTILINE)


def test_model_card_follows_config_switches_and_skips_local_backbone_paths(tmp_path, preprocessor):
    folder = build_trained_folder(
        tmp_path / "run",
        preprocessor,
        llm_name_or_path=str(tmp_path),  # a local folder is not a Hub id
        prompt_attention_mask=True,
        contrastive_mask_own_positive=True,
    )
    text = str(render_model_card(folder))
    metadata = split_card(text)
    assert "base_model" not in metadata
    assert "no attention mask" not in text and "own positive" not in text


def test_model_card_says_when_backbone_weights_come_from_a_gguf_file(tmp_path, preprocessor):
    folder = build_trained_folder(
        tmp_path / "run",
        preprocessor,
        llm_name_or_path="HuggingFaceTB/SmolLM2-135M-Instruct",
        llm_gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
    )
    text = str(render_model_card(folder))
    assert split_card(text)["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert "dequantised from the GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf`" in text


def test_model_card_renders_without_optional_files(tmp_path):
    folder = tmp_path / "bare"
    tiny_model().save_pretrained(folder)
    text = str(render_model_card(folder))
    metadata = split_card(text)
    assert "model-index" not in metadata and "base_model" not in metadata
    assert "No `training_info.json`" in text and "No `eval_results.json`" in text


# -- validation -------------------------------------------------------------------------------------------------------


def test_validate_folder_parses_a_complete_folder(trained_folder):
    trained = validate_folder(trained_folder)
    assert trained.config.prediction_length == PREDICTION_LENGTH
    assert trained.preprocessor.columns[-1] == "OT"
    assert trained.eval_rows == eval_rows()
    assert set(TRAINING_INFO_KEYS) <= set(trained.training_info)
    assert [Path(path).name for path in trained.weight_files] == ["model.safetensors"]


def _remove(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _swap_in_pickle(path: Path) -> None:
    torch.save({"not": "safetensors"}, path.with_name("pytorch_model.bin"))
    path.unlink()


@pytest.mark.parametrize(
    ("file_name", "corrupt", "error", "message"),
    [
        ("model.safetensors", _remove, FileNotFoundError, r"model\.safetensors is missing"),
        ("model.safetensors", _truncate, ValueError, r"model\.safetensors is not a readable safetensors file"),
        ("model.safetensors", _swap_in_pickle, FileNotFoundError, r"pickled files \['pytorch_model\.bin'\]"),
        ("preprocessor_config.json", _remove, FileNotFoundError, r"preprocessor_config\.json is missing"),
        ("eval_results.csv", _remove, FileNotFoundError, r"eval_results\.csv is missing"),
        ("modeling_balm_tsf.py", _remove, FileNotFoundError, r"modeling_balm_tsf\.py is missing"),
        ("losses.py", _remove, FileNotFoundError, r"losses\.py is missing"),
        ("config.json", _truncate, ValueError, r"config\.json is not valid JSON"),
    ],
)
def test_validate_folder_names_the_broken_file(folder_copy, file_name, corrupt, error, message):
    corrupt(folder_copy / file_name)
    with pytest.raises(error, match=message):
        validate_folder(folder_copy)


def test_validate_folder_rejects_weights_from_another_configuration(folder_copy, tmp_path):
    other = tmp_path / "other"
    tiny_model(prediction_length=2 * PREDICTION_LENGTH).save_pretrained(other)
    shutil.copy(other / "model.safetensors", folder_copy / "model.safetensors")
    with pytest.raises(ValueError, match=r"model\.safetensors does not match .*config\.json.*head\.linear\.weight"):
        validate_folder(folder_copy)


def test_validate_folder_rejects_incomplete_training_info_and_foreign_results(folder_copy):
    info_path = folder_copy / "training_info.json"
    info = json.loads(info_path.read_text())
    del info["git_revision"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"training_info\.json lacks the keys \['git_revision'\]"):
        validate_folder(folder_copy)

    info["git_revision"] = None
    info_path.write_text(json.dumps(info))
    rows = eval_rows(prediction_length=2 * PREDICTION_LENGTH)
    (folder_copy / "eval_results.json").write_text(json.dumps({"rows": rows}))
    with pytest.raises(ValueError, match=r"eval_results\.json: row 0 reports .*prediction_length=32"):
        validate_folder(folder_copy)


# -- pushing ----------------------------------------------------------------------------------------------------------


def test_dry_run_prepares_a_folder_that_loads_without_the_package(folder_copy, tmp_path):
    # Trainer leftovers that must not be uploaded: a pickled training_args.bin and a checkpoint sub-folder.
    torch.save({"lr": 0.01}, folder_copy / "training_args.bin")
    (folder_copy / "checkpoint-10").mkdir()
    (folder_copy / "checkpoint-10" / "model.safetensors").write_bytes(b"stale")

    staging = tmp_path / "upload"
    # The tiny folder's random backbone exists nowhere else: it is pushed in full (lean pushes: test_lean_checkpoints).
    result = push_folder_to_hub(folder_copy, "someone/balm-tsf-etth1", dry_run=True, output_dir=staging, lean=False)
    assert result.dry_run and result.commit_url is None and result.folder == staging
    assert "training_args.bin" not in result.files and "checkpoint-10" not in result.files
    assert {"README.md", "model.safetensors", "preprocessor_config.json", "eval_results.csv"} <= set(result.files)
    card = (staging / "README.md").read_text(encoding="utf-8")
    assert split_card(card)["model-index"][0]["name"] == "someone/balm-tsf-etth1"

    # The card's transformers-only snippet, run in a fresh process where `balm_hf` cannot be imported.
    snippets = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    remote_snippet = next(snippet for snippet in snippets if "trust_remote_code=True" in snippet)
    history = pd.read_csv(DATA_DIR / "ETTh1.csv.gz").tail(3 * CONTEXT_LENGTH)
    workdir = tmp_path / "work"
    workdir.mkdir()
    history.to_csv(workdir / "ETTh1.csv", index=False)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["balm_hf"] = None  # the package must not be importable
        import huggingface_hub
        huggingface_hub.snapshot_download = lambda repo_id, **kwargs: {str(staging)!r}
        import numpy as np
        namespace = {{}}
        exec(compile({remote_snippet!r}, "card", "exec"), namespace)
        assert type(namespace["model"]).__module__.startswith("transformers_modules"), type(namespace["model"])
        np.save("forecast.npy", namespace["forecast"])
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    expected = balm_hf.forecast(folder_copy, history)
    columns = json.loads((staging / "preprocessor_config.json").read_text())["columns"]
    np.testing.assert_allclose(np.load(workdir / "forecast.npy"), expected[columns].to_numpy(), rtol=1e-5, atol=1e-5)


def test_push_fails_fast_in_offline_mode(trained_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="offline mode is on"):
        push_folder_to_hub(trained_folder, "someone/balm-tsf-etth1")
    assert time.monotonic() - start < 5


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("endpoint", ["refused", "https://hub.invalid"])
def test_push_fails_fast_without_network(trained_folder, monkeypatch, endpoint):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    if endpoint == "refused":
        endpoint = f"http://127.0.0.1:{_closed_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"cannot reach the Hub at {re.escape(endpoint)}"):
        push_folder_to_hub(trained_folder, "someone/balm-tsf-etth1", endpoint=endpoint, connection_timeout=1.0)
    assert time.monotonic() - start < 5


def test_push_gives_up_on_a_hub_that_does_not_answer(trained_folder, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)

    def hanging_urlopen(request, timeout=None):
        time.sleep(30)  # a black-holed connection (or a DNS lookup) that ignores the timeout

    monkeypatch.setattr("urllib.request.urlopen", hanging_urlopen)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match="no answer within 1 s"):
        push_folder_to_hub(trained_folder, "someone/balm-tsf-etth1", endpoint="https://hub.test", connection_timeout=1)
    assert time.monotonic() - start < 5


def test_push_creates_the_repo_and_uploads_the_prepared_folder(trained_folder, monkeypatch):
    calls = {}

    class RecordingApi:
        def __init__(self, endpoint=None, token=None):
            calls["init"] = {"endpoint": endpoint, "token": token}

        def create_repo(self, repo_id, **kwargs):
            calls["create_repo"] = {"repo_id": repo_id, **kwargs}
            return f"https://hub.example/{repo_id}"

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls["upload_folder"] = {"repo_id": repo_id, **kwargs}
            calls["uploaded_files"] = sorted(path.name for path in Path(folder_path).iterdir())
            calls["card"] = (Path(folder_path) / "README.md").read_text(encoding="utf-8")
            return type("Commit", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()

    monkeypatch.setattr("balm_hf.hub.HfApi", RecordingApi)
    monkeypatch.setattr("balm_hf.hub.check_hub_connection", lambda endpoint=None, timeout=3.0: None)
    result = push_folder_to_hub(
        trained_folder, "someone/balm-tsf-etth1", token="hf_test", private=True, commit_message="first", lean=False
    )
    assert calls["init"]["token"] == "hf_test"
    assert calls["create_repo"] == {
        "repo_id": "someone/balm-tsf-etth1",
        "private": True,
        "exist_ok": True,
        "repo_type": "model",
    }
    assert calls["upload_folder"]["commit_message"] == "first"
    assert calls["uploaded_files"] == result.files
    assert "someone/balm-tsf-etth1" in calls["card"]
    assert result.commit_url == "https://hub.example/someone/balm-tsf-etth1/commit/1" and not result.dry_run
    assert not result.folder.exists()  # the temporary upload folder is cleaned up


def test_push_rejects_a_malformed_repo_id(trained_folder):
    with pytest.raises(ValueError, match="`repo_id` must look like 'user/name'"):
        push_folder_to_hub(trained_folder, "no slash", dry_run=True)


def test_push_cli_dry_run_and_offline_error(trained_folder, tmp_path, capsys, monkeypatch):
    staging = tmp_path / "upload"
    status = cli_main(
        ["push", "--folder", str(trained_folder), "--repo-id", "someone/x", "--dry-run", "--output-dir", str(staging),
         "--full"]
    )  # fmt: skip
    assert status == 0
    assert "nothing was uploaded" in capsys.readouterr().out
    assert (staging / "README.md").is_file()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli_main(["push", "--folder", str(trained_folder), "--repo-id", "someone/x"]) == 1
    assert "offline mode is on" in capsys.readouterr().err


@pytest.mark.slow
def test_folder_from_balm_tsf_train_validates_pushes_and_forecasts(tmp_path):
    experiment = {
        "name": "tiny-etth1",
        "data": {"dataset": "ETTh1", "data_dir": str(DATA_DIR), "context_length": 64, "prediction_length": 16},
        "model": {
            "backbone": None,
            "llm_config": {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 30522},
            "tokenizer": str(TOKENIZER_DIR),
            "config": {"llm_layers": 2, "d_model": 8, "d_ff": 16, "patch_length": 8, "patch_stride": 4},
        },
        "training": {"max_steps": 2, "per_device_train_batch_size": 8, "bf16": False, "use_cpu": True},
        "evaluation": {"max_validation_items": 32},
    }
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment), encoding="utf-8")
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(tmp_path / "experiment.yaml"), "--output-dir", str(run)]) == 0
    final = run / "final"
    assert split_card((final / "README.md").read_text(encoding="utf-8"))["pipeline_tag"] == "time-series-forecasting"

    trained = validate_folder(final)
    assert trained.eval_rows and trained.training_info["experiment"]["name"] == "tiny-etth1"
    result = push_folder_to_hub(final, "someone/tiny-etth1", dry_run=True, output_dir=tmp_path / "upload", lean=False)
    metadata = split_card((result.folder / "README.md").read_text(encoding="utf-8"))
    assert metadata["model-index"][0]["results"][0]["metrics"][0]["value"] == trained.eval_rows[0]["mse"]

    history = pd.read_csv(DATA_DIR / "ETTh1.csv.gz").tail(100)
    forecast = balm_hf.forecast(result.folder, history)
    assert forecast.shape == (16, 8) and np.isfinite(forecast.drop(columns="date").to_numpy()).all()
