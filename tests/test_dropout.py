"""The CPU dropout of `fast_dropout=True`: the same Bernoulli masks as PyTorch's dropout, drawn faster."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config, tiny_llama_config, tiny_model
from transformers import BertConfig, GPT2Config
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from balm_hf import BalmTsfForForecasting
from balm_hf.models.balm_tsf import modeling_balm_tsf as modeling
from balm_hf.models.balm_tsf.modeling_balm_tsf import (
    FAST_DROPOUT_ATTENTION,
    BalmTsfDropout,
    bernoulli_keep_mask,
    fast_dropout,
    sdpa_with_fast_dropout,
)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_entries_are_independent_with_keep_probability_one_minus_p(p):
    torch.manual_seed(0)
    n = 1_000_000
    keep = bernoulli_keep_mask((n,), p)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    keep_rate = 1 - p
    sigma = math.sqrt(p * (1 - p) / (n / 2))
    # Both 32-bit halves of every random word (even and odd entries) have the rate...
    for half in (keep[0::2], keep[1::2]):
        assert abs(half.float().mean().item() - keep_rate) < 5 * sigma
    # ... and neighbours (two halves of one word, or two words) are independent.
    for lag in (1, 2):
        both = (keep[:-lag] & keep[lag:]).float().mean().item()
        assert abs(both - keep_rate**2) < 5 * math.sqrt(keep_rate**2 * (1 - keep_rate**2) / n)


def test_keep_masks_follow_torch_manual_seed():
    torch.manual_seed(7)
    first, second = bernoulli_keep_mask((3, 1001), 0.3), bernoulli_keep_mask((3, 1001), 0.3)
    torch.manual_seed(7)
    assert torch.equal(bernoulli_keep_mask((3, 1001), 0.3), first)
    assert not torch.equal(first, second)
    assert bernoulli_keep_mask((0, 5), 0.3).shape == (0, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fast_dropout_zeroes_or_rescales_each_entry_and_its_gradient(dtype):
    torch.manual_seed(0)
    values = (torch.rand(64, 33) + 0.5).to(dtype).requires_grad_()
    out = fast_dropout(values, 0.25)
    assert out.dtype == dtype
    kept = out != 0
    assert 0.65 < kept.float().mean().item() < 0.85
    torch.testing.assert_close(out[kept], values[kept] / 0.75)
    out.sum().backward()
    torch.testing.assert_close(values.grad, kept.to(dtype) / 0.75)


def test_fast_dropout_is_the_identity_in_eval_and_at_rate_zero():
    values = torch.randn(8, 8)
    assert fast_dropout(values, 0.3, training=False) is values
    assert torch.equal(fast_dropout(values, 0.0), values)
    assert torch.equal(fast_dropout(values, 1.0), torch.zeros_like(values))
    module = BalmTsfDropout(0.3).eval()
    assert module(values) is values
    assert isinstance(module, torch.nn.Dropout) and module.p == 0.3


def _attention_inputs(kv_heads: int = 4):
    torch.manual_seed(0)
    query = torch.randn(3, 4, 7, 8)
    key, value = torch.randn(3, kv_heads, 7, 8), torch.randn(3, kv_heads, 7, 8)
    return query, key, value


_MASKS = {
    "none": None,
    "bool": torch.rand(3, 1, 7, 7) > 0.3,
    "float": torch.randn(3, 1, 7, 7),
}


@pytest.mark.parametrize("mask_kind", list(_MASKS))
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_attention_with_dropout_is_sdpa_with_its_probabilities_masked(monkeypatch, mask_kind, is_causal, kv_heads):
    query, key, value = _attention_inputs(kv_heads)
    mask = _MASKS[mask_kind]
    if mask is not None and mask.dtype == torch.bool:
        mask = mask | torch.eye(7, dtype=torch.bool)  # every query may attend somewhere
    if mask is not None and is_causal:
        pytest.skip("SDPA takes a mask or is_causal, not both")
    gqa = kv_heads != 4
    # Without dropout it is SDPA itself.
    plain = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, is_causal=is_causal, enable_gqa=gqa)
    same = sdpa_with_fast_dropout(query, key, value, mask, 0.0, is_causal, enable_gqa=gqa)
    assert torch.equal(same, plain)
    # With dropout: a mask that keeps everything rescales SDPA's output by 1 / (1 - p) ...
    monkeypatch.setattr(modeling, "bernoulli_keep_mask", lambda shape, p: torch.ones(shape, dtype=torch.bool))
    kept = sdpa_with_fast_dropout(query, key, value, mask, 0.2, is_causal, enable_gqa=gqa)
    torch.testing.assert_close(kept, plain / 0.8, rtol=1e-5, atol=1e-6)
    # ... and a given mask drops exactly those attention probabilities.
    drop = torch.rand(3, 4, 7, 7) > 0.2
    monkeypatch.setattr(modeling, "bernoulli_keep_mask", lambda shape, p: drop.expand(shape))
    scores = query @ (key if not gqa else key.repeat_interleave(2, dim=1)).transpose(-2, -1) / math.sqrt(8)
    if is_causal:
        scores = scores.masked_fill(~torch.ones(7, 7, dtype=torch.bool).tril(), float("-inf"))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    expected = (scores.softmax(-1) * drop / 0.8) @ (value if not gqa else value.repeat_interleave(2, dim=1))
    dropped = sdpa_with_fast_dropout(query, key, value, mask, 0.2, is_causal, enable_gqa=gqa)
    torch.testing.assert_close(dropped, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("causal", [True, False])
def test_registered_attention_is_transformers_sdpa_with_fast_dropout(monkeypatch, causal):
    query, key, value = _attention_inputs()
    module = torch.nn.Module()
    module.is_causal = causal
    plain, _ = sdpa_attention_forward(module, query, key, value, None, dropout=0.0)
    same, _ = modeling._fast_dropout_attention_forward(module, query, key, value, None, dropout=0.0)
    assert torch.equal(same, plain)
    monkeypatch.setattr(modeling, "bernoulli_keep_mask", lambda shape, p: torch.ones(shape, dtype=torch.bool))
    kept, _ = modeling._fast_dropout_attention_forward(module, query, key, value, None, dropout=0.5)
    torch.testing.assert_close(kept, plain / 0.5, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "llm_config",
    [
        GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=30522, bos_token_id=None, eos_token_id=None),
        BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64),
        tiny_llama_config(attention_dropout=0.1),
    ],
    ids=["gpt2", "bert", "llama"],
)
def test_backbone_runs_fast_dropout_everywhere_and_keeps_it_after_save_load(llm_config, tmp_path):
    model = tiny_model(llm_config=llm_config)
    llm = model.model.text_encoder.llm
    dropouts = [module for module in model.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropouts and all(type(module) is BalmTsfDropout for module in dropouts)
    assert llm.config._attn_implementation == FAST_DROPOUT_ATTENTION
    model.save_pretrained(tmp_path)
    assert FAST_DROPOUT_ATTENTION not in (tmp_path / "config.json").read_text()  # a runtime choice, not saved
    reloaded = BalmTsfForForecasting.from_pretrained(tmp_path)
    assert reloaded.model.text_encoder.llm.config._attn_implementation == FAST_DROPOUT_ATTENTION
    # Switched off: PyTorch's dropout modules and transformers' SDPA.
    plain = tiny_model(llm_config=llm_config, fast_dropout=False)
    assert not any(isinstance(module, BalmTsfDropout) for module in plain.modules())
    assert plain.model.text_encoder.llm.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("backbone", ["gpt2", "llama"])
def test_fast_dropout_changes_nothing_in_eval_and_trains_every_trainable_parameter(backbone):
    llm_config = tiny_llama_config() if backbone == "llama" else tiny_config().llm_config
    fast, plain = tiny_model(llm_config=llm_config), tiny_model(llm_config=llm_config, fast_dropout=False)
    plain.load_state_dict(fast.state_dict())
    past, future = torch.randn(4, 64, 1), torch.randn(4, 16, 1)
    fast.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(fast(past_values=past).prediction_outputs, plain(past_values=past).prediction_outputs)
    fast.train()
    torch.manual_seed(0)
    first = fast(past_values=past, future_values=future)
    first.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fast.parameters() if p.requires_grad)
    torch.manual_seed(0)
    assert torch.equal(fast(past_values=past, future_values=future).loss, first.loss)  # seeded like torch's dropout


def test_under_torch_compile_the_dropout_is_pytorchs_and_traces_without_graph_breaks():
    values = torch.randn(4, 8, 16)
    query, key, value = _attention_inputs()
    dropout = torch.compile(lambda x: fast_dropout(x, 0.1), backend="eager", fullgraph=True)
    attention = torch.compile(
        lambda q, k, v: sdpa_with_fast_dropout(q, k, v, dropout_p=0.1), backend="eager", fullgraph=True
    )
    kept = dropout(values) != 0
    assert 0.7 < kept.float().mean().item() < 1.0
    assert attention(query, key, value).shape == query.shape
