"""Answer extraction and the GSM8K reward functions (trl_sapo.gsm8k.rewards)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from trl_sapo.gsm8k.rewards import (
    REWARD_FUNCS,
    REWARD_NAMES,
    accuracy_reward,
    extract_final_answer,
    format_reward,
    get_reward_funcs,
    reference_answer,
)

EXTRACTION_CASES = [
    # (completion text, expected normalized final answer)
    ("She makes 9 * 2 = $18 every day.\n#### 18", "18"),
    ("#### 1,000.50", "1000.5"),
    ("So the total is $18.", "18"),
    ("The result is 3.0", "3"),
    ("The answer is 42.", "42"),
    ("The final answer is: 7 apples", "7"),
    ("Answer: 12", "12"),
    ("We get \\boxed{56} in the end.", "56"),
    ("\\boxed{\\frac{3}{4}}", "0.75"),
    ("\\boxed{1,234}", "1234"),
    ("It dropped to -5 degrees.", "-5"),
    ("The balance is −12 dollars.", "-12"),  # unicode minus
    ("10-3=7", "7"),  # "-3" here is subtraction, not a negative number
    ("The discount is 25%.", "25"),
    ("It is 5 km away.", "5"),
    ("Half is .5", "0.5"),
    ("Total: 2.50 + 1.25 = 3.75", "3.75"),
    ("1,200 + 300 = 1,500 people", "1500"),
    ("The answer is 0.250", "0.25"),
    ("The answer is 100.00", "100"),
    ("The answer is -0", "0"),
    ("#### -3.5", "-3.5"),
    ("The answer is 1/3", "1/3"),  # no finite decimal: kept exact
    ("#### 3/4", "0.75"),
    ("1. First 3 + 4 = 7\n2. Done", "7"),  # list numbering is not an answer
    ("Each costs 4, so she pays\n40.\n", "40"),  # a final answer alone on its line is not a list marker
    ("She pays\n  40)\n\n", "40"),
    ("Steps:\n1.\tAdd 3 and 4 to get 7\n2) Done", "7"),
    ("The answer is 5.\n#### 6", "6"),  # the #### line wins
    ("\\boxed{9} but the answer is 10", "9"),  # boxed beats "the answer is"
    ("#### 5\nlater I said 7", "5"),
    ("I computed 40 then 2 ... \n####   2,000", "2000"),
    ("No idea.", None),
    ("", None),
    ("#### \n so the answer is 8", "8"),  # an empty #### line falls through
]


@pytest.mark.parametrize(("text", "expected"), EXTRACTION_CASES)
def test_extract_final_answer(text, expected):
    assert extract_final_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs.\n#### 18", "18"),
        ("#### 1,000", "1000"),
        ("#### -7", "-7"),
        ("#### 2.50", "2.5"),
        ("work\n#### $5", "5"),
        ("no marker 18", None),
        ("#### eighteen", None),
        ("#### 5 or 6", None),
    ],
)
def test_reference_answer(answer, expected):
    assert reference_answer(answer) == expected


ACCURACY_CASES = [
    # (completion, answer column value, expected reward)
    ("So she makes 18 dollars.\n#### 18", "#### 18", 1.0),
    ("#### 18.00", "#### 18", 1.0),
    ("#### 1,000", "blah\n#### 1000", 1.0),
    ("The answer is $1,000.", "#### 1000", 1.0),
    ("\\boxed{\\frac{1}{2}}", "#### 0.5", 1.0),
    ("#### 3/4", "#### 0.75", 1.0),  # fast path: fraction evaluated
    ("\\boxed{\\dfrac{2}{6}}", "#### 0.333333", 1.0),  # math_verify fallback (1/3 vs rounded decimal)
    ("#### 17", "#### 18", 0.0),
    ("#### -18", "#### 18", 0.0),
    ("I think 18 is wrong, the answer is 19", "#### 18", 0.0),
    ("no number here", "#### 18", 0.0),
    ([{"role": "assistant", "content": "#### 42"}], "#### 42", 1.0),
    ([{"role": "assistant", "content": "#### 41"}], "#### 42", 0.0),
    ([{"role": "assistant", "content": [{"type": "text", "text": "#### 42"}]}], "#### 42", 1.0),
    ("#### 42", "42", 1.0),  # a bare-number reference works too
    # LaTeX thousands separators inside \boxed{} (and other answer spans)
    ("\\boxed{1{,}000}", "#### 1000", 1.0),
    ("\\boxed{1\\,000}", "#### 1000", 1.0),
    ("\\boxed{1\\ 000}", "#### 1000", 1.0),
    ("\\boxed{1~000}", "#### 1000", 1.0),
    ("\\boxed{1\\!000}", "#### 1000", 1.0),
    ("\\boxed{1\\thinspace 000}", "#### 1000", 1.0),
    ("\\boxed{\\$1{,}234{,}567.5}", "#### 1234567.5", 1.0),
    ("\\boxed{-12\\,345}", "#### -12345", 1.0),
    ("The answer is $1{,}000$.", "#### 1000", 1.0),
    ("#### 2{,}500", "#### 2500", 1.0),
    ("\\boxed{1{,}000}", "#### 1", 0.0),  # read as 1000, not as 1
    ("\\boxed{1\\,00}", "#### 100", 0.0),  # not a group of three: no separator, read as 1
]


@pytest.mark.parametrize(("completion", "answer", "expected"), ACCURACY_CASES)
def test_accuracy_reward(completion, answer, expected):
    assert accuracy_reward([completion], answer=[answer]) == [expected]


def test_accuracy_reward_batch_and_trl_kwargs():
    # TRL passes prompts, completion_ids and every dataset column as keyword arguments.
    rewards = accuracy_reward(
        ["#### 1", "#### 3", "\\boxed{3}"],
        answer=["#### 1", "#### 2", "#### 3"],
        prompts=["p"] * 3,
        completion_ids=[[1]] * 3,
        question=["q"] * 3,
    )
    assert rewards == [1.0, 0.0, 1.0]


def test_accuracy_reward_off_main_thread(monkeypatch):
    """math_verify's own timeout is signal.alarm, which only works in the main thread: off it, a comparison that runs
    into the time limit must still stop within the bound (the subprocess's SIGKILL) and score 0, and the next one
    still work."""
    from trl_sapo.gsm8k import math_verify_client

    monkeypatch.setattr(math_verify_client, "verifiable_span", lambda span: True)  # let the tower reach sympy
    bound = 0.6 + 0.25  # documented in trl_sapo.gsm8k.rewards (checked in test_reward_robustness.py)
    completions = ["\\boxed{2**2**2**2**2**2}", "\\boxed{\\frac{1}{3}}", "\\boxed{\\frac{2}{3}}"]
    answers = ["16", "#### 0.333333", "#### 0.333333"]
    with ThreadPoolExecutor(1) as pool:
        math_verify_client.start_math_verify_worker()
        pool.submit(accuracy_reward, completions[1:2], answer=answers[1:2]).result()  # warm: the subprocess is up
        started = time.monotonic()
        result = pool.submit(accuracy_reward, completions, answer=answers).result()
        elapsed = time.monotonic() - started
    assert threading.current_thread() is threading.main_thread()
    assert result == [0.0, 1.0, 0.0]
    assert 0.6 * 0.9 < elapsed < bound + 1.0  # hit the limit, within it


@pytest.mark.parametrize("bad", [None, 5, {"content": "#### 1"}, [], [{"role": "assistant", "content": None}]])
def test_non_string_completion_raises_with_index(bad):
    with pytest.raises(TypeError, match="completion 1"):
        accuracy_reward(["#### 1", bad], answer=["#### 1", "#### 1"])
    with pytest.raises(TypeError, match="completion 1"):
        format_reward(["#### 1", bad])


def test_accuracy_reward_bad_reference_and_lengths():
    with pytest.raises(ValueError, match="answer 0 has no number"):
        accuracy_reward(["#### 1"], answer=["#### unknown"])
    with pytest.raises(ValueError, match="2 completions but 1 answers"):
        accuracy_reward(["#### 1", "#### 2"], answer=["#### 1"])


FORMAT_CASES = [
    ("Step 1: 2 + 2 = 4\n#### 4", 1.0),
    ("#### 4\n\n   \n", 1.0),  # trailing blank lines are ignored
    ("#### -1,250.5", 1.0),
    ("####   7  ", 1.0),
    ("#### 4 apples", 0.0),
    ("#### $4", 0.0),
    ("####4", 0.0),
    ("#### 4\nThat's it!", 0.0),  # not the last line
    ("The answer is 4", 0.0),
    ("\\boxed{4}", 0.0),
    ("", 0.0),
    ([{"role": "assistant", "content": "ok\n#### 12"}], 1.0),
]


@pytest.mark.parametrize(("completion", "expected"), FORMAT_CASES)
def test_format_reward(completion, expected):
    assert format_reward([completion]) == [expected]


def test_registry_and_names():
    assert set(REWARD_FUNCS) == {"accuracy", "format"}
    assert set(REWARD_NAMES) == {"accuracy", "format", "overlong"}
    assert get_reward_funcs(["format", "accuracy"]) == [format_reward, accuracy_reward]
    assert get_reward_funcs("accuracy") == [accuracy_reward]
    # TRL logs rewards/<__name__>/mean
    assert [f.__name__ for f in get_reward_funcs(["accuracy", "format"])] == ["accuracy_reward", "format_reward"]
    with pytest.raises(
        ValueError,
        match=r"unknown reward function\(s\) \['lenght'\].*valid names: \['accuracy', 'format', 'overlong'\]",
    ):
        get_reward_funcs(["accuracy", "lenght"])
    with pytest.raises(ValueError, match="no reward functions"):
        get_reward_funcs([])


def test_overlong_reward_is_dapos_soft_punishment():
    """0 up to L - cache tokens, then linear down to -1 at L (TRL's get_soft_overlong_punishment); cache L // 6."""
    (overlong,) = get_reward_funcs(["overlong"], max_completion_length=96)
    assert overlong.__name__ == "soft_overlong_punishment_reward"  # TRL logs rewards/<__name__>/mean
    lengths = [10, 80, 84, 88, 95, 96]
    assert overlong(completion_ids=[[7] * n for n in lengths]) == [0.0, 0.0, -0.25, -0.5, -0.9375, -1.0]
    (wide,) = get_reward_funcs("overlong", max_completion_length=96, soft_punish_cache=48)
    assert wide(completion_ids=[[7] * 48, [7] * 72]) == [0.0, -0.5]
    # with accuracy: a right answer cut off at the limit nets 0, a finished one 1
    funcs = get_reward_funcs(["accuracy", "overlong"], max_completion_length=8)
    totals = [
        sum(f(completions=["#### 4"], answer=["#### 4"], completion_ids=[[1] * n])[0] for f in funcs) for n in (3, 8)
    ]
    assert totals == [1.0, 0.0]


@pytest.mark.parametrize("cache", [0, -1, 96, 200])
def test_overlong_reward_rejects_bad_cache(cache):
    with pytest.raises(ValueError, match="soft_punish_cache"):
        get_reward_funcs(["overlong"], max_completion_length=96, soft_punish_cache=cache)


def test_overlong_reward_needs_the_completion_limit():
    with pytest.raises(ValueError, match="max_completion_length"):
        get_reward_funcs(["accuracy", "overlong"])
