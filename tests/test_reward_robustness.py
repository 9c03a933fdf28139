"""Rewards and scoring on adversarial model output (issue 18): total and bounded, with no false positives.

Every case runs in the main thread and again in a worker thread (where TRL's async reward loop and thread pools
call rewards, and where signal-based timeouts do not exist); both must give the same value. Hang guards, not timed
assertions (speed is measured by benchmarks/rewards.py): pytest-timeout's thread method ends the run with stack
dumps if the main thread hangs, even inside C code, and a worker-thread call that does not return fails its test.
Where the value of a text is known, the reward is checked against it.
"""

from __future__ import annotations

import random
import re
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trl_sapo.gsm8k import math_verify_client, rewards
from trl_sapo.gsm8k.data import DataError, strip_calculator_annotations, validate
from trl_sapo.gsm8k.rewards import (
    accuracy_reward,
    answers_match,
    extract_final_answer,
    format_reward,
    reference_answer,
)

pytestmark = pytest.mark.timeout(300, method="thread")
WORKER_HANG_S = 60  # a worker-thread call this slow is a hang (bound: 1 s)
MAX_CHARS = 200_000
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
_WORKER = ThreadPoolExecutor(1, thread_name_prefix="reward-worker")


def setup_module():
    rewards.start_math_verify_worker()


def _all_scores(text: str, references: list[str]) -> tuple:
    return (
        tuple(accuracy_reward([text] * len(references), answer=references)),
        format_reward([text])[0],
        extract_final_answer(text),
    )


def score(text: str, *references: str) -> tuple[float, ...]:
    """accuracy_reward of ``text`` against each reference; main thread and worker thread must agree."""
    main = _all_scores(text, list(references))
    worker = _WORKER.submit(_all_scores, text, list(references)).result(timeout=WORKER_HANG_S)
    assert main == worker
    accuracies, fmt, extracted = main
    assert all(a in (0.0, 1.0) for a in accuracies) and fmt in (0.0, 1.0)
    assert extracted is None or isinstance(extracted, str)
    return accuracies


def group_digits(run: str, separator: str) -> str:
    """``"1234567"`` -> ``"1,234,567"`` for separator ``","`` (groups of three from the right)."""
    head = len(run) % 3 or 3
    return separator.join([run[:head]] + [run[i : i + 3] for i in range(head, len(run), 3)])


def digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(1, 9)) + "".join(rng.choices("0123456789", k=n - 1))


def _different(run: str) -> str:
    return run[:-1] + ("1" if run[-1] != "1" else "2")


ANSWER_WRAPPERS = ["#### {}", "\\boxed{{{}}}", "The answer is {}.", "So the total is {}"]
LENGTHS = st.sampled_from([1, 3, 4, 7, 100, 4301, 5001, 30_000, MAX_CHARS - 20]) | st.integers(1, 3000)


@SETTINGS
@given(n=LENGTHS, separator=st.sampled_from(["", ",", "{,}", "\\,"]), wrapper=st.sampled_from(ANSWER_WRAPPERS))
def test_long_digit_runs_exact(n, separator, wrapper):
    """Numbers of any length (beyond int's 4300-digit str limit) compare exactly, with thousands separators."""
    if separator in ("{,}", "\\,") and wrapper.startswith("So"):
        separator = ","  # LaTeX separators are read inside answer spans (####, \boxed, "the answer is") only
    run = digits(random.Random(n), n)
    text = wrapper.format(group_digits(run, separator))
    assert score(text, f"#### {run}", f"#### {_different(run)}", run + "0") == (1.0, 0.0, 0.0)
    assert extract_final_answer(text) == run


@SETTINGS
@given(n=LENGTHS, separator=st.sampled_from([" ", ".", "_", "/", "^", "**", "\\cdot ", "e", "!"]))
def test_digit_runs_with_other_separators_are_not_the_run(n, separator):
    """``999 999``, ``999.999``, ``999/999``, ``999^999`` ... are never the digit run without the separators."""
    run = "9" * max(n, 4)
    text = "#### " + group_digits(run, separator)
    (reward,) = score(text, f"#### {run}")
    assert reward == 0.0


def tower(base: int, height: int, style: str) -> str:
    if style == "latex":
        return "{".join([str(base)] * height).replace("{", "^{") + "}" * (height - 1)
    if style == "latex_paren":
        return "^(".join([str(base)] * height) + ")" * (height - 1)
    return style.join([str(base)] * height)


@SETTINGS
@given(
    base=st.integers(2, 12),
    height=st.integers(2, 400),
    style=st.sampled_from(["^", "**", "latex", "latex_paren"]),
    wrapper=st.sampled_from(["#### {}", "\\boxed{{{}}}", "The answer is ${}$"]),
)
def test_power_towers(base, height, style, wrapper):
    """2^2^2^2^2^2 and friends: sympy would compute them in C, forever; they are never their first number."""
    text = wrapper.format(tower(base, height, style))
    references = [str(base)] + ([str(base**base)] if height == 2 else [])
    result = score(text, *references)
    assert result[0] == 0.0  # no false positive
    if height == 2 and style != "latex_paren":  # a small power is evaluated (math_verify, hard time limit)
        assert result[1] == 1.0


@SETTINGS
@given(
    kind=st.sampled_from(["frac", "sqrt", "braces", "parens", "frac_open"]),
    depth=st.sampled_from([1, 2, 3, 5, 9, 50, 400, 5000, 60_000]) | st.integers(1, 30),
    wrapper=st.sampled_from(["#### {}", "\\boxed{{{}}}", "The answer is ${}$"]),
)
def test_nested_structures(kind, depth, wrapper):
    """Nested \\frac / \\sqrt / braces / parentheses: values are known, so right answers and wrong ones are checked."""
    if kind == "frac":  # 1/(1/(1/2)): 2 for an even depth, 1/2 for an odd one
        text = "\\frac{1}{" * depth + "2" + "}" * depth
        value, wrong = ("2", "1") if depth % 2 == 0 else ("0.5", "1")
    elif kind == "sqrt":  # sqrt(sqrt(16)) ...
        text = "\\sqrt{" * depth + "16" + "}" * depth
        value, wrong = {1: "4", 2: "2"}.get(depth), "16"
    elif kind == "braces":
        text, value, wrong = "{" * depth + "7" + "}" * depth, "7", "8"
    elif kind == "parens":
        text, value, wrong = "(" * depth + "7" + ")" * depth, "7", "8"
    else:  # never closed: malformed, no known value; only totality is checked
        score(wrapper.format("\\frac{" * depth + "3"), "3")
        return
    text = wrapper.format(text)
    references = [wrong] + ([value] if value is not None else [])
    result = score(text, *references)
    assert result[0] == 0.0
    small = depth <= rewards.MAX_VERIFY_NESTING // 2  # deeper expressions are not handed to sympy: scored 0
    if value is not None and (kind in ("braces", "parens") or small):
        assert result[1] == 1.0


@SETTINGS
@given(st.text(st.characters(categories=["Nd"]), min_size=1, max_size=12))
def test_unicode_digits(chars):
    """Any script's decimal digits (Arabic-Indic, Devanagari, fullwidth ...) read as the number they spell."""
    ascii_digits = "".join(str(unicodedata.decimal(c)) for c in chars)
    value = ascii_digits.lstrip("0") or "0"
    assert score(f"#### {chars}", value, value + "1") == (1.0, 0.0)
    assert extract_final_answer(f"The answer is {chars}") == value


NOISE = st.characters(categories=["Cc", "Cs", "Cf", "Co", "Zs", "Zl", "Zp"])


@SETTINGS
@given(before=st.text(NOISE, max_size=200), after=st.text(NOISE.filter(lambda c: c != "\n"), max_size=50))
def test_control_characters_and_lone_surrogates(before, after):
    """Control characters, lone surrogates, format/private-use characters around the answer line."""
    text = f"{before}\n#### 42{after}"
    assert score(text, "42", "43") == (1.0, 0.0)
    score(before + after, "42")  # total: some value, no exception


FILLER_PIECES = [
    "She has 12 apples. ", "7 ", "(", ")", "{", "}", "^", "**", "\\frac{1}{", "\\sqrt{", "1,000", "99999999", ".",
    "The answer is 5 ", "\\boxed{9", "\n", " ", "<<", ">>", "$", "\\", "\ud800", "\x00", "-", "/", "٣", "e5",
]  # fmt: skip


def filler(seed: int, size: int, exclude: tuple[str, ...] = ()) -> str:
    rng = random.Random(seed)
    pieces = [p for p in FILLER_PIECES if not any(x in p for x in exclude)]
    out, length = [], 0
    while length < size:
        piece = rng.choice(pieces) * rng.choice([1, 1, 1, 50, 2000])
        out.append(piece)
        length += len(piece)
    return "".join(out)[:size]


@SETTINGS
@given(seed=st.integers(0, 10**6), at_end=st.booleans(), marker=st.sampled_from(["####", "boxed", "answer is"]))
def test_200k_character_texts(seed, at_end, marker):
    """200 000-character degenerate texts with the final answer at either end."""
    answer = {"####": "#### 42", "boxed": "\\boxed{42}", "answer is": "The answer is 42"}[marker]
    # Lower-priority markers must not be outranked by what the filler contains (#### > \boxed{} > "answer is").
    exclude = {"####": (), "boxed": ("boxed", "{", "}"), "answer is": ("boxed", "answer is", "{", "}")}[marker]
    body = filler(seed, MAX_CHARS - 20, exclude)
    body = body.replace("#", "")  # only the answer line has ####
    text = f"{body}\n{answer}" if at_end else f"{answer}\n{body}"
    assert score(text, "42", "41") == (1.0, 0.0)


@pytest.mark.parametrize(
    ("text", "references", "expected"),
    [
        ("#### " + "9" * 30000, ["9" * 30000, "9"], (1.0, 0.0)),  # was: quadratic fraction regex, > 60 s
        ("#### 1" + "0" * 5000, ["1" + "0" * 5000, "1"], (1.0, 0.0)),  # was: ValueError (int str digit limit)
        ("#### 2**2**2**2**2**2", ["2", "16"], (0.0, 0.0)),  # was: sympy hangs in C
        ("\\boxed{" + "\\frac{1}{" * 400 + "2" + "}" * 400 + "}", ["1", "0.5"], (0.0, 0.0)),  # was: 6 s
        ("\\boxed{\\int_0^\\infty e^{-x^2} dx}", ["0", "1"], (0.0, 0.0)),  # was: 2 s
        ("#### 5" + " " * MAX_CHARS + "x", ["5"], (1.0,)),
        ("\\boxed{" * (MAX_CHARS // 7), ["5"], (0.0,)),  # was: quadratic rescans of unclosed boxes
        ("#### " + "9" * 300 + "/3", ["3" * 300], (0.0,)),  # a huge fraction is no answer, never its numerator
        ("#### 6/0", ["6"], (0.0,)),
        ("\\boxed{\\frac{1}{\\frac{1}{2}}}", ["1", "2"], (0.0, 1.0)),
        ("\\boxed{\\sqrt{16}}", ["16", "4"], (0.0, 1.0)),
        ("#### 2^10", ["2", "1024"], (0.0, 1.0)),
        ("#### 18 - 2 = 16", ["18", "16"], (0.0, 1.0)),
        ("#### 1e5", ["1"], (0.0,)),  # math_verify alone would read "1e5" as 1
        ("#### x - 5", ["5"], (0.0,)),
        ("#### 3!", ["3"], (0.0,)),
        ("#### 5 apples and 18 pears", ["18", "5"], (0.0, 1.0)),
        # SmolLM2 completions the former first-number rule rewarded for the wrong reference
        ("The answer is 14 + 2 = 16 dollars.", ["14", "16"], (0.0, 1.0)),
        ("so the answer is x + 4 dollars", ["4"], (0.0,)),
        ("So, the answer is 5 - 4 = 1 sticker.", ["5", "1"], (0.0, 1.0)),
        ("#### 1.00000000000000000000000000001", ["1"], (0.0,)),  # exact: no 28-digit Decimal rounding
        ("\\boxed{\\dfrac{2}{6}}", ["0.333333"], (1.0,)),  # math_verify's tolerance for rounded references
    ],
)
def test_known_failures(text, references, expected):
    assert score(text, *references) == expected


# The documented per-call bound (module docstring of trl_sapo.gsm8k.rewards): "at most one math_verify call of at
# most 0.6 s (+0.25 s margin ...)". Written here, not read from the constants, so that raising them fails; SLACK_S
# covers a loaded machine.
CALL_BOUND_S = 0.6 + 0.25
SLACK_S = 0.5


def test_the_documented_bound_is_the_code_s():
    assert "at most one math_verify call of at\nmost 0.6 s (+0.25 s margin" in rewards.__doc__
    assert math_verify_client.MATH_VERIFY_TIME_LIMIT_S + math_verify_client._MathVerifyWorker.REPLY_MARGIN_S <= (
        CALL_BOUND_S
    )


def test_math_verify_hard_time_limit_recovers(monkeypatch):
    """A comparison that sympy cannot finish is killed (no signals needed) within the documented bound, in the main
    thread and in a worker thread, and the next one works."""
    monkeypatch.setattr(math_verify_client, "verifiable_span", lambda span: True)  # let the tower through
    for run in (lambda f: f(), lambda f: _WORKER.submit(f).result(timeout=WORKER_HANG_S)):
        started = time.monotonic()
        assert run(lambda: answers_match("2**2**2**2**2**2", "16")) is False
        elapsed = time.monotonic() - started
        assert math_verify_client._MATH_VERIFY.last_status == "timeout"  # the subprocess's limit, not the margin
        assert elapsed < CALL_BOUND_S + SLACK_S, f"{elapsed:.2f} s > {CALL_BOUND_S} s (+{SLACK_S} s slack)"
        assert elapsed > math_verify_client.MATH_VERIFY_TIME_LIMIT_S * 0.9  # it did run into the limit
        assert run(lambda: answers_match("\\frac{1}{3}", "0.333333")) is True
        assert math_verify_client._MATH_VERIFY.last_status == "ok"


@pytest.mark.parametrize(
    "answer",
    ["#### 5" + " " * MAX_CHARS + "x", "#### " + "1," * MAX_CHARS, "<" * MAX_CHARS + "\n#### 3", "#" * MAX_CHARS],
)
def test_dataset_text_is_parsed_in_bounded_time(answer):
    """Reference parsing and validation (data.validate) on adversarial dataset rows: a value or a DataError."""
    reference_answer(answer)
    strip_calculator_annotations(answer)
    dataset = Dataset.from_dict({"question": ["q"], "answer": [answer]})
    try:
        validate(dataset)
    except DataError as e:
        assert "row 0" in str(e)


def test_strip_calculator_annotations_matches_the_regex():
    rng = random.Random(0)
    pattern = re.compile(r"<<[^>]*>>")
    for _ in range(20000):
        text = "".join(rng.choices("<>a=", k=rng.randint(0, 14)))
        assert strip_calculator_annotations(text) == pattern.sub("", text)
    assert strip_calculator_annotations("16-3-4=<<16-3-4=9>>9 eggs <<a") == "16-3-4=9 eggs <<a"


def test_malformed_reference_still_raises():
    with pytest.raises(ValueError, match="answer 0 has no number"):
        accuracy_reward(["#### 1" * 1000], answer=["#### " + "x" * MAX_CHARS])
    with pytest.raises(ValueError, match="reference must be a number"):
        answers_match("#### 1", "1e9999999999")


@pytest.mark.slow
@pytest.mark.timeout(600, method="thread")
def test_rewards_benchmark_smoke(tmp_path):
    """benchmarks/rewards.py --smoke: both rewards, both threads, both sets; JSON and the markdown made from it."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    out = tmp_path / "rewards.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.rewards", "--smoke", "--output", str(out)],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for set_name, n in (("realistic", 6), ("adversarial", 17)):
        timing = result["sets"][set_name]["timing"]
        assert set(timing) == {"trl_sapo/main", "trl_sapo/worker", "trl/main", "trl/worker"}
        for stats in timing.values():
            assert stats["n"] == n and 0 < stats["median_ms"] <= stats["p99_ms"] <= stats["max_ms"]
        assert timing["trl_sapo/main"]["timeouts"] == timing["trl_sapo/worker"]["timeouts"] == 0
        assert result["sets"][set_name]["trl_sapo_thread_consistency"]
    assert result["sets"]["adversarial"]["trl_sapo_right_value"]
    assert result["sets"]["realistic"]["timing"]["trl_sapo/main"]["mean_reward"] == pytest.approx(4 / 6)
    assert 0 <= result["sets"]["realistic"]["agreement_main_thread"]["rate"] <= 1
    assert "| adversarial | TRL | worker |" in out.with_suffix(".md").read_text()
