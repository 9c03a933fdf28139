"""GSM8K rewards in TRL's convention: ``reward_func(completions, **dataset_columns) -> list[float]``.

Answers are compared as normalized numbers (``"1,000.50"`` -> ``"1000.5"``, ``"$18."`` -> ``"18"``), which decides
almost every GSM8K case exactly and fast. Only when the model's answer span is not a plain number (``3/4``,
``\\frac{3}{4}``, ``2 + 3``) does the comparison fall back to Hugging Face's ``math_verify`` (parse + verify).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

# A number as written in a solution: optional sign (a "-" glued to a word or ")" is subtraction, not a sign),
# either comma-grouped thousands ("1,000") or plain digits, an optional decimal part, or a bare ".5".
_NUM = r"(?:(?<![\w)])[-\u2212])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?:(?<![\w)])[-\u2212])?\.\d+"
_NUM_RE = re.compile(_NUM)
_FRACTION_RE = re.compile(rf"\\d?frac\{{\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}|({_NUM})\s*/\s*({_NUM})")
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)
_LIST_MARKER_RE = re.compile(r"^[ \t]*\d+[.)](?=\s)", re.MULTILINE)  # "2. Then ..." numbering is not an answer
_PLAIN_NUMBER_RE = re.compile(rf"\s*\$?\s*({_NUM})\s*(?:%|\.)?\s*")
# format_reward: the last non-empty line must be exactly "#### <number>" (sign, thousands commas, decimals allowed).
_FORMAT_RE = re.compile(r"####[ \t]+-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?[ \t]*")
# LaTeX digit grouping: "1{,}000" (comma without math spacing), "1\,000" / "1\ 000" / "1~000" / "1\!000" (thin,
# normal, non-breaking, negative space) between a digit and a group of exactly three digits.
_LATEX_GROUP_SEP_RE = re.compile(r"(?<=\d)(?:\{,\}|\\[,;: !]|~|\\thinspace\s*)(?=\d{3}(?!\d))")


def normalize_number(token: str) -> str | None:
    """Canonical string of a number token: no commas/``$``/``%``, no trailing zeros, ``-0`` -> ``0``."""
    token = token.strip().replace("\u2212", "-").replace(",", "").replace("$", "").rstrip("%").strip()
    try:
        value = Decimal(token)
    except InvalidOperation:
        return None
    return _format_decimal(value)


def _format_decimal(value: Decimal) -> str | None:
    if not value.is_finite():
        return None
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def _first_number(span: str) -> str | None:
    """First number of an answer span; a leading simple fraction (``3/4``, ``\\frac{3}{4}``) is evaluated."""
    number = _NUM_RE.search(span)
    fraction = _FRACTION_RE.search(span)
    if fraction is not None and number is not None and fraction.start() <= number.start():  # no number before it
        groups = [g for g in fraction.groups() if g is not None]
        num, den = Decimal(normalize_number(groups[0])), Decimal(normalize_number(groups[1]))
        if den != 0:
            quotient = num / den
            # Terminating decimals are written out ("0.75"); others stay an exact reduced fraction.
            if (quotient * 10**8) == (quotient * 10**8).to_integral_value():
                return _format_decimal(quotient)
            fraction = Fraction(num) / Fraction(den)
            return f"{fraction.numerator}/{fraction.denominator}"  # e.g. "1/3": exact, unlike 0.333...
    return normalize_number(number.group(0)) if number is not None else None


def _boxed_contents(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        brace = text.find("{", start)
        if brace != -1 and text[start + len("\\boxed") : brace].strip() == "":
            depth = 0
            for i in range(brace, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[brace + 1 : i]
        start = text.rfind("\\boxed", 0, start)
    return None


def strip_latex_digit_grouping(span: str) -> str:
    """``1{,}000`` -> ``1,000``; ``1\\,000``, ``1\\ 000``, ``1~000``, ``1\\!000`` -> ``1000`` (LaTeX thousands
    separators, as in ``\\boxed{1{,}000}``); anything else is left as it is."""
    return _LATEX_GROUP_SEP_RE.sub(lambda m: "," if m.group(0) == "{,}" else "", span)


def answer_span(text: str) -> str | None:
    """The part of a solution holding its final answer, by priority.

    1. the last ``#### ...`` line, 2. the last ``\\boxed{...}``, 3. the last "the answer is ..." line,
    4. the last number anywhere. Returns None when the text contains no number at all. LaTeX thousands separators
    in spans 1-3 are normalized (:func:`strip_latex_digit_grouping`).
    """
    for span in (
        *(m.group(1) for m in list(_HASH_RE.finditer(text))[-1:]),
        _boxed_contents(text),
        *(m.group(1) for m in list(_ANSWER_IS_RE.finditer(text))[-1:]),
    ):
        if span is not None and _NUM_RE.search(span):
            return strip_latex_digit_grouping(span.strip())
    numbers = _NUM_RE.findall(_LIST_MARKER_RE.sub(" ", text))
    return numbers[-1] if numbers else None


def extract_final_answer(text: str) -> str | None:
    """The model's final numeric answer, normalized (see :func:`answer_span` for the priority), or None.

    A leading fraction in the answer span is evaluated (``3/4`` -> ``"0.75"``) or, when it has no finite decimal
    form, kept as ``"1/3"``.
    """
    span = answer_span(text)
    return _first_number(span) if span is not None else None


def reference_answer(answer: str) -> str | None:
    """Normalized number after ``####`` in a GSM8K reference solution; None when there is none."""
    matches = list(_HASH_RE.finditer(answer))
    if not matches:
        return None
    span = matches[-1].group(1).strip()
    match = _PLAIN_NUMBER_RE.fullmatch(span)
    return normalize_number(match.group(1)) if match else None


def completion_text(completion: Any, index: int = 0) -> str:
    """Text of one completion: a string, or TRL's conversational form (list of messages; the last one is used)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):  # multimodal-style content parts: [{"type": "text", "text": ...}]
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise TypeError(
        f"completion {index} must be a string or a list of chat messages "
        f"[{{'role': 'assistant', 'content': str}}], got {type(completion).__name__}: {completion!r:.200}"
    )


def _math_verify_equal(reference: str, span: str) -> bool:
    """math_verify comparison of a reference number with a non-plain answer span (fractions, LaTeX, expressions)."""
    from math_verify import parse, verify

    # math_verify's timeouts use signal.alarm, which only works in the main thread; elsewhere (TRL's async reward
    # loop, thread pools) run without a timeout: the spans are one short line, so parsing cannot blow up.
    timeout = 5 if threading.current_thread() is threading.main_thread() else None
    gold = parse(reference, parsing_timeout=timeout)
    pred = parse(span if "\\" not in span or "$" in span else f"${span}$", parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


def answers_match(predicted_span: str | None, reference: str) -> bool:
    """Whether an answer span equals a normalized reference number (fast numeric path, then math_verify)."""
    if predicted_span is None:
        return False
    predicted = _first_number(predicted_span)
    if predicted is not None and "/" not in predicted and Decimal(predicted) == Decimal(reference):
        return True
    if _PLAIN_NUMBER_RE.fullmatch(predicted_span):  # a plain number that differs: no need for math_verify
        return False
    return _math_verify_equal(reference, predicted_span)


def _as_reference(answer: Any, index: int) -> str:
    """Reference number from a GSM8K answer (``... #### 18``) or a bare number (``"18"``)."""
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise TypeError(f"answer {index} must be a string, got {type(answer).__name__}: {answer!r:.200}")
    reference = reference_answer(answer) if "####" in answer else normalize_number(answer)
    if reference is None:
        raise ValueError(f"answer {index} has no number after '####' (nor is it a bare number): {answer!r:.200}")
    return reference


def accuracy_reward(completions: Sequence[Any], answer: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when a completion's final answer equals the reference number (column ``answer``), else 0.0."""
    if len(completions) != len(answer):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} answers")
    rewards = []
    for i, (completion, ref) in enumerate(zip(completions, answer)):
        text = completion_text(completion, i)
        rewards.append(1.0 if answers_match(answer_span(text), _as_reference(ref, i)) else 0.0)
    return rewards


def format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """1.0 when the last non-empty line is exactly ``#### <number>`` (e.g. ``#### -1,250.5``), else 0.0.

    No ``$``, units or trailing text are allowed on that line: the target format is GSM8K's own reference format,
    which ``SYSTEM_PROMPT`` asks for.
    """
    rewards = []
    for i, completion in enumerate(completions):
        lines = [line for line in completion_text(completion, i).splitlines() if line.strip()]
        rewards.append(1.0 if lines and _FORMAT_RE.fullmatch(lines[-1].strip()) else 0.0)
    return rewards


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {"accuracy": accuracy_reward, "format": format_reward}


def get_reward_funcs(names: str | Sequence[str]) -> list[Callable[..., list[float]]]:
    """Reward functions by registry name (``"accuracy"``, ``"format"``), in order."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError(f"no reward functions given; valid names: {sorted(REWARD_FUNCS)}")
    unknown = [name for name in names if name not in REWARD_FUNCS]
    if unknown:
        raise ValueError(f"unknown reward function(s) {unknown}; valid names: {sorted(REWARD_FUNCS)}")
    return [REWARD_FUNCS[name] for name in names]
