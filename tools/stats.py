"""Small-sample statistics for learning claims: t intervals over seeds, Wilson intervals for accuracies, and the
paired difference of two accuracies measured on the same problems. Pure Python (no SciPy dependency)."""

from __future__ import annotations

import math
import statistics

# Two-sided 95 % Student-t quantiles t_{0.975, df}.
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
        11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093,
        20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980}  # fmt: skip
Z95 = 1.959964


def t95(df: int) -> float:
    """t_{0.975, df}; between tabulated values the next smaller df is used (a slightly wider, conservative CI)."""
    if df < 1:
        raise ValueError(f"need df >= 1, got {df}")
    return _T95[max(k for k in _T95 if k <= df)] if df <= 120 else Z95


def mean_ci(values: list[float]) -> dict[str, float | int | None]:
    """Mean and 95 % t-interval half-width over independent values (e.g. one per seed); NaN/None dropped."""
    xs = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not xs:
        return {"mean": None, "ci95": None, "n": 0}
    half = t95(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return {"mean": statistics.fmean(xs), "ci95": half, "n": len(xs)}


def paired_diff_ci(a: list[float], b: list[float]) -> dict[str, float | int | None]:
    """Mean ± 95 % t-interval of the per-pair differences a_i - b_i (e.g. same seed, two arms), and how many
    pairs have a_i > b_i / a_i < b_i."""
    if len(a) != len(b):
        raise ValueError(f"paired samples need equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    out = mean_ci(diffs)
    out.update(wins=sum(d > 0 for d in diffs), losses=sum(d < 0 for d in diffs))
    return out


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion successes / n."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n and n > 0, got {successes}/{n}")
    p, z2 = successes / n, Z95**2
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, center - half), min(1.0, center + half)


def paired_accuracy_diff(before: list[bool], after: list[bool]) -> dict[str, float | int]:
    """Difference after - before of two accuracies on the SAME problems, with a 95 % normal interval that uses the
    pairing (only discordant problems vary): var = (b + c - (b - c)^2 / n) / n^2, b = newly right, c = newly wrong."""
    if len(before) != len(after) or not before:
        raise ValueError(f"need two equal, non-empty lists of outcomes, got {len(before)} and {len(after)}")
    n = len(before)
    gained = sum(1 for x, y in zip(before, after) if not x and y)
    lost = sum(1 for x, y in zip(before, after) if x and not y)
    diff = (gained - lost) / n
    half = Z95 * math.sqrt(max(gained + lost - (gained - lost) ** 2 / n, 0.0)) / n
    return {"diff": diff, "ci95": half, "gained": gained, "lost": lost, "n": n}
