"""notebooks/sapo_quickstart.ipynb runs top to bottom in a kernel of this interpreter and shows what it promises."""

from __future__ import annotations

import base64
import json
import sys

import pytest
from helpers import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = REPO_ROOT / "notebooks" / "sapo_quickstart.ipynb"
KERNEL_NAME = "trl-sapo-test"


def _stdout(cell) -> str:
    return "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")


def test_notebook_is_committed_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells
    for cell in code_cells:
        assert cell.outputs == [] and cell.execution_count is None, "strip outputs before committing the notebook"


@pytest.fixture
def kernel_of_this_interpreter(tmp_path, monkeypatch) -> str:
    """A kernelspec whose argv is this interpreter, found first through JUPYTER_PATH: the kernel sees the same venv."""
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "trl-sapo tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SAPO_QUICKSTART_SMOLLM2", "0")
    # One thread per op: on a shared CI core two OpenMP threads spin against each other (3x slower, measured).
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return KERNEL_NAME


@pytest.mark.slow  # ~30 s: a kernel, a LoRA run and an evaluation
def test_quickstart_notebook_executes(kernel_of_this_interpreter, smollm2_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell("import sys; print('KERNEL-PYTHON', sys.executable)"))
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel_of_this_interpreter,
        timeout=300,
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},  # the notebook's own folder, as in Jupyter
    )
    client.execute()  # raises CellExecutionError (with the traceback) if any cell fails

    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert f"KERNEL-PYTHON {sys.executable}" in _stdout(code_cells[-1])
    assert "SAPO metrics OK" in _stdout(code_cells[-2])
    # The metrics table is rendered with the sapo/ columns, and both figures are inline PNGs.
    html = "".join(
        out.get("data", {}).get("text/html", "") for cell in code_cells for out in cell.outputs if "data" in out
    )
    for column in ("sapo/gate_mean", "sapo/grad_weight_mean", "sapo/soft_clip_ratio", "sapo/ratio_max", "reward"):
        assert column in html
    pngs = [
        base64.b64decode(out["data"]["image/png"])
        for cell in code_cells
        for out in cell.outputs
        if "data" in out and "image/png" in out["data"]
    ]
    assert len(pngs) == 2, f"expected the gate and the training figure, got {len(pngs)} images"
    assert all(png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000 for png in pngs)
    assert any("accuracy" in _stdout(cell) and "format rate" in _stdout(cell) for cell in code_cells)
