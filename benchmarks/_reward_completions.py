"""Realistic completions for benchmarks/rewards.py: SmolLM2-135M-Instruct samples on GSM8K-style prompts, cached.

Sampled once (T = 0.8, the demo recipe's temperature) on GSM8K test questions and on the demo's synthetic
problems, with the project's system prompt, and cached as JSON lines ``{"source", "question", "answer",
"completion"}`` (``answer``: the reference solution ending in ``#### N``) so that reruns only time the rewards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def generate(
    path: Path,
    model_path: str,
    gsm8k_path: str,
    num_questions: int,
    num_samples: int,
    max_new_tokens: int,
    batch_size: int,
    seed: int = 0,
    sources: tuple[str, ...] = ("synthetic_demo", "gsm8k_test"),
) -> list[dict]:
    """Sample ``num_samples`` completions for ``num_questions`` prompts (split evenly over ``sources``: GSM8K test
    questions, the demo's synthetic problems); write them to ``path`` and return them."""
    import torch

    from trl_sapo.gsm8k.data import SYSTEM_PROMPT, load_gsm8k
    from trl_sapo.gsm8k.evaluation import _generate_transformers, _render_prompts, load_model_for_eval

    model, tokenizer = load_model_for_eval(model_path, dtype="float32", device="cpu")
    half = max(1, num_questions // 2)
    datasets = {
        "synthetic_demo": lambda n: load_gsm8k("synthetic:num_steps=1,max_value=20", "test", num_examples=n),
        "gsm8k_test": lambda n: load_gsm8k(gsm8k_path, "test", num_examples=n, seed=seed),
    }
    sizes = [half, num_questions - half] if len(sources) == 2 else [num_questions]
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    torch.manual_seed(seed)
    for name, size in zip(sources, sizes):
        dataset = datasets[name](size)
        start = time.time()
        prompts = _render_prompts(tokenizer, dataset, SYSTEM_PROMPT, num_few_shot=0)
        texts, _ = _generate_transformers(
            model,
            tokenizer,
            prompts,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            num_samples=num_samples,
            temperature=0.8,
            top_p=1.0,
            progress=True,
        )
        for question, answer, samples in zip(dataset["question"], dataset["answer"], texts):
            rows += [{"source": name, "question": question, "answer": answer, "completion": c} for c in samples]
        print(
            f"generated {len(dataset) * num_samples} completions on {name} in {time.time() - start:.0f} s", flush=True
        )
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))  # after each source: partial runs count
    return rows


def load(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=str(REPO_ROOT / "benchmarks" / "out" / "reward_completions.jsonl"))
    parser.add_argument("--model", default=str(REPO_ROOT / "models" / "SmolLM2-135M-Instruct"))
    parser.add_argument("--gsm8k", default=str(REPO_ROOT.parent / "shared" / "data" / "gsm8k"))
    parser.add_argument("--num_questions", type=int, default=500)
    parser.add_argument("--num_samples", type=int, default=2)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument(
        "--sources", nargs="+", default=["synthetic_demo", "gsm8k_test"], help="questions (split evenly)"
    )
    args = parser.parse_args()
    generate(
        Path(args.output), args.model, args.gsm8k, args.num_questions, args.num_samples, args.max_new_tokens,
        args.batch_size, sources=tuple(args.sources),
    )  # fmt: skip
