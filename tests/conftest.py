"""Shared fixtures: the real SmolLM2 tokenizer and a tiny random Llama, each built once."""

from __future__ import annotations

import os
from typing import Any

import pytest

# Nothing may be fetched from a model hub; set before transformers / huggingface_hub are imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def default_tokenizer() -> Any:
    """The SmolLM2 tokenizer (from the model cache if present, else read from the GGUF file)."""
    from fingerprint.models import load_default_tokenizer

    return load_default_tokenizer()


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    """``tiny_llama(seed=0)``: random 2-layer Llama over the SmolLM2 vocabulary, eval mode.

    Shared by the whole session: tests must not modify its weights.
    """
    from fingerprint.models import tiny_llama

    return tiny_llama(seed=0)


DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.fixture(scope="session")
def vllm_vectors() -> dict:
    """Compatibility vectors computed with vLLM 0.33's own code (Philox PRF, Gumbel detector)."""
    import json

    with open(os.path.join(DATA, "vllm_0.33_philox_gumbel.json")) as f:
        return json.load(f)


def has_cuda() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return torch.cuda.is_available()
