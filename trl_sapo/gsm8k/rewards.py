"""GSM8K rewards in TRL's convention: ``reward_func(completions, **dataset_columns) -> list[float]``.

Answers are compared as normalized numbers (``"1,000.50"`` -> ``"1000.5"``, ``"$18."`` -> ``"18"``), exactly (string
comparison of canonical decimals: no float rounding, no digit limit), which decides almost every GSM8K case fast.
Only when the model's answer span is not a plain number (``3/4`` with a non-terminating value, ``\\frac{3}{4}``,
``2 + 3``) does the comparison fall back to Hugging Face's ``math_verify`` (parse + verify).

Model output is untrusted, so every function here is **total** and **bounded** on any ``str``:

- Total: text never makes them raise (a malformed *reference* or a non-string completion still raises).
- Extraction is linear in the text: no regular expression here can backtrack over unbounded input (each is
  anchored, or unambiguous, or only applied at positions found by a linear scan), brace matching for ``\\boxed{}``
  is one pass, and numbers are handled as decimal strings (``decimal.Decimal``), never through ``int`` (whose
  4300-digit ``str`` limit raises). Fractions are only evaluated when both parts have at most
  :data:`MAX_FRACTION_DIGITS` characters.
- math_verify (sympy) only sees pre-screened spans (:func:`verifiable_span`: at most :data:`MAX_VERIFY_CHARS`
  characters, digit runs of at most :data:`MAX_VERIFY_DIGITS`, at most one power operator and then no number over
  4 digits, bracket nesting at most :data:`MAX_VERIFY_NESTING`, no integrals/sums/limits/products), and runs in a
  subprocess with a hard time limit of :data:`MATH_VERIFY_TIME_LIMIT_S` (SIGKILL, which also stops sympy's C loops,
  unlike math_verify's own ``signal.alarm`` timeout that only works in the main thread). Timeouts count as "not
  equal". The same path serves the main thread and worker threads.

Per completion, then: extraction O(length) (~30 ms for 200 000 characters), plus at most one math_verify call of at
most 0.6 s (+0.25 s margin should the subprocess itself stall). Measured on 2 loaded CPU cores
(``benchmarks/rewards.py``, ``docs/results/rewards.md``): worst 54 ms (main thread) / 58 ms (worker thread) on
adversarial completions of up to 200 000 characters; median 0.04 ms on SmolLM2's own completions. Not covered by
that bound: the one-time start of the math_verify subprocess (~3 s; :func:`start_math_verify_worker` starts it in
the background, as :func:`get_reward_funcs` and ``evaluate`` do), and waiting for another thread's math_verify call
(one subprocess per process, one call at a time). POSIX only (the subprocess forks its helpers).

The code lives in three modules by concern, their public names re-exported here: :mod:`.answer_extraction` (where
the answer is, numbers as canonical decimals), :mod:`.number_match` (:func:`answers_match`: exact comparison, then
math_verify) and :mod:`.math_verify_client` (the subprocess and its pre-screen).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .answer_extraction import (
    MAX_EXPONENT,
    MAX_FRACTION_DIGITS,
    answer_span,
    completion_text,
    extract_final_answer,
    normalize_number,
    reference_answer,
    strip_latex_digit_grouping,
)
from .math_verify_client import (
    MATH_VERIFY_TIME_LIMIT_S,
    MAX_VERIFY_CHARS,
    MAX_VERIFY_DIGITS,
    MAX_VERIFY_NESTING,
    start_math_verify_worker,
    verifiable_span,
)
from .number_match import answers_match

__all__ = [
    "CONFIGURED_REWARDS",
    "MATH_VERIFY_TIME_LIMIT_S",
    "MAX_EXPONENT",
    "MAX_FRACTION_DIGITS",
    "MAX_VERIFY_CHARS",
    "MAX_VERIFY_DIGITS",
    "MAX_VERIFY_NESTING",
    "REWARD_FUNCS",
    "REWARD_NAMES",
    "accuracy_reward",
    "answer_span",
    "answers_match",
    "completion_text",
    "extract_final_answer",
    "format_reward",
    "get_reward_funcs",
    "normalize_number",
    "overlong_reward",
    "reference_answer",
    "start_math_verify_worker",
    "strip_latex_digit_grouping",
    "verifiable_span",
]

# format_reward: the last non-empty line must be exactly "#### <number>" (sign, thousands commas, decimals allowed).
_FORMAT_RE = re.compile(r"####[ \t]+-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?[ \t]*")


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
    """1.0 when a completion's final answer equals the reference number (column ``answer``), else 0.0.

    Total and bounded in the completion text (module docstring); a non-string completion or an ``answer`` without
    a number raises.
    """
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


def overlong_reward(max_completion_length: int, soft_punish_cache: int | None = None) -> Callable[..., list[float]]:
    """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), TRL's ``get_soft_overlong_punishment``: 0 for a
    completion of at most ``max_completion_length - soft_punish_cache`` tokens, then linearly down to -1 at
    ``max_completion_length`` (a completion cut off there never finished its answer). Added to ``accuracy``, a
    right answer that runs into the limit scores 0 and a finished right answer 1, so rambling does not pay.

    ``soft_punish_cache`` (tokens) defaults to ``max_completion_length // 6`` (16 of 96)."""
    from trl.rewards import get_soft_overlong_punishment

    cache = max_completion_length // 6 if soft_punish_cache is None else soft_punish_cache
    if not 0 < cache < max_completion_length:
        raise ValueError(
            f"`soft_punish_cache` must be between 1 and max_completion_length - 1 ({max_completion_length - 1}) "
            f"tokens, got {cache}."
        )
    return get_soft_overlong_punishment(max_completion_len=max_completion_length, soft_punish_cache=cache)


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {"accuracy": accuracy_reward, "format": format_reward}
# Rewards that depend on the training config: name -> factory(max_completion_length, soft_punish_cache).
CONFIGURED_REWARDS: dict[str, Callable[..., Callable[..., list[float]]]] = {"overlong": overlong_reward}
REWARD_NAMES = (*REWARD_FUNCS, *CONFIGURED_REWARDS)


def get_reward_funcs(
    names: str | Sequence[str], max_completion_length: int | None = None, soft_punish_cache: int | None = None
) -> list[Callable[..., list[float]]]:
    """Reward functions by registry name (``"accuracy"``, ``"format"``, ``"overlong"``), in order. ``"overlong"``
    needs ``max_completion_length`` (the trainer's) and takes ``soft_punish_cache`` (see :func:`overlong_reward`)."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError(f"no reward functions given; valid names: {sorted(REWARD_NAMES)}")
    unknown = [name for name in names if name not in REWARD_NAMES]
    if unknown:
        raise ValueError(f"unknown reward function(s) {unknown}; valid names: {sorted(REWARD_NAMES)}")
    if any(name in CONFIGURED_REWARDS for name in names) and max_completion_length is None:
        raise ValueError("the `overlong` reward needs max_completion_length (the trainer's completion limit).")
    if "accuracy" in names:
        start_math_verify_worker()  # imports sympy in the background while the trainer is set up
    return [
        CONFIGURED_REWARDS[name](max_completion_length, soft_punish_cache)
        if name in CONFIGURED_REWARDS
        else REWARD_FUNCS[name]
        for name in names
    ]
