"""Split-conformal calibration: ranks, coverage on exchangeable residuals, interpolation, files and errors."""

from __future__ import annotations

import numpy as np
import pytest

from balm_hf.calibration import (
    CALIBRATION_FILE,
    DEFAULT_LEVELS,
    ConformalCalibration,
    MissingCalibrationError,
    conformal_rank,
)


def test_conformal_rank_is_the_finite_sample_quantile():
    assert conformal_rank(9, 0.9) == 9  # ceil(10 * 0.9)
    assert conformal_rank(9, 0.1) == 1  # floor(10 * 0.1)
    assert conformal_rank(99, 0.95) == 95
    assert conformal_rank(99, 0.05) == 5
    assert conformal_rank(10, 0.99) == 10  # clipped to n
    assert conformal_rank(10, 0.01) == 1


def test_intervals_cover_new_exchangeable_residuals_at_their_level():
    rng = np.random.default_rng(0)
    scale = np.linspace(0.5, 2.0, 4)[None, :, None]  # residuals widen with the horizon
    held_out = rng.standard_t(df=4, size=(2000, 4, 2)) * scale
    new = rng.standard_t(df=4, size=(20000, 4, 2)) * scale
    calibration = ConformalCalibration.from_residuals(held_out, ["a", "b"])
    low, high = calibration.offsets_for([0.05, 0.95])
    coverage = ((new >= low) & (new <= high)).mean(axis=0)
    assert np.all(np.abs(coverage - 0.9) < 0.02), coverage
    width = (high - low).mean(axis=1)  # per step
    assert np.all(np.diff(width) > 0)


def test_offsets_are_stored_levels_or_interpolated_between_them():
    residuals = np.random.default_rng(1).normal(size=(500, 3, 1))
    calibration = ConformalCalibration.from_residuals(residuals, ["x"])
    stored = calibration.offsets[calibration.levels.index(0.1)]
    np.testing.assert_array_equal(calibration.offsets_for([0.1])[0], stored)
    between = calibration.offsets_for([0.105])[0]
    lower, upper = calibration.offsets_for([0.1, 0.11])
    np.testing.assert_allclose(between, 0.5 * (lower + upper))
    with pytest.raises(ValueError, match="outside the calibrated range"):
        calibration.offsets_for([0.001])
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        calibration.offsets_for([1.0])


def test_missing_targets_are_left_out_and_too_few_windows_are_refused():
    residuals = np.random.default_rng(2).normal(size=(300, 2, 1))
    residuals[:50, 0, 0] = np.nan
    calibration = ConformalCalibration.from_residuals(residuals, ["x"])
    expected = np.sort(residuals[50:, 0, 0])[conformal_rank(250, 0.9) - 1]
    assert calibration.offsets_for([0.9])[0, 0, 0] == expected
    with pytest.raises(ValueError, match="'x' has 20 residuals at step 1"):
        ConformalCalibration.from_residuals(residuals[-20:], ["x"])
    with pytest.raises(ValueError, match="infinite"):
        ConformalCalibration.from_residuals(np.full((300, 1, 1), np.inf), ["x"])


def test_a_calibration_round_trips_through_its_file(tmp_path):
    residuals = np.random.default_rng(3).normal(size=(400, 5, 2))
    calibration = ConformalCalibration.from_residuals(
        residuals, ["HUFL", "OT"], metadata={"dataset": "ETTh1", "rows": [8545, 11425]}
    )
    path = calibration.save_pretrained(tmp_path)
    assert path.name == CALIBRATION_FILE
    loaded = ConformalCalibration.from_pretrained(tmp_path)
    assert loaded.columns == ["HUFL", "OT"] and loaded.levels == list(DEFAULT_LEVELS)
    assert loaded.num_windows == 400 and loaded.metadata == {"dataset": "ETTh1", "rows": [8545, 11425]}
    np.testing.assert_allclose(loaded.offsets, calibration.offsets, rtol=1e-6)


def test_a_folder_without_calibration_names_the_command_that_adds_it(tmp_path):
    with pytest.raises(MissingCalibrationError, match=f"balm-tsf calibrate {tmp_path}"):
        ConformalCalibration.from_pretrained(tmp_path)
    (tmp_path / CALIBRATION_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a valid prediction-interval calibration"):
        ConformalCalibration.from_pretrained(tmp_path)
