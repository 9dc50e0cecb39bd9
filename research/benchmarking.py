"""Throughput, memory and utilisation measurements of BALM-TSF (used by `research/benchmark.py`)."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from balm_hf.models.balm_tsf.configuration_balm_tsf import FAST_MODE_SWITCHES, BalmTsfConfig
from balm_hf.models.balm_tsf.modeling_balm_tsf import BalmTsfForForecasting, prepare_prompt_inputs


MODES = ("paper", "fast")
PRECISIONS = ("fp32", "bf16")


@dataclass
class BenchmarkSetting:
    r"""
    One measured configuration.

    Args:
        backbone (`str`): `"gpt2-shape"` (random GPT-2 architecture, `llm_layers` x `llm_width`, built from a config)
            or a Hub id / local folder of a pretrained backbone.
        mode (`str`): `"paper"` (prompts built in `forward`, paper switches) or `"fast"` ([`FAST_MODE_SWITCHES`] and
            prompts prepared by the data collator outside the timed step; their cost is reported separately).
        precision (`str`): `"fp32"` or `"bf16"` (autocast).
    """

    backbone: str = "gpt2-shape"
    mode: str = "paper"
    precision: str = "fp32"
    llm_layers: int = 6
    llm_width: int = 768
    batch_size: int = 24
    inference_batch_sizes: tuple[int, ...] = (24, 256)
    context_length: int = 512
    prediction_length: int = 96
    d_model: int = 32
    d_ff: int = 128
    steps: int = 10
    warmup: int = 2
    compile: bool = False
    tokenizer: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.steps < 1 or self.warmup < 0:
            raise ValueError(f"steps must be >= 1 and warmup >= 0, got {self.steps} and {self.warmup}")


def _default_tokenizer_dir() -> str:
    """A BERT WordPiece tokenizer that ships offline (the fixture one, else the MiniLM package's)."""
    from balm_hf.models.balm_tsf.backbones import resolve_backbone

    return resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")


def build_model(setting: BenchmarkSetting, **overrides: Any) -> BalmTsfForForecasting:
    """Build the model of a setting (random GPT-2-shaped backbones are built from a config, offline)."""
    from transformers import AutoTokenizer, GPT2Config

    switches = dict(FAST_MODE_SWITCHES) if setting.mode == "fast" else {}
    switches.update(setting.extra)
    switches.update(overrides)
    common = dict(
        context_length=setting.context_length,
        prediction_length=setting.prediction_length,
        d_model=setting.d_model,
        d_ff=setting.d_ff,
        llm_layers=setting.llm_layers,
        **switches,
    )
    if setting.backbone == "gpt2-shape":
        tokenizer = AutoTokenizer.from_pretrained(setting.tokenizer or _default_tokenizer_dir())
        llm_config = GPT2Config(
            n_layer=setting.llm_layers,
            n_embd=setting.llm_width,
            n_head=max(1, setting.llm_width // 64),
            vocab_size=len(tokenizer),
            bos_token_id=None,
            eos_token_id=None,
        )
        model = BalmTsfForForecasting(BalmTsfConfig(llm_config=llm_config, **common))
        model.set_tokenizer(tokenizer)
        return model
    return BalmTsfForForecasting.from_backbone_pretrained(setting.backbone, **common)


def _synthetic_batch(setting: BenchmarkSetting, batch_size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    steps = torch.arange(setting.context_length + setting.prediction_length, dtype=torch.float32)
    phase = torch.rand(batch_size, 1, generator=generator) * 6.28
    series = torch.sin(steps[None] / 24 * 6.28 + phase) + 0.3 * torch.randn(
        batch_size, steps.numel(), generator=generator
    )
    series = series + torch.linspace(0, 1, steps.numel())[None] * torch.randn(batch_size, 1, generator=generator)
    return {
        "past_values": series[:, : setting.context_length, None].contiguous(),
        "future_values": series[:, setting.context_length :, None].contiguous(),
    }


def _median_seconds(
    function: Callable[[], object], steps: int, warmup: int, before_each: Callable[[], object] | None = None
) -> float:
    """Median wall time of `steps` calls after `warmup` untimed ones; `before_each` runs untimed before every call."""
    for _ in range(warmup):
        function()
    timings = []
    for _ in range(steps):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        function()
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


# Backbones whose MLP is gated (gate, up and down projections: three matrices instead of two).
GATED_MLP_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3", "olmo", "granite"})


def llm_forward_flops(config: BalmTsfConfig, tokens: float, trimmed_readout: int | None = None) -> float:
    r"""
    Multiply-add FLOPs (x2) of one forward of the frozen LLM over `tokens` positions, per series.

    Counts every projection (grouped-query key/value heads and gated MLPs included) and the two attention products.
    With `trimmed_readout`, the final block computes keys and values for every position but everything else for
    that many read-out positions only (`BalmTsfConfig.trim_last_block`).
    """
    llm = config.llm_config
    width = llm.hidden_size
    heads = llm.num_attention_heads
    head_dim = getattr(llm, "head_dim", None) or width // heads
    key_value_heads = getattr(llm, "num_key_value_heads", None) or heads
    inner = getattr(llm, "intermediate_size", None) or getattr(llm, "n_inner", None) or 4 * width
    mlp_matrices = 3 if llm.model_type in GATED_MLP_MODEL_TYPES else 2
    key_value = 2 * 2 * width * key_value_heads * head_dim  # per position
    rest = 2 * (2 * width * heads * head_dim + mlp_matrices * width * inner)  # query, output projection, MLP
    attention_width = heads * head_dim

    def block(queries: float) -> float:  # every key/value position, `queries` query positions
        return tokens * key_value + queries * rest + 2 * 2 * queries * tokens * attention_width

    if trimmed_readout is None or trimmed_readout >= tokens:
        return float(config.llm_layers * block(tokens))
    return float((config.llm_layers - 1) * block(tokens) + block(trimmed_readout))


def matmul_peak_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Achieved GFLOP/s of a square matrix multiply on this machine (the utilisation reference)."""
    a = torch.randn(size, size).to(dtype)
    b = torch.randn(size, size).to(dtype)
    seconds = _median_seconds(lambda: torch.mm(a, b), repeats, 1)
    return 2 * size**3 / seconds / 1e9


def projection_shapes(llm: torch.nn.Module) -> list[tuple[int, int]]:
    """`(in, out)` of every projection (linear layer) of the backbone's first block, in the block's order."""
    from transformers.pytorch_utils import Conv1D

    blocks = next(
        (child for child in llm.modules() if isinstance(child, torch.nn.ModuleList) and len(child) > 0), None
    )
    if blocks is None:
        raise ValueError(f"{type(llm).__name__} has no list of blocks")
    shapes = []
    for module in blocks[0].modules():
        if isinstance(module, torch.nn.Linear):
            shapes.append((module.in_features, module.out_features))
        elif isinstance(module, Conv1D):  # GPT-2's transposed linear: weight [in, out]
            shapes.append((int(module.weight.shape[0]), int(module.weight.shape[1])))
    return shapes


def projection_matmul_gflops(shapes: list[tuple[int, int]], rows: int, dtype: torch.dtype, repeats: int = 5) -> float:
    r"""
    Achieved GFLOP/s of the backbone's projection matrix products alone, `[rows x in] @ [in x out]` for every shape,
    with `rows` = series x executed tokens of the setting: the arithmetic rate that this setting's matrix shapes
    allow on this machine, against which the backbone's achieved rate shows the time lost outside matrix products.
    """
    operands = [(torch.randn(rows, i).to(dtype), torch.randn(i, o).to(dtype)) for i, o in shapes]

    def run() -> None:
        for a, b in operands:
            torch.mm(a, b)

    seconds = _median_seconds(run, repeats, 1)
    return sum(2 * rows * i * o for i, o in shapes) / seconds / 1e9


class MatmulProbe:
    r"""
    A short square matrix multiply per precision, run before every timed step: what the machine delivered while the
    step ran. Shared or virtual CPUs change speed from minute to minute (on this project's machines the float32
    matmul rate moved between about 150 and 240 GFLOP/s), so a peak measured once at the start is not enough to
    judge one setting's figures.
    """

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.operands = {
            name: (torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype))
            for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
        }
        self.rates: dict[str, list[float]] = {name: [] for name in self.operands}

    def __call__(self) -> None:
        for name, (a, b) in self.operands.items():
            torch.mm(a, b)  # warm the cache and the thread pool
            start = time.perf_counter()
            torch.mm(a, b)
            self.rates[name].append(2 * self.size**3 / (time.perf_counter() - start) / 1e9)

    def medians(self) -> dict[str, float]:
        """Median GFLOP/s per precision over the probes so far."""
        return {name: statistics.median(rates) for name, rates in self.rates.items() if rates}


def _autocast(setting: BenchmarkSetting) -> contextlib.AbstractContextManager:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.autocast(device, dtype=torch.bfloat16, enabled=setting.precision == "bf16")


def _peak_memory_mb() -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        peak["peak_gpu_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def measure(setting: BenchmarkSetting, phase: str = "all") -> dict[str, Any]:
    r"""
    Measure one setting in this process.

    `phase="train"` measures training (forward + loss + backward + Adam step), `"inference"` eval forwards,
    `"all"` both. Peak memory is the process peak, so run one phase per process for a clean figure (what
    [`run_isolated`] does).
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model(setting)
    model.to(device)  # type: ignore[arg-type]  # transformers' decorated `to` is typed for models only
    if setting.compile:
        model.model.text_encoder.llm = torch.compile(model.model.text_encoder.llm, dynamic=True)
    config = model.config
    # The backbone runs in bf16 under bf16 autocast or with `llm_dtype="bfloat16"` (fast mode).
    llm_precision = "bf16" if setting.precision == "bf16" or config.llm_dtype == "bfloat16" else "fp32"
    llm_matmul_dtype = torch.bfloat16 if llm_precision == "bf16" else torch.float32
    result: dict[str, Any] = {
        "setting": asdict(setting),
        "phase": phase,
        "llm_dtype": config.llm_dtype,
        "llm_precision": llm_precision,
        "text_branch": config.text_branch,
        "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_parameters": sum(p.numel() for p in model.parameters()),
    }

    tokenizer = model.tokenizer
    if tokenizer is None:
        raise ValueError("the benchmarked model has no tokenizer")

    def prompt_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return prepare_prompt_inputs(batch["past_values"], config, tokenizer)

    def to_device(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value.to(device) for key, value in batch.items()}

    batch = _synthetic_batch(setting, setting.batch_size)
    prompts = prompt_inputs(batch)
    text_tokens = prompts["prompt_input_ids"].shape[1]
    tokens = text_tokens + config.prompt_length
    encoder = model.model.text_encoder
    prefix_cache = {  # None: at inference only
        "train": config.use_prefix_cache is True,
        "inference": config.use_prefix_cache is not False,
    }
    executed = {
        # With the prefix cache, the learnable prompt runs once per batch, not once per series.
        phase_name: text_tokens + config.prompt_length / setting.batch_size if cached and encoder.is_causal else tokens
        for phase_name, cached in prefix_cache.items()
    }
    trimmed = config.prompt_length if config.trim_last_block and encoder.can_trim_last_block else None
    if setting.compile:
        trimmed = None  # the compiled backbone runs in full
    result["llm_tokens_per_series"] = int(tokens)
    result["llm_executed_tokens_per_series"] = float(executed["train"])
    result["llm_executed_tokens_per_series_inference"] = float(executed["inference"])
    result["llm_last_block_trimmed_to"] = trimmed
    result["prompt_build_ms_per_batch"] = 1000 * _median_seconds(lambda: prompt_inputs(batch), 5, 1)

    step_batch = to_device({**batch, **prompts} if setting.mode == "fast" else batch)
    if phase in ("train", "all"):
        model.train()
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def train_step() -> None:
            with _autocast(setting):
                loss = model(**step_batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.synchronize()

        probe = MatmulProbe()
        seconds = _median_seconds(train_step, setting.steps, setting.warmup, before_each=probe)
        result["matmul_probe_gflops_train"] = probe.medians()
        result["train_step_s"] = seconds
        result["train_samples_per_s"] = setting.batch_size / seconds
        # Training runs the LLM forward and its input-gradient backward: about twice the forward FLOPs.
        result["llm_train_gflop_per_sample"] = 2 * llm_forward_flops(config, executed["train"], trimmed) / 1e9
        if config.text_branch == "llm":
            result["llm_projection_matmul_gflops"] = projection_matmul_gflops(
                projection_shapes(encoder.llm), max(1, round(setting.batch_size * executed["train"])), llm_matmul_dtype
            )
    if phase in ("inference", "all"):
        model.eval()
        probe_rates: dict[str, list[float]] = {}  # all inference batch sizes together
        for batch_size in setting.inference_batch_sizes:
            inference_batch = _synthetic_batch(setting, batch_size, seed=1)
            if setting.mode == "fast":
                inference_batch.update(prompt_inputs(inference_batch))
            inference_batch = to_device({k: v for k, v in inference_batch.items() if k != "future_values"})

            def infer(inputs: dict[str, torch.Tensor] = inference_batch) -> None:
                with torch.no_grad(), _autocast(setting):
                    model(**inputs)
                if device.type == "cuda":
                    torch.cuda.synchronize()

            batch_probe = MatmulProbe()
            repeats, warmup = max(3, setting.steps // 2), max(1, setting.warmup)
            seconds = _median_seconds(infer, repeats, warmup, before_each=batch_probe)
            result[f"inference_samples_per_s_bs{batch_size}"] = batch_size / seconds
            result[f"matmul_probe_gflops_inference_bs{batch_size}"] = batch_probe.medians()
            for name, rates in batch_probe.rates.items():
                probe_rates.setdefault(name, []).extend(rates)
            del batch_probe  # its operands must not add to the next batch size's peak memory
        result["matmul_probe_gflops_inference"] = {name: statistics.median(r) for name, r in probe_rates.items() if r}
        result["llm_inference_gflop_per_sample"] = llm_forward_flops(config, executed["inference"], trimmed) / 1e9
    result.update(_peak_memory_mb())
    if phase in ("inference", "all") and config.text_branch == "llm":
        # The arithmetic ceiling of each inference batch's projection shapes, after the peak memory was read (the
        # operands at batch 256 are a few hundred MB).
        for batch_size in setting.inference_batch_sizes:
            result[f"llm_projection_matmul_gflops_inference_bs{batch_size}"] = projection_matmul_gflops(
                projection_shapes(encoder.llm), max(1, round(batch_size * executed["inference"])), llm_matmul_dtype
            )
    return result


def measure_interleaved(settings: list[BenchmarkSetting], rounds: int = 10, warmup: int = 2) -> list[dict[str, Any]]:
    r"""
    Training and inference throughput (batch `batch_size`) of several settings measured side by side in one process:
    each round runs one training step of every setting in turn, then one inference batch of every setting, so that
    all of them see the same state of the machine. Medians over `rounds` rounds after `warmup` untimed ones. Use it for
    A/B ratios on machines whose speed drifts; the models share the process, so peak memory is not measured.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    runs: list[tuple[BenchmarkSetting, Any, dict[str, torch.Tensor], Any, dict[str, list[float]]]] = []
    for setting in settings:
        torch.manual_seed(0)
        model = build_model(setting)
        model.to(device)  # type: ignore[arg-type]
        batch = _synthetic_batch(setting, setting.batch_size)
        if setting.mode == "fast":
            tokenizer = model.tokenizer
            if tokenizer is None:
                raise ValueError("the benchmarked model has no tokenizer")
            batch.update(prepare_prompt_inputs(batch["past_values"], model.config, tokenizer))
        batch = {key: value.to(device) for key, value in batch.items()}
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        runs.append((setting, model, batch, optimizer, {"train": [], "inference": []}))

    def train_step(setting: BenchmarkSetting, model: Any, batch: dict[str, torch.Tensor], optimizer: Any) -> None:
        model.train()
        with _autocast(setting):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer(setting: BenchmarkSetting, model: Any, batch: dict[str, torch.Tensor]) -> None:
        model.eval()
        with torch.no_grad(), _autocast(setting):
            model(**{key: value for key, value in batch.items() if key != "future_values"})

    for round_index in range(warmup + rounds):
        for phase in ("train", "inference"):
            for setting, model, batch, optimizer, timings in runs:
                start = time.perf_counter()
                if phase == "train":
                    train_step(setting, model, batch, optimizer)
                else:
                    infer(setting, model, batch)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if round_index >= warmup:
                    timings[phase].append(time.perf_counter() - start)
    results = []
    for setting, _, _, _, timings in runs:
        size = setting.batch_size
        results.append(
            {
                "setting": asdict(setting),
                "train_samples_per_s": size / statistics.median(timings["train"]),
                f"inference_samples_per_s_bs{size}": size / statistics.median(timings["inference"]),
                "rounds": rounds,
            }
        )
    return results


def run_isolated(setting: BenchmarkSetting, phase: str) -> dict[str, Any]:
    """Run [`measure`] in a fresh Python process so that its peak memory is its own."""
    code = (
        "import json, sys; from research.benchmarking import BenchmarkSetting, measure; "
        "s = BenchmarkSetting(**json.loads(sys.argv[1])); "
        "print('@@RESULT@@' + json.dumps(measure(s, sys.argv[2])))"
    )
    payload = asdict(setting)
    payload["inference_batch_sizes"] = list(setting.inference_batch_sizes)
    completed = subprocess.run(
        [sys.executable, "-c", code, json.dumps(payload), phase], capture_output=True, text=True, check=False
    )
    for line in completed.stdout.splitlines():
        if line.startswith("@@RESULT@@"):
            return json.loads(line[len("@@RESULT@@") :])
    raise RuntimeError(f"benchmark subprocess failed for {setting} ({phase}):\n{completed.stderr[-4000:]}")


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["git_revision"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_revision"] = None
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def iter_settings(
    backbones: list[str], modes: list[str], precisions: list[str], **kwargs: Any
) -> Iterator[BenchmarkSetting]:
    for backbone in backbones:
        for mode in modes:
            for precision in precisions:
                yield BenchmarkSetting(backbone=backbone, mode=mode, precision=precision, **kwargs)


__all__ = [
    "GATED_MLP_MODEL_TYPES",
    "BenchmarkSetting",
    "MatmulProbe",
    "projection_matmul_gflops",
    "projection_shapes",
    "build_model",
    "llm_forward_flops",
    "machine_info",
    "matmul_peak_gflops",
    "measure",
    "measure_interleaved",
    "run_isolated",
]
