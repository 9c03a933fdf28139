"""Every shell command in the docs works from a fresh clone, at the level of files and flags.

Commands are taken from the fenced bash blocks of README.md, docs/*.md, benchmarks/README.md and slurm/README.md,
and from inline code spans in their prose that start with a command (`python ...`, `make ...`, ...). For each one:
the repository files it names exist (a redirect's folder exists or an earlier `mkdir -p` in the block makes it),
and each entry point accepts its flags: the training recipe parser (`scripts/gsm8k_sapo.py`,
`-m trl_sapo.gsm8k.train`, `trl-sapo-gsm8k`, the flags after the recipe of the SLURM launcher), `trl-sapo grpo`'s
(`-m trl_sapo.cli.grpo`; what it leaves must be `accelerate launch` options), the eval parser,
accelerate's launch parser, and for argparse scripts their own parser (run up to `parse_args`, nothing after).
Nothing is trained, nothing needs a GPU or SLURM. A command no rule knows fails the test, so new docs are covered.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest
import tomllib
from helpers import REPO_ROOT

DOCS = ["README.md", *sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "docs").glob("*.md"))]
DOCS += ["benchmarks/README.md", "slurm/README.md"]
REPO_DIRS = {"scripts", "recipes", "accelerate_configs", "benchmarks", "slurm", "docs", "tests", "tools", "trl_sapo"}
COMMAND_START = re.compile(
    r"^(python3?|\.venv/bin/\w+|make|trl-sapo-gsm8k|trl-sapo (?:async-)?grpo|pip install)\b"
)  # whole commands in prose
ENV_ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
OUTPUT_FLAGS = {"--output", "--output_dir", "--results_dir"}  # what follows is written, not read
TRAIN_SCRIPTS = {"scripts/gsm8k_sapo.py"}
TRAIN_MODULES = {"trl_sapo.gsm8k.train"}
GRPO_MODULES = {"trl_sapo.cli.grpo": "grpo", "trl_sapo.cli.async_grpo": "async_grpo"}  # `trl-sapo grpo`, ...
CHECKOUT_PACKAGES = {"tools", "benchmarks", "scripts"}  # importable from the repository root only (not in the wheel)


# ---- extraction -----------------------------------------------------------------------------------------------------


def _blocks(text: str) -> list[list[str]]:
    """Lines of each fenced bash/sh block (fences parsed line by line)."""
    blocks, current, language = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("bash", "sh", "shell", "console"):
                    blocks.append(current)
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _inline_commands(text: str) -> list[str]:
    """Inline `code` spans of the prose that are whole commands (no placeholders)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return [s for s in spans if COMMAND_START.match(s) and " " in s and not re.search(r"\.\.\.|<|\[|\*", s)]


def _split(block_lines: list[str]) -> list[list[str]]:
    """Shell words of each command of a block: continuations joined, comments dropped, split at && ; | &."""
    text = "\n".join(block_lines).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = re.sub(r"\s\d*>&\d+", " ", line)  # 2>&1
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        words: list[str] = []
        for token in lexer:
            if set(token) <= set(";&|"):
                commands.append(words)
                words = []
            else:
                words.append(token)
        commands.append(words)
    return [c for c in commands if c]


def collect() -> list[tuple[str, int, list[str]]]:
    """(doc, block number, words) for every command; inline spans are blocks of their own."""
    found = []
    for doc in DOCS:
        text = (REPO_ROOT / doc).read_text()
        for number, block in enumerate(_blocks(text)):
            found += [(doc, number, words) for words in _split(block)]
        found += [(doc, -1 - i, words) for i, span in enumerate(_inline_commands(text)) for words in _split([span])]
    return found


COMMANDS = collect()


# ---- checks ---------------------------------------------------------------------------------------------------------


class _Parsed(Exception):
    """Raised in place of running a script once its argparse parser accepted the arguments."""


@contextlib.contextmanager
def _stop_after_parse_args():
    original = argparse.ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        original(self, args, namespace)  # SystemExit(2) with argparse's message on a bad flag
        raise _Parsed

    argparse.ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        argparse.ArgumentParser.parse_args = original


def _run_until_parsed(target: str, argv: list[str], module: bool, monkeypatch) -> None:
    """Run a script file or `-m` module in this process up to its `parse_args` call, with the import path that
    command gets from the repository root: `python -m x.y` has the root on it; `python path/to/script.py` has only the
    script's folder (and the installed `trl_sapo`), so a documented script file that needs the checkout's packages
    fails here as it would for a user."""
    monkeypatch.setattr(sys, "argv", [target, *argv])
    if module:
        monkeypatch.delitem(sys.modules, target, raising=False)  # run it fresh, as `python -m` does
    else:
        root_free = [p for p in sys.path if p and Path(p).resolve() != REPO_ROOT.resolve()]
        monkeypatch.setattr(sys, "path", [str((REPO_ROOT / target).parent), *root_free])
        for name in [n for n in sys.modules if n.split(".")[0] in CHECKOUT_PACKAGES]:
            monkeypatch.delitem(sys.modules, name)
    with _stop_after_parse_args(), pytest.raises((_Parsed, SystemExit, ModuleNotFoundError)) as outcome:
        runpy.run_module(target, run_name="__main__") if module else runpy.run_path(target, run_name="__main__")
    if outcome.type is ModuleNotFoundError:
        pytest.fail(f"`python {target}` cannot import {outcome.value.name!r}: document it as `python -m <module>`")
    if outcome.type is SystemExit:
        assert outcome.value.code in (0, None), f"{target} {' '.join(argv)}: argument parsing failed"


def _parse_training(argv: list[str]) -> None:
    from trl_sapo.gsm8k.recipe import parse_args

    try:
        parse_args(argv)  # TrlParser: unknown flags/YAML keys and invalid values raise
    except SystemExit as exit_:  # --help
        assert exit_.code in (0, None), f"training flags rejected: {argv}"


def _parse_grpo(argv: list[str], command: str = "grpo") -> None:
    """`trl-sapo grpo`/`async-grpo` flags and recipe: TrlParser parses them; what it leaves must be `accelerate
    launch` options (async-grpo: and no option of the synchronous trainer)."""
    module = importlib.import_module(f"trl_sapo.cli.{command}")
    try:
        *parsed, config_remaining, cli_remaining = module.parse_args(argv)
    except SystemExit as exit_:  # --help
        assert exit_.code in (0, None), f"trl-sapo {command} flags rejected: {argv}"
        return
    module.reject_remaining(config_remaining, cli_remaining, launcher=True)


def _parse_eval(argv: list[str]) -> None:
    from trl import TrlParser

    from scripts.gsm8k_eval import EvalArguments

    TrlParser([EvalArguments]).parse_args_and_config(argv)


def _check_python(words: list[str], monkeypatch) -> None:
    """`python [-m module | script] args`."""
    if words[0] == "-m":
        module, argv = words[1], words[2:]
        if module in TRAIN_MODULES:
            return _parse_training(argv)
        if module in GRPO_MODULES:
            return _parse_grpo(argv, GRPO_MODULES[module])
        return _run_until_parsed(module, argv, module=True, monkeypatch=monkeypatch)
    script, argv = words[0], words[1:]
    if script in TRAIN_SCRIPTS:
        return _parse_training(argv)
    if script == "scripts/gsm8k_eval.py":
        return _parse_eval(argv)
    return _run_until_parsed(script, argv, module=False, monkeypatch=monkeypatch)


def _check_accelerate(words: list[str], monkeypatch) -> None:
    """`accelerate launch [launcher flags] (script | -m module) args`: both parsers."""
    from accelerate.commands.launch import launch_command_parser

    launch_args = launch_command_parser().parse_args([w if not w.startswith("$") else "0" for w in words])
    inner = launch_args.training_script_args
    if launch_args.module:
        return _check_python(["-m", launch_args.training_script, *inner], monkeypatch)
    return _check_python([launch_args.training_script, *inner], monkeypatch)


def _makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w.-]+)\s*:", (REPO_ROOT / "Makefile").read_text(), flags=re.M))


def _extras() -> set[str]:
    return set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])


def _check_paths(words: list[str], made_dirs: set[str]) -> None:
    skip_next = False
    for i, word in enumerate(words):
        if skip_next:
            skip_next = False
            continue
        if word in OUTPUT_FLAGS:
            skip_next = True  # the (possibly several) outputs that follow are written
            continue
        if i > 0 and words[i - 1] == "mkdir":
            continue
        if word.startswith((">", "2>")):
            continue
        previous = words[i - 1] if i else ""
        if previous in (">", "2>", ">>"):
            parent = str(Path(word).parent)
            assert (REPO_ROOT / parent).is_dir() or parent in made_dirs, f"redirect into a missing folder: {word}"
            continue
        head = word.split("/", 1)[0]
        if "/" in word and head in REPO_DIRS and not word.startswith("-"):
            if previous in OUTPUT_FLAGS or (i > 1 and words[i - 2] in OUTPUT_FLAGS and previous.endswith(".png")):
                continue
            assert (REPO_ROOT / word).exists() or word in made_dirs, f"{word} does not exist in the repository"


def check_command(words: list[str], made_dirs: set[str], monkeypatch) -> None:
    while words and (ENV_ASSIGNMENT.match(words[0]) or words[0] in ("nohup", "nice", "sudo")):
        words = words[3:] if words[0] == "nice" and words[1:2] == ["-n"] else words[1:]  # `nice -n 10 cmd`
    program, rest = words[0], words[1:]
    if program == "mkdir":
        return
    _check_paths(words, made_dirs)
    rest = [w for i, w in enumerate(rest) if not (w.startswith((">", "2>")) or (i and rest[i - 1] in (">", "2>")))]
    if program in ("python", "python3", ".venv/bin/python"):
        _check_python(rest, monkeypatch)
    elif program == "trl-sapo-gsm8k":
        _parse_training(rest)
    elif program == "trl-sapo":
        assert rest[0] in ("grpo", "async-grpo"), words
        _parse_grpo(rest[1:], rest[0].replace("-", "_"))
    elif program == "accelerate":
        assert rest[0] == "launch", words
        _check_accelerate(rest[1:], monkeypatch)
    elif program == "make":
        targets = [w for w in rest if "=" not in w]
        assert set(targets) <= _makefile_targets(), f"no such Makefile target: {set(targets) - _makefile_targets()}"
    elif program in ("pip", ".venv/bin/pip"):
        assert rest[0] in ("install", "wheel"), words
        if rest[0] == "wheel":  # a wheel of this checkout: `pip wheel --no-deps -w DIR .`
            assert rest[-1] == "." and "--no-deps" in rest, words
        for spec in rest[1:]:
            if match := re.search(r"\[([\w,-]+)\]", spec):
                missing = set(match.group(1).split(",")) - _extras()
                assert not missing, f"pyproject.toml has no extra {missing} ({spec})"
    elif program == "sbatch":
        launcher = next(i for i, w in enumerate(rest) if w.endswith(".sbatch"))
        accelerate_config, recipe, *flags = rest[launcher + 1 :]
        assert (REPO_ROOT / accelerate_config).is_file() and (REPO_ROOT / recipe).is_file()
        _parse_training(["--config", recipe, *flags])
    elif program in ("slurm/train_multinode.sbatch",):
        assert (REPO_ROOT / program).is_file()
    elif program in (".venv/bin/pytest", "pytest"):
        markers = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
        for i, w in enumerate(rest):
            if w == "-m":
                assert any(m.startswith(rest[i + 1] + ":") for m in markers), f"unknown marker {rest[i + 1]}"
    elif program == "trl" and rest[:1] == ["vllm-serve"]:
        pass  # TRL's own CLI, not this repository's
    else:
        pytest.fail(f"no rule for the documented command {shlex.join(words)!r}: add one to tests/test_docs.py")


TEMPLATE = re.compile(r"^(?:[A-Z]+(?:_[A-Z]+)+|[A-Z]\*[A-Z]|\[.*|.*\.\.\..*)$")  # MAIN_ADDR, M*P, [--flag, x/...yaml


def _is_template(words: list[str]) -> bool:
    return any(TEMPLATE.match(w) and not ENV_ASSIGNMENT.match(w) for w in words[1:])


def test_commands_were_found():
    programs = {words[0] for _, _, words in COMMANDS}
    assert len(COMMANDS) > 30 and {"accelerate", "python", "make", "sbatch", "trl-sapo-gsm8k", "trl-sapo"} <= programs
    templates = [shlex.join(w) for _, _, w in COMMANDS if _is_template(w)]
    # Usage lines with placeholders (`recipes/...yaml`, `[--flag value ...]`, the launcher's internal command in
    # slurm/README.md) are not checked: keep them few.
    assert len(templates) <= 3, templates


@pytest.mark.parametrize(
    "doc, block, words",
    [c for c in COMMANDS if not _is_template(c[2])],
    ids=[f"{d}:{b}:{shlex.join(w)[:60]}" for d, b, w in COMMANDS if not _is_template(w)],
)
def test_documented_command(doc, block, words, monkeypatch):
    made: set[str] = set()  # folders made (`mkdir -p`) and files written (--output X) earlier in the same block
    for other_doc, other_block, earlier in COMMANDS:
        if (other_doc, other_block) == (doc, block):
            if earlier is words:
                break
            if earlier[0] == "mkdir":
                made.update(w for w in earlier[1:] if not w.startswith("-"))
            made.update(w for i, w in enumerate(earlier[1:], 1) if earlier[i - 1] in OUTPUT_FLAGS)
    monkeypatch.chdir(REPO_ROOT)
    check_command(words, made, monkeypatch)


HAND_WRITTEN_COUNT = re.compile(r"\b\d[\d, ]*\s+(?:passed|failed|skipped|errors?|(?:slow |fast )?tests)\b")


def hand_written_test_counts(text: str) -> list[str]:
    """Test counts written in prose ('553 passed', '515 tests'): they go stale as tests are added (issue 31).
    Numbers inside generated blocks (benchmarks/docs_numbers.py) are kept current by test_docs_numbers."""
    from benchmarks.docs_numbers import BLOCK_RE

    return HAND_WRITTEN_COUNT.findall(BLOCK_RE.sub("", text))


def test_no_hand_written_test_counts():
    assert hand_written_test_counts("(553 passed, 1 skipped: needs 2 GPUs) ... 1.0 minute (515 tests, 52 s)") == [
        "553 passed",
        "1 skipped",
        "515 tests",
    ]
    assert hand_written_test_counts("<!-- generated:x -->\n587 passed\n<!-- /generated:x -->\n10 seeds, 3 tests") == [
        "3 tests"
    ]
    found = {doc: hand_written_test_counts((REPO_ROOT / doc).read_text()) for doc in DOCS}
    assert not {doc: counts for doc, counts in found.items() if counts}, "test counts written by hand drift"


def test_design_tau_table_is_what_gradient_weight_computes():
    """docs/design.md's τ table (the w >= 0.5 band, max w and where, f(1) = 2/τ): every number, at the precision it is
    written with, is what `loss.gradient_weight` gives on a fine grid of r (issue 31: max w at τ = 1 is 1.5747)."""
    import math

    import torch

    from trl_sapo.loss import SOFT_CLIP_THRESHOLD, gradient_weight

    def same(written: str, value: float) -> bool:
        decimals = len(written.split(".")[1]) if "." in written else 0
        return f"{value:.{decimals}f}" == written

    text = (REPO_ROOT / "docs" / "design.md").read_text()
    rows = re.findall(
        r"^\s*\| ([\d.]+)[^|]*\| \[([\d.]+), ([\d.]+)\] \| ([\d.]+) \(([\d.]+)\) \| ([\d.]+) \|$", text, re.M
    )
    assert len(rows) >= 5, "τ table not found in docs/design.md"
    log_r = torch.linspace(math.log(0.05), math.log(50.0), 2_000_001, dtype=torch.float64)
    r = log_r.exp()
    for tau, low, high, w_max, r_max, gate_at_1 in rows:
        w = gradient_weight(log_r, float(tau)).double()
        active = (w >= SOFT_CLIP_THRESHOLD).nonzero()
        computed = [(low, r[active[0]]), (high, r[active[-1]]), (w_max, w.max()), (r_max, r[w.argmax()])]
        for written, value in computed:
            assert same(written, value.item()), f"τ = {tau}: table says {written}, computed {value.item():.4f}"
        assert same(gate_at_1, 2 / float(tau)), f"τ = {tau}: f(1) = {2 / float(tau):.4f}, table says {gate_at_1}"


def _expand_braces(text: str) -> str:
    """`cpu_2proc_{ddp,zero2}.yaml` -> `cpu_2proc_ddp.yaml cpu_2proc_zero2.yaml`."""
    pattern = re.compile(r"(\S*?)\{([^{}]+)\}(\S*)")
    while match := pattern.search(text):
        words = " ".join(f"{match[1]}{part}{match[3]}" for part in match[2].split(","))
        text = text[: match.start()] + words + text[match.end() :]
    return text


def test_repository_layout_names_every_file():
    """README's "Repository layout" names every tracked file of the checkout's code folders (issue 31: it missed
    recipes/eval.yaml), the trl_sapo subpackages' modules included; `__init__.py` files are implied."""
    import subprocess

    readme = (REPO_ROOT / "README.md").read_text()
    layout = _expand_braces(readme.split("## Repository layout", 1)[1].split("```", 2)[1])
    names = set(re.findall(r"[\w.-]+", layout.replace("/", " ")))
    folders = ["scripts", "benchmarks", "recipes", "tools", "trl_sapo", "accelerate_configs", "slurm", "notebooks"]
    tracked = subprocess.run(["git", "ls-files", *folders], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    files = [Path(f) for f in tracked.stdout.split() if (REPO_ROOT / f).exists()]
    missing = sorted(str(f) for f in files if f.name != "__init__.py" and f.name not in names)
    assert not missing, f"README's Repository layout does not name: {missing}"
