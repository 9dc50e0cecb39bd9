"""Fine-tuning from a checkpoint: `model.init_from` / `balm-tsf train --init-from`, kept or refitted scaler."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import DATA_DIR
from test_cli import fake_run_experiment
from test_hub import CONTEXT_LENGTH, PREDICTION_LENGTH, build_trained_folder, split_card

from balm_hf import BalmTsfForForecasting, training
from balm_hf.cli import main as cli_main
from balm_hf.cli import parse_arguments
from balm_hf.data import load_forecasting_dataset
from balm_hf.hub import render_model_card
from balm_hf.training import build_datasets, build_model, evaluate_pretrained, load_experiment_config, run_experiment
from balm_hf.training.fine_tuning import FINE_TUNING_SWITCHES, architecture_keys, check_source_outside


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A trained ETTh1 folder (L=64, H=16, a tiny GPT-2-shaped model) with the whole folder contract."""
    return build_trained_folder(tmp_path_factory.mktemp("source") / "final")


def fine_tune_overrides(source: Path, output_dir: Path, *extra: str) -> list[str]:
    """Fine-tune on the ETTh2 target column, 5% of its train split, two optimizer steps."""
    return [
        f"model.init_from={source}",
        "data.dataset=ETTh2",
        f"data.data_dir={DATA_DIR}",
        "data.features=S",
        "data.percent=5",
        f"training.output_dir={output_dir}",
        "training.max_steps=2",
        "training.per_device_train_batch_size=16",
        "training.per_device_eval_batch_size=256",
        "training.bf16=false",
        "training.disable_tqdm=true",
        "evaluation.max_validation_items=64",
        *extra,
    ]


def test_the_run_starts_from_exactly_the_checkpoint_weights(source, tmp_path):
    config = load_experiment_config(None, fine_tune_overrides(source, tmp_path / "run"))
    # The architecture comes from the checkpoint although the experiment leaves it out (the schema default is 512).
    assert (config.data.context_length, config.data.prediction_length) == (CONTEXT_LENGTH, PREDICTION_LENGTH)
    checkpoint = BalmTsfForForecasting.from_pretrained(source)
    assert config.model.config["d_model"] == checkpoint.config.d_model
    assert config.model.backbone == checkpoint.config.llm_name_or_path
    model = build_model(config)
    expected = checkpoint.state_dict()
    state = model.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    assert model.tokenizer is not None
    # A fresh model of the same architecture is not the checkpoint.
    fresh = BalmTsfForForecasting(checkpoint.config)
    assert not torch.equal(fresh.state_dict()["head.linear.weight"], expected["head.linear.weight"])


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("data.context_length=32", ["`data.context_length` is 32", "context_length=64"]),
        ("data.prediction_length=24", ["`data.prediction_length` is 24", "prediction_length=16"]),
        ("model.config.d_model=16", ["`model.config.d_model` is 16", "d_model=8"]),
        ("model.config.llm_layers=1", ["`model.config.llm_layers` is 1", "llm_layers=2"]),
        ("model.config.patch_length=4", ["`model.config.patch_length` is 4", "patch_length=8"]),
        ("model.config.prompt_template=compact", ["`model.config.prompt_template` is 'compact'", "'paper'"]),
        ("model.backbone=sentence-transformers/all-MiniLM-L6-v2", ["`model.backbone`", "openai-community/gpt2"]),
    ],
)
def test_an_architecture_key_that_differs_from_the_checkpoint_is_refused(source, tmp_path, override, names):
    with pytest.raises(ValueError) as error:
        load_experiment_config(None, fine_tune_overrides(source, tmp_path / "run", override))
    for name in names:
        assert name in str(error.value)


def test_a_config_that_bypasses_the_resolution_is_refused_when_the_model_is_built(source, tmp_path):
    raw = training.apply_overrides({}, fine_tune_overrides(source, tmp_path / "run"))
    config = training.ExperimentConfig.from_dict(raw)  # the schema defaults: context_length 512
    with pytest.raises(ValueError, match=r"`data.context_length` is 512 .* context_length=64"):
        build_model(config)


def test_training_switches_may_differ_and_reach_the_model(source, tmp_path):
    assert set(FINE_TUNING_SWITCHES).isdisjoint(architecture_keys())
    assert {"d_model", "llm_layers", "patch_length", "prompt_template", "text_branch"} <= set(architecture_keys())
    config = load_experiment_config(None, fine_tune_overrides(source, tmp_path / "run", "model.config.dropout=0.3"))
    model = build_model(config)
    assert model.config.dropout == 0.3
    checkpoint = BalmTsfForForecasting.from_pretrained(source)
    assert checkpoint.config.dropout != 0.3
    # Repeating the checkpoint's own architecture value is fine.
    same = f"model.config.d_model={checkpoint.config.d_model}"
    assert (
        load_experiment_config(None, fine_tune_overrides(source, tmp_path / "run", same)).model.config["d_model"] == 8
    )


def test_a_missing_or_wrong_checkpoint_is_a_clear_error(source, tmp_path):
    with pytest.raises(FileNotFoundError, match="no folder .*nowhere"):
        load_experiment_config(None, fine_tune_overrides(tmp_path / "nowhere", tmp_path / "run"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        load_experiment_config(None, fine_tune_overrides(empty, tmp_path / "run"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2', not a BALM-TSF checkpoint"):
        load_experiment_config(None, fine_tune_overrides(other, tmp_path / "run"))
    with pytest.raises(ValueError, match="`model.llm_config` builds a new model"):
        load_experiment_config(
            None, fine_tune_overrides(source, tmp_path / "run", "model.llm_config={model_type: gpt2}")
        )
    with pytest.raises(ValueError, match="`data.scaler: keep` reuses the scaler of `model.init_from`"):
        load_experiment_config(None, ["data.scaler=keep"])
    with pytest.raises(ValueError, match=r"`data.scaler` must be one of \['refit', 'keep'\]"):
        load_experiment_config(None, fine_tune_overrides(source, tmp_path / "run", "data.scaler=frozen"))


def test_keep_reuses_the_checkpoint_scaler_and_refit_fits_the_new_data(source, tmp_path):
    saved = json.loads((source / "preprocessor_config.json").read_text())
    refit = build_datasets(load_experiment_config(None, fine_tune_overrides(source, tmp_path / "a")))
    keep = build_datasets(
        load_experiment_config(None, fine_tune_overrides(source, tmp_path / "b", "data.scaler=keep"))
    )
    own = load_forecasting_dataset(
        "ETTh2", context_length=CONTEXT_LENGTH, prediction_length=PREDICTION_LENGTH, features="S", data_dir=DATA_DIR
    ).preprocessor
    target = saved["columns"].index("OT")
    assert keep.preprocessor.mean == [saved["mean"][target]] and keep.preprocessor.std == [saved["std"][target]]
    assert refit.preprocessor.mean == own.mean and refit.preprocessor.std == own.std
    assert refit.preprocessor.mean != keep.preprocessor.mean
    assert keep.preprocessor.scaler_rows is None and refit.preprocessor.scaler_rows == own.scaler_rows
    # The same raw values, scaled with each statistic.
    raw = keep["train"][0]["past_values"][:, 0] * saved["std"][target] + saved["mean"][target]
    np.testing.assert_allclose(
        refit["train"][0]["past_values"][:, 0], (raw - own.mean[0]) / own.std[0], rtol=1e-4, atol=1e-4
    )


def test_keep_refuses_data_whose_channels_the_checkpoint_scaler_lacks(source, tmp_path):
    frame = pd.DataFrame(
        {
            "date": pd.date_range("2024-01-01", periods=600, freq="h"),
            "load": np.sin(np.arange(600) / 24.0),
            "OT": np.cos(np.arange(600) / 24.0),
        }
    )
    csv = tmp_path / "new.csv"
    frame.to_csv(csv, index=False)
    overrides = fine_tune_overrides(source, tmp_path / "run", f"data.dataset={csv}", "data.features=M")
    config = load_experiment_config(None, [*overrides, "data.scaler=keep"])
    with pytest.raises(ValueError, match=r"the kept scaler has no statistics for the columns \['load'\]"):
        build_datasets(config)
    assert build_datasets(load_experiment_config(None, overrides)).preprocessor.columns == ["load", "OT"]


@pytest.fixture(scope="module")
def fine_tuned(source, tmp_path_factory):
    """A two-step fine-tuning run with the checkpoint's scaler kept."""
    output_dir = tmp_path_factory.mktemp("fine_tuned") / "run"
    config = load_experiment_config(None, fine_tune_overrides(source, output_dir, "data.scaler=keep"))
    return run_experiment(config)


def test_the_folder_records_the_checkpoint_and_the_scaler_choice(fine_tuned, source, tmp_path):
    final = fine_tuned.final_dir
    record = json.loads((final / "training_info.json").read_text())["init_from"]
    assert record == fine_tuned.training_info["init_from"]
    assert record["source"] == str(source) and record["revision"] is None and record["commit"] is None
    assert record["training_data"]["dataset_name"] == "ETTh1" and record["scaler"] == "keep"
    experiment = yaml.safe_load((final / "experiment.yaml").read_text())
    assert experiment["model"]["init_from"] == str(source) and experiment["data"]["scaler"] == "keep"
    assert experiment["data"]["context_length"] == CONTEXT_LENGTH
    card = (final / "README.md").read_text()
    assert f"- **Fine-tuned from:** `./{source.parent.name}/final`" in card
    assert "trained on ETTh1; fine-tuned here on ETTh2" in card and "Scaler: kept from the checkpoint." in card
    assert "Per-column standardisation kept from the checkpoint" in card
    assert "Fine-tuned on ETTh2 from a model trained on ETTh1, with the scaler of that model" in card
    assert split_card(card)["base_model"] == "openai-community/gpt2"  # a local checkpoint: the backbone
    # The folder re-evaluates to its own numbers: its data is scaled with the kept statistics again.
    rows, _ = evaluate_pretrained(final, output_dir=tmp_path / "scratch")
    assert rows == fine_tuned.eval_rows


def test_the_card_of_a_refitted_fine_tune_from_a_hub_checkpoint(fine_tuned, tmp_path):
    folder = Path(shutil.copytree(fine_tuned.final_dir, tmp_path / "final"))
    info = json.loads((folder / "training_info.json").read_text())
    info["init_from"].update(source="me/balm-tsf-etth1", revision="main", commit="0123abc", scaler="refit")
    info["init_from"]["training_data"]["percent"] = 10
    (folder / "training_info.json").write_text(json.dumps(info))
    render_model_card(folder)
    card = (folder / "README.md").read_text()
    assert "[`me/balm-tsf-etth1`](https://huggingface.co/me/balm-tsf-etth1) (revision `0123abc`)" in card
    assert (
        "trained on ETTh1 (10% of its train split)" in card and "Scaler: refitted on this data's train rows." in card
    )
    assert split_card(card)["base_model"] == "me/balm-tsf-etth1"


def test_overwrite_refuses_an_output_folder_that_holds_the_checkpoint(source, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(source, run / "final")
    with pytest.raises(ValueError, match="inside the output folder"):
        check_source_outside(str(run / "final"), run)
    check_source_outside(str(source), run)
    config = load_experiment_config(None, fine_tune_overrides(run / "final", run))
    with pytest.raises(ValueError, match="--overwrite would delete"):
        run_experiment(config, overwrite=True)
    assert (run / "final" / "model.safetensors").is_file()


def test_init_from_flag_reaches_the_config(source, tmp_path, monkeypatch):
    args = parse_arguments(["train", "--init-from", str(source), "--data", "new.csv", "--set", "data.percent=10"])
    assert f"model.init_from={json.dumps(str(source))}" in args.overrides
    seen: dict = {}
    monkeypatch.setattr(training, "run_experiment", fake_run_experiment(seen))
    argv = ["train", "--init-from", str(source), "--set", "data.dataset=ETTh2", "--set", "data.percent=10"]
    assert cli_main([*argv, "--init-revision", "v1"]) == 2  # a revision of a local folder cannot be fetched
    assert cli_main(argv) == 0
    config = seen["config"]
    assert config.model.init_from == str(source) and config.data.percent == 10
    assert config.data.context_length == CONTEXT_LENGTH and config.name == "balm-tsf-finetuned"


def test_init_from_without_data_or_config_is_refused(source, capsys):
    assert cli_main(["train", "--init-from", str(source)]) == 2
    assert "--init-from without --config needs the data to fine-tune on: --data CSV" in capsys.readouterr().err


def test_a_hub_checkpoint_is_read_from_the_hub_cache_and_its_commit_recorded(source, tmp_path, monkeypatch):
    """A Hub id resolves through `huggingface_hub` (here its offline cache, laid out as a download leaves it)."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--me--balm-tsf-etth1"
    shutil.copytree(source, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    overrides = fine_tune_overrides(tmp_path / "unused", tmp_path / "run", "data.scaler=keep")
    overrides[0] = "model.init_from=me/balm-tsf-etth1"
    config = load_experiment_config(None, overrides)
    assert config.data.context_length == CONTEXT_LENGTH
    checkpoint = BalmTsfForForecasting.from_pretrained(source).state_dict()
    model = build_model(config).state_dict()
    assert all(torch.equal(model[name], tensor) for name, tensor in checkpoint.items())
    assert build_datasets(config).preprocessor.std == [
        json.loads((source / "preprocessor_config.json").read_text())["std"][-1]
    ]
    record = training.fine_tuning.init_from_record(config)
    assert record["source"] == "me/balm-tsf-etth1" and record["commit"] == commit
    assert record["training_data"]["dataset_name"] == "ETTh1"
    with pytest.raises(FileNotFoundError, match="no folder 'not-a-hub-id'"):
        load_experiment_config(None, ["model.init_from=not-a-hub-id"])
