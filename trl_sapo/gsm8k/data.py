"""GSM8K data: loading (Hub, local JSON/JSONL, or an offline synthetic generator), validation, and chat prompts.

Every row has ``question`` (str) and ``answer`` (a worked solution ending in ``#### <number>``, GSM8K's format);
:func:`to_prompts` adds TRL's conversational ``prompt`` column, and ``trl_sapo.gsm8k.rewards.accuracy_reward`` reads the
``answer`` column through TRL's ``**kwargs`` convention.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset

from .rewards import reference_answer
from .synthetic import SYNTHETIC_SPLIT_SIZES, DataError, generate_problems, parse_synthetic_source

__all__ = ["DataError", "generate_problems", "load_gsm8k", "validate", "to_prompts", "build_prompt"]

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, writing one calculation per line. "
    "Finish with a final line of the form '#### <answer>', where <answer> is only the final number "
    "(no units, no words)."
)


# --------------------------------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------------------------------


def _load_local(path: Path, split: str) -> Dataset:
    if path.is_dir():
        candidates = [path / f"{split}.jsonl", path / f"{split}.json"]
        found = [c for c in candidates if c.is_file()]
        if not found:
            listing = sorted(p.name for p in path.iterdir())[:20]
            raise DataError(f"no {split}.jsonl or {split}.json in folder {path} (it contains {listing})")
        path = found[0]
    elif path.suffix not in (".json", ".jsonl"):
        raise DataError(f"local dataset file must be .json or .jsonl, got {path}")
    try:
        return load_dataset("json", data_files=str(path), split="train")
    except Exception as e:  # pyarrow's messages (mixed types, bad JSON) are precise but do not name the file
        raise DataError(f"could not read {path} as JSON lines with columns question/answer: {e}") from e


def validate(dataset: Dataset, *, skip_invalid: bool = False, source: str = "dataset") -> Dataset:
    """Check the columns and every row; raise :class:`DataError` naming the first bad row, or drop bad rows.

    A row is bad when ``question`` is not a non-empty string or ``answer`` has no parsable number after ``####``.
    """
    missing = [c for c in ("question", "answer") if c not in dataset.column_names]
    if missing:
        raise DataError(f"{source} is missing column(s) {missing}; it has {dataset.column_names}")
    if len(dataset) == 0:
        raise DataError(f"{source} is empty")
    bad = []
    for i, (question, answer) in enumerate(zip(dataset["question"], dataset["answer"])):
        if not isinstance(question, str) or not question.strip():
            problem = f"row {i}: 'question' must be a non-empty string, got {question!r:.200}"
        elif not isinstance(answer, str) or reference_answer(answer) is None:
            problem = f"row {i}: 'answer' has no number after '####': {answer!r:.300}"
        else:
            continue
        if not skip_invalid:
            raise DataError(
                f"{source}, {problem} (to drop such rows: --skip_invalid_rows true on the command line or "
                "skip_invalid_rows: true in a recipe; skip_invalid=True in Python)"
            )
        bad.append(i)
    if bad:
        logger.warning("%s: dropped %d invalid row(s) of %d (first: row %d)", source, len(bad), len(dataset), bad[0])
        bad_set = set(bad)
        dataset = dataset.select([i for i in range(len(dataset)) if i not in bad_set])
        if len(dataset) == 0:
            raise DataError(f"{source}: every row is invalid")
    return dataset


def load_gsm8k(
    source: str | os.PathLike | Dataset | DatasetDict = "openai/gsm8k",
    split: str = "train",
    *,
    config_name: str = "main",
    num_examples: int | None = None,
    seed: int = 0,
    skip_invalid: bool = False,
) -> Dataset:
    """Load and validate GSM8K-style data (columns ``question``, ``answer``).

    Args:
        source: ``"synthetic"`` (offline generator, :mod:`trl_sapo.gsm8k.synthetic`; options as
            ``"synthetic:num_steps=2-3,max_value=50"``; its ``test`` split never shares a question with other splits), a local
            ``.json``/``.jsonl`` file, a folder holding ``{split}.jsonl`` or ``{split}.json``, a Hub dataset name
            (``"openai/gsm8k"``), or an in-memory ``Dataset``/``DatasetDict``.
        split: split name (file name in a folder; different generator seeds for ``"synthetic"``).
        config_name: Hub dataset config (GSM8K: ``"main"`` or ``"socratic"``).
        num_examples: keep a random subset of this size, drawn with ``seed`` (the whole split when None or larger).
            For ``"synthetic"`` it is the number generated (default: GSM8K's split size).
        seed: subset seed; for ``"synthetic"``, the generator seed (combined with the split).
        skip_invalid: drop invalid rows with a logged count instead of raising :class:`DataError`.
    """
    if num_examples is not None and num_examples <= 0:
        raise DataError(f"num_examples must be a positive integer or None, got {num_examples}")
    if isinstance(source, str) and (source == "synthetic" or source.startswith("synthetic:")):
        size = num_examples if num_examples is not None else SYNTHETIC_SPLIT_SIZES.get(split, 1000)
        return generate_problems(size, seed=seed, split=split, **parse_synthetic_source(source))
    if isinstance(source, DatasetDict):
        if split not in source:
            raise DataError(f"split {split!r} not in the DatasetDict (splits: {list(source)})")
        dataset, name = source[split], f"DatasetDict[{split!r}]"
    elif isinstance(source, Dataset):
        dataset, name = source, "the given Dataset"
    elif Path(source).exists():
        dataset, name = _load_local(Path(source), split), str(source)
    else:
        try:
            dataset = load_dataset(str(source), config_name, split=split)
        except Exception as e:
            raise DataError(
                f"{source!r} is not a local path, and loading it from the Hugging Face Hub "
                f"(config {config_name!r}, split {split!r}) failed: {type(e).__name__}: {e}. Without Hub access, "
                "give a local copy as the dataset (a folder with train.jsonl/test.jsonl such as ../shared/data/gsm8k, "
                "or a .jsonl file) or 'synthetic' (offline generated problems)."
            ) from e
        name = f"{source} ({config_name}, {split})"
    dataset = validate(dataset, skip_invalid=skip_invalid, source=name)
    if num_examples is not None and num_examples < len(dataset):
        dataset = dataset.shuffle(seed=seed).select(range(num_examples)).flatten_indices()
    return dataset


# --------------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------------

# Hand-written worked examples in the target format (not taken from GSM8K, so they never leak a test problem).
FEW_SHOT_EXAMPLES = [
    {
        "question": "A baker makes 24 muffins. She sells 15 of them and then bakes 8 more. How many muffins does "
        "she have now?",
        "answer": "After selling, she has 24 - 15 = 9 muffins.\nAfter baking more, she has 9 + 8 = 17 muffins.\n"
        "#### 17",
    },
    {
        "question": "Tickets cost $7 each. Leo buys 4 tickets and pays with a $50 bill. How much change does he get?",
        "answer": "The tickets cost 4 * 7 = 28 dollars.\nHis change is 50 - 28 = 22 dollars.\n#### 22",
    },
    {
        "question": "A farm has 3 fields with 12 rows of corn each. Each row gives 5 baskets of corn. How many "
        "baskets of corn does the farm get?",
        "answer": "There are 3 * 12 = 36 rows.\nThey give 36 * 5 = 180 baskets.\n#### 180",
    },
    {
        "question": "Nina has 90 stamps. She gives a third of them to her brother and then buys 14 more. How many "
        "stamps does she have?",
        "answer": "She gives away 90 / 3 = 30 stamps.\nShe keeps 90 - 30 = 60 stamps.\n"
        "After buying more she has 60 + 14 = 74 stamps.\n#### 74",
    },
]


def strip_calculator_annotations(answer: str) -> str:
    """Remove GSM8K's ``<<3*4=12>>`` calculator annotations (what ``re.sub(r"<<[^>]*>>", "", answer)`` removes).

    Linear time, unlike that regex, which rescans up to the next ``>`` from every ``<`` of a long ``<<<<`` run.
    """
    pieces, start = [], 0
    opening = answer.find("<<")
    while opening != -1:
        closing = answer.find(">", opening + 2)
        if closing == -1:
            break
        if answer.startswith(">>", closing):
            pieces.append(answer[start:opening])
            start = closing + 2
            opening = answer.find("<<", start)
        else:  # no annotation starts before this ">" either
            opening = answer.find("<<", closing + 1)
    pieces.append(answer[start:])
    return "".join(pieces)


def build_prompt(
    question: str,
    *,
    system_prompt: str | None = SYSTEM_PROMPT,
    few_shot: Sequence[dict[str, str]] = (),
) -> list[dict[str, str]]:
    """Chat messages: optional system, few-shot user/assistant pairs, then the question."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    for example in few_shot:
        messages.append({"role": "user", "content": example["question"]})
        messages.append({"role": "assistant", "content": strip_calculator_annotations(example["answer"])})
    messages.append({"role": "user", "content": question})
    return messages


def to_prompts(
    dataset: Dataset,
    *,
    system_prompt: str | None = SYSTEM_PROMPT,
    num_few_shot: int = 0,
    few_shot_examples: Sequence[dict[str, str]] | Dataset | None = None,
) -> Dataset:
    """Add TRL's conversational ``prompt`` column; ``question``, ``answer`` and other columns are kept.

    ``num_few_shot`` worked examples come first, taken from ``few_shot_examples`` (rows with question/answer;
    default: :data:`FEW_SHOT_EXAMPLES`). ``system_prompt=None`` leaves out the system message.
    """
    if "question" not in dataset.column_names:
        raise DataError(f"dataset needs a 'question' column to build prompts; it has {dataset.column_names}")
    if num_few_shot < 0:
        raise DataError(f"num_few_shot must be >= 0, got {num_few_shot}")
    pool = FEW_SHOT_EXAMPLES if few_shot_examples is None else few_shot_examples
    if num_few_shot > len(pool):
        raise DataError(f"num_few_shot={num_few_shot} but only {len(pool)} few-shot examples are available")
    few_shot = [{"question": pool[i]["question"], "answer": pool[i]["answer"]} for i in range(num_few_shot)]
    for i, example in enumerate(few_shot):
        if reference_answer(example["answer"]) is None:
            raise DataError(f"few-shot example {i} has no '#### <number>' final line: {example['answer']!r:.200}")
    return dataset.map(
        lambda row: {"prompt": build_prompt(row["question"], system_prompt=system_prompt, few_shot=few_shot)}
    )


# Held-out problems of `make demo` and of the SmolLM2 learning study: the test split (never trained on) of the demo's
# training distribution, and the same difficulty in wordings the training set never uses.
HELDOUT_MIX = {
    "same kind as training": "synthetic:num_steps=1,max_value=20",
    "unseen phrasings": "synthetic:num_steps=1,max_value=20,phrasing=alternate",
}


def load_heldout_mix(num_examples: int, sources: dict[str, str] = HELDOUT_MIX) -> dict[str, Dataset]:
    """{subset name: test-split Dataset}, `num_examples` split evenly over `sources`."""
    per_subset = max(1, num_examples // len(sources))
    return {name: load_gsm8k(source, split="test", num_examples=per_subset) for name, source in sources.items()}
