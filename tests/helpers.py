"""Settings shared by the tests and benchmarks: small, deterministic, single-process CPU training runs."""

from __future__ import annotations

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
