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
"""

from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

MAX_FRACTION_DIGITS = 100  # numerator/denominator size (characters) up to which a fraction is evaluated exactly
MAX_EXPONENT = 1_000_000  # |exponent| of a number written in scientific notation (a reference like "1e+20")
MAX_VERIFY_CHARS = 1000  # longest answer span handed to math_verify
MAX_VERIFY_DIGITS = 30  # longest digit run in a span handed to math_verify
MAX_VERIFY_NESTING = 10  # deepest ({[ nesting in a span handed to math_verify
MATH_VERIFY_TIME_LIMIT_S = 0.6  # hard limit per math_verify comparison (subprocess killed beyond it)

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
_LIST_MARKER_RE = re.compile(r"^[ \t]*\d+[.)](?=\s)", re.MULTILINE)  # "2. Then ..." numbering is not an answer
# No two adjacent optional whitespace runs (``\s*\$?\s*`` would try every split of a long blank run: quadratic).
_PLAIN_NUMBER_RE = re.compile(rf"\s*(?:\$\s*)?({_NUM})\s*(?:[%.]\s*)?")
_BOXED_RE = re.compile(r"\\boxed\s*\{")
_BRACE_RE = re.compile(r"[{}]")
_DIGIT_RUN_RE = re.compile(r"\d+")
_BRACKET_RE = re.compile(r"[(){}\[\]]")
_POWER_RE = re.compile(r"\^|\*\*")
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
_HEAVY_LATEX_RE = re.compile(r"\\(?:int|iint|iiint|oint|sum|prod|lim|infty|partial|overline)(?![a-zA-Z])")
# format_reward: the last non-empty line must be exactly "#### <number>" (sign, thousands commas, decimals allowed).
_FORMAT_RE = re.compile(r"####[ \t]+-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?[ \t]*")
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


class _MathVerifyWorker:
    """One ``_math_verify_worker.py`` subprocess per process, shared by all threads (one request at a time).

    The subprocess kills and re-forks its helper after :data:`MATH_VERIFY_TIME_LIMIT_S`; should the subprocess itself
    not answer within that plus a margin (it never runs sympy, so only a crash or an overloaded machine does that),
    it is killed here and restarted on the next request.
    """

    SCRIPT = Path(__file__).with_name("_math_verify_worker.py")
    STARTUP_TIMEOUT_S = 300.0  # importing sympy + math_verify: ~1-3 s, much longer on an overloaded machine
    REPLY_MARGIN_S = 0.25

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = os.getpid()  # a forked copy of this process must not share the parent's pipes
        self._ready = False
        self._buffer = b""
        self._next_id = 0
        self.last_status = ""  # of the last request: "ok", "timeout", "error" (see the worker), or "no reply"

    def start(self) -> None:
        """Start the subprocess in the background (no-op when it runs); returns at once."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._proc is not None and self._pid == os.getpid() and self._proc.poll() is None:
            return
        if self._proc is not None and self._pid == os.getpid():
            self._stop()
        self._proc = subprocess.Popen(
            [sys.executable, str(self.SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            close_fds=True,
        )
        self._pid, self._ready, self._buffer = os.getpid(), False, b""

    def _stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for stream in (self._proc.stdin, self._proc.stdout):
                stream.close()
        self._proc = None

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._stop()

    def _read_reply(self, timeout: float) -> dict | None:
        import select

        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def equal(self, gold: str, pred: str) -> bool:
        """math_verify's ``verify(parse(gold), parse(pred))``; False when it fails or exceeds the time limit."""
        with self._lock:
            self._start()
            if not self._ready:
                if self._read_reply(self.STARTUP_TIMEOUT_S) != {"ready": True}:
                    self._stop()
                    raise RuntimeError(
                        f"the math_verify subprocess ({self.SCRIPT}) did not start within {self.STARTUP_TIMEOUT_S} s; "
                        "is math-verify installed? (pip install 'math-verify>=0.9,<0.10')"
                    )
                self._ready = True
            self._next_id += 1
            request = {"id": self._next_id, "gold": gold, "pred": pred, "time_limit": MATH_VERIFY_TIME_LIMIT_S}
            try:  # ensure_ascii: lone surrogates and control characters travel as \u escapes
                self._proc.stdin.write((json.dumps(request, ensure_ascii=True) + "\n").encode())
                self._proc.stdin.flush()
                reply = self._read_reply(MATH_VERIFY_TIME_LIMIT_S + self.REPLY_MARGIN_S)
            except OSError:  # the subprocess died (e.g. the OOM killer): restarted on the next request
                reply = None
            if reply is None or reply.get("id") != self._next_id:
                self._stop()
                self.last_status = "no reply"
                return False
            self.last_status = reply["status"]
            return bool(reply["equal"])


_MATH_VERIFY = _MathVerifyWorker()
atexit.register(_MATH_VERIFY.close)


def start_math_verify_worker() -> None:
    """Start the math_verify subprocess in the background, so that the first non-numeric answer does not wait for it."""
    _MATH_VERIFY.start()


def verifiable_span(span: str) -> bool:
    """Whether an answer span is small enough to hand to math_verify (sympy): see the module docstring."""
    if len(span) > MAX_VERIFY_CHARS or _HEAVY_LATEX_RE.search(span):
        return False
    digit_runs = [len(run) for run in _DIGIT_RUN_RE.findall(span)]
    if max(digit_runs, default=0) > MAX_VERIFY_DIGITS:
        return False
    powers = len(_POWER_RE.findall(span))
    if powers > 1 or (powers == 1 and max(digit_runs, default=0) > 4):  # 2^2^2^2^2, 9^{999999}: huge integers
        return False
    depth = deepest = 0
    for bracket in _BRACKET_RE.findall(span):
        depth = depth + 1 if bracket in "({[" else max(0, depth - 1)
        deepest = max(deepest, depth)
    return deepest <= MAX_VERIFY_NESTING


def _math_verify_equal(reference: str, span: str) -> bool:
    """math_verify comparison of a reference number with a non-plain answer span (fractions, LaTeX, expressions)."""
    if not verifiable_span(span):
        return False
    span = span.replace("**", "^")  # math_verify's LaTeX parser reads "2**2" as 2
    latex = ("\\" in span or "{" in span) and "$" not in span  # "2^{10}", "\\sqrt{16}": math mode for the parser
    return _MATH_VERIFY.equal(reference, f"${span}$" if latex else span)


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
    return _math_verify_equal(canonical, predicted_span)


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
