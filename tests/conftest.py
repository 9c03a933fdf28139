"""Shared fixtures: the offline SmolLM2 folder, a tiny random Llama with SmolLM2's tokenizer, CPU-only settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import GSM8K_DIR

from trl_sapo.tools.offline import use_offline_mode

use_offline_mode()  # before any test module imports transformers/datasets


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Converted SmolLM2-135M-Instruct folder (converted on first use, then reused)."""
    from tools.models import prepare_smollm2

    return prepare_smollm2()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, smollm2_path) -> Path:
    """A tiny random Llama (2 layers, hidden 32) saved with SmolLM2's real tokenizer and chat template."""
    from tools.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer_dir=smollm2_path)


@pytest.fixture(scope="session")
def gsm8k_dir() -> Path:
    """The shared GSM8K copy beside the checkout; tests that need it skip with a message when it is absent."""
    if not (GSM8K_DIR / "train.jsonl").exists():
        pytest.skip(f"GSM8K not found at {GSM8K_DIR} (expected ../shared/data/gsm8k beside the checkout)")
    return GSM8K_DIR
