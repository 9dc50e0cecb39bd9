"""`python -m research.intervals`: the figures of a calibrated folder, recomputed or read from what training wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_calibration import TEST_WINDOWS, VALIDATION_WINDOWS, source_folder  # noqa: F401 (a fixture)

from balm_hf.calibration import CALIBRATION_FILE, INTERVAL_RESULTS_FILE, evaluate_intervals
from research import intervals


def test_the_script_records_the_figures_and_diagnostics_of_a_folder(source_folder, tmp_path):  # noqa: F811
    folder = Path(shutil.copytree(source_folder, tmp_path / "final"))
    output = tmp_path / "results" / "hourly_L64_H16.json"
    assert intervals.main(["--folder", str(folder), "--output", str(output)]) == 0
    record = json.loads(output.read_text())
    assert record["calibrated_here"] and (folder / CALIBRATION_FILE).is_file()
    results = record["results"]
    assert results == json.loads((folder / INTERVAL_RESULTS_FILE).read_text())
    assert results["num_windows"] == TEST_WINDOWS and record["calibration"]["num_windows"] == VALIDATION_WINDOWS
    assert record["command"] == f"python -m research.intervals --folder {folder} --output {output}"
    assert record["machine"].endswith("CPU") and record["versions"]["torch"]
    diagnostics = record["diagnostics"]
    # On the residuals it was calibrated on, the 90% interval spans the ranks floor(66 * 0.05) = 3 to
    # ceil(66 * 0.95) = 63 of 65 per step and channel: 61 / 65 of them.
    assert diagnostics["validation_coverage"]["0.9"] == pytest.approx(61 / 65)
    assert set(diagnostics["residual_spread"]) == {"validation", "test"}
    assert len(diagnostics["coverage_by_horizon_quarter"]["0.8"]) == 4
    table = (output.parent / "README.md").read_text()
    assert f"| BALM-TSF | {results['models'][0]['coverage']['0.8']:.3f} |" in table

    # An existing output or interval_results.json is kept unless --overwrite.
    with pytest.raises(SystemExit):
        intervals.main(["--folder", str(folder), "--output", str(output)])


def test_from_training_reads_the_figures_without_forecasting(source_folder, tmp_path, monkeypatch):  # noqa: F811
    folder = Path(shutil.copytree(source_folder, tmp_path / "final"))
    with pytest.raises(FileNotFoundError, match="holds no calibration"):
        intervals.collect(folder)
    from balm_hf.calibration import calibrate_folder

    calibrate_folder(folder)
    written = evaluate_intervals(folder)

    def no_forecast(*args, **kwargs):
        raise AssertionError("--from-training must not forecast")

    monkeypatch.setattr(intervals, "load_saved_run", no_forecast)
    output = tmp_path / "results" / "from_training.json"
    assert intervals.main(["--folder", str(folder), "--output", str(output), "--from-training"]) == 0
    record = json.loads(output.read_text())
    assert record["results"] == written and not record["calibrated_here"]
    assert "validation_coverage" not in record["diagnostics"]
    assert record["diagnostics"]["width_over_oracle_width"]["0.9"] == pytest.approx(
        written["models"][0]["width"]["0.9"] / written["models"][0]["oracle_width"]["0.9"]
    )
