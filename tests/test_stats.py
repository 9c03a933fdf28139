"""tools.stats against hand-computed and textbook values."""

from __future__ import annotations

import math

import pytest

from tools.stats import mean_ci, paired_accuracy_diff, paired_diff_ci, t95, wilson_interval


def test_t95_table_and_conservative_interpolation():
    assert t95(1) == pytest.approx(12.706) and t95(9) == pytest.approx(2.262)
    assert t95(22) == t95(20)  # between table entries: the smaller df, i.e. the wider interval
    assert t95(10_000) == pytest.approx(1.96, abs=1e-3)
    with pytest.raises(ValueError):
        t95(0)


def test_mean_ci_by_hand():
    out = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0, float("nan"), None])
    assert out["n"] == 5 and out["mean"] == 3.0
    assert out["ci95"] == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert mean_ci([]) == {"mean": None, "ci95": None, "n": 0}
    assert mean_ci([0.7])["ci95"] is None  # one value: no spread, no interval


def test_paired_diff_uses_the_pairing():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.9, 1.9, 2.9, 3.9]
    out = paired_diff_ci(a, b)
    assert out["mean"] == pytest.approx(0.1) and out["ci95"] == pytest.approx(0.0, abs=1e-12)
    assert (out["wins"], out["losses"]) == (4, 0)
    with pytest.raises(ValueError):
        paired_diff_ci([1.0], [1.0, 2.0])


def test_wilson_interval_textbook_values():
    low, high = wilson_interval(8, 10)  # Newcombe (1998), 8/10: 0.490 - 0.943
    assert (low, high) == pytest.approx((0.4902, 0.9433), abs=1e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_paired_accuracy_diff_counts_discordant_problems():
    before = [True, True, False, False, False, True, False, False]
    after = [True, False, True, True, True, True, False, True]
    out = paired_accuracy_diff(before, after)
    assert (out["gained"], out["lost"], out["n"]) == (4, 1, 8)
    assert out["diff"] == pytest.approx(3 / 8)
    assert out["ci95"] == pytest.approx(1.959964 * math.sqrt(4 + 1 - 9 / 8) / 8)
    assert paired_accuracy_diff([True] * 5, [True] * 5)["ci95"] == 0.0  # no discordant pair: no variance
