"""What the wheel holds and what importing the package registers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel that `pip install .` builds, from a copy of the sources (the checkout stays clean)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "outputs")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO_ROOT / name, source / name)
    for name in ("balm_hf", "research", "configuration", "hub_cards", "scripts", "tests"):
        shutil.copytree(REPO_ROOT / name, source / name, ignore=ignore)
    wheels = tmp_path_factory.mktemp("wheels")
    completed = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    (built,) = wheels.glob("balm_tsf-*.whl")
    return built


def test_wheel_holds_the_package_without_research_code(wheel):
    with zipfile.ZipFile(wheel) as archive:
        wheel_files = archive.namelist()
        entry_points = next(name for name in wheel_files if name.endswith(".dist-info/entry_points.txt"))
        assert "balm-tsf = balm_hf.cli:main" in archive.read(entry_points).decode()
    assert not [name for name in wheel_files if name.startswith(("research/", "tests/", "scripts/"))]
    assert {name.split("/")[0] for name in wheel_files if not name.startswith("balm_tsf-")} == {"balm_hf"}
    for module in ("configuration_balm_tsf.py", "modeling_balm_tsf.py", "losses.py", "backbones.py", "__init__.py"):
        assert f"balm_hf/models/balm_tsf/{module}" in wheel_files
    assert "balm_hf/resources/experiments/default.yaml" in wheel_files
    assert "balm_hf/resources/experiments/csv.yaml" in wheel_files
    assert "balm_hf/resources/hub_cards/model_card_template.md" in wheel_files
    assert "balm_hf/resources/data/custom.yaml" in wheel_files
    assert "balm_hf/metrics/forecasting_metrics/forecasting_metrics.py" in wheel_files
    assert not [name for name in wheel_files if "__pycache__" in name]


def run_python(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    completed = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT, env=env
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout.strip()


def test_importing_balm_hf_registers_balm_tsf_only():
    code = (
        "import sys\n"
        "import balm_hf\n"
        "print('torch' in sys.modules)\n"
        "from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForTimeSeriesPrediction\n"
        "print('balm_tsf' in CONFIG_MAPPING, 'dlinear' in CONFIG_MAPPING)\n"
        "config = balm_hf.BalmTsfConfig(context_length=64, prediction_length=16)\n"
        "print('balm_tsf' in CONFIG_MAPPING, 'dlinear' in CONFIG_MAPPING)\n"
        "print(type(AutoConfig.for_model('balm_tsf')).__name__)\n"
        "print(AutoModelForTimeSeriesPrediction._model_mapping[type(config)].__name__)\n"
        "for name in balm_hf.__all__:\n"
        "    getattr(balm_hf, name)\n"
        "print('dlinear' in CONFIG_MAPPING, 'research' in sys.modules)\n"
    )
    lines = run_python(code).splitlines()
    assert lines == [
        "False",  # `import balm_hf` stays light: the exports load on first use
        "False False",
        "True False",  # using a model or config class registers `balm_tsf` with the auto-classes
        "BalmTsfConfig",
        "BalmTsfForForecasting",
        "False False",  # every export loaded: still no research model registered
    ]


def test_package_exports_resolve_and_are_listed():
    import balm_hf

    assert balm_hf.__version__ == "0.1.0"
    for name in balm_hf.__all__:
        assert getattr(balm_hf, name) is not None
    assert set(balm_hf.__all__) <= set(dir(balm_hf))
    assert balm_hf.training.run_experiment is balm_hf.run_experiment  # submodules as attributes, as before
    with pytest.raises(AttributeError, match="no attribute 'not_an_export'"):
        balm_hf.not_an_export  # noqa: B018
