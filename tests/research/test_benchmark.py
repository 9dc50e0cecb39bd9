"""The benchmark script runs end to end on a tiny configuration (no timing assertions)."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from conftest import tiny_llama_config
from transformers import AutoModel, BertConfig, GPT2Config
from transformers.pytorch_utils import Conv1D

from balm_hf.models.balm_tsf.configuration_balm_tsf import BalmTsfConfig
from research.benchmarking import BenchmarkSetting, llm_forward_flops, projection_matmul_gflops, projection_shapes


def _load_script():
    return importlib.import_module("research.benchmark")


def test_benchmark_script_runs_end_to_end_on_a_tiny_configuration(tmp_path):
    output = tmp_path / "bench.json"
    rows = _load_script().main(
        [
            "--llm-width", "32", "--llm-layers", "2", "--d-ff", "16", "--steps", "1", "--warmup", "0",
            "--batch-size", "4", "--inference-batch-sizes", "4", "8", "--context-length", "64",
            "--prediction-length", "16", "--precisions", "fp32", "--output", str(output),
        ]
    )  # fmt: skip
    report = json.loads(output.read_text())
    assert (
        [row["setting"]["mode"] for row in report["rows"]] == ["paper", "fast"] == [r["setting"]["mode"] for r in rows]
    )
    for row in report["rows"]:
        assert row["train_samples_per_s"] > 0 and row["inference_samples_per_s_bs8"] > 0
        assert row["trainable_parameters"] < row["total_parameters"]
        assert row["peak_rss_mb_train"] > 0 and 0 < row["share_outside_llm"] <= 1
        assert row["llm_projection_matmul_gflops"] > 0
        # The training rate comes from a time difference to the no-LLM twin, which timing noise on a model this tiny
        # can make non-positive; when there is a rate, all its shares are there (the arithmetic is tested below).
        rates = {"llm_train_gflops", "llm_utilisation", "llm_utilisation_of_probe", "llm_utilisation_of_projections"}
        assert rates <= set(row) or not rates & set(row)
        for batch_size in (4, 8):  # the LLM's rate at inference against the peak, the probe and its own shapes
            achieved = row[f"llm_inference_gflops_bs{batch_size}"]
            rate = row[f"inference_samples_per_s_bs{batch_size}"]
            assert achieved == pytest.approx(row["llm_inference_gflop_per_sample"] * rate)
            precision = row["llm_precision"]
            assert precision == ("bf16" if row["llm_dtype"] == "bfloat16" else "fp32")  # fp32 runs: the LLM's dtype
            assert row[f"llm_inference_utilisation_bs{batch_size}"] == pytest.approx(
                achieved / report["matmul_peak_gflops"][precision]
            )
            probe = row[f"matmul_probe_gflops_inference_bs{batch_size}"][precision]
            assert row[f"llm_inference_utilisation_of_probe_bs{batch_size}"] == pytest.approx(achieved / probe)
            ceiling = row[f"llm_projection_matmul_gflops_inference_bs{batch_size}"]
            assert row[f"llm_inference_utilisation_of_projections_bs{batch_size}"] == pytest.approx(achieved / ceiling)
        assert row["llm_inference_gflops_bs8"] != row["llm_inference_gflops_bs4"]  # each batch size measured apart
        for phase in ("train", "inference"):  # what the machine delivered while each phase ran
            assert set(row[f"matmul_probe_gflops_{phase}"]) == {"fp32", "bf16"}
            assert min(row[f"matmul_probe_gflops_{phase}"].values()) > 0
    paper, fast = report["rows"]
    assert fast["llm_tokens_per_series"] < paper["llm_tokens_per_series"]  # rounded numbers in the prompt
    assert report["matmul_peak_gflops"]["fp32"] > 0 and report["machine"]["cpu_count"] >= 1


def test_training_utilisation_is_the_llm_time_over_the_no_llm_twin_against_each_reference():
    script = _load_script()
    peaks = {"fp32": 200.0, "bf16": 800.0}
    measured = {
        "train_step_s": 0.5,
        "llm_train_gflop_per_sample": 2.0,
        "llm_precision": "bf16",
        "matmul_probe_gflops_train": {"fp32": 150.0, "bf16": 400.0},
        "llm_projection_matmul_gflops": 320.0,
    }
    row = dict(measured)
    script.add_training_utilisation(row, outside_step_s=0.1, batch_size=16, peaks=peaks)
    assert row["share_outside_llm"] == pytest.approx(0.2)
    assert row["llm_train_gflops"] == pytest.approx(2.0 * 16 / 0.4)  # 80 GFLOP/s in the 0.4 s the LLM adds
    assert row["llm_utilisation"] == pytest.approx(80 / 800)
    assert row["llm_utilisation_of_probe"] == pytest.approx(80 / 400)
    assert row["llm_utilisation_of_projections"] == pytest.approx(80 / 320)
    noisy = dict(measured)
    script.add_training_utilisation(noisy, outside_step_s=0.6, batch_size=16, peaks=peaks)  # twin slower: no rate
    assert noisy == {**measured, "share_outside_llm": 1.0}


def test_versus_measures_a_setting_against_its_overrides_side_by_side(tmp_path):
    output = tmp_path / "versus.json"
    rows = _load_script().main(
        [
            "--llm-width", "32", "--llm-layers", "2", "--d-ff", "16", "--warmup", "0", "--rounds", "2",
            "--batch-size", "4", "--context-length", "64", "--prediction-length", "16", "--precisions", "fp32",
            "--modes", "paper", "--versus", "trim_last_block=false", "--versus", "fast_dropout=false",
            "--output", str(output),
        ]
    )  # fmt: skip
    (row,) = json.loads(output.read_text())["versus"]
    assert row["versus_overrides"] == {"trim_last_block": False, "fast_dropout": False} == rows[0]["versus_overrides"]
    assert row["b"]["setting"]["extra"] == {"trim_last_block": False, "fast_dropout": False}
    assert row["a"]["setting"]["extra"] == {}
    for side in ("a", "b"):
        assert row[side]["train_samples_per_s"] > 0 and row[side]["inference_samples_per_s_bs4"] > 0
    assert row["train_ratio"] == row["a"]["train_samples_per_s"] / row["b"]["train_samples_per_s"]


def test_llm_flops_follow_the_transformer_formula():
    config = BalmTsfConfig(llm_config={"model_type": "gpt2", "n_embd": 768, "n_head": 12}, llm_layers=6)
    tokens = 89
    dense = 2 * tokens * (4 * 768 * 768 + 2 * 768 * 3072)
    attention = 4 * tokens * tokens * 768
    assert llm_forward_flops(config, tokens) == 6 * (dense + attention)
    # Final block trimmed to 12 read-out positions: keys/values for all 89 positions, the rest for 12.
    last = 2 * 77 * 2 * 768 * 768 + 2 * 12 * (4 * 768 * 768 + 2 * 768 * 3072) + 4 * 12 * tokens * 768
    assert llm_forward_flops(config, tokens, trimmed_readout=12) == 5 * (dense + attention) + last


@pytest.mark.parametrize(
    "llm_config",
    [
        GPT2Config(n_layer=2, n_embd=48, n_head=4, vocab_size=100),
        BertConfig(num_hidden_layers=2, hidden_size=48, num_attention_heads=4, intermediate_size=80, vocab_size=100),
        tiny_llama_config(hidden_size=48, intermediate_size=80, vocab_size=100),
    ],
    ids=["gpt2", "bert", "llama"],
)
def test_llm_flops_equal_the_projections_a_forward_runs(llm_config):
    """The FLOP model against the multiply-adds of every linear layer of a real forward (plus the attention term)."""
    config = BalmTsfConfig(llm_config=llm_config, llm_layers=2, d_ff=16)
    llm = AutoModel.from_config(config.llm_config)
    counted = []

    def count(module, inputs, output):
        weight = module.weight
        fan_in, fan_out = (weight.shape[0], weight.shape[1]) if isinstance(module, Conv1D) else weight.shape[::-1]
        counted.append(2 * inputs[0].shape[:-1].numel() * fan_in * fan_out)

    for module in llm.modules():
        if isinstance(module, torch.nn.Linear | Conv1D) and module is not llm.get_input_embeddings():
            module.register_forward_hook(count)
    tokens = 7
    with torch.no_grad():
        llm(inputs_embeds=torch.randn(1, tokens, 48))
    pooler = 2 * 48 * 48 if isinstance(llm_config, BertConfig) else 0  # BERT's pooler is not part of the read-out
    attention = 2 * 2 * 2 * tokens * tokens * 48  # two layers, scores and weighted sum
    assert sum(counted) - pooler + attention == llm_forward_flops(config, tokens)


def test_benchmark_setting_rejects_unknown_modes():
    with pytest.raises(ValueError, match="mode"):
        BenchmarkSetting(mode="turbo")


def test_config_overrides_reach_the_setting_and_unknown_keys_are_refused():
    script = _load_script()
    assert script.parse_config_overrides(["trim_last_block=false", "prompt_float_decimals=1"]) == {
        "trim_last_block": False,
        "prompt_float_decimals": 1,
    }
    with pytest.raises(SystemExit, match="unknown"):
        script.parse_config_overrides(["trim_last_blocks=false"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        script.parse_config_overrides(["trim_last_block"])


@pytest.mark.parametrize(
    ("llm_config", "expected"),
    [
        (GPT2Config(n_layer=2, n_embd=32, n_head=2), [(32, 96), (32, 32), (32, 128), (128, 32)]),
        (
            BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64),
            [(32, 32), (32, 32), (32, 32), (32, 32), (32, 64), (64, 32)],
        ),
        (tiny_llama_config(), [(32, 32), (32, 16), (32, 16), (32, 32), (32, 64), (32, 64), (64, 32)]),
    ],
    ids=["gpt2", "bert", "llama"],
)
def test_projection_shapes_are_read_from_the_first_block(llm_config, expected):
    llm = AutoModel.from_config(llm_config)
    assert projection_shapes(llm) == expected
    assert projection_matmul_gflops(expected, rows=8, dtype=torch.float32, repeats=1) > 0
