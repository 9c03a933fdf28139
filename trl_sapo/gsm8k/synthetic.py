"""Offline GSM8K-style word problems: seeded, exact integer arithmetic, GSM8K's answer format.

``generate_problems`` (or ``load_gsm8k("synthetic:...")``) returns a Dataset with ``question`` and ``answer`` (worked
solution with GSM8K's ``<<a*b=c>>`` calculator annotations, ending in ``#### <number>``). Two properties the demo and
the learning study rely on:

- **Balanced operations.** One-step problems choose the operation first (each run of four problems holds ``+ - * /``
  once each), then a story that asks for it, so a model cannot score by always multiplying. :func:`operations` reads a problem's operations
  back from its reference answer (for any GSM8K-format answer), for per-operation reports.
- **Disjoint splits by construction.** A problem belongs to the ``test`` split iff a hash of its question text falls
  in one bucket of :data:`HASH_BUCKETS`; every other split keeps only the other buckets. So no test question is ever a
  training question, whatever the seeds and sizes; by text only: a test problem may be a training story with another
  person, or share its numbers and operation (docs/results.md §2b: the demo's counts). ``split_by="calculation"``
  hashes the ``<<a op b=c>>`` calculations instead: no shared numbers and operation (opt-in, for new sets).
"""

from __future__ import annotations

import random
import re
import zlib
from typing import Any

from datasets import Dataset

# Sizes of GSM8K's splits; the synthetic source mimics them unless num_examples is given.
SYNTHETIC_SPLIT_SIZES = {"train": 7473, "test": 1319}
OPERATIONS = ("+", "-", "*", "/")
HASH_BUCKETS = 8  # 1 of 8 question hashes is test-only; the other 7 are for every other split
_ANNOTATION_RE = re.compile(r"<<\(?[\d.,]{1,40}\s?([-+*/])")  # the first operator of each annotation


class DataError(ValueError):
    """Unusable data; the message names the source, the column or row index, and the offending content."""


_PEOPLE = [
    ("Mia", "she", "her"), ("Liam", "he", "his"), ("Ava", "she", "her"), ("Noah", "he", "his"),
    ("Sofia", "she", "her"), ("Ethan", "he", "his"), ("Zoe", "she", "her"), ("Omar", "he", "his"),
    ("Priya", "she", "her"), ("Carlos", "he", "his"), ("Hana", "she", "her"), ("Tom", "he", "his"),
]  # fmt: skip
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


def _inventory_problem(rng: random.Random, steps: int, max_value: int, op: str | None) -> tuple[str, str, int]:
    name, he, _ = rng.choice(_PEOPLE)
    item, container, gains, losses = rng.choice(_INVENTORIES)
    if op == "/":  # a start value with a divisor, so the forced division is exact
        k = rng.randint(2, 6)
        value = k * rng.randint(2, max(2, max_value // k))
    else:
        value = rng.randint(max(2, max_value // 5), max_value)
    story = [f"{name} has {value} {item}."]
    lines = []
    sell_price = None
    for i in range(steps):
        last = i == steps - 1
        divisors = [k for k in range(2, 7) if value % k == 0 and value // k >= 2]
        if op is None:
            ops = ["+", "-"] * 2 + (["*"] if value <= 5 * max_value else []) + (["/"] if divisors else [])
            ops += ["sell"] if last and steps > 1 else []
            step_op = rng.choice(ops) if value > 2 else "+"
        else:
            step_op = op
        if step_op == "+":
            n = rng.randint(1, max(1, max_value // 2))
            story.append(f"{he.capitalize()} {rng.choice(gains)} {n} more {item}.")
            lines.append(f"After that, {name} has {_step(f'{value} + {n}', value + n)} {item}.")
            value += n
        elif step_op == "-":
            n = rng.randint(1, value - 1)
            story.append(f"{he.capitalize()} {rng.choice(losses)} {n} of them.")
            lines.append(f"{name} is left with {_step(f'{value} - {n}', value - n)} {item}.")
            value -= n
        elif step_op == "*":
            k = rng.randint(2, 4)
            story.append(f"By the end of the month, {he} has {k} times as many {item} as {he} had before.")
            lines.append(f"{name} then has {_step(f'{value} * {k}', value * k)} {item}.")
            value *= k
        elif step_op == "/":
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


def _shopping_one_step(rng: random.Random, max_value: int, op: str) -> tuple[str, str, int]:
    name, he, _ = rng.choice(_PEOPLE)
    (item1, (lo1, hi1)), (item2, (lo2, hi2)) = rng.sample(_GOODS, 2)
    count_hi = max(2, min(12, max_value // 5))
    a, p, q = rng.randint(2, count_hi), rng.randint(lo1, hi1), rng.randint(lo2, hi2)
    if op == "*":
        story = f"{name} buys {a} {item1} for ${p} each. How much money, in dollars, does {name} spend in total?"
        return story, f"The {item1} cost {_step(f'{a} * {p}', a * p)} dollars.", a * p
    if op == "+":
        story = (
            f"{name} buys a pack of {item1} for ${p} and a pack of {item2} for ${q}. "
            f"How much money, in dollars, does {name} spend in total?"
        )
        return story, f"The two packs cost {_step(f'{p} + {q}', p + q)} dollars.", p + q
    if op == "-":
        budget = p + rng.randint(1, max(2, max_value))
        story = (
            f"{name} has ${budget} and spends ${p} of it on a pack of {item1}. "
            f"How much money, in dollars, does {he} have left?"
        )
        return story, f"{name} has {_step(f'{budget} - {p}', budget - p)} dollars left.", budget - p
    story = (
        f"{name} pays ${a * p} for {a} {item1} that all cost the same. How much, in dollars, does one of them cost?"
    )
    return story, f"One of them costs {_step(f'{a * p} / {a}', p)} dollars.", p


def _shopping_problem(rng: random.Random, steps: int, max_value: int, op: str | None) -> tuple[str, str, int]:
    if steps == 1:
        return _shopping_one_step(rng, max_value, op or "*")
    name, he, _ = rng.choice(_PEOPLE)
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
    if steps == 3:
        return f"{story} How much money, in dollars, does {name} spend in total?", "\n".join(lines), total
    bill = next(b for b in (10, 20, 50, 100, 200, 500, 1000, 5000) if b > total)
    lines.append(f"{name} gets {_step(f'{bill} - {total}', bill - total)} dollars in change.")
    question = f"{he.capitalize()} pays with a ${bill} bill. How much change, in dollars, does {he} get back?"
    return f"{story} {question}", "\n".join(lines), bill - total


def _rate_one_step(rng: random.Random, max_value: int, op: str) -> tuple[str, str, int]:
    name, he, _ = rng.choice(_PEOPLE)
    verb, unit, goal = rng.choice(_RATES)
    rate_hi = max(3, max_value // 4)
    a, d = rng.randint(2, rate_hi), rng.randint(2, 7)
    if op == "*":
        story = f"{name} {verb} {a} {unit} a day for {d} days. How many {unit} is that in total?"
        return story, f"In {d} days {name} does {_step(f'{a} * {d}', a * d)} {unit}.", a * d
    if op == "+":
        b = rng.randint(2, max(2, max_value))
        a = rng.randint(2, max(2, max_value))
        story = f"{name} {verb} {a} {unit} on Monday and {b} {unit} on Tuesday. How many {unit} is that in total?"
        return story, f"Over the two days {name} does {_step(f'{a} + {b}', a + b)} {unit}.", a + b
    if op == "-":
        done = rng.randint(2, max(2, max_value))
        target = done + rng.randint(1, max(2, max_value))
        story = (
            f"{name} is working towards {goal} {target} {unit} and has done {done} {unit} so far. "
            f"How many {unit} are left?"
        )
        return story, f"{name} still has {_step(f'{target} - {done}', target - done)} {unit} to go.", target - done
    story = f"{name} {verb} {a * d} {unit} in {d} days, the same amount every day. How many {unit} is that per day?"
    return story, f"Each day {name} does {_step(f'{a * d} / {d}', a)} {unit}.", a


def _rate_problem(rng: random.Random, steps: int, max_value: int, op: str | None) -> tuple[str, str, int]:
    if steps == 1:
        return _rate_one_step(rng, max_value, op or "*")
    name, he, _ = rng.choice(_PEOPLE)
    verb, unit, goal = rng.choice(_RATES)
    rate_hi = max(3, max_value // 4)
    a, d = rng.randint(2, rate_hi), rng.randint(2, 7)
    done1 = a * d
    lines = [f"In the first {d} days {name} does {_step(f'{a} * {d}', done1)} {unit}."]
    story = f"{name} {verb} {a} {unit} a day for {d} days"
    done = done1
    if steps >= 3:
        b, e = rng.randint(2, rate_hi), rng.randint(2, 7)
        done2 = b * e
        done = done1 + done2
        story += f", then {b} {unit} a day for the next {e} days"
        lines += [f"In the next {e} days {he} does {_step(f'{b} * {e}', done2)} {unit}.", f"Altogether that is {_step(f'{done1} + {done2}', done)} {unit}."]  # fmt: skip
    story += "."
    if steps == 3:
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
    ("A class of {a} children at {name}'s school lines up in rows of {b}.", "How many rows are there?",
     "/", "There are {expr} rows.",
     "Each row is given {c} flags to wave.", "How many flags are handed out?",
     lambda r, c: (f"{r} * {c}", r * c), "They hand out {expr} flags."),
    ("A parking garage run by {name} has {a} cars on its top floor. Then {b} cars drive out.", "How many cars are left up there?",
     "-", "There are {expr} cars left on the top floor.",
     "Each of the remaining cars pays a {c} dollar fee.", "How many dollars in fees do they pay altogether?",
     lambda r, c: (f"{r} * {c}", r * c), "Together they pay {expr} dollars."),
    ("{name} cuts a ribbon {a} centimeters long into {b} pieces of the same length.", "How long is each piece, in centimeters?",
     "/", "Each piece is {expr} centimeters long.",
     "One piece is then trimmed by {c} centimeters.", "How long is the trimmed piece, in centimeters?",
     lambda r, c: (f"{r} - {c}", r - c), "The trimmed piece is {expr} centimeters long."),
]  # fmt: skip


def _alternate_problem(rng: random.Random, steps: int, max_value: int, op: str | None) -> tuple[str, str, int]:
    name, _, his = rng.choice(_PEOPLE)
    stories = [s for s in _ALTERNATE if op is None or s[2] == op]
    story, question, first_op, line, story2, question2, second, line2 = rng.choice(stories)
    b = rng.randint(2, max(2, max_value // 2))
    if first_op == "/":
        b = min(b, 6)
        a = b * rng.randint(2, max(2, max_value // 2))
    else:
        a = rng.randint(b + 1 if first_op == "-" else 2, max(max_value, b + 1))
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[first_op]
    first = story.format(a=a, b=b, name=name, his=his)
    solution = line.format(expr=_step(f"{a} {first_op} {b}", result))
    if steps == 1:
        return f"{first} {question}", solution, result
    c = rng.randint(1, max(1, min(result - 1, max_value // 2)))  # keeps subtractions positive
    expr, value = second(result, c)
    text = f"{first} {story2.format(c=c, name=name)} {question2}"
    return text, f"{solution}\n{line2.format(expr=_step(expr, value))}", value


PHRASINGS = {"standard": _FAMILIES, "alternate": [(_alternate_problem, {1, 2})]}


def is_test_question(question: str) -> bool:
    """True iff `question` belongs to the synthetic ``test`` split (a fixed hash bucket; see the module docstring)."""
    return zlib.crc32(question.encode("utf-8", "replace")) % HASH_BUCKETS == 0


def operations(answer: str) -> str:
    """The operations of a GSM8K-format solution, read from its ``<<a*b=c>>`` annotations in order (the first operator
    of each) and joined by commas (``"*"``, ``"*,+"``); ``""`` when it has none. Linear time on any string."""
    return ",".join(m.group(1) for m in _ANNOTATION_RE.finditer(answer))


def generate_problems(
    num_examples: int,
    seed: int = 0,
    *,
    num_steps: int | tuple[int, int] = (2, 4),
    max_value: int = 100,
    phrasing: str = "standard",
    split: str | None = None,
    split_by: str = "question",
) -> Dataset:
    """Seeded GSM8K-style word problems with exact integer answers; columns ``question`` and ``answer``.

    Args:
        num_examples: number of problems.
        seed: same seed (and split) -> same problems.
        num_steps: arithmetic operations per problem, an int or an inclusive ``(min, max)`` range (difficulty knob).
            One-step problems cycle through ``+ - * /`` (each four in a row hold each operation once).
        max_value: scale of the starting quantities and operands (difficulty knob; answers stay below ~100x this).
        phrasing: ``"standard"`` (inventory, shopping and rate stories) or ``"alternate"`` (other story kinds and
            sentence templates, 1-2 steps; for testing a model trained on standard problems on unseen wordings).
        split: ``None`` (any problem), ``"test"`` (only questions in the test hash bucket) or any other split name
            (only questions outside it; the split name also changes the generator's seed). Splits never share a
            question with ``"test"``.
        split_by: the split is decided by the hash of the ``"question"`` text or of its ``"calculation"`` (both sides).
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
    if split_by not in ("question", "calculation"):
        raise DataError(f"split_by must be 'question' or 'calculation', got {split_by!r}")
    if split is not None:
        seed = seed * 1_000_003 + zlib.crc32(split.encode())
    rng = random.Random(seed)
    questions, answers, seen = [], [], set()
    op_cycle: list[str] = []
    for _ in range(num_examples):
        steps = rng.randint(lo, hi)
        families = [f for f, supported in PHRASINGS[phrasing] if supported is None or steps in supported]
        if not families:
            raise DataError(f"phrasing {phrasing!r} supports 1-2 steps, got num_steps={num_steps}")
        op = None
        if steps == 1:  # each run of four one-step problems holds each operation once, in random order
            op_cycle = op_cycle or rng.sample(OPERATIONS, len(OPERATIONS))
            op = op_cycle.pop()
        # Redraw within the same (steps, operation) until the question is in this split's hash buckets (and, for a
        # split, new), so the filter cannot skew the operation mix. Small problem spaces may repeat a question.
        for _attempt in range(200):
            question, solution, result = rng.choice(families)(rng, steps, max_value, op)
            key = question if split_by == "question" else "".join(re.findall(r"<<[^>]*>>", solution))
            if split is None or (is_test_question(key) == (split == "test") and question not in seen):
                break
        else:
            if split is not None and is_test_question(key) != (split == "test"):
                raise DataError(f"found no {split!r} problem for {num_steps=}, {max_value=}, {phrasing=}")
        seen.add(question)
        questions.append(question)
        answers.append(f"{solution}\n#### {result}")
    return Dataset.from_dict({"question": questions, "answer": answers})


def parse_synthetic_source(source: str) -> dict[str, Any]:
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
            elif key in ("phrasing", "split_by"):
                options[key] = value
            else:
                raise ValueError("valid keys are num_steps, max_value, phrasing and split_by")
        except ValueError as e:
            raise DataError(
                f"bad synthetic dataset option {item!r} in {source!r} ({e}); "
                "example: 'synthetic:num_steps=2-3,max_value=50'"
            ) from None
    return options
