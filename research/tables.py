"""Run a whole results table (settings x seeds x models) with one command and write it with the published numbers.

A table is a YAML file in `research/experiments/tables/` (see [`TableSpec`]). Every cell is one
[`research.comparison.run_comparison`] row; a cell with a results row on disk is not run again, so a table is filled
in pieces (`--resume` also continues a model stopped mid-training from its last checkpoint). `--estimate` measures
what an epoch of every missing cell costs on this machine, and the table names that cost next to each cell it could
not fill.

    python -m research.tables few_shot                 # run what is missing, then write the table
    python -m research.tables few_shot --only ETTh1    # one dataset (or ETTh1:96 for one setting)
    python -m research.tables few_shot --estimate      # time an epoch of every missing trained cell instead
    python -m research.tables few_shot --render        # only rewrite the table from the results on disk
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from research.comparison import (
    MODEL_LABELS,
    MODEL_NAMES,
    PUBLISHED_BALM_TSF,
    TRAINED_MODELS,
    ComparisonSettings,
    build_collator,
    build_comparison_model,
    machine_kind,
    read_results,
    results_paths,
    run_comparison,
    run_metadata,
)


TABLES_DIR = Path(__file__).resolve().parent / "experiments" / "tables"
BLOCK_KINDS = ("headline", "table")
# `ComparisonSettings` fields a table may set; the grid and the group set the rest.
_SETTING_FIELDS = {item.name for item in fields(ComparisonSettings)} - {"command", "resume", "models", "output_dir"}


@dataclass
class RunGroup:
    r"""
    Models run with the same options into one results folder.

    Args:
        output_dir (`str`):
            Results folder of [`run_comparison`] (one `<stem>.json` per setting and seed).
        models (`list[str]`):
            Models of this group, each a table column unless `columns` renames it.
        seeds (`list[int]`, *optional*):
            Seeds of this group; defaults to the table's.
        options (`dict`, *optional*):
            [`ComparisonSettings`] fields of every run of the group (e.g. `max_epochs`, `learning_rates`).
        columns (`dict[str, str]`, *optional*):
            Column label per model; cells of groups with the same label are one column (seeds pooled).
    """

    output_dir: str
    models: list[str]
    seeds: list[int] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)

    def column(self, model: str) -> str:
        return self.columns.get(model, MODEL_LABELS[model])


@dataclass
class Override:
    """Options of the runs of one dataset (and horizon, if given), on top of the group's."""

    dataset: str
    options: dict[str, Any]
    prediction_length: int | None = None
    models: list[str] | None = None

    def applies(self, dataset: str, horizon: int, model: str) -> bool:
        return (
            self.dataset == dataset
            and self.prediction_length in (None, horizon)
            and (self.models is None or model in self.models)
        )


@dataclass
class TableSpec:
    r"""
    A results table: its grid of settings, the seeds, and the groups of models that fill its columns.

    Args:
        name (`str`): file stem of the table (`<output>/<name>.md`).
        title (`str`): heading of the table.
        description (`str`): what the table measures and how its runs were trained (one paragraph).
        datasets (`list[str]`): benchmark names (rows, outer).
        prediction_lengths (`list[int]`): horizons (rows, inner).
        seeds (`list[int]`): seeds of every group that does not name its own.
        groups (`list[RunGroup]`): models and their options.
        context_length (`int`, defaults to 512): lookback of every run.
        overrides (`list[Override]`): options of particular datasets or settings.
        published (`bool`, defaults to `True`): show the published BALM-TSF numbers of full-data settings.
        output (`str`): where the markdown table is written.
        not_run (`dict[str, str]`): per dataset, why its cells are not run (e.g. a file that is not available).
        missing_reason (`str`): why the cells without a result have not run yet (printed above their list).
        blocks (`list[dict]`): generated blocks in other markdown files, each `{"file": ..., "kind": "headline"}`
            (the MSE of the settings where the first column has a result, the lowest measured MSE in bold) or
            `{"kind": "table"}` (the whole table). A block lies between `<!-- table:<name>:<kind>:start ... -->`
            and `<!-- table:<name>:<kind>:end -->` lines, which are added at the end of the file the first time.
    """

    name: str
    title: str
    description: str
    datasets: list[str]
    prediction_lengths: list[int]
    seeds: list[int]
    groups: list[RunGroup]
    output: str
    context_length: int = 512
    overrides: list[Override] = field(default_factory=list)
    published: bool = True
    not_run: dict[str, str] = field(default_factory=dict)
    blocks: list[dict[str, str]] = field(default_factory=list)
    missing_reason: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path) -> TableSpec:
        path = Path(path)
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping")
        known = {item.name for item in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
        try:
            groups = [RunGroup(**group) for group in raw.pop("groups")]
            overrides = [Override(**item) for item in raw.pop("overrides", None) or []]
            spec = cls(**raw, groups=groups, overrides=overrides)
        except (KeyError, TypeError) as error:
            raise ValueError(f"{path}: {error}") from None
        spec.check(str(path))
        return spec

    def check(self, where: str) -> None:
        """Refuse unknown models and options before anything runs."""
        for group in self.groups:
            for model in group.models:
                if model not in MODEL_NAMES:
                    raise ValueError(f"{where}: unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
            for options in (group.options, *(item.options for item in self.overrides)):
                unknown = set(options) - _SETTING_FIELDS
                if unknown:
                    raise ValueError(f"{where}: unknown options {sorted(unknown)}; known: {sorted(_SETTING_FIELDS)}")
        for dataset in self.not_run:
            if dataset not in self.datasets:
                raise ValueError(f"{where}: `not_run` names {dataset!r}, which is not in `datasets`")
        for block in self.blocks:
            if set(block) != {"file", "kind"} or block["kind"] not in BLOCK_KINDS:
                raise ValueError(f"{where}: a block needs `file` and `kind` (one of {BLOCK_KINDS}), got {block!r}")

    def columns(self) -> list[str]:
        return list(dict.fromkeys(group.column(model) for group in self.groups for model in group.models))

    def cells(self) -> list[Cell]:
        """Every (dataset, horizon, group, seed, model) of the table, in table order."""
        result = []
        for dataset, horizon in itertools.product(self.datasets, self.prediction_lengths):
            for group in self.groups:
                for seed in group.seeds or self.seeds:
                    for model in group.models:
                        result.append(Cell(self, dataset, horizon, group, seed, model))
        return result


@dataclass
class Cell:
    """One model of one setting and seed: a row of a [`run_comparison`] results file."""

    spec: TableSpec
    dataset: str
    prediction_length: int
    group: RunGroup
    seed: int
    model: str

    def options(self) -> dict[str, Any]:
        options = dict(self.group.options)
        for override in self.spec.overrides:
            if override.applies(self.dataset, self.prediction_length, self.model):
                options.update(override.options)
        return options

    def settings(self, models: Sequence[str] | None = None, **extra: Any) -> ComparisonSettings:
        """The [`ComparisonSettings`] of this cell (of `models` of its group and setting), with `extra` fields."""
        values: dict[str, Any] = {
            "dataset": self.dataset,
            "context_length": self.spec.context_length,
            "prediction_length": self.prediction_length,
            "seed": self.seed,
            "models": tuple(models or (self.model,)),
            "output_dir": self.group.output_dir,
            **self.options(),
        }
        values.update(extra)
        return ComparisonSettings(**values)

    def row(self) -> dict[str, Any] | None:
        path = results_paths(self.settings())["json"]
        return next((row for row in read_results(path) if row["model"] == self.model), None)

    def mismatches(self, row: Mapping[str, Any]) -> list[str]:
        """How a results row's recorded training differs from what this cell asks for (empty when it matches)."""
        if self.model not in TRAINED_MODELS:
            return []
        settings = self.settings()
        expected = {
            "learning_rate": settings.learning_rate(self.model),
            "batch_size": settings.batch_size(self.model),
            "gradient_accumulation_steps": settings.accumulation(self.model),
            "lr_schedule": settings.lr_schedule(self.model),
            "percent": settings.percent,
        }
        defaults = {"gradient_accumulation_steps": 1, "lr_schedule": "halving", "percent": 100}
        return [
            f"{key} {row.get(key, defaults.get(key))} (the table asks for {value})"
            for key, value in expected.items()
            if row.get(key, defaults.get(key)) != value
        ]

    @property
    def key(self) -> str:
        return f"{self.settings().stem}/{self.model}"

    @property
    def column(self) -> str:
        return self.group.column(self.model)


def load_spec(name_or_path: str) -> TableSpec:
    """A table by name (`research/experiments/tables/<name>.yaml`) or path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TABLES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(item.stem for item in TABLES_DIR.glob("*.yaml")))
        raise FileNotFoundError(f"no table {name_or_path!r} (looked for {path}); available: {available}")
    return TableSpec.from_yaml(path)


def _selected(cell: Cell, only: Sequence[str]) -> bool:
    if not only:
        return True
    for item in only:
        dataset, _, horizon = item.partition(":")
        if dataset == cell.dataset and (not horizon or int(horizon) == cell.prediction_length):
            return True
    return False


def run_table(
    spec: TableSpec,
    only: Sequence[str] = (),
    models: Sequence[str] = (),
    resume: bool = False,
    rerun: bool = False,
    command: str | None = None,
    work_dir: str | None = None,
    log: Callable[[str], None] = print,
) -> list[Cell]:
    r"""
    Run every selected cell without a results row (all selected cells with `rerun`), one [`run_comparison`] per
    setting, seed and group, and rewrite the table after each. Datasets in `spec.not_run` are skipped. Checkpoints go
    to `work_dir` (default `outputs/tables/<table>`), one folder per results folder, setting and model.

    Returns:
        `list[Cell]`: the cells that were run.
    """
    todo: dict[tuple[str, int, int, int, str], list[Cell]] = {}
    for cell in spec.cells():
        if not _selected(cell, only) or (models and cell.model not in models) or cell.dataset in spec.not_run:
            continue
        if rerun or cell.row() is None:
            options = json.dumps(cell.options(), sort_keys=True)  # an override may single out some models
            key = (cell.dataset, cell.prediction_length, spec.groups.index(cell.group), cell.seed, options)
            todo.setdefault(key, []).append(cell)
    ran: list[Cell] = []
    for cells in todo.values():
        first = cells[0]
        settings = first.settings(
            models=[cell.model for cell in cells],
            resume=resume,
            command=command,
            work_dir=str(Path(work_dir or Path("outputs") / "tables" / spec.name) / first.group.output_dir),
        )
        log(f"[{datetime.datetime.now():%H:%M:%S}] {spec.name}: {settings.stem} ({', '.join(settings.models)})")
        run_comparison(settings, log=log)
        ran.extend(cells)
        write_table(spec)
    return ran


# ---------------------------------------------------------------------------------------------------------------------
# Cost of an epoch
# ---------------------------------------------------------------------------------------------------------------------


def _costs_path(spec: TableSpec) -> Path:
    return Path(spec.output).parent / f"{spec.name}.costs.json"


def read_costs(spec: TableSpec) -> dict[str, Any]:
    path = _costs_path(spec)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def time_epoch(settings: ComparisonSettings, model_name: str, steps: int = 6, warmup: int = 2) -> dict[str, Any]:
    r"""
    Time `steps` training steps (forward, loss, backward, Adam) and `steps` validation batches of one model on its
    real splits, after `warmup` of each, and extrapolate one epoch: the whole train split in batches of the setting's
    batch size, then the whole validation split in batches of `eval_batch_size` (what [`run_comparison`] runs per
    epoch; the test split once at the end costs about one validation pass).
    """
    splits = settings.load_splits()
    model = build_comparison_model(settings, model_name)
    collator = build_collator(model)
    batch_size, eval_batch = settings.batch_size(model_name), settings.eval_batch_size
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    generator = torch.Generator().manual_seed(settings.seed)

    def batches(dataset: Any, size: int, count: int) -> list[Any]:
        # Random items (with repeats where the split is shorter than the batches): full batches of the real size.
        order = torch.randint(len(dataset), (size * count,), generator=generator).tolist()
        return [collator([dataset[i] for i in order[k * size : (k + 1) * size]]) for k in range(count)]

    def timed(step: Callable[[Any], None], data: list[Any]) -> float:
        for batch in data[:warmup]:
            step(batch)
        start = time.perf_counter()
        for batch in data[warmup:]:
            step(batch)
        return (time.perf_counter() - start) / (len(data) - warmup)

    def train_step(batch: Any) -> None:
        model.train()
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def eval_step(batch: Any) -> None:
        model.eval()
        with torch.no_grad():
            model(**{key: value for key, value in batch.items() if key != "future_values"})

    load_at_start = os.getloadavg()[0]  # other work on the cores slows the figures: record how busy they were
    build_start = time.perf_counter()
    train_batches = batches(splits["train"], batch_size, steps + warmup)
    eval_batches = batches(splits["validation"], eval_batch, steps + warmup)
    prompt_s = (time.perf_counter() - build_start) / (len(train_batches) * batch_size + len(eval_batches) * eval_batch)
    train_step_s, eval_step_s = timed(train_step, train_batches), timed(eval_step, eval_batches)
    train_items, validation_items = len(splits["train"]), len(splits["validation"])
    train_s = math.ceil(train_items / batch_size) * train_step_s
    validation_s = math.ceil(validation_items / eval_batch) * eval_step_s
    return {
        "train_items": train_items,
        "validation_items": validation_items,
        "test_items": len(splits["test"]),
        "batch_size": batch_size,
        "eval_batch_size": eval_batch,
        "train_step_s": train_step_s,
        "eval_step_s": eval_step_s,
        "batch_building_s_per_item": prompt_s,
        "epoch_s": train_s + validation_s,
        "epoch_train_s": train_s,
        "epoch_validation_s": validation_s,
        "timed_steps": steps,
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": {"start": round(load_at_start, 2), "end": round(os.getloadavg()[0], 2)},
    }


def estimate_costs(
    spec: TableSpec,
    only: Sequence[str] = (),
    models: Sequence[str] = (),
    command: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    r"""
    Time an epoch ([`time_epoch`]) of every selected trained cell without a results row (one per setting and model:
    seeds cost the same) and store it in `<table>.costs.json` with the machine, revision and command.
    """
    costs = read_costs(spec)
    metadata = run_metadata(ComparisonSettings(command=command))
    done: set[str] = set()
    for cell in spec.cells():
        if cell.model not in TRAINED_MODELS or cell.dataset in spec.not_run or cell.row() is not None:
            continue
        if not _selected(cell, only) or (models and cell.model not in models):
            continue
        key = f"{cell.settings(seed=2021).stem}/{cell.model}"
        if key in done:
            continue
        done.add(key)
        cost = time_epoch(cell.settings(), cell.model)
        cost.update({name: metadata[name] for name in ("command", "git_revision", "machine")})
        costs[key] = cost
        log(f"{key}: {cost['epoch_s'] / 60:.1f} min/epoch ({cost['train_items']} train items)")
        path = _costs_path(spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(costs, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_table(spec)
    return costs


# ---------------------------------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------------------------------


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _fmt(value: float) -> str:
    return f"{value:.3f}"


def _cell_text(rows: Sequence[Mapping[str, Any]], seeds: int) -> str:
    if len(rows) == 1 and seeds == 1:
        row = rows[0]
        capped = "" if row.get("stop_reason") == "not trained" or row.get("paper_protocol") else "*"
        return f"{_fmt(row['mse'])}/{_fmt(row['mae'])}{capped}"
    mse, mse_std = _mean_std([row["mse"] for row in rows])
    text = _fmt(mse)
    if mse_std is not None:
        text += f" ± {mse_std:.4f}"  # seed spreads are often below 0.001
    return text + (f" ({len(rows)} of {seeds} seeds)" if len(rows) < seeds else f" ({len(rows)} seeds)")


def render_table(spec: TableSpec, details: bool = True) -> str:
    r"""
    The markdown of a table from the results on disk: MSE/MAE per setting and column (with seeds, the mean ± sample
    standard deviation of the MSE over the seeds run), the published numbers where `published`, then every run's
    command, revision, machine, epochs and wall time, and the cells not run with their cost per epoch (without
    `details`: a link to `spec.output` for those).
    """
    cells = spec.cells()
    costs = read_costs(spec)
    columns = spec.columns()
    seeds_per_column = {
        column: len({cell.seed for cell in cells if cell.column == column}) for column in columns
    }  # fmt: skip
    header = ["setting"] + (["published BALM-TSF"] if spec.published else []) + columns
    lines = [f"## {spec.title}", "", spec.description.strip(), ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    runs: list[str] = []
    missing: list[str] = []
    spreads: list[str] = []
    for dataset, horizon in itertools.product(spec.datasets, spec.prediction_lengths):
        setting_cells = [cell for cell in cells if (cell.dataset, cell.prediction_length) == (dataset, horizon)]
        line = [f"{dataset} H={horizon}"]
        if spec.published:
            published = PUBLISHED_BALM_TSF.get(dataset, {}).get(horizon)
            line.append("-" if published is None else f"{_fmt(published[0])}/{_fmt(published[1])}")
        for column in columns:
            found = [(cell, cell.row()) for cell in setting_cells if cell.column == column]
            rows = [row for _, row in found if row is not None]
            line.append(_cell_text(rows, seeds_per_column[column]) if rows else "not run")
            for cell, row in found:
                if row is not None:
                    runs.append(_detail(cell, row))
                else:
                    missing.append(_missing(spec, cell, costs))
        lines.append("| " + " | ".join(line) + " |")
        spreads += _spread_notes(f"{dataset} H={horizon}", columns, setting_cells)
    lines += [
        "",
        "MSE/MAE on the whole test split, standardised with the train-split statistics; `*` marks a capped run "
        "(epochs or items below the paper protocol's; each run's line says which).",
        "",
    ]
    if spreads:
        lines += [
            "Differences of the mean test MSE against the first column, and whether each lies inside the larger of "
            "the two columns' seed standard deviations:",
            "",
            *spreads,
            "",
        ]
    if not details:
        lines += [
            f"Every run's command, revision, machine, epochs and wall time, and the cost of the cells not run: "
            f"`{spec.output}`.",
            "",
        ]
        return "\n".join(lines)
    if runs:
        lines += ["Runs (model, seed: MSE/MAE, epochs run (best), train wall time, command, revision, machine):", ""]
        lines += runs + [""]
    if missing:
        reason = f" {spec.missing_reason.strip()}" if spec.missing_reason else ""
        lines += [f"Not run:{reason}", ""] + list(dict.fromkeys(missing)) + [""]
    return "\n".join(lines)


def _spread_notes(setting: str, columns: Sequence[str], cells: Sequence[Cell]) -> list[str]:
    """Per setting: the first column's mean MSE minus each other column's, where both have two or more seeds run."""
    mses = {
        column: [row["mse"] for cell in cells if cell.column == column and (row := cell.row()) is not None]
        for column in columns
    }
    first = columns[0]
    if len(mses[first]) < 2:
        return []
    notes = []
    for column in columns[1:]:
        if len(mses[column]) < 2:
            continue
        difference = statistics.fmean(mses[first]) - statistics.fmean(mses[column])
        spread = max(statistics.stdev(mses[first]), statistics.stdev(mses[column]))
        where = "inside" if abs(difference) <= spread else "outside"
        notes.append(
            f"- {setting}: {first} minus {column} = {difference:+.4f} ({len(mses[first])} and {len(mses[column])} "
            f"seeds), {where} the spread {spread:.4f}"
        )
    return notes


def _epoch(value: Any) -> str:
    return "-" if value is None else f"{float(value):g}"


def _detail(cell: Cell, row: Mapping[str, Any]) -> str:
    run = row.get("run") or {}
    if row.get("stop_reason") == "not trained":
        training = "not trained"
    else:
        training = (
            f"{float(row['epochs_run']):g} epochs ({_epoch(row.get('best_epoch'))}), "
            f"{float(row['train_wall_time_s']) / 60:.0f} min, stopped by {row.get('stop_reason')}"
        )
    differences = cell.mismatches(row)
    note = f" Trained with {'; '.join(differences)}." if differences else ""
    return (
        f"- {cell.dataset} H={cell.prediction_length} {cell.column}, seed {cell.seed}: "
        f"{_fmt(row['mse'])}/{_fmt(row['mae'])}, {training}; `{run.get('command', '?')}` at "
        f"`{str(run.get('git_revision', '?'))[:7]}`, {run.get('machine', '?')}.{note}"
    )


def _missing(spec: TableSpec, cell: Cell, costs: Mapping[str, Any]) -> str:
    where = f"- {cell.dataset} H={cell.prediction_length} {cell.column}"
    if cell.dataset in spec.not_run:
        return f"{where}: {spec.not_run[cell.dataset]}"
    cost = costs.get(f"{cell.settings(seed=2021).stem}/{cell.model}")
    seeds = ", ".join(str(seed) for seed in (cell.group.seeds or spec.seeds))
    text = f"{where} (seeds {seeds})"
    if cost is not None:
        text += (
            f": one epoch measured at {cost['epoch_s'] / 60:.1f} min on {cost['machine']} "
            f"with {cost['torch_threads']} torch thread(s) ({cost['train_items']:,} train and "
            f"{cost['validation_items']:,} validation items, `{str(cost['git_revision'])[:7]}`, 1-minute load "
            f"average {cost['load_average_1min']['start']:g} while timed)"
        )
    return text + f"; `python -m research.tables {spec.name} --only {cell.dataset}:{cell.prediction_length}`"


def render_headline(spec: TableSpec) -> str:
    r"""
    The MSE of every setting where the table's first column has a result, one column per model (published numbers
    first where `published`), the lowest measured MSE of each setting in bold; `*` marks a capped run.
    """
    columns = spec.columns()
    header = ["setting"] + (["published BALM-TSF (GPT-2)"] if spec.published else []) + columns
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for dataset, horizon in itertools.product(spec.datasets, spec.prediction_lengths):
        cells = [cell for cell in spec.cells() if (cell.dataset, cell.prediction_length) == (dataset, horizon)]
        values: dict[str, tuple[float, bool] | None] = {}
        for column in columns:
            rows = [row for cell in cells if cell.column == column and (row := cell.row()) is not None]
            capped = any(row.get("stop_reason") != "not trained" and not row.get("paper_protocol") for row in rows)
            values[column] = (statistics.fmean(row["mse"] for row in rows), capped) if rows else None
        if values[columns[0]] is None:
            continue
        best = min(value[0] for value in values.values() if value is not None)
        line = [f"{dataset} H={horizon}"]
        if spec.published:
            published = PUBLISHED_BALM_TSF.get(dataset, {}).get(horizon)
            line.append("-" if published is None else _fmt(published[0]))
        for column in columns:
            value = values[column]
            if value is None:
                line.append("not run")
                continue
            text = _fmt(value[0]) + ("*" if value[1] else "")
            line.append(f"**{text}**" if value[0] == best else text)
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines) + "\n"


def _replace_block(path: Path, name: str, kind: str, content: str) -> None:
    start = f"<!-- table:{name}:{kind}:start (generated by python -m research.tables {name} --render) -->"
    end = f"<!-- table:{name}:{kind}:end -->"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    block = f"{start}\n\n{content.strip()}\n\n{end}"
    marker = start.split(" (", 1)[0]
    if marker in text and end in text:
        before, rest = text.split(marker, 1)
        text = before + block + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text, encoding="utf-8")


def _block_content(spec: TableSpec, kind: str) -> str:
    if kind == "headline":
        return render_headline(spec)
    return render_table(spec, details=False).split("\n", 2)[2]


def stale_blocks(spec: TableSpec) -> list[str]:
    """The generated blocks (`file:kind`) whose text differs from what the results on disk give, or are missing."""
    stale = []
    for block in spec.blocks:
        path = Path(block["file"])
        text = path.read_text(encoding="utf-8") if path.is_file() else ""
        start, end = f"<!-- table:{spec.name}:{block['kind']}:start", f"<!-- table:{spec.name}:{block['kind']}:end -->"
        if start not in text or end not in text:
            stale.append(f"{block['file']}:{block['kind']}")
            continue
        current = text.split(start, 1)[1].split("\n", 1)[1].split(end, 1)[0].strip()
        if current != _block_content(spec, block["kind"]).strip():
            stale.append(f"{block['file']}:{block['kind']}")
    return stale


def write_table(spec: TableSpec) -> Path:
    """Write the table to `spec.output` and refresh its generated blocks (`spec.blocks`)."""
    path = Path(spec.output)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = render_table(spec)
    path.write_text(table, encoding="utf-8")
    for block in spec.blocks:
        _replace_block(Path(block["file"]), spec.name, block["kind"], _block_content(spec, block["kind"]))
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", help="table name in research/experiments/tables/ or a YAML path")
    parser.add_argument("--only", action="append", default=[], metavar="DATASET[:H]", help="run only these settings")
    parser.add_argument("--models", default="", help="comma-separated subset of the table's models")
    parser.add_argument("--resume", action="store_true", help="continue stopped trainings from their checkpoints")
    parser.add_argument("--work-dir", default=None, help="checkpoint folder (default: outputs/tables/<table>)")
    parser.add_argument("--rerun", action="store_true", help="run selected cells again even if they have a result")
    parser.add_argument("--estimate", action="store_true", help="time an epoch of every missing trained cell")
    parser.add_argument("--render", action="store_true", help="only rewrite the table from the results on disk")
    parser.add_argument("--list", action="store_true", help="list the cells and whether each has a result")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "research.tables", *(sys.argv[1:] if argv is None else argv)])
    try:
        spec = load_spec(args.table)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    models = [name.strip() for name in args.models.split(",") if name.strip()]
    table_models = {model for group in spec.groups for model in group.models}
    for model in models:
        if model not in table_models:
            raise SystemExit(
                f"error: --models: {model!r} is not a model of table {spec.name} ({sorted(table_models)})"
            )
    for item in args.only:
        dataset, _, horizon = item.partition(":")
        if dataset not in spec.datasets or (
            horizon and (not horizon.isdigit() or int(horizon) not in spec.prediction_lengths)
        ):
            raise SystemExit(
                f"error: --only {item!r}: the table's datasets are {spec.datasets}, its horizons "
                f"{spec.prediction_lengths}"
            )
    if args.list:
        for cell in spec.cells():
            row = cell.row()
            if cell.dataset in spec.not_run:
                state = "not run: " + spec.not_run[cell.dataset]
            elif row is None:
                state = "missing"
            else:
                differences = cell.mismatches(row)
                state = "done" + (f" (recorded with {'; '.join(differences)})" if differences else "")
            print(f"{cell.key} ({cell.column}, {cell.group.output_dir}): {state}")
        return
    if args.estimate:
        estimate_costs(spec, only=args.only, models=models, command=command)
    elif not args.render:
        run_table(
            spec,
            only=args.only,
            models=models,
            resume=args.resume,
            rerun=args.rerun,
            command=command,
            work_dir=args.work_dir,
        )
    path = write_table(spec)
    print(f"machine: {machine_kind()}; wrote {path}")


if __name__ == "__main__":
    main()
