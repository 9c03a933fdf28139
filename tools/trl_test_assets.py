"""Offline stand-ins for the Hub assets of TRL's own CLI tests (tests/test_cli.py, tests/distributed/): the tiny
Qwen2 policy (`trl-internal-testing/tiny-Qwen2ForCausalLM-2.5`), the tiny Qwen2 reward model
(`trl-internal-testing/tiny-Qwen2ForSequenceClassification-2.5`) and the `trl-internal-testing/zen` dataset with its
`standard_prompt_only` and `conversational_prompt_only` configurations.

Same architectures and dataset layout (a folder whose README declares the configurations, loaded with
`load_dataset(folder, name=...)` like the Hub copy); the weights are random and the tokenizer is SmolLM2's (the Qwen2.5
tokenizer is not available offline), which is what TRL's tests need: a model that generates and a reward model that
scores. `python -m tools.trl_test_assets OUT_DIR` writes `OUT_DIR/{tiny-Qwen2ForCausalLM,
tiny-Qwen2ForSequenceClassification,zen}`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# The Zen of Python (`import this`): the text of TRL's `zen` test dataset.
ZEN = [
    "Beautiful is better than ugly.",
    "Explicit is better than implicit.",
    "Simple is better than complex.",
    "Complex is better than complicated.",
    "Flat is better than nested.",
    "Sparse is better than dense.",
    "Readability counts.",
    "Special cases aren't special enough to break the rules.",
    "Although practicality beats purity.",
    "Errors should never pass silently.",
    "Unless explicitly silenced.",
    "In the face of ambiguity, refuse the temptation to guess.",
    "There should be one-- and preferably only one --obvious way to do it.",
    "Although that way may not be obvious at first unless you're Dutch.",
    "Now is better than never.",
    "Although never is often better than *right* now.",
    "If the implementation is hard to explain, it's a bad idea.",
    "If the implementation is easy to explain, it may be a good idea.",
    "Namespaces are one honking great idea -- let's do more of those!",
]
TRAIN_ROWS = 17  # the rest is the test split, as in the Hub dataset (17 / 2)
ZEN_README = """---
configs:
- config_name: standard_prompt_only
  data_files:
  - {split: train, path: standard_prompt_only/train.jsonl}
  - {split: test, path: standard_prompt_only/test.jsonl}
- config_name: conversational_prompt_only
  data_files:
  - {split: train, path: conversational_prompt_only/train.jsonl}
  - {split: test, path: conversational_prompt_only/test.jsonl}
---
The Zen of Python as prompt-only rows (offline copy of trl-internal-testing/zen's prompt-only configurations).
"""
TINY_QWEN2 = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 32768,  # as Qwen2.5
    "tie_word_embeddings": True,
}


def build_zen(output_dir: str | os.PathLike) -> Path:
    """The `zen` dataset folder: each aphorism's first half as the prompt (plain text or one user message)."""
    output_dir = Path(output_dir)
    prompts = [" ".join(line.split()[: max(1, len(line.split()) // 2)]) for line in ZEN]
    for config, row in (
        ("standard_prompt_only", lambda p: {"prompt": p}),
        ("conversational_prompt_only", lambda p: {"prompt": [{"role": "user", "content": p}]}),
    ):
        (output_dir / config).mkdir(parents=True, exist_ok=True)
        for split, rows in (("train", prompts[:TRAIN_ROWS]), ("test", prompts[TRAIN_ROWS:])):
            lines = "".join(json.dumps(row(p)) + "\n" for p in rows)
            (output_dir / config / f"{split}.jsonl").write_text(lines)
    (output_dir / "README.md").write_text(ZEN_README)
    return output_dir


def build_tiny_qwen2(
    output_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, seed: int = 0
) -> dict[str, Path]:
    """Random tiny Qwen2ForCausalLM and Qwen2ForSequenceClassification (1 label) with the tokenizer of
    `tokenizer_dir`; returns `{"policy": path, "reward_model": path}`."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM, Qwen2ForSequenceClassification

    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    paths = {}
    for kind, model_class, extra in (
        ("policy", Qwen2ForCausalLM, {}),
        ("reward_model", Qwen2ForSequenceClassification, {"num_labels": 1}),
    ):
        torch.manual_seed(seed)
        model = model_class(Qwen2Config(**TINY_QWEN2, vocab_size=len(tokenizer), **special, **extra))
        path = output_dir / f"tiny-{model_class.__name__}"
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        paths[kind] = path
    return paths


def build_all(output_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """`{"policy", "reward_model", "zen"}` under `output_dir` (SmolLM2's tokenizer by default)."""
    from tools.models import prepare_smollm2

    paths = build_tiny_qwen2(output_dir, tokenizer_dir or prepare_smollm2())
    return {**paths, "zen": build_zen(Path(output_dir) / "zen")}


if __name__ == "__main__":
    import sys

    for name, path in build_all(sys.argv[1] if len(sys.argv) > 1 else "outputs/trl_test_assets").items():
        print(f"{name}: {path}")
