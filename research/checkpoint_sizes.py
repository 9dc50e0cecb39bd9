#!/usr/bin/env python
"""
Bytes of a full checkpoint (the frozen backbone's weights included) and of a lean one (`save_backbone=False`: the
trained weights and a verified reference to the backbone) for two models, and the time to load each kind back:

- the default experiment's model (`balm_hf/resources/experiments/default.yaml`: the offline MiniLM backbone cut to 2
  blocks, lookback 96, horizon 96, its model settings), built as `balm-tsf train` builds it
- the paper's shape: a GPT-2 of `openai-community/gpt2`'s published sizes (vocabulary 50257, 1024 positions, width 768,
  12 heads) cut to 6 blocks, lookback 512, horizon 96, the paper's BALM-TSF settings. The real GPT-2 is not available
  offline, so its weights are random (the sizes do not depend on the values) and no tokenizer is saved; its lean
  folder is loaded back with `backbone_path=` a saved copy of that random backbone, which exercises the same
  rebuild and hash check as the Hub backbone would.

Neither model is trained: a checkpoint's size does not depend on its weights' values. A folder's bytes are the sum
of its files (`config.json`, weights, tokenizer, modeling code).

    python research/checkpoint_sizes.py          # writes research/results/checkpoint_sizes.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers import GPT2Config, set_seed  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from balm_hf import BalmTsfConfig, BalmTsfForForecasting, training  # noqa: E402
from balm_hf.cli import packaged_experiment_path  # noqa: E402
from balm_hf.models.balm_tsf.backbones import PAPER_BACKBONE  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO_ROOT / "research" / "results" / "checkpoint_sizes.json"
# `openai-community/gpt2`'s published configuration.
GPT2_SIZES = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_head=12)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="results JSON to write")
    return parser.parse_args(argv)


def versions() -> dict[str, str]:
    names = ["balm-tsf", "torch", "transformers", "safetensors", "huggingface_hub"]
    found = {name.replace("-", "_"): metadata.version(name) for name in names}
    found["python"] = platform.python_version()
    return found


def git_revision() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO_ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def folder_bytes(folder: Path) -> dict[str, int]:
    files = {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file()}
    return {"total": sum(files.values()), **files}


def timed(load: Callable[[], BalmTsfForForecasting]) -> tuple[BalmTsfForForecasting, float]:
    start = time.perf_counter()
    model = load()
    return model, time.perf_counter() - start


def measure(name: str, model: BalmTsfForForecasting, root: Path, **lean_kwargs: Any) -> dict[str, Any]:
    """Save `model` full and lean under `root`, load both back, and check that they forecast the same."""
    full, lean = root / f"{name}-full", root / f"{name}-lean"
    model.save_pretrained(full)
    model.save_pretrained(lean, save_backbone=False)
    full_model, full_seconds = timed(lambda: BalmTsfForForecasting.from_pretrained(full))
    lean_model, lean_seconds = timed(lambda: BalmTsfForForecasting.from_pretrained(lean, **lean_kwargs))
    config = model.config
    steps = torch.arange(config.context_length, dtype=torch.float32)
    window = (torch.sin(steps / 7.0) + steps / 100.0)[None, :, None]
    inputs: dict[str, torch.Tensor] = {"past_values": window}
    if model.tokenizer is None:  # no tokenizer saved: fixed token ids stand in for the statistics prompt
        generator = torch.Generator().manual_seed(0)
        inputs["prompt_input_ids"] = torch.randint(0, config.llm_config.vocab_size, (1, 40), generator=generator)
    with torch.no_grad():
        full_forecast = full_model.eval()(**inputs).prediction_outputs
        lean_forecast = lean_model.eval()(**inputs).prediction_outputs
    difference = (full_forecast - lean_forecast).abs().max()
    frozen = sum(parameter.numel() for parameter in model.get_text_encoder().llm.parameters())
    total = sum(parameter.numel() for parameter in model.parameters())
    sizes = {"full": folder_bytes(full), "lean": folder_bytes(lean)}
    return {
        "backbone": config.llm_name_or_path,
        "llm_layers": config.llm_layers,
        "d_llm": config.d_llm,
        "context_length": config.context_length,
        "prediction_length": config.prediction_length,
        "parameters": {"total": total, "frozen_backbone": frozen, "trained": total - frozen},
        "bytes": sizes,
        "lean_share_of_full": round(sizes["lean"]["total"] / sizes["full"]["total"], 4),
        "load_seconds": {"full": round(full_seconds, 2), "lean_with_hash_check": round(lean_seconds, 2)},
        "max_abs_forecast_difference_lean_vs_full": float(difference),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()
    results: dict[str, Any] = {
        "command": shlex.join(
            ["python", "research/checkpoint_sizes.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "git_revision": git_revision(),
        "machine": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "note": "load times are single runs on cores that other jobs were using; the sizes do not vary",
        },
        "versions": versions(),
        "models": {},
    }
    with tempfile.TemporaryDirectory(prefix="balm-tsf-sizes-") as scratch:
        root = Path(scratch)

        experiment = training.load_experiment_config(packaged_experiment_path("default"))
        set_seed(experiment.training.seed)
        default = training.build_model(experiment)
        results["models"]["default_experiment_minilm_2_blocks"] = {
            "experiment": "balm_hf/resources/experiments/default.yaml",
            **measure("default", default, root),
        }
        del default

        set_seed(0)
        paper_config = BalmTsfConfig(
            llm_config=GPT2Config(n_layer=6, **GPT2_SIZES), llm_layers=6, llm_name_or_path=PAPER_BACKBONE
        )
        paper = BalmTsfForForecasting(paper_config)
        backbone = root / "gpt2-shape-backbone"
        paper.get_text_encoder().llm.save_pretrained(backbone)
        results["models"]["paper_gpt2_shape_6_blocks"] = {
            "llm_config": {"model_type": "gpt2", "n_layer": 6, **GPT2_SIZES},
            "note": "random weights of GPT-2's shape (the real GPT-2 is not available offline); no tokenizer saved",
            **measure("gpt2", paper, root, backbone_path=backbone),
        }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    for name, entry in results["models"].items():
        full, lean = entry["bytes"]["full"]["total"], entry["bytes"]["lean"]["total"]
        print(
            f"{name}: full {full / 1e6:.1f} MB, lean {lean / 1e6:.2f} MB ({100 * entry['lean_share_of_full']:.1f}%); "
            f"load full {entry['load_seconds']['full']} s, lean {entry['load_seconds']['lean_with_hash_check']} s; "
            f"forecast difference {entry['max_abs_forecast_difference_lean_vs_full']}"
        )
    print(f"wrote {output}")
    return results


if __name__ == "__main__":
    main()
