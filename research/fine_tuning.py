"""Fine-tuning a trained model on few-shot data against the same training from scratch; writes
`research/results/fine_tuning/<dataset>_L<L>_H<H>.json` and the `README.md` next to it.

Three rows on the whole test split of the experiment's data: the checkpoint `--source` fine-tuned with the experiment
(`model.init_from`), the same experiment from scratch (same epochs, seed and data), and the checkpoint as it is
(zero-shot, scaler refitted on the new data's train rows as for the two runs). A run folder that already holds a
`final/` folder is read, not trained again, so the command can be repeated after an interruption.

Example (the committed figures):

    python -m research.fine_tuning --source outputs/etth1/final \
        --config research/experiments/finetune_etth2_512_96.yaml --runs-dir outputs/fine_tuning
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from balm_hf.artifacts import read_eval_results
from balm_hf.training import evaluate_pretrained, load_experiment_config, run_experiment
from research.benchmarking import machine_info


RESULTS_DIR = Path(__file__).parent / "results" / "fine_tuning"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="the trained folder to fine-tune (its final/)")
    parser.add_argument(
        "--config", type=Path, default=Path("research/experiments/finetune_etth2_512_96.yaml"), help="experiment YAML"
    )
    parser.add_argument("--runs-dir", type=Path, default=Path("outputs/fine_tuning"), help="folder of the two runs")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON and README go")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override for both runs"
    )
    return parser.parse_args(argv)


def _short_revision() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _test_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row of the whole test split (not the drop-last variant)."""
    whole = [row for row in rows if row["split"] == "test" and not row["drop_last"]]
    if len(whole) != 1:
        raise ValueError(f"expected one whole-test-split row, got {len(whole)}: {rows}")
    return whole[0]


def train_or_read(kind: str, args: argparse.Namespace, source: Path | None) -> dict[str, Any]:
    """Train one row (unless its run folder has a final/ folder) and return its figures."""
    folder = args.runs_dir / kind
    final = folder / "final"
    overrides = [*args.overrides, f"training.output_dir={json.dumps(str(folder))}"]
    if source is not None:
        overrides.insert(0, f"model.init_from={json.dumps(str(source))}")
    command = ["balm-tsf", "train", "--config", str(args.config)]
    command += [item for override in overrides for item in ("--set", override)]
    if not final.is_dir():
        print(f"{kind}: training into {folder}", flush=True)
        run_experiment(load_experiment_config(args.config, overrides))
    info = json.loads((final / "training_info.json").read_text(encoding="utf-8"))
    test = _test_row(read_eval_results(final / "eval_results.json"))
    history = json.loads((folder / "log_history.json").read_text(encoding="utf-8"))
    validation = [round(entry["eval_mse"], 6) for entry in history if "eval_mse" in entry]
    return {
        "row": kind,
        "command": shlex.join(command),
        "test_mse": test["mse"],
        "test_mae": test["mae"],
        "test_items": test["num_items"],
        "percent": test["percent"],
        "epochs_completed": info["epochs_completed"],
        "best_checkpoint": info["best_checkpoint"],
        "best_validation_mse": info["best_validation_mse"],
        "validation_mse_per_epoch": validation,
        "wall_time_s": round(info["wall_time_s"], 1),
        "train_samples_per_second": round(info["train_samples_per_second"], 1),
        "git_revision": info["git_revision"],
        "init_from": info.get("init_from"),
    }


def zero_shot(args: argparse.Namespace, dataset: str) -> dict[str, Any]:
    """The checkpoint as it is on the new data's whole test split (cached in the runs folder)."""
    cache = args.runs_dir / "zero_shot.json"
    if cache.is_file():
        return json.loads(cache.read_text(encoding="utf-8"))
    start = time.perf_counter()
    rows, _ = evaluate_pretrained(args.source, dataset=dataset, output_dir=args.runs_dir / "zero_shot_scratch")
    test = _test_row(rows)
    result = {
        "row": "zero_shot",
        "command": shlex.join(["balm-tsf", "evaluate", str(args.source), "--dataset", dataset]),
        "test_mse": test["mse"],
        "test_mae": test["mae"],
        "test_items": test["num_items"],
        "wall_time_s": round(time.perf_counter() - start, 1),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def render_readme(report: dict[str, Any]) -> str:
    setting = report["setting"]
    source = report["source"]
    rows = {row["row"]: row for row in report["rows"]}
    tuned, scratch, shot = rows["fine_tuned"], rows["from_scratch"], rows["zero_shot"]
    lines = [
        f"# Fine-tuning on {setting['percent']}% of {setting['dataset']} (L={setting['context_length']}, "
        f"H={setting['prediction_length']})",
        "",
        f"`{source['name']}` (trained on {source['training_data']}, its own test MSE {source['test_mse']:.4f}) "
        f"fine-tuned on {setting['percent']}% of the {setting['dataset']} train split, against the same experiment "
        f"from scratch: {setting['epochs']} epochs each (no early stopping; the checkpoint with the best validation "
        f"MSE is tested), seed {setting['seed']}, `data.scaler: {setting['scaler']}`. MSE and MAE on the standardised "
        f"scale of {setting['dataset']}'s train rows over its whole test split ({tuned['test_items']:,} items).",
        "",
        "| row | test MSE | test MAE | best validation MSE (epoch) | wall time |",
        "|---|---|---|---|---|",
    ]
    for label, row in (("fine-tuned from the checkpoint", tuned), ("from scratch", scratch)):
        best_epoch = row["validation_mse_per_epoch"].index(min(row["validation_mse_per_epoch"])) + 1
        lines.append(
            f"| {label} | {row['test_mse']:.4f} | {row['test_mae']:.4f} | {row['best_validation_mse']:.4f} "
            f"({best_epoch}) | {row['wall_time_s'] / 60:.1f} min |"
        )
    lines.append(f"| the checkpoint as it is (zero-shot) | {shot['test_mse']:.4f} | {shot['test_mae']:.4f} | - | - |")
    lines += [
        "",
        "Validation MSE per epoch (2,000 evenly spaced validation items):",
        "",
        f"- fine-tuned: {', '.join(f'{value:.4f}' for value in tuned['validation_mse_per_epoch'])}",
        f"- from scratch: {', '.join(f'{value:.4f}' for value in scratch['validation_mse_per_epoch'])}",
        "",
        "Commands (`python -m research.fine_tuning` runs all three and writes this file):",
        "",
        "```bash",
        report["command"],
        f"# {tuned['command']}",
        f"# {scratch['command']}",
        f"# {shot['command']}",
        "```",
        "",
        f"Git revision `{report['git_revision']}`; machine: {report['machine']['processor']}, "
        f"{report['machine']['cpu_count']} cores ({report['machine']['torch_threads']} torch threads), shared with "
        f"other jobs; Python {report['machine']['python']}, torch {report['machine']['torch']}. Figures: "
        f"[{setting['dataset']}_L{setting['context_length']}_H{setting['prediction_length']}.json]"
        f"({setting['dataset']}_L{setting['context_length']}_H{setting['prediction_length']}.json).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    config = load_experiment_config(args.config, args.overrides)
    tuned = train_or_read("fine_tuned", args, args.source)
    scratch = train_or_read("from_scratch", args, None)
    shot = zero_shot(args, config.data.dataset)
    source_info = json.loads((args.source / "training_info.json").read_text(encoding="utf-8"))
    source_test = _test_row(read_eval_results(args.source / "eval_results.json"))
    record = tuned["init_from"] or {}
    data = record.get("training_data") or {}
    report = {
        "command": shlex.join(["python", "-m", "research.fine_tuning", *(sys.argv[1:] if argv is None else argv)]),
        "git_revision": _short_revision(),
        "machine": machine_info(),
        "setting": {
            "dataset": config.data.dataset,
            "context_length": config.data.context_length,
            "prediction_length": config.data.prediction_length,
            "percent": config.data.percent,
            "epochs": config.training.num_train_epochs,
            "seed": config.training.seed,
            "scaler": config.data.scaler,
            "config": str(args.config),
        },
        "source": {
            "name": source_info["experiment"]["name"],
            "folder": str(args.source),
            "training_data": data.get("dataset_name"),
            "epochs_completed": source_info["epochs_completed"],
            "test_mse": source_test["mse"],
            "test_mae": source_test["mae"],
        },
        "rows": [tuned, scratch, shot],
    }
    name = f"{config.data.dataset}_L{config.data.context_length}_H{config.data.prediction_length}"
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (args.results_dir / "README.md").write_text(render_readme(report), encoding="utf-8")
    print(render_readme(report))
    return report


if __name__ == "__main__":
    main()
