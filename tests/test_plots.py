"""trl_sapo.tools.plot_gates and trl_sapo.tools.plot_training: the plotted series are the loss module's numbers, files are real images."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch

from trl_sapo.loss import gate_value, gradient_weight
from trl_sapo.tools import plot_gates, plot_training

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _line(ax, label: str):
    lines = [line for line in ax.get_lines() if line.get_label() == label]
    assert len(lines) == 1, f"expected one line {label!r}, got {[line.get_label() for line in ax.get_lines()]}"
    x, y = (np.asarray(a, dtype=np.float64) for a in lines[0].get_data())
    return x, y


# -- gate figure --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gate_figure():
    fig = plot_gates.make_gate_figure(taus=(0.5, 1.0, 2.0), epsilon=0.2)
    yield fig
    plt.close(fig)


def test_gate_figure_layout_and_labels(gate_figure):
    axes = gate_figure.axes
    assert len(axes) == 4
    titles = [ax.get_title() for ax in axes]
    assert titles[0].startswith("A > 0") and titles[2].startswith("A < 0")
    for ax in axes:
        labels = {line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")}
        assert "PPO/GRPO clip, ε=0.2" in labels
        assert {"SAPO τ=0.5", "SAPO τ=2"} <= labels
        assert ax.get_xlabel() or ax in axes[:2]  # bottom row carries the shared x label
        assert ax.get_ylabel()
    # The default temperature of each row is drawn (and named) even when --taus leaves it out (1.05 here).
    assert "SAPO τ=1 (default τ_pos)" in {line.get_label() for line in axes[0].get_lines()}
    assert "SAPO τ=1.05 (default τ_neg)" in {line.get_label() for line in axes[2].get_lines()}
    assert "SAPO τ=1" in {line.get_label() for line in axes[2].get_lines()}


@pytest.mark.parametrize(("row", "tau", "label"), [(0, 1.0, "SAPO τ=1 (default τ_pos)"), (1, 2.0, "SAPO τ=2")])
def test_gate_figure_sapo_series_come_from_loss_module(gate_figure, row, tau, label):
    ax_obj, ax_grad = gate_figure.axes[2 * row], gate_figure.axes[2 * row + 1]
    r, g = _line(ax_obj, label)
    r_w, w = _line(ax_grad, label)
    np.testing.assert_array_equal(r, r_w)
    idx = np.searchsorted(r, [0.3, 0.8, 1.0, 1.5, 2.9])
    log_r = torch.log(torch.tensor(r[idx], dtype=torch.float32))
    expected_g = gate_value(log_r, tau) - gate_value(torch.zeros(()), tau)  # centred at r = 1
    np.testing.assert_allclose(g[idx], expected_g.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w[idx], gradient_weight(log_r, tau).numpy(), rtol=1e-5, atol=1e-6)
    i1 = int(np.flatnonzero(r == 1.0)[0])
    assert g[i1] == pytest.approx(0.0, abs=1e-6) and w[i1] == pytest.approx(1.0, abs=1e-6)


def test_gate_figure_ppo_gradient_is_zero_where_clipped(gate_figure):
    label = "PPO/GRPO clip, ε=0.2"
    # A > 0: unclipped (gradient r) below 1 + ε, clipped (0) above.
    r, grad = _line(gate_figure.axes[1], label)
    np.testing.assert_allclose(grad[r < 1.199], r[r < 1.199], rtol=1e-5)
    assert np.all(grad[r > 1.201] == 0.0) and (r > 1.201).sum() > 100
    # A < 0: clipped below 1 − ε, gradient r above.
    r, grad = _line(gate_figure.axes[3], label)
    assert np.all(grad[r < 0.799] == 0.0) and (r < 0.799).sum() > 100
    np.testing.assert_allclose(grad[r > 0.801], r[r > 0.801], rtol=1e-5)
    # The surrogate is flat where clipped: r·A capped at (1 + ε)A for A > 0.
    r, g = _line(gate_figure.axes[0], label)
    np.testing.assert_allclose(g[r > 1.2], 0.2, atol=1e-6)


def test_gate_figure_uncentred_and_asymmetric_epsilon():
    fig = plot_gates.make_gate_figure(taus=(1.0,), epsilon=0.2, epsilon_high=0.28, center=False)
    r, g = _line(fig.axes[0], "SAPO τ=1 (default τ_pos)")
    np.testing.assert_allclose(g, gate_value(torch.log(torch.tensor(r, dtype=torch.float32)), 1.0).numpy(), rtol=1e-5)
    r, grad = _line(fig.axes[1], "PPO/GRPO clip, ε=0.2/0.28")
    assert np.all(grad[r > 1.281] == 0.0) and np.all(grad[(r > 1.0) & (r < 1.279)] > 1.0)


@pytest.mark.parametrize("kwargs", [{"taus": ()}, {"taus": (0.0,)}, {"epsilon": -0.1}, {"r_max": 0.5}])
def test_gate_figure_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        plot_gates.make_gate_figure(**kwargs)


def test_plot_gates_cli_writes_png_and_svg(tmp_path):
    png, svg = tmp_path / "g.png", tmp_path / "sub" / "g.svg"
    written = plot_gates.main(["--taus", "0.5", "1", "--epsilon", "0.2", "--output", str(png), str(svg)])
    assert written == [png, svg]
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 30_000
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    assert len(list(root.iter("{http://www.w3.org/2000/svg}path"))) > 20


# -- training figure ----------------------------------------------------------------------------------------------


def _history(sapo: bool, steps: int = 12, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    history = []
    for s in range(1, steps + 1):
        entry = {
            "step": s,
            "loss": 0.0,
            "reward": 0.2 + 0.05 * s + float(rng.normal(0, 0.01)),
            "reward_std": 0.3,
            "rewards/accuracy_reward/mean": 0.1 + 0.03 * s,
            "completions/mean_length": 100.0 - s,
        }
        if sapo:
            entry |= {
                "sapo/gate_mean": 2.0,
                "sapo/grad_weight_mean": 1.0 - 0.01 * s,
                "sapo/soft_clip_ratio": 0.01 * s,
                "sapo/ratio_max": 1.0 + 0.1 * s,
                "sapo/gate_mean_pos": float("nan"),
            }
        else:
            entry["clip_ratio/region_mean"] = 0.02 * s
        history.append(entry)
    history.append({"eval_reward": 0.5, "step": steps})  # eval entries and the final summary carry other keys
    history.append({"train_runtime": 1.0, "train_loss": 0.0, "step": steps})
    return history


def _panels(fig) -> dict[str, plt.Axes]:
    return {ax.get_title(): ax for ax in fig.axes}


def test_training_figure_overlays_runs_and_skips_missing_panels():
    fig = plot_training.make_training_figure({"SAPO": _history(True), "GRPO": _history(False, seed=1)})
    panels = _panels(fig)
    assert set(panels) == {
        "reward",
        "accuracy reward",
        "completion length",
        "sapo/gate_mean",
        "sapo/grad_weight_mean",
        "clipped token share",
        "sapo/ratio_max",
    }  # no "kl" logged (beta = 0): no KL panel
    labels = {line.get_label() for line in panels["reward"].get_lines()}
    assert {"SAPO", "GRPO"} <= labels
    assert len(panels["reward"].collections) == 2  # one ±std band per run
    clip_labels = {line.get_label() for line in panels["clipped token share"].get_lines()}
    assert {"SAPO soft_clip_ratio (w < 0.5)", "GRPO clip_ratio/region_mean"} <= clip_labels
    steps, values = _line(panels["sapo/grad_weight_mean"], "SAPO")
    np.testing.assert_allclose(steps, np.arange(1, 13))
    np.testing.assert_allclose(values, 1.0 - 0.01 * np.arange(1, 13))
    assert "GRPO" not in {line.get_label() for line in panels["sapo/gate_mean"].get_lines()}


def test_training_figure_grpo_only_has_no_sapo_panels_and_finds_accuracy_by_pattern():
    history = [
        {"step": s, "reward": 0.1 * s, "rewards/gsm8k_accuracy/mean": 0.2, "kl": 0.01, "clip_ratio/region_mean": 0.0}
        for s in range(1, 4)
    ]
    panels = _panels(plot_training.make_training_figure({"grpo": history}))
    assert set(panels) == {"reward", "accuracy reward", "KL to reference", "clipped token share"}
    _, acc = _line(panels["accuracy reward"], "grpo")
    np.testing.assert_allclose(acc, 0.2)


def test_training_figure_smoothing():
    history = _history(True)
    raw = [e["reward"] for e in history if "reward" in e]
    fig = plot_training.make_training_figure({"run": history}, smooth=0.6)
    _, smoothed = _line(_panels(fig)["reward"], "run")
    np.testing.assert_allclose(smoothed, plot_training.ema(raw, 0.6))
    assert not np.allclose(smoothed, raw)
    assert plot_training.ema([3.0, 3.0, 3.0], 0.9) == pytest.approx([3.0, 3.0, 3.0])  # debiased: no warm-up dip
    assert plot_training.moving_average([1.0, 2.0, 3.0, math.nan, 5.0], 2) == pytest.approx([1.0, 1.5, 2.5, 3.0, 5.0])
    fig = plot_training.make_training_figure({"run": history}, window=3)
    _, smoothed = _line(_panels(fig)["completion length"], "run")
    np.testing.assert_allclose(smoothed[2:], 100.0 - np.arange(2, 12))
    with pytest.raises(ValueError, match="not both"):
        plot_training.make_training_figure({"run": history}, smooth=0.5, window=3)
    with pytest.raises(ValueError, match="EMA weight"):
        plot_training.make_training_figure({"run": history}, smooth=1.0)


def test_training_figure_without_known_metrics_errors():
    with pytest.raises(ValueError, match="Logged keys"):
        plot_training.make_training_figure({"run": [{"step": 1, "loss": 0.1}]})


def _write_state(folder: Path, history) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 12, "log_history": history}))
    return folder


def test_load_log_history_accepts_dir_checkpoint_and_file(tmp_path):
    history = _history(True)
    out = _write_state(tmp_path / "run", history)
    assert plot_training.load_log_history(out)[0]["reward"] == history[0]["reward"]
    assert plot_training.load_log_history(out / "trainer_state.json") == plot_training.load_log_history(out)
    # No top-level state: the newest checkpoint by step number (checkpoint-10 after checkpoint-9).
    ckpts = tmp_path / "ckpts"
    _write_state(ckpts / "checkpoint-9", history[:9])
    _write_state(ckpts / "checkpoint-10", history[:10])
    assert len(plot_training.load_log_history(ckpts)) == 10
    assert len(plot_training.load_log_history(ckpts / "checkpoint-9")) == 9


def test_load_log_history_errors_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No trainer_state.json"):
        plot_training.load_log_history(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plot_training.load_log_history(tmp_path / "missing")
    (tmp_path / "bad.json").write_text('{"global_step": 3}')
    with pytest.raises(ValueError, match="log_history"):
        plot_training.load_log_history(tmp_path / "bad.json")


def test_plot_training_cli(tmp_path):
    sapo = _write_state(tmp_path / "sapo", _history(True))
    grpo = _write_state(tmp_path / "grpo" / "checkpoint-12", _history(False))
    out = tmp_path / "curves.png"
    cli = [sys.executable, "-m", "trl_sapo.tools.plot_training"]
    cmd = [*cli, str(sapo), str(grpo), "--labels", "SAPO", "GRPO", "--smooth", "0.5"]
    result = subprocess.run([*cmd, "--output", str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 30_000
    # A folder without trainer_state.json: exit code 2 and a message naming the folder.
    (tmp_path / "empty").mkdir()
    result = subprocess.run(
        [*cli, str(tmp_path / "empty"), "--output", str(tmp_path / "x.png")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "No trainer_state.json" in result.stderr and "empty" in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_training_figure_draws_a_run_with_a_single_rollout():
    """One logged step (a run of one rollout): each panel gets a visible point, not an empty line (issue 31)."""
    fig = plot_training.make_training_figure({"one": _history(True, steps=1), "many": _history(True)})
    panels = _panels(fig)
    for title in ("reward", "completion length", "sapo/grad_weight_mean"):
        (line,) = [line for line in panels[title].get_lines() if line.get_label() == "one"]
        assert line.get_marker() == "o" and len(line.get_xdata()) == 1, title
        (longer,) = [line for line in panels[title].get_lines() if line.get_label() == "many"]
        assert longer.get_marker() in ("None", None, "")  # runs with lines stay plain lines
    assert plot_training._has_isolated_points([math.nan, 1.0, math.nan, 2.0, 3.0])
    assert not plot_training._has_isolated_points([1.0, 2.0, math.nan, math.nan])
