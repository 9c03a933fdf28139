"""GSM8K data: loading (Hub, local JSON/JSONL, or an offline synthetic generator), validation, and chat prompts.

Every row has ``question`` (str) and ``answer`` (a worked solution ending in ``#### <number>``, GSM8K's format);
:func:`to_prompts` adds TRL's conversational ``prompt`` column, and ``trl_sapo.gsm8k.rewards.accuracy_reward`` reads the
``answer`` column through TRL's ``**kwargs`` convention.
"""

from __future__ import annotations

import logging
import os
import random
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset

from .rewards import reference_answer

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are a careful math tutor. Solve the problem step by step, writing one calculation per line. "
    "Finish with a final line of the form '#### <answer>', where <answer> is only the final number "
    "(no units, no words)."
)
# Sizes of GSM8K's splits; the synthetic source mimics them unless num_examples is given.
SYNTHETIC_SPLIT_SIZES = {"train": 7473, "test": 1319}


class DataError(ValueError):
    """Unusable data; the message names the source, the column or row index, and the offending content."""


# --------------------------------------------------------------------------------------------------------------------
# Synthetic GSM8K-style problems (offline, seeded, exact integer arithmetic)
# --------------------------------------------------------------------------------------------------------------------

_PEOPLE = [
    ("Mia", "she", "her"), ("Liam", "he", "his"), ("Ava", "she", "her"), ("Noah", "he", "his"),
    ("Sofia", "she", "her"), ("Ethan", "he", "his"), ("Zoe", "she", "her"), ("Omar", "he", "his"),
    ("Priya", "she", "her"), ("Carlos", "he", "his"), ("Hana", "she", "her"), ("Tom", "he", "his"),
]  # fmt: skip
_FRIENDS = ["a friend", "her sister", "his cousin", "a neighbor", "the school", "a classmate"]
# Inventory stories: item, container, verbs that add / remove items.
_INVENTORIES = [
    ("stickers", "albums", ["buys", "gets", "is given"], ["gives away", "uses", "loses"]),
    ("marbles", "bags", ["wins", "finds", "buys"], ["loses", "gives away", "trades away"]),
    ("apples", "baskets", ["picks", "buys", "is given"], ["eats", "gives away", "uses for a pie"]),
    ("cookies", "tins", ["bakes", "buys", "is given"], ["eats", "gives away", "sells"]),
    ("books", "shelves", ["buys", "borrows", "is given"], ["donates", "gives away", "sells"]),
    ("seashells", "jars", ["collects", "finds", "is given"], ["gives away", "loses", "breaks"]),
    ("pencils", "cups", ["buys", "finds", "is given"], ["gives away", "loses", "breaks"]),
    ("cards", "boxes", ["buys", "wins", "is given"], ["trades away", "loses", "gives away"]),
]
# Shopping stories: (item, unit price range in dollars).
_GOODS = [
    ("notebooks", (2, 6)), ("pens", (1, 4)), ("mugs", (4, 12)), ("T-shirts", (8, 20)), ("plants", (3, 15)),
    ("tickets", (5, 25)), ("sandwiches", (4, 9)), ("candles", (2, 8)), ("toy cars", (3, 10)), ("scarves", (6, 18)),
]  # fmt: skip
# Rate stories: (verb phrase, unit, goal noun).
_RATES = [
    ("reads", "pages", "a book with"),
    ("runs", "kilometers", "a training plan of"),
    ("knits", "rows", "a scarf pattern with"),
    ("practices piano for", "minutes", "a practice goal of"),
    ("saves", "dollars", "a savings goal of"),
]


def _step(expr: str, value: int) -> str:
    """GSM8K's calculator annotation: ``3*4=<<3*4=12>>12``."""
    return f"{expr} = <<{expr.replace(' ', '')}={value}>>{value}"


def _inventory_problem(rng: random.Random, steps: int, max_value: int) -> tuple[str, str, int]:
    name, he, his = rng.choice(_PEOPLE)
    item, container, gains, losses = rng.choice(_INVENTORIES)
    value = rng.randint(max(2, max_value // 5), max_value)
    story = [f"{name} has {value} {item}."]
    lines = []
    sell_price = None
    for i in range(steps):
        last = i == steps - 1
        divisors = [k for k in range(2, 7) if value % k == 0 and value // k >= 2]
        ops = ["add", "sub"] * 2 + (["mul"] if value <= 5 * max_value else []) + (["div"] if divisors else [])
        ops += ["sell"] if last and steps > 1 else []
        op = rng.choice(ops) if value > 2 else "add"
        if op == "add":
            n = rng.randint(1, max(1, max_value // 2))
            story.append(f"{he.capitalize()} {rng.choice(gains)} {n} more {item}.")
            lines.append(f"After that, {name} has {_step(f'{value} + {n}', value + n)} {item}.")
            value += n
        elif op == "sub":
            n = rng.randint(1, value - 1)
            story.append(f"{he.capitalize()} {rng.choice(losses)} {n} of them.")
            lines.append(f"{name} is left with {_step(f'{value} - {n}', value - n)} {item}.")
            value -= n
        elif op == "mul":
            k = rng.randint(2, 4)
            story.append(f"By the end of the month, {he} has {k} times as many {item} as {he} had before.")
            lines.append(f"{name} then has {_step(f'{value} * {k}', value * k)} {item}.")
            value *= k
        elif op == "div":
            k = rng.choice(divisors)
            story.append(
                f"{he.capitalize()} splits the {item} equally into {k} {container} and keeps only one of them."
            )
            lines.append(f"One of the {container} holds {_step(f'{value} / {k}', value // k)} {item}.")
            value //= k
        else:  # sell: the last step turns the count into dollars
            sell_price = rng.randint(2, 9)
            lines.append(f"{name} makes {_step(f'{value} * {sell_price}', value * sell_price)} dollars.")
            value *= sell_price
    if sell_price is not None:
        question = (
            f"If {he} then sells all of them for ${sell_price} each, how much money, in dollars, does {he} make?"
        )
    else:
        question = f"How many {item} does {name} have now?"
    return " ".join([*story, question]), "\n".join(lines), value


def _shopping_problem(rng: random.Random, steps: int, max_value: int) -> tuple[str, str, int]:
    name, he, his = rng.choice(_PEOPLE)
    (item1, (lo1, hi1)), (item2, (lo2, hi2)) = rng.sample(_GOODS, 2)
    count_hi = max(2, min(12, max_value // 5))
    a, p = rng.randint(2, count_hi), rng.randint(lo1, hi1)
    cost1 = a * p
    lines = [f"The {item1} cost {_step(f'{a} * {p}', cost1)} dollars."]
    story = f"{name} buys {a} {item1} for ${p} each"
    total = cost1
    if steps >= 3:
        b, q = rng.randint(2, count_hi), rng.randint(lo2, hi2)
        cost2 = b * q
        total = cost1 + cost2
        story += f" and {b} {item2} for ${q} each"
        lines += [f"The {item2} cost {_step(f'{b} * {q}', cost2)} dollars.", f"In total {he} spends {_step(f'{cost1} + {cost2}', total)} dollars."]  # fmt: skip
    story += "."
    if steps in (1, 3):
        return f"{story} How much money, in dollars, does {name} spend in total?", "\n".join(lines), total
    bill = next(b for b in (10, 20, 50, 100, 200, 500, 1000, 5000) if b > total)
    lines.append(f"{name} gets {_step(f'{bill} - {total}', bill - total)} dollars in change.")
    question = f"{he.capitalize()} pays with a ${bill} bill. How much change, in dollars, does {he} get back?"
    return f"{story} {question}", "\n".join(lines), bill - total


def _rate_problem(rng: random.Random, steps: int, max_value: int) -> tuple[str, str, int]:
    name, he, his = rng.choice(_PEOPLE)
    verb, unit, goal = rng.choice(_RATES)
    rate_hi = max(3, max_value // 4)
    a, d = rng.randint(2, rate_hi), rng.randint(2, 7)
    done1 = a * d
    lines = [f"In {'the first ' if steps > 1 else ''}{d} days {name} does {_step(f'{a} * {d}', done1)} {unit}."]
    story = f"{name} {verb} {a} {unit} a day for {d} days"
    done = done1
    if steps >= 3:
        b, e = rng.randint(2, rate_hi), rng.randint(2, 7)
        done2 = b * e
        done = done1 + done2
        story += f", then {b} {unit} a day for the next {e} days"
        lines += [f"In the next {e} days {he} does {_step(f'{b} * {e}', done2)} {unit}.", f"Altogether that is {_step(f'{done1} + {done2}', done)} {unit}."]  # fmt: skip
    story += "."
    if steps in (1, 3):
        return f"{story} How many {unit} is that in total?", "\n".join(lines), done
    target = done + rng.randint(1, max(2, max_value))
    lines.append(f"{name} still has {_step(f'{target} - {done}', target - done)} {unit} to go.")
    question = f"{he.capitalize()} is working towards {goal} {target} {unit}. How many {unit} are left?"
    return f"{story} {question}", "\n".join(lines), target - done


# (generator, step counts it supports)
_FAMILIES = [(_inventory_problem, None), (_shopping_problem, {1, 2, 3, 4}), (_rate_problem, {1, 2, 3, 4})]

# `phrasing=alternate`: other story kinds in other sentence templates, none of which the standard families use, so
# a model trained on standard problems can be tested on wordings it never saw. Per story: the first sentence, its
# question, operation and solution line; then a follow-up sentence, its question, and the second step as a function
# of (first result, c) -> (expression, value).
_ALTERNATE = [
    ("A bakery packs muffins in boxes of {a}. One morning it fills {b} boxes.", "How many muffins did it pack?",
     "*", "The bakery packed {expr} muffins.",
     "It also has {c} loose muffins that did not fit in a box.", "How many muffins did the bakery make that morning?",
     lambda r, c: (f"{r} + {c}", r + c), "Adding the loose ones gives {expr} muffins."),
    ("{name} is {a} years old, and {his} uncle is {b} years older.", "How old is the uncle?",
     "+", "The uncle is {expr} years old.",
     "{name}'s grandmother is twice as old as the uncle.", "How old is the grandmother?",
     lambda r, c: (f"{r} * 2", r * 2), "The grandmother is {expr} years old."),
    ("At 6 a.m. the temperature outside was {a} degrees; by noon it had gone up {b} degrees.",
     "What was the temperature at noon?", "+", "At noon it was {expr} degrees.",
     "By the evening it had fallen {c} degrees from the noon reading.", "What was the temperature in the evening?",
     lambda r, c: (f"{r} - {c}", r - c), "In the evening it was {expr} degrees."),
    ("A train moves at {a} kilometers per hour for {b} hours without stopping.", "How far does it travel?",
     "*", "The train covers {expr} kilometers.",
     "The whole route is {c} kilometers longer than that.", "How long is the whole route, in kilometers?",
     lambda r, c: (f"{r} + {c}", r + c), "The route is {expr} kilometers long."),
    ("There were {a} birds on a wire until {b} of them flew away.", "How many birds stayed on the wire?",
     "-", "{expr} birds stayed on the wire.",
     "Later, {c} new birds landed next to them.", "How many birds are on the wire now?",
     lambda r, c: (f"{r} + {c}", r + c), "Now there are {expr} birds."),
    ("A class of {a} children lines up in rows of {b}.", "How many rows are there?",
     "/", "There are {expr} rows.",
     "Each row is given {c} flags to wave.", "How many flags are handed out?",
     lambda r, c: (f"{r} * {c}", r * c), "They hand out {expr} flags."),
]  # fmt: skip


def _alternate_problem(rng: random.Random, steps: int, max_value: int) -> tuple[str, str, int]:
    name, _, his = rng.choice(_PEOPLE)
    story, question, op, line, story2, question2, second, line2 = rng.choice(_ALTERNATE)
    b = rng.randint(2, max(2, max_value // 2))
    if op == "/":
        b = min(b, 6)
        a = b * rng.randint(2, max(2, max_value // 2))
    else:
        a = rng.randint(b + 1 if op == "-" else 2, max(max_value, b + 1))
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    first = story.format(a=a, b=b, name=name, his=his)
    solution = line.format(expr=_step(f"{a} {op} {b}", result))
    if steps == 1:
        return f"{first} {question}", solution, result
    c = rng.randint(1, max(1, min(result - 1, max_value // 2)))  # keeps subtractions positive
    expr, value = second(result, c)
    text = f"{first} {story2.format(c=c, name=name)} {question2}"
    return text, f"{solution}\n{line2.format(expr=_step(expr, value))}", value


PHRASINGS = {"standard": _FAMILIES, "alternate": [(_alternate_problem, {1, 2})]}


def generate_problems(
    num_examples: int,
    seed: int = 0,
    *,
    num_steps: int | tuple[int, int] = (2, 4),
    max_value: int = 100,
    phrasing: str = "standard",
) -> Dataset:
    """Seeded GSM8K-style word problems with exact integer answers; columns ``question`` and ``answer``.

    Args:
        num_examples: number of problems.
        seed: same seed -> same problems.
        num_steps: arithmetic operations per problem, an int or an inclusive ``(min, max)`` range (difficulty knob).
        max_value: scale of the starting quantities and operands (difficulty knob; answers stay below ~100x this).
        phrasing: ``"standard"`` (inventory, shopping and rate stories) or ``"alternate"`` (other story kinds and
            sentence templates, 1-2 steps; for testing a model trained on standard problems on unseen wordings).
    """
    if phrasing not in PHRASINGS:
        raise DataError(f"phrasing must be one of {sorted(PHRASINGS)}, got {phrasing!r}")
    if num_examples < 0:
        raise DataError(f"num_examples must be >= 0, got {num_examples}")
    lo, hi = (num_steps, num_steps) if isinstance(num_steps, int) else tuple(num_steps)
    if not 1 <= lo <= hi:
        raise DataError(f"num_steps must be >= 1 (an int or a (min, max) range), got {num_steps}")
    if max_value < 10:
        raise DataError(f"max_value must be >= 10, got {max_value}")
    rng = random.Random(seed)
    questions, answers = [], []
    for _ in range(num_examples):
        steps = rng.randint(lo, hi)
        families = [f for f, supported in PHRASINGS[phrasing] if supported is None or steps in supported]
        if not families:
            raise DataError(f"phrasing {phrasing!r} supports 1-2 steps, got num_steps={num_steps}")
        family = rng.choice(families)
        question, solution, result = family(rng, steps, max_value)
        questions.append(question)
        answers.append(f"{solution}\n#### {result}")
    return Dataset.from_dict({"question": questions, "answer": answers})


def _parse_synthetic_source(source: str) -> dict[str, Any]:
    """``"synthetic"`` or ``"synthetic:num_steps=2,max_value=50,phrasing=alternate"`` (``num_steps=2-4``: a range)."""
    options: dict[str, Any] = {}
    _, _, spec = source.partition(":")
    for item in filter(None, (s.strip() for s in spec.split(","))):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError("expected key=value")
            if key == "num_steps":
                lo, _, hi = value.partition("-")
                options[key] = (int(lo), int(hi)) if hi else int(lo)
            elif key == "max_value":
                options[key] = int(value)
            elif key == "phrasing":
                options[key] = value
            else:
                raise ValueError("valid keys are num_steps, max_value and phrasing")
        except ValueError as e:
            raise DataError(
                f"bad synthetic dataset option {item!r} in {source!r} ({e}); "
                "example: 'synthetic:num_steps=2-3,max_value=50'"
            ) from None
    return options


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
            raise DataError(f"{source}, {problem} (pass skip_invalid=True to drop such rows)")
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
        source: ``"synthetic"`` (offline generator; options as ``"synthetic:num_steps=2-3,max_value=50"``), a local
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
        options = _parse_synthetic_source(source)
        size = num_examples if num_examples is not None else SYNTHETIC_SPLIT_SIZES.get(split, 1000)
        # A split-dependent seed keeps synthetic train and test problems different.
        return generate_problems(size, seed=seed * 1_000_003 + zlib.crc32(split.encode()), **options)
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
                "use a local copy (--dataset_name ../shared/data/gsm8k: a folder with train.jsonl/test.jsonl, or a "
                ".jsonl file) or offline generated problems (--dataset_name synthetic)."
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
