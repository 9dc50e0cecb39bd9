"""`python -m research.fine_tuning`: the fine-tuned, from-scratch and zero-shot rows of a tiny setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DATA_DIR, TOKENIZER_DIR, tiny_llm_config
from transformers import AutoTokenizer, GPT2Model

from balm_hf.training import load_experiment_config, run_experiment
from research import fine_tuning


MODEL = {"llm_layers": 2, "patch_length": 8, "patch_stride": 4, "d_model": 8, "d_ff": 16, "dropout": 0.0}


def experiment(backbone: Path, dataset: str, percent: int, output_dir: Path) -> dict:
    return {
        "name": f"tiny-{dataset.lower()}",
        "data": {
            "dataset": dataset,
            "data_dir": str(DATA_DIR),
            "context_length": 64,
            "prediction_length": 16,
            "percent": percent,
            "features": "S",
        },
        "model": {"backbone": str(backbone), "config": dict(MODEL)},
        "training": {
            "output_dir": str(output_dir),
            "num_train_epochs": 2,
            "max_steps": 4,
            "early_stopping_patience": None,
            "per_device_train_batch_size": 16,
            "per_device_eval_batch_size": 256,
            "bf16": False,
            "disable_tqdm": True,
        },
        "evaluation": {"max_validation_items": 64, "calibrate": False},
    }


@pytest.mark.slow  # three tiny runs and three passes over the ETTh2 test split: 20-100 s on 2 shared cores
def test_the_script_writes_the_three_rows_and_reuses_finished_runs(tmp_path):
    torch.manual_seed(0)
    backbone = tmp_path / "tiny_backbone"
    GPT2Model(tiny_llm_config()).save_pretrained(backbone)
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(backbone)
    source_yaml = tmp_path / "source.yaml"
    source_yaml.write_text(yaml.safe_dump(experiment(backbone, "ETTh1", 5, tmp_path / "source")))
    source = run_experiment(load_experiment_config(source_yaml)).final_dir
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump(experiment(backbone, "ETTh2", 10, tmp_path / "unused")))
    argv = ["--source", str(source), "--config", str(config), "--runs-dir", str(tmp_path / "runs")]
    argv += ["--results-dir", str(tmp_path / "results")]
    report = fine_tuning.main(argv)

    rows = {row["row"]: row for row in report["rows"]}
    assert set(rows) == {"fine_tuned", "from_scratch", "zero_shot"}
    assert rows["fine_tuned"]["init_from"]["source"] == str(source)
    assert rows["fine_tuned"]["init_from"]["training_data"]["dataset_name"] == "ETTh1"
    assert rows["from_scratch"]["init_from"] is None
    assert len({row["test_items"] for row in rows.values()}) == 1  # the whole ETTh2 test split each time
    assert rows["fine_tuned"]["test_mse"] != rows["from_scratch"]["test_mse"]
    assert report["source"]["training_data"] == "ETTh1" and report["setting"]["percent"] == 10
    written = json.loads((tmp_path / "results" / "ETTh2_L64_H16.json").read_text())
    assert written["rows"] == json.loads(json.dumps(report["rows"]))
    readme = (tmp_path / "results" / "README.md").read_text()
    assert f"| fine-tuned from the checkpoint | {rows['fine_tuned']['test_mse']:.4f} |" in readme
    assert f"| the checkpoint as it is (zero-shot) | {rows['zero_shot']['test_mse']:.4f} |" in readme

    doc = tmp_path / "doc.md"
    doc.write_text(f"# Doc\n\n{fine_tuning.DOCS_START}\nold\n{fine_tuning.DOCS_END}\n\nafter\n")
    fine_tuning.update_docs(report, tmp_path / "results" / "README.md", docs=(doc,))
    text = doc.read_text()
    assert "old" not in text and text.endswith(f"{fine_tuning.DOCS_END}\n\nafter\n")
    assert f"| {rows['from_scratch']['test_mse']:.4f} |" in text and "(results/README.md)" in text
    with pytest.raises(ValueError, match="no <!-- fine-tuning-figures:start"):
        fine_tuning.update_docs(report, tmp_path / "results" / "README.md", docs=(tmp_path / "results" / "README.md",))

    # A second call reads the finished runs instead of training again.
    (tmp_path / "runs" / "fine_tuned" / "final" / "model.safetensors").unlink()
    again = fine_tuning.main(argv)
    assert again["rows"] == report["rows"]
