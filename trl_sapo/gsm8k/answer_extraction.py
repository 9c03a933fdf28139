"""GSM8K answer extraction: where a solution's final answer is, and numbers as exact canonical decimal strings.

Part of :mod:`trl_sapo.gsm8k.rewards` (which re-exports the public names); see its docstring for the guarantees:
every function here is total on any ``str`` and linear in its length (no backtracking regular expression, one-pass
brace matching, numbers as ``decimal.Decimal`` strings, never ``int``).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any

MAX_FRACTION_DIGITS = 100  # numerator/denominator size (characters) up to which a fraction is evaluated exactly
MAX_EXPONENT = 1_000_000  # |exponent| of a number written in scientific notation (a reference like "1e+20")

# A number as written in a solution: optional sign (a "-" glued to a word or ")" is subtraction, not a sign),
# either comma-grouped thousands ("1,000") or plain digits, an optional decimal part, or a bare ".5".
_NUM = r"(?:(?<![\w)])[-\u2212])?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?:(?<![\w)])[-\u2212])?\.\d+"
_NUM_RE = re.compile(_NUM)
# Only ever matched at a known position (re.match with pos), never searched: a search would retry the digit runs
# of every start position (quadratic in a long digit run).
_FRACTION_RE = re.compile(rf"\\d?frac\{{\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}|({_NUM})\s*/\s*({_NUM})")
_FRAC_PREFIX_RE = re.compile(r"\\d?frac\{\s*\Z")  # searched with endpos = start of the first number
_HASH_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*([^\n]*)", re.IGNORECASE)
# "2. Then ..." numbering is not an answer; a number alone on its line ("so she pays\n40.\n") is.
_LIST_MARKER_RE = re.compile(r"^[ \t]*\d+[.)](?=[ \t]+\S)", re.MULTILINE)
# No two adjacent optional whitespace runs (``\s*\$?\s*`` would try every split of a long blank run: quadratic).
_PLAIN_NUMBER_RE = re.compile(rf"\s*(?:\$\s*)?({_NUM})\s*(?:[%.]\s*)?")
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_BRACE_RE = re.compile(r"[{}]")
# LaTeX digit grouping: "1{,}000" (comma without math spacing), "1\,000" / "1\ 000" / "1~000" / "1\!000" (thin,
# normal, non-breaking, negative space) between a digit and a group of exactly three digits.
_LATEX_GROUP_SEP_RE = re.compile(r"(?<=\d)(?:\{,\}|\\[,;: !]|~|\\thinspace\s*)(?=\d{3}(?!\d))")


def normalize_number(token: str) -> str | None:
    """Canonical string of a number token: no commas/``$``/``%``, no trailing zeros, ``-0`` -> ``0``; exact for any
    number of digits. None when it is not a finite number (or its exponent exceeds :data:`MAX_EXPONENT`)."""
    token = token.strip().replace("\u2212", "-").replace(",", "").replace("$", "").rstrip("%").strip()
    try:
        value = Decimal(token)
    except (InvalidOperation, ValueError):
        return None
    return _format_decimal(value)


def _format_decimal(value: Decimal) -> str | None:
    """Fixed-point string without trailing zeros, exact (``format(.., "f")`` never rounds, unlike ``normalize()``)."""
    if not value.is_finite() or abs(value.as_tuple().exponent) > MAX_EXPONENT:
        return None
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _evaluate_fraction(numerator: str, denominator: str) -> str | None:
    """``numerator / denominator`` (canonical decimal strings) written out when it terminates (``"0.75"``), else as
    an exact reduced fraction (``"1/3"``); None when the denominator is 0 or a part is over
    :data:`MAX_FRACTION_DIGITS` characters."""
    if denominator == "0" or max(len(numerator), len(denominator)) > MAX_FRACTION_DIGITS:
        return None
    fraction = Fraction(numerator) / Fraction(denominator)
    p, q = fraction.numerator, fraction.denominator
    rest, twos, fives = q, 0, 0
    while rest % 2 == 0:
        rest, twos = rest // 2, twos + 1
    while rest % 5 == 0:
        rest, fives = rest // 5, fives + 1
    if rest != 1:
        return f"{p}/{q}"  # e.g. "1/3": exact, unlike 0.333...
    scale = max(twos, fives)  # p/q = (p * 10**scale / q) / 10**scale, the numerator an integer
    return _format_decimal(Decimal(f"{p * 10**scale // q}E-{scale}"))


def _first_number_match(span: str) -> tuple[str | None, int, int]:
    """``(value, start, end)`` of the first number of an answer span, a leading simple fraction (``3/4``,
    ``\\frac{3}{4}``) evaluated; value None when there is none (or the fraction is x/0 or huge: no answer rather
    than its numerator, so no false positive).

    Linear time: the first number is found by one search, and a fraction is only tried at the two places it could
    start (just before that number for ``\\frac{``, at it for ``a/b``).
    """
    number = _NUM_RE.search(span)
    if number is None:
        return None, 0, 0
    prefix = _FRAC_PREFIX_RE.search(span, 0, number.start())
    fraction = _FRACTION_RE.match(span, prefix.start()) if prefix is not None else None
    fraction = fraction or _FRACTION_RE.match(span, number.start())
    if fraction is not None:
        numerator, denominator = (normalize_number(g) for g in fraction.groups() if g is not None)
        value = _evaluate_fraction(numerator, denominator) if numerator and denominator else None
        return value, fraction.start(), fraction.end()
    return normalize_number(number.group(0)), number.start(), number.end()


def _first_number(span: str) -> str | None:
    """First number of an answer span; a leading simple fraction (``3/4``, ``\\frac{3}{4}``) is evaluated."""
    return _first_number_match(span)[0]


def _boxed_contents(text: str) -> str | None:
    """Contents of the last ``\\boxed{...}`` whose brace is closed (nested braces allowed), or None.

    One pass over the braces after the first ``\\boxed{`` pairs every ``{`` with its ``}`` (a stack), so unclosed
    boxes cost no rescans.
    """
    opens = [m.end() - 1 for m in _BOXED_RE.finditer(text)]
    if not opens:
        return None
    stack, closing = [], {}
    for brace in _BRACE_RE.finditer(text, opens[0]):
        if brace.group() == "{":
            stack.append(brace.start())
        elif stack:
            closing[stack.pop()] = brace.start()
    for start in reversed(opens):
        if start in closing:
            return text[start + 1 : closing[start]]
    return None


def strip_latex_digit_grouping(span: str) -> str:
    """``1{,}000`` -> ``1,000``; ``1\\,000``, ``1\\ 000``, ``1~000``, ``1\\!000`` -> ``1000`` (LaTeX thousands
    separators, as in ``\\boxed{1{,}000}``); anything else is left as it is."""
    return _LATEX_GROUP_SEP_RE.sub(lambda m: "," if m.group(0) == "{,}" else "", span)


def answer_span(text: str) -> str | None:
    """The part of a solution holding its final answer, by priority (linear time in ``text``).

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
