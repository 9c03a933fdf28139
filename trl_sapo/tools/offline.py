"""One place for the environment of offline runs (no Hub, no W&B): demos, benchmarks, tests."""

from __future__ import annotations

import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_DISABLED": "true",
}


def use_offline_mode() -> None:
    """Set OFFLINE_ENV in this process (and its children) where the user has not set the variable. Call it before
    importing transformers/datasets/huggingface_hub, which read some of these at import time."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
