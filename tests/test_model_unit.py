"""Model unit: read-out at real tokens, overflow-safe RevIN, input dtypes, clear loading errors, portable folders."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TOKENIZER_DIR, tiny_llama_config, tiny_model
from transformers import AutoTokenizer, BertConfig

from balm_hf import BalmTsfForForecasting
from balm_hf.models.balm_tsf.modeling_balm_tsf import (
    check_safetensors_file,
    check_tokenizer_fits_backbone,
    prepare_prompt_inputs,
)


LEGACY_FOLDER = Path(__file__).resolve().parent / "fixtures" / "checkpoint_v0_1_0"


def _windows(batch: int = 4, length: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    steps = torch.arange(length, dtype=torch.float32)[None, :, None]
    scales = torch.tensor([1.0, 1e-3, 250.0, 7.0])[:batch, None, None]
    return (torch.sin(steps / 5.0) * 3 + torch.randn(batch, length, 1, generator=generator)) * scales + 10


def _shortest_padded_row(model, past: torch.Tensor) -> int:
    mask = prepare_prompt_inputs(past, model.config, model.tokenizer)["prompt_attention_mask"]
    lengths = mask.sum(dim=1)
    shortest = int(lengths.argmin())
    assert lengths[shortest] < mask.shape[1], "the test needs a row that the batch pads"
    return shortest


def _forecast_in_batch_and_alone(model, past: torch.Tensor, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        batched = model(past_values=past).prediction_outputs[row]
        alone = model(past_values=past[row : row + 1]).prediction_outputs[0]
    return batched, alone


@pytest.mark.parametrize(
    "backbone",
    [
        {},
        {"llm_config": tiny_llama_config()},
        {"llm_config": BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64)},
    ],
    ids=["gpt2", "llama", "bert"],
)
@pytest.mark.parametrize("use_prefix_cache", [None, False])
def test_masked_right_padded_row_is_forecast_as_alone(backbone, use_prefix_cache):
    model = tiny_model(
        prompt_attention_mask=True, prompt_padding_side="right", use_prefix_cache=use_prefix_cache, **backbone
    ).eval()
    past = _windows()
    row = _shortest_padded_row(model, past)
    batched, alone = _forecast_in_batch_and_alone(model, past, row)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_masked_right_padding_gives_the_forecast_of_left_padding():
    past = _windows()
    right = tiny_model(prompt_attention_mask=True, prompt_padding_side="right").eval()
    left = tiny_model(prompt_attention_mask=True, prompt_padding_side="left").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            right(past_values=past).prediction_outputs, left(past_values=past).prediction_outputs, rtol=1e-5, atol=1e-5
        )


def test_masked_read_out_longer_than_the_text_is_batch_independent():
    # Horizon 64 over context 64: the read-out (17 positions) reaches past the text into the learnable prompt.
    model = tiny_model(prediction_length=64, prompt_attention_mask=True, prompt_padding_side="left").eval()
    assert model.config.prompt_length > 12
    past = _windows()
    row = _shortest_padded_row(model, past)
    batched, alone = _forecast_in_batch_and_alone(model, past, row)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding_side", [None, "right", "left"])
def test_no_llm_ablation_reads_out_real_tokens_whatever_the_padding(padding_side):
    model = tiny_model(text_branch="no_llm", prompt_padding_side=padding_side).eval()
    past = _windows()
    row = _shortest_padded_row(model, past)
    batched, alone = _forecast_in_batch_and_alone(model, past, row)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        readout = model.model(past_values=past).llm_readout
    # Distinct real tokens: the read-out spreads, so Scale-STD does not divide by sqrt(eps).
    assert bool((readout.std(dim=1) > 1e-3).all())


# -- RevIN statistics that cannot overflow ----------------------------------------------------------------------------


@pytest.mark.parametrize("with_mask", [False, True])
def test_a_1e30_magnitude_series_gets_a_finite_forecast_at_its_scale(with_mask):
    model = tiny_model().eval()
    past = _windows()
    huge = past.clone()
    huge[0] = past[0] * 1e30
    mask = None
    if with_mask:
        mask = torch.ones_like(huge)
        mask[0, 5:9] = 0
        huge[0, 5:9] = float("nan")
    with torch.no_grad():
        output = model(past_values=huge, past_observed_mask=mask)
        normal = model(past_values=past, past_observed_mask=mask)
    assert bool(torch.isfinite(output.prediction_outputs).all())
    assert bool(torch.isfinite(output.scale).all()) and float(output.scale[0].min()) > 1e29
    # The statistics of the huge series are those of the normal one, scaled.
    torch.testing.assert_close(output.loc[0] / 1e30, normal.loc[0], rtol=1e-5, atol=0)
    torch.testing.assert_close(output.scale[0] / 1e30, normal.scale[0], rtol=1e-4, atol=0)
    # The other series of the batch keep their statistics to the bit.
    for row in (1, 2, 3):
        assert torch.equal(output.loc[row], normal.loc[row]) and torch.equal(output.scale[row], normal.scale[row])


def test_revin_of_normal_series_keeps_the_plain_formulas_bits():
    from balm_hf.models.balm_tsf.modeling_balm_tsf import BalmTsfRevIN

    revin = BalmTsfRevIN(tiny_model().config)
    values = _windows().permute(0, 2, 1).reshape(4, 64, 1)
    normalized, loc, scale = revin(values)
    assert torch.equal(loc, values.mean(dim=1, keepdim=True))
    assert torch.equal(scale, torch.sqrt(values.var(dim=1, keepdim=True, unbiased=False) + 1e-5))
    assert torch.equal(normalized, (values - loc) / scale)


# -- input dtypes and empty batches -----------------------------------------------------------------------------------


@pytest.mark.parametrize("input_dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_inputs_of_any_float_dtype_are_cast_to_the_model_dtype(input_dtype):
    model = tiny_model().eval()
    past = _windows().to(input_dtype)
    with torch.no_grad():
        output = model(past_values=past, future_values=torch.zeros(4, 16, 1, dtype=input_dtype))
        reference = model(past_values=past.to(torch.float32), future_values=torch.zeros(4, 16, 1))
    assert output.prediction_outputs.dtype == torch.float32
    torch.testing.assert_close(output.prediction_outputs, reference.prediction_outputs, rtol=0, atol=0)
    torch.testing.assert_close(output.loss, reference.loss, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("model_dtype", "tolerance"), [(torch.float64, 2e-3), (torch.bfloat16, 0.25), (torch.float16, 0.05)]
)
def test_models_in_double_and_half_precision_forecast_like_float32(model_dtype, tolerance):
    reference_model = tiny_model().eval()
    model = tiny_model().eval().to(model_dtype)
    past = _windows()
    # The same prompts for both (the paper's prompt prints every bit of the statistics, which differ across dtypes).
    prompts = prepare_prompt_inputs(past, reference_model.config, reference_model.tokenizer)
    with torch.no_grad():
        reference = reference_model(past_values=past, **prompts).prediction_outputs
        output = model(past_values=past, future_values=torch.zeros(4, 16, 1), **prompts)
    assert bool(torch.isfinite(output.prediction_outputs).all()) and bool(torch.isfinite(output.loss))
    # The statistics are computed in (at least) float32, so the forecast is in the units of the input.
    relative = (output.prediction_outputs.double() - reference.double()).abs() / past.std(dim=1, keepdim=True)
    assert float(relative.max()) < tolerance


def test_half_precision_model_takes_values_beyond_the_half_range():
    model = tiny_model().eval().to(torch.float16)
    past = _windows() * 1e4  # beyond 65504, the largest float16
    with torch.no_grad():
        output = model(past_values=past)
    assert bool(torch.isfinite(output.prediction_outputs).all()) and float(output.loc.abs().max()) > 65504


def test_values_beyond_the_model_dtype_raise_a_clear_error():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="beyond the range of torch.float32"):
        model(past_values=torch.full((1, 64, 1), 1e300, dtype=torch.float64))


def test_an_empty_batch_raises_a_clear_error():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="empty batch"):
        model(past_values=torch.zeros(0, 64, 1))


# -- tokenizers that do not fit the backbone --------------------------------------------------------------------------


def _saved_folder(tmp_path, name: str = "folder"):
    model = tiny_model().eval()
    folder = tmp_path / name
    model.save_pretrained(folder)
    return model, folder


def test_a_tokenizer_of_only_its_special_tokens_is_refused_with_its_cause(tmp_path):
    _, folder = _saved_folder(tmp_path)
    (folder / "tokenizer.json").unlink()  # tokenizer_config.json alone loads as a 5-token tokenizer
    assert len(AutoTokenizer.from_pretrained(folder)) < 10
    with pytest.raises(ValueError, match=r"tokenizer \(5 tokens\) turns .* unknown token '\[UNK\]'.*incomplete"):
        BalmTsfForForecasting.from_pretrained(folder)
    model = tiny_model()
    with pytest.raises(ValueError, match="incomplete"):
        model.set_tokenizer(AutoTokenizer.from_pretrained(folder))


def test_a_tokenizer_larger_than_the_embedding_table_is_refused():
    from conftest import tiny_config, tiny_llm_config

    model = BalmTsfForForecasting(tiny_config(llm_config=tiny_llm_config(vocab_size=1000)))
    with pytest.raises(ValueError, match="30522 tokens but the backbone's embedding table has 1000 rows"):
        check_tokenizer_fits_backbone(AutoTokenizer.from_pretrained(TOKENIZER_DIR), 1000)
    with pytest.raises(ValueError):
        model.set_tokenizer(AutoTokenizer.from_pretrained(TOKENIZER_DIR))


def test_the_backbone_tokenizer_fits():
    check_tokenizer_fits_backbone(AutoTokenizer.from_pretrained(TOKENIZER_DIR), 30522)


def test_a_tokenizer_that_cannot_be_loaded_names_the_cause(tmp_path):
    _, folder = _saved_folder(tmp_path)
    (folder / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"tokenizer stored with the model \(.*tokenizer.json.*\) cannot be loaded"):
        BalmTsfForForecasting.from_pretrained(folder)


def test_a_folder_saved_without_a_tokenizer_loads_without_one(tmp_path):
    model = BalmTsfForForecasting(tiny_model().config)
    model.save_pretrained(tmp_path / "bare")
    assert BalmTsfForForecasting.from_pretrained(tmp_path / "bare").tokenizer is None


def test_validate_folder_refuses_an_incomplete_tokenizer(tmp_path):
    from balm_hf.artifacts import validate_folder

    folder = tmp_path / "trained"
    shutil.copytree(LEGACY_FOLDER, folder)
    validate_folder(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match=r"tokenizer files do not fit the backbone.*incomplete"):
        validate_folder(folder)


# -- clear loading errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["missing", "./missing/folder", "some/deep/missing/folder"])
def test_a_local_folder_that_does_not_exist_is_named(tmp_path, name):
    path = str(tmp_path / name) if name == "missing" else name
    with pytest.raises(FileNotFoundError, match=f"no local folder '{re.escape(path)}'"):
        BalmTsfForForecasting.from_pretrained(path)


def test_an_unreachable_hub_id_says_it_is_no_local_folder():
    with pytest.raises(OSError, match="'owner/absent-model': there is no local folder of that name"):
        BalmTsfForForecasting.from_pretrained("owner/absent-model")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda data: data[: len(data) // 2], "is truncated or corrupt: its tensors need"),
        (lambda data: data[:5], "is not a safetensors file: 5 bytes"),
        (lambda data: b"\xff" * 8 + data[8:], "is truncated or not a safetensors file"),
        (lambda data: data[:8] + b"x" * (len(data) - 8), "is not a safetensors file: its header is not JSON"),
    ],
    ids=["truncated", "tiny", "bad-length", "bad-header"],
)
def test_a_corrupt_safetensors_file_is_named(tmp_path, damage, match):
    _, folder = _saved_folder(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    with pytest.raises(OSError, match=f"{re.escape(str(weights))} {match}"):
        BalmTsfForForecasting.from_pretrained(folder)


def test_an_intact_safetensors_file_passes_the_check(tmp_path):
    _, folder = _saved_folder(tmp_path)
    check_safetensors_file(folder / "model.safetensors")
