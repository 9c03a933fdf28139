"""Evaluate a model (base, full checkpoint, or base + LoRA adapter) on GSM8K-style problems.

    python scripts/gsm8k_eval.py --model_name_or_path models/SmolLM2-135M-Instruct \
        --dataset ../shared/data/gsm8k --split test --limit 50 --output_dir outputs/eval-smollm2

    python scripts/gsm8k_eval.py --config recipes/eval.yaml      # TRL-style YAML config; CLI flags override it

Writes ``eval_summary.json`` (metrics + arguments) and ``eval_predictions.jsonl`` (one problem per line) to
``--output_dir`` and prints the accuracy. Importable: ``main(["--model_name_or_path", ...])`` returns the summary.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from trl_sapo.cli.training import exit_on_user_error, user_errors
from trl_sapo.gsm8k.data import SYSTEM_PROMPT, load_gsm8k
from trl_sapo.gsm8k.evaluation import (
    adapter_base_model,
    check_base_revision,
    evaluate,
    load_model_for_eval,
    merged_model_dir,
    prepare_tokenizer,
    require_vllm,
    resolve_dtype,
)

logger = logging.getLogger("gsm8k_eval")


@dataclass
class EvalArguments:
    model_name_or_path: str = field(metadata={"help": "Base model, full checkpoint folder, or LoRA adapter folder."})
    adapter_path: str | None = field(default=None, metadata={"help": "peft LoRA adapter folder on top of the model."})
    model_revision: str | None = field(
        default=None, metadata={"help": "Hub revision of the (base) model: the one the adapter was trained on."}
    )
    dataset: str = field(
        default="openai/gsm8k",
        metadata={"help": "Hub name, local .json/.jsonl file or folder with {split}.jsonl, or 'synthetic[:opts]'."},
    )
    dataset_config: str = field(default="main", metadata={"help": "Hub dataset config ('main' or 'socratic')."})
    split: str = field(default="test", metadata={"help": "Dataset split."})
    limit: int | None = field(default=None, metadata={"help": "Evaluate a seeded random subset of N problems."})
    seed: int = field(default=0, metadata={"help": "Seed for the subset, the synthetic generator and sampling."})
    skip_invalid_rows: bool = field(
        default=False, metadata={"help": "Drop rows without a question or a number after '####' (count logged)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per generate() call (transformers path)."})
    max_new_tokens: int = field(
        default=512,
        metadata={
            "help": "Completion length limit: the training recipe's max_completion_length (the Qwen recipes: 512; "
            "1.5B: 1024). An answer cut before its '#### N' line scores wrong."
        },
    )
    num_samples: int = field(default=1, metadata={"help": "Completions per problem (k of pass@k); needs temperature > 0."})  # fmt: skip
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling (temperature > 0 only)."})
    num_few_shot: int = field(default=0, metadata={"help": "Worked examples before each question (0-4)."})
    system_prompt: str = field(default=SYSTEM_PROMPT, metadata={"help": "System message; '' for none."})
    dtype: str = field(
        default="auto", metadata={"help": "auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16, float16; also vLLM's."}
    )
    device: str | None = field(
        default=None,
        metadata={
            "help": "cpu, cuda, cuda:1 ... (default: cuda if available). vLLM: cuda only (CUDA_VISIBLE_DEVICES)."
        },
    )
    use_vllm: bool = field(
        default=False,
        metadata={"help": "Generate with vLLM (installed; CUDA). An adapter is merged into a temporary folder."},
    )
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the summary and predictions."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})


def load_vllm(args: EvalArguments, cleanup: contextlib.ExitStack):
    """``(vllm.LLM, tokenizer)`` in ``args.dtype``; an adapter is merged into a folder that ``cleanup`` removes."""
    require_vllm()  # before any merging work
    if args.device not in (None, "cuda"):
        raise ValueError(
            f"--device {args.device} with --use_vllm: vLLM runs on CUDA only and picks its GPUs itself; choose them "
            "with CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=1) and leave --device unset"
        )
    from transformers import AutoTokenizer
    from vllm import LLM

    dtype = str(resolve_dtype(args.dtype, "cuda")).removeprefix("torch.")
    model_path, adapter = args.model_name_or_path, args.adapter_path
    if adapter is None and adapter_base_model(model_path) is not None:
        model_path, adapter = adapter_base_model(model_path), model_path
    if adapter is not None:  # vLLM loads plain checkpoints: merge the LoRA adapter first
        merged = cleanup.enter_context(tempfile.TemporaryDirectory(prefix="trl-sapo-merged-"))
        model_path = merged_model_dir(model_path, adapter, merged, dtype=dtype, revision=args.model_revision)
    revision = None if adapter is not None else args.model_revision  # a merged folder has no revisions
    tokenizer = AutoTokenizer.from_pretrained(model_path, revision=revision)
    prepare_tokenizer(tokenizer)
    return LLM(model=str(model_path), seed=args.seed, dtype=dtype, revision=revision), tokenizer


def main(args: EvalArguments | list[str] | None = None) -> dict:
    """Run the evaluation; returns the summary (metrics + ``args``, without the per-problem predictions)."""
    if not isinstance(args, EvalArguments):
        (args,) = TrlParser([EvalArguments]).parse_args_and_config(args)
    with user_errors():  # checked before any model loads; on the command line: `<prog>: error: <message>`, status 2
        check_base_revision(args.model_name_or_path, args.adapter_path, args.model_revision)
        dataset = load_gsm8k(
            args.dataset,
            args.split,
            config_name=args.dataset_config,
            num_examples=args.limit,
            seed=args.seed,
            skip_invalid=args.skip_invalid_rows,
        )
    with contextlib.ExitStack() as cleanup:  # removes a merged adapter copy once evaluation is done
        if args.use_vllm:
            model, tokenizer = load_vllm(args, cleanup)
        else:
            model, tokenizer = load_model_for_eval(
                args.model_name_or_path, args.adapter_path, args.dtype, args.device, revision=args.model_revision
            )
        result = evaluate(
            model,
            tokenizer,
            dataset,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            num_samples=args.num_samples,
            temperature=args.temperature,
            top_p=args.top_p,
            system_prompt=args.system_prompt or None,
            num_few_shot=args.num_few_shot,
            seed=args.seed,
            progress=args.progress,
            use_vllm=args.use_vllm,
        )
    predictions = result.pop("predictions")
    summary = {**result, "args": dataclasses.asdict(args)}
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with open(out / "eval_predictions.jsonl", "w") as f:
            for p in predictions:
                f.write(json.dumps(p) + "\n")
    extra = f", pass@{args.num_samples} {result[f'pass@{args.num_samples}']:.4f}" if args.num_samples > 1 else ""
    print(
        f"GSM8K {args.dataset}:{args.split} n={result['num_examples']} accuracy {result['accuracy']:.4f}{extra} "
        f"format_rate {result['format_rate']:.4f} mean_completion_tokens {result['mean_completion_tokens']:.1f}"
    )
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    exit_on_user_error(Path(sys.argv[0]).name, lambda: main(sys.argv[1:]))
