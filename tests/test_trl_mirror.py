"""How a TRL upgrade is checked: `SAPOTrainer._compute_loss` is TRL's `GRPOTrainer._compute_loss` with marked edits.

`trl_sapo/trainer.py` copies GRPOTrainer's `_compute_loss` verbatim and marks every SAPO change with
`# --- SAPO: begin` / `# --- SAPO: end`. These tests read both functions with `inspect` and fail, with a diff, if

* the citation above the copy (`# Mirrored from trl==X path LA-LB`) is not the installed TRL's version, file and lines;
* any line outside the SAPO blocks differs from TRL's, in content or order;
* TRL changed one of the regions a SAPO block replaces (pinned by hash below: read TRL's new code, port it).

After a TRL upgrade: run this file, port what the diff shows into trainer.py, update the citation and hashes.
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import re

import trl
from trl import GRPOTrainer

import trl_sapo.trainer
from trl_sapo import SAPOTrainer

BEGIN, END = "# --- SAPO: begin", "# --- SAPO: end"
# sha256 (first 12 hex digits) of the TRL lines each SAPO block replaces, in order ("" hashes an insertion).
REPLACED_TRL_REGIONS = ["e3b0c44298fc", "8fd2da5176bf", "0039fde08764", "d81778306cfd", "4c59ba09d655"]


def _split(lines: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(segments outside SAPO blocks, SAPO blocks); segments[k] precedes blocks[k], one more segment than blocks."""
    segments, blocks, current, block = [], [], [], None
    for line in lines:
        if line.strip().startswith(BEGIN):
            assert block is None, f"nested {BEGIN!r}"
            segments.append(current)
            current, block = [], [line]
        elif block is not None:
            block.append(line)
            if line.strip().startswith(END):
                blocks.append(block)
                block = None
        else:
            current.append(line)
    assert block is None, f"{BEGIN!r} without {END!r}"
    segments.append(current)
    return segments, blocks


def _find(haystack: list[str], needle: list[str], start: int) -> int:
    for i in range(start, len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return -1


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12]


def _diff(trl_lines: list[str], ours: list[str]) -> str:
    return "\n".join(
        difflib.unified_diff(trl_lines, ours, "trl GRPOTrainer._compute_loss", "SAPOTrainer", lineterm="")
    )


def replaced_regions(trl_function=GRPOTrainer._compute_loss, our_function=SAPOTrainer._compute_loss):
    """TRL's lines that each SAPO block stands in for; fails if the code outside the blocks is not TRL's.
    (tests/test_async_sapo.py passes AsyncGRPOTrainer.compute_loss and its AsyncSAPOTrainer mirror.)"""
    trl_lines = inspect.getsource(trl_function).splitlines()
    ours = inspect.getsource(our_function).splitlines()
    segments, blocks = _split(ours)
    assert blocks, f"no SAPO block found in {our_function.__qualname__}"
    regions, cursor = [], 0
    for k, segment in enumerate(segments):
        at = _find(trl_lines, segment, cursor)
        if k == 0 and at != 0 or at < 0:
            raise AssertionError(
                f"{our_function.__qualname__} no longer mirrors trl=={trl.__version__}: lines outside the SAPO blocks "
                f"differ from TRL's (segment {k}, starting {segment[:1]}).\n{_diff(trl_lines, ours)}"
            )
        if k > 0:
            regions.append(trl_lines[cursor:at])
        cursor = at + len(segment)
    assert cursor == len(trl_lines), f"TRL's function continues after the mirror ends:\n{_diff(trl_lines, ours)}"
    return regions


def test_citation_names_the_installed_trl():
    source = inspect.getsource(trl_sapo.trainer)
    cite = re.search(r"# Mirrored from trl==(\S+) (\S+) L(\d+)-L(\d+) \(GRPOTrainer\._compute_loss\)", source)
    assert cite, "trainer.py lost its '# Mirrored from trl==...' citation"
    lines, first = inspect.getsourcelines(GRPOTrainer._compute_loss)
    found = (trl.__version__, inspect.getsourcefile(GRPOTrainer).replace("\\", "/"), first, first + len(lines) - 1)
    assert cite.group(1) == found[0], f"mirrored from trl=={cite.group(1)}, installed {found[0]}"
    assert found[1].endswith("/" + cite.group(2)), found[1]
    assert (int(cite.group(3)), int(cite.group(4))) == found[2:], f"TRL's function is now at L{found[2]}-L{found[3]}"


def test_mirror_is_trl_outside_the_sapo_blocks():
    replaced_regions()


def test_trl_regions_replaced_by_sapo_are_unchanged():
    regions = replaced_regions()
    digests = [_digest(region) for region in regions]
    changed = [
        f"SAPO block {k}: TRL's replaced lines changed (hash {d}, pinned {p}); TRL's code now reads:\n"
        + "\n".join(region)
        for k, (region, d, p) in enumerate(zip(regions, digests, REPLACED_TRL_REGIONS))
        if d != p
    ]
    assert len(regions) == len(REPLACED_TRL_REGIONS), f"{len(regions)} SAPO blocks, {len(REPLACED_TRL_REGIONS)} pinned"
    assert not changed, "\n\n".join(changed)
