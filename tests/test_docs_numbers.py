"""The numbers in README.md and docs/results.md are the committed JSON's: every generated block is up to date, and
the words that rank two arms follow the paired interval."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import REPO_ROOT


@pytest.fixture(scope="module")
def docs_numbers():
    spec = importlib.util.spec_from_file_location("docs_numbers", REPO_ROOT / "benchmarks" / "docs_numbers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_blocks_match_the_committed_json(docs_numbers, capsys):
    assert docs_numbers.main(["--check"]) == 0, capsys.readouterr().err
    blocks = {m["name"] for path in docs_numbers.DOCS for m in docs_numbers.BLOCK_RE.finditer(path.read_text())}
    assert {"copy-headline", "copy-tau", "copy-timing", "gsm8k-realism"} <= blocks


def test_a_stale_block_is_detected_and_rewritten(docs_numbers, tmp_path, monkeypatch):
    doc = tmp_path / "doc.md"
    doc.write_text(
        "before\n<!-- generated:copy-timing -->\n170 runs, 9-35 s per run\n<!-- /generated:copy-timing -->\n"
    )
    monkeypatch.setattr(docs_numbers, "DOCS", (doc,))
    monkeypatch.setattr(docs_numbers, "REPO_ROOT", tmp_path)
    assert docs_numbers.main(["--check"]) == 1 and "9-35 s" in doc.read_text()
    assert docs_numbers.main([]) == 0
    text = doc.read_text()
    assert "9-35 s" not in text and "training 4.8-80 s per run" in text and text.startswith("before\n")
    assert docs_numbers.main(["--check"]) == 0


@pytest.mark.parametrize(
    ("mean", "ci95", "expected"),
    [(0.05, 0.03, "SAPO ahead"), (-0.032, 0.030, "GRPO ahead"), (0.02, 0.03, "not separable"), (0.0, None, "n/a")],
)
def test_verdict_follows_the_interval(docs_numbers, mean, ci95, expected):
    assert docs_numbers.verdict({"mean": mean, "ci95": ci95}, "SAPO") == expected
    if expected.endswith("ahead"):  # lower is better: the other arm is ahead
        flipped = "GRPO ahead" if expected == "SAPO ahead" else "SAPO ahead"
        assert docs_numbers.verdict({"mean": mean, "ci95": ci95}, "SAPO", higher_is_better=False) == flipped
    assert docs_numbers.verdict({"mean": mean, "ci95": 0.0 if ci95 else None, "n": 2}, "SAPO") in (
        "too few seeds to rank",
        "n/a",
    )
