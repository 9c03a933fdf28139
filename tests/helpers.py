"""Helpers shared by the test modules: paths, settings of tiny CPU runs, a free port, a reward with spread.

Imported as `from helpers import ...` (pytest puts tests/ on sys.path); fixtures live in conftest.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
GSM8K_DIR = REPO_ROOT.parent / "shared" / "data" / "gsm8k"

CPU_TRAINING_KWARGS = {
    "use_cpu": True,
    "bf16": False,
    "per_device_train_batch_size": 4,
    "num_generations": 4,
    "report_to": "none",
    "save_strategy": "no",
    "logging_steps": 1,
    "seed": 0,
}
"""`SAPOConfig`/`GRPOConfig` keyword arguments of a tiny CPU run (add `output_dir`, lengths, steps)."""


def as_cli_flags(kwargs: dict) -> dict[str, str]:
    """Config keyword arguments as command-line option values (`True` -> "true")."""
    return {key: str(value).lower() if isinstance(value, bool) else str(value) for key, value in kwargs.items()}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for accelerate's --main_process_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def length_reward(completions, **kwargs) -> list[float]:
    """Deterministic reward with spread inside each group: the completion's character count / 10 (plain text or
    the last message of a conversation; TRL reward signature)."""
    return [len(c[-1]["content"] if isinstance(c, list) else c) / 10.0 for c in completions]
