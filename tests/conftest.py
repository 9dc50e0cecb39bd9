"""Shared test fixtures: paths to ../shared, tiny offline backbones and models."""

from __future__ import annotations

import os


os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoTokenizer, GPT2Config, LlamaConfig  # noqa: E402

from balm_hf import BalmTsfConfig, BalmTsfForForecasting  # noqa: E402


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("BALM_TSF_SHARED_DIR", REPO_ROOT.parent / "shared"))
DATA_DIR = SHARED_DIR / "datasets"
FIXTURES_DIR = SHARED_DIR / "fixtures"
TOKENIZER_DIR = FIXTURES_DIR / "fid_a_llm"


def tiny_llm_config(**overrides) -> GPT2Config:
    """A 2-block GPT-2 over the BERT WordPiece vocabulary of the fixture tokenizer."""
    kwargs: dict[str, Any] = dict(
        n_layer=2, n_embd=32, n_head=2, vocab_size=30522, n_positions=512, bos_token_id=None, eos_token_id=None
    )
    kwargs.update(overrides)
    return GPT2Config(**kwargs)


def tiny_llama_config(**overrides) -> LlamaConfig:
    """A 2-block Llama (rotary positions, grouped-query attention): the architecture of SmolLM2."""
    kwargs: dict[str, Any] = dict(
        num_hidden_layers=2,
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        vocab_size=30522,
        max_position_embeddings=512,
        bos_token_id=None,
        eos_token_id=None,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def tiny_config(**overrides) -> BalmTsfConfig:
    kwargs: dict[str, Any] = dict(
        context_length=64,
        prediction_length=16,
        patch_length=8,
        patch_stride=4,
        d_model=8,
        d_ff=16,
        llm_layers=2,
        llm_config=tiny_llm_config(),
    )
    kwargs.update(overrides)
    return BalmTsfConfig(**kwargs)


def tiny_model(**overrides) -> BalmTsfForForecasting:
    torch.manual_seed(0)
    model = BalmTsfForForecasting(tiny_config(**overrides))
    model.set_tokenizer(AutoTokenizer.from_pretrained(TOKENIZER_DIR))
    return model


@pytest.fixture(scope="session")
def preprocessor():
    """The fitted ETTh1 scaler of the tiny model's sizes (context 64, horizon 16)."""
    from balm_hf import load_forecasting_dataset

    return load_forecasting_dataset("ETTh1", context_length=64, prediction_length=16, data_dir=DATA_DIR).preprocessor


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture
def model() -> BalmTsfForForecasting:
    return tiny_model()
