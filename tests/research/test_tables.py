"""Tests of `research.tables`: one command per results table, seeds pooled, cells not run named with their cost."""

from __future__ import annotations

import statistics
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import DATA_DIR

from research.comparison import read_results
from research.tables import TableSpec, estimate_costs, load_spec, main, render_table, run_table


CONTEXT, HORIZON, ROWS = 64, 16, 700


@pytest.fixture(scope="module")
def csv_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "etth1_short.csv"
    pd.read_csv(DATA_DIR / "ETTh1.csv.gz").iloc[:ROWS].to_csv(path, index=False)
    return path


def _spec(tmp_path: Path, csv_path: Path, **changes) -> Path:
    raw = {
        "name": "tiny",
        "title": "Tiny table",
        "description": "Two groups on a short ETTh1 cut.",
        "datasets": [str(csv_path)],
        "prediction_lengths": [HORIZON],
        "context_length": CONTEXT,
        "seeds": [2021],
        "published": False,
        "output": str(tmp_path / "tiny.md"),
        "groups": [
            {"output_dir": str(tmp_path / "a"), "models": ["dlinear", "seasonal_naive"], "options": {"max_epochs": 1}},
            {"output_dir": str(tmp_path / "b"), "seeds": [0, 1], "models": ["dlinear"], "options": {"max_epochs": 1}},
        ],
        **changes,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_a_table_runs_every_cell_once_and_pools_seeds_into_mean_and_spread(tmp_path: Path, csv_path: Path) -> None:
    spec = load_spec(str(_spec(tmp_path, csv_path)))
    ran = run_table(spec, command="test", work_dir=str(tmp_path / "work"), log=lambda message: None)
    assert sorted((cell.model, cell.seed) for cell in ran) == [
        ("dlinear", 0), ("dlinear", 1), ("dlinear", 2021), ("seasonal_naive", 2021)
    ]  # fmt: skip
    assert run_table(spec, command="test", work_dir=str(tmp_path / "work"), log=lambda message: None) == []
    stem = f"etth1_short_L{CONTEXT}_H{HORIZON}"
    mses = [read_results(tmp_path / "a" / f"{stem}.json")[0]["mse"]]
    mses += [read_results(tmp_path / "b" / f"{stem}_seed{seed}.json")[0]["mse"] for seed in (0, 1)]
    assert len(set(mses)) == 3  # the seeds train different models
    table = (tmp_path / "tiny.md").read_text(encoding="utf-8")
    assert f"{statistics.fmean(mses):.3f} ± {statistics.stdev(mses):.4f} (3 seeds)" in table
    naive = read_results(tmp_path / "a" / f"{stem}.json")[1]
    assert f"{naive['mse']:.3f}/{naive['mae']:.3f} |" in table
    assert "seed 0:" in table and "`test` at" in table and "Not run" not in table
    rerun = run_table(spec, models=["seasonal_naive"], rerun=True, command="test", log=lambda message: None)
    assert [(cell.model, cell.seed) for cell in rerun] == [("seasonal_naive", 2021)]


def test_missing_cells_name_their_measured_epoch_cost_and_command(tmp_path: Path, csv_path: Path) -> None:
    spec = load_spec(str(_spec(tmp_path, csv_path)))
    costs = estimate_costs(spec, command="estimate", log=lambda message: None)
    stem = f"etth1_short_L{CONTEXT}_H{HORIZON}"
    assert set(costs) == {f"{stem}/dlinear"}  # one per setting and model; seeds cost the same
    cost = costs[f"{stem}/dlinear"]
    n_train = int(0.7 * ROWS)
    assert cost["train_items"] == (n_train - CONTEXT - HORIZON + 1) * 7
    assert cost["epoch_s"] > 0 and cost["epoch_s"] == pytest.approx(cost["epoch_train_s"] + cost["epoch_validation_s"])
    table = render_table(spec)
    assert "| not run |" in table
    assert f"one epoch measured at {cost['epoch_s'] / 60:.1f} min" in table
    assert f"`python -m research.tables tiny --only {csv_path}:{HORIZON}`" in table
    assert "Seasonal naive (seeds 2021)" in table  # untrained cells are listed without a cost
    spec.missing_reason = "the cores ran other cells first."
    assert "Not run: the cores ran other cells first.\n" in render_table(spec)


def test_datasets_marked_not_run_are_skipped_with_their_reason(tmp_path: Path, csv_path: Path) -> None:
    path = _spec(tmp_path, csv_path, not_run={str(csv_path): "the file is not on this machine"})
    spec = load_spec(str(path))
    assert run_table(spec, command="test", log=lambda message: None) == []
    assert "the file is not on this machine" in render_table(spec)
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"groups": [{"output_dir": "x", "models": ["gpt5"]}]}, "unknown model 'gpt5'"),
        (
            {"groups": [{"output_dir": "x", "models": ["dlinear"], "options": {"epochs": 3}}]},
            r"unknown options \['epochs'\]",
        ),
        ({"colour": "red"}, r"unknown keys \['colour'\]"),
        ({"not_run": {"Weather": "missing"}}, "`not_run` names 'Weather'"),
    ],
)
def test_bad_table_files_are_refused_before_anything_runs(tmp_path: Path, csv_path: Path, change, message) -> None:
    with pytest.raises(ValueError, match=message):
        TableSpec.from_yaml(_spec(tmp_path, csv_path, **change))


def test_the_committed_tables_load_and_an_unknown_name_lists_them(capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("few_shot", "long_term", "seeds"):
        spec = load_spec(name)
        assert spec.cells() and spec.output.startswith("research/results/")
    few_shot = load_spec("few_shot").cells()[0].settings()
    assert few_shot.percent == 10 and few_shot.stem == "ETTh1_L512_H96_p10"
    with pytest.raises(SystemExit, match="available: .*few_shot"):
        main(["nonsense"])


def test_generated_blocks_replace_only_their_own_text(tmp_path: Path, csv_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nBefore.\n", encoding="utf-8")
    blocks = [{"file": str(readme), "kind": "headline"}, {"file": str(readme), "kind": "table"}]
    spec = load_spec(str(_spec(tmp_path, csv_path, blocks=blocks)))
    run_table(spec, command="test", work_dir=str(tmp_path / "work"), log=lambda message: None)
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nBefore.\n\n<!-- table:tiny:headline:start")
    assert text.count("<!-- table:tiny:table:end -->") == 1 and "Two groups on a short ETTh1 cut." in text
    stem = f"etth1_short_L{CONTEXT}_H{HORIZON}"
    dlinear = statistics.fmean(
        [read_results(tmp_path / "a" / f"{stem}.json")[0]["mse"]]
        + [read_results(tmp_path / "b" / f"{stem}_seed{seed}.json")[0]["mse"] for seed in (0, 1)]
    )
    naive = read_results(tmp_path / "a" / f"{stem}.json")[1]["mse"]
    headline = text.split("<!-- table:tiny:headline:end -->")[0]
    best, other = sorted([dlinear, naive])
    assert f"**{best:.3f}" in headline and f"| {other:.3f}" in headline  # the lowest MSE of the setting in bold
    readme.write_text(text.replace("Before.", "Edited by hand."), encoding="utf-8")
    main([str(tmp_path / "tiny.yaml"), "--render"])
    again = readme.read_text(encoding="utf-8")
    assert "Edited by hand." in again and again.count("<!-- table:tiny:headline:start") == 1
    assert again.replace("Edited by hand.", "Before.") == text
    with pytest.raises(ValueError, match="a block needs"):
        TableSpec.from_yaml(_spec(tmp_path, csv_path, blocks=[{"file": "x.md", "kind": "chart"}]))


def test_the_committed_tables_in_the_readmes_match_their_results_files(monkeypatch: pytest.MonkeyPatch) -> None:
    from research.tables import stale_blocks

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    for name in ("few_shot", "long_term", "seeds"):
        spec = load_spec(name)
        assert spec.blocks
        assert stale_blocks(spec) == [], f"run `python -m research.tables {name} --render`"


def test_a_block_edited_by_hand_is_reported_stale(tmp_path: Path, csv_path: Path) -> None:
    from research.tables import stale_blocks, write_table

    readme = tmp_path / "README.md"
    spec = load_spec(str(_spec(tmp_path, csv_path, blocks=[{"file": str(readme), "kind": "table"}])))
    assert stale_blocks(spec) == [f"{readme}:table"]  # no block yet
    write_table(spec)
    assert stale_blocks(spec) == []
    readme.write_text(readme.read_text(encoding="utf-8").replace("| not run |", "| 0.001/0.001 |"), encoding="utf-8")
    assert stale_blocks(spec) == [f"{readme}:table"]


def test_a_result_trained_otherwise_than_the_table_asks_is_flagged(tmp_path: Path, csv_path: Path) -> None:
    spec = load_spec(str(_spec(tmp_path, csv_path)))
    run_table(spec, models=["dlinear"], command="test", work_dir=str(tmp_path / "work"), log=lambda message: None)
    cell = next(cell for cell in spec.cells() if cell.model == "dlinear" and cell.seed == 2021)
    row = cell.row()
    assert row is not None and cell.mismatches(row) == []
    other = load_spec(str(_spec(tmp_path, csv_path, groups=[
        {"output_dir": str(tmp_path / "a"), "models": ["dlinear"], "options": {"learning_rates": {"dlinear": 0.1}}}
    ])))  # fmt: skip
    assert other.cells()[0].mismatches(row) == ["learning_rate 0.005 (the table asks for 0.1)"]
    assert "Trained with learning_rate 0.005 (the table asks for 0.1)." in (render_table(other))


@pytest.mark.parametrize(
    "argv", [["--only", "ETTh3"], ["--only", "ETTh1:97"], ["--only", "ETTh1:x"], ["--models", "gpt"]]
)
def test_selections_outside_the_table_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit, match="error: --"):
        main(["few_shot", "--list", *argv])


def test_an_override_of_some_models_reaches_only_those_models(tmp_path: Path, csv_path: Path) -> None:
    path = _spec(
        tmp_path,
        csv_path,
        groups=[{"output_dir": str(tmp_path / "a"), "models": ["patchtst", "dlinear"], "options": {"max_epochs": 1}}],
        overrides=[{"dataset": str(csv_path), "models": ["dlinear"], "options": {"max_epochs": 2}}],
    )
    spec = load_spec(str(path))
    run_table(spec, command="test", work_dir=str(tmp_path / "work"), log=lambda message: None)
    rows = {row["model"]: row for row in read_results(tmp_path / "a" / f"etth1_short_L{CONTEXT}_H{HORIZON}.json")}
    assert (rows["patchtst"]["max_epochs"], rows["dlinear"]["max_epochs"]) == (1, 2)


def test_seed_spreads_say_whether_a_difference_lies_inside_them(tmp_path: Path, csv_path: Path) -> None:
    groups = [
        {"output_dir": str(tmp_path / "a"), "models": ["dlinear", "seasonal_naive"], "options": {"max_epochs": 1}},
        {"output_dir": str(tmp_path / "b"), "seeds": [0, 1], "models": ["dlinear", "seasonal_naive"],
         "options": {"max_epochs": 1}},
    ]  # fmt: skip
    spec = load_spec(str(_spec(tmp_path, csv_path, groups=groups)))
    run_table(spec, command="test", work_dir=str(tmp_path / "work"), log=lambda message: None)
    stem = f"etth1_short_L{CONTEXT}_H{HORIZON}"
    files = [tmp_path / "a" / f"{stem}.json"] + [tmp_path / "b" / f"{stem}_seed{seed}.json" for seed in (0, 1)]
    dlinear = [read_results(path)[0]["mse"] for path in files]
    naive = [read_results(path)[1]["mse"] for path in files]
    assert len(set(naive)) == 1  # untrained: the same forecast for every seed
    difference = statistics.fmean(dlinear) - naive[0]
    spread = statistics.stdev(dlinear)  # the seasonal naive's spread is 0
    where = "inside" if abs(difference) <= spread else "outside"
    expected = f"DLinear minus Seasonal naive = {difference:+.4f} (3 and 3 seeds), {where} the spread {spread:.4f}"
    assert expected in render_table(spec)
