"""Exact comparison of an answer span with a reference number, math_verify only for what is not a plain number.

Part of :mod:`trl_sapo.gsm8k.rewards` (which re-exports :func:`answers_match`); see its docstring for the bounds.
"""

from __future__ import annotations

import re

from .answer_extraction import _PLAIN_NUMBER_RE, _first_number_match, normalize_number
from .math_verify_client import math_verify_equal

# _stands_alone: what may not follow a number that is the answer on its own, what may not precede it.
_OPERATOR_AFTER_RE = re.compile(
    r"[ \t]*(?:[\^*/+\-\u2212\u00d7\u00f7\u00b7!_]|\\(?:times|cdot|div|pm|mp|sqrt|frac|dfrac|tfrac|over|overline)"
    r"(?![a-zA-Z])|[eE][+\-]?\d|\.\s*\\overline)"
)
_TRAILING_COMMAND_RE = re.compile(r"\\([a-zA-Z]+)\s*\Z")
_NEUTRAL_COMMANDS = frozenset({
    "text", "textbf", "textit", "textrm", "textsf", "mathrm", "mathbf", "mathit", "mbox", "boxed", "fbox",
    "displaystyle", "textstyle", "left", "bigl", "Bigl", "approx", "quad", "qquad", "colon", "sim", "simeq", "to",
    "Rightarrow", "rightarrow", "implies", "therefore", "equiv",
})  # fmt: skip
_BINARY_OPERATOR_END_RE = re.compile(r"[\w)}][ \t]*[+\-\u2212*/\u00d7\u00f7\u00b7]\Z")


def _stands_alone(span: str, start: int, end: int) -> bool:
    """Whether the number at ``span[start:end]`` is a value on its own, not part of an expression that changes it:
    not followed by an operator (``2^10``, ``2 + 3``, ``1e5``, ``3!``, ``0.\\overline{3}``), not an argument
    (``\\sqrt{4}``, ``\\frac{1}{\\frac{1}{2}}``, ``x^2``, ``\\log 100``), not the right operand of ``x - 5``.
    Linear in the blanks and "(" around the number, constant otherwise (64 characters before it are looked at)."""
    if _OPERATOR_AFTER_RE.match(span, end):
        return False
    head = span[:start].rstrip(" \t\n(")[-64:]
    if head.endswith(("^", "_", "\u221a", "\u221b", "\u221c")):
        return False
    if head.endswith(("{", "[")):
        head = head[:-1].rstrip()
        if head.endswith(("^", "_")):
            return False
    command = _TRAILING_COMMAND_RE.search(head)
    if command is not None:
        return command.group(1) in _NEUTRAL_COMMANDS
    return _BINARY_OPERATOR_END_RE.search(head) is None


def answers_match(predicted_span: str | None, reference: str) -> bool:
    """Whether an answer span equals a reference number (exact numeric path, then bounded math_verify).

    Total and bounded in ``predicted_span`` (see the module docstring); raises ValueError when ``reference`` is not
    a number.
    """
    canonical = normalize_number(reference)
    if canonical is None:
        raise ValueError(f"reference must be a number, got {reference!r:.200}")
    if predicted_span is None:
        return False
    predicted, start, end = _first_number_match(predicted_span)
    if predicted is not None and _stands_alone(predicted_span, start, end):
        if predicted == canonical:
            return True
        if "/" not in predicted:  # a number on its own that differs ("18 dollars" vs 20): no need for math_verify
            return False
    if _PLAIN_NUMBER_RE.fullmatch(predicted_span):
        return False
    # Expressions ("2 + 3", "2^{10}", "\\sqrt{16}") and fractions without a finite decimal ("1/3" vs 0.333333).
    return math_verify_equal(canonical, predicted_span)
