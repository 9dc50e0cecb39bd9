"""Re-evaluation of trained folders with their saved settings, for every missing-value mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import DATA_DIR
from test_training import assert_reevaluation_reproduces_the_saved_rows, tiny_experiment

from balm_hf.metrics import compute_forecasting_metrics
from balm_hf.training import ExperimentConfig, evaluate_pretrained, run_experiment


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def gappy_csv(tmp_path_factory) -> Path:
    """ETTh1 with empty target cells in the train and the test split (the ETTh1 borders apply)."""
    frame = pd.read_csv(DATA_DIR / "ETTh1.csv.gz")
    frame.loc[100:104, "OT"] = np.nan
    frame.loc[13000:13011, "OT"] = np.nan  # ETTh1 test rows: 11520 - L to 14400
    path = tmp_path_factory.mktemp("gappy") / "etth1_gaps.csv"
    frame.to_csv(path, index=False)
    return path


def _train(output_dir: Path, csv: Path, missing: str):
    raw = tiny_experiment(
        output_dir,
        data={"dataset": str(csv), "split_config": "ETTh1", "data_dir": None, "missing": missing},
        # an eval batch other than evaluate's former fixed 64: paper-mode prompts are padded per batch
        training={"num_train_epochs": 1, "per_device_eval_batch_size": 48},
    )
    return run_experiment(ExperimentConfig.from_dict(raw))


@pytest.mark.parametrize("missing", ["ffill", "mask"])
def test_a_model_trained_with_missing_values_reevaluates_to_its_own_numbers(tmp_path, gappy_csv, missing):
    result = _train(tmp_path / missing, gappy_csv, missing)
    assert_reevaluation_reproduces_the_saved_rows(result.final_dir, tmp_path / "scratch")
    if missing == "mask":
        forecasts = result.forecasts
        assert forecasts.observed_mask is not None and not forecasts.observed_mask.all()
        masked = compute_forecasting_metrics(
            forecasts.predictions, forecasts.references, observed_mask=forecasts.observed_mask
        )
        unmasked = compute_forecasting_metrics(forecasts.predictions, forecasts.references)
        assert result.eval_rows[0]["mse"] == masked["mse"] != unmasked["mse"]
        _, reevaluated = evaluate_pretrained(result.final_dir, output_dir=tmp_path / "scratch")
        np.testing.assert_array_equal(reevaluated.observed_mask, forecasts.observed_mask)
    # Another eval batch pads the paper-mode prompts differently and moves the metric: the saved batch size is needed.
    rows, _ = evaluate_pretrained(result.final_dir, output_dir=tmp_path / "scratch", batch_size=64)
    assert rows[0]["num_items"] == result.eval_rows[0]["num_items"]
    assert rows[0]["mse"] != result.eval_rows[0]["mse"]
