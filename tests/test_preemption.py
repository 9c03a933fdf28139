"""SIGTERM (SLURM's pre-emption warning) → checkpoint after a completed optimizer step → exit 0 → exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _reliability_helpers import (
    HELPER,
    REPO_ROOT,
    accelerate_config,
    max_abs_diff,
    subprocess_env,
    tiny_trainer,
    train_losses,
    trainable_state,
)

# One generation serves 4 optimizer steps (2 micro-batches × 2 iterations): a SIGTERM lands inside a rollout.
CONFIG = dict(num_iterations=2, steps_per_generation=2, max_steps=4)


def _cli_args(model, tmp_path, config, step_sleep=1.5):
    """Run the helper CLI with a pause after each optimizer step; READY.RANK (holding the pid) after step 1."""
    args = ["--model", str(model), "--output_dir", str(tmp_path / "out"), "--config", json.dumps(config)]
    args += [
        "--step_sleep",
        str(step_sleep),
        "--ready_file",
        str(tmp_path / "ready"),
        "--result",
        str(tmp_path / "res"),
    ]
    return args


def _popen(cmd):
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _wait_for(path: Path, proc, timeout=120.0) -> int:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}):\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training did not reach step 1 in {timeout} s")
        time.sleep(0.2)
    time.sleep(0.2)  # the pid is written before the file is closed
    return int(path.read_text())


@pytest.mark.slow  # fast check: test_script.py::test_preemption_exits_from_the_entry_point_without_final_save
def test_sigterm_saves_checkpoint_exits_zero_and_resumes_exactly(tiny_model_path, tmp_path):
    args = _cli_args(tiny_model_path, tmp_path, CONFIG)
    proc = _popen([sys.executable, str(HELPER), *args])
    pid = _wait_for(tmp_path / "ready.0", proc)
    assert pid == proc.pid
    os.kill(proc.pid, signal.SIGTERM)  # during the pause after optimizer step 1
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-4000:]
    assert "SIGTERM received" in output and "Stopped by SIGTERM after saving checkpoint-2" in output

    result = json.loads((tmp_path / "res.0").read_text())
    stopped = result["global_step"]
    assert stopped == 2, "must stop at the end of the step in progress, not skip or lose one"
    checkpoint = tmp_path / "out" / f"checkpoint-{stopped}"
    assert (checkpoint / "trainer_state.json").exists() and (checkpoint / "optimizer.pt").exists()
    assert (checkpoint / "rollout_state.pt").exists()
    assert not (checkpoint / "checkpoint-is-incomplete.txt").exists()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["global_step"] == stopped

    # Resume (the next SLURM job) and compare with a run that was never interrupted. One torch thread, as in the
    # SIGTERMed subprocess: another thread count changes float32 reduction order, so bits (measured: 6e-8 in a loss,
    # 2e-5 in the weights after Adam) would differ for reasons that have nothing to do with resuming.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = tiny_trainer(tiny_model_path, tmp_path / "resumed", **CONFIG)
        resumed.train(resume_from_checkpoint=str(checkpoint))
        full = tiny_trainer(tiny_model_path, tmp_path / "full", **CONFIG)
        full.train()
    finally:
        torch.set_num_threads(threads)
    assert resumed.state.global_step == full.state.global_step == CONFIG["max_steps"]
    full_losses, resumed_losses = train_losses(full), train_losses(resumed)
    assert {s: result["losses"][str(s)] for s in (1, 2)} == pytest.approx({s: full_losses[s] for s in (1, 2)})
    assert {s: resumed_losses[s] for s in (3, 4)} == pytest.approx({s: full_losses[s] for s in (3, 4)}, abs=1e-6)
    assert max_abs_diff(trainable_state(full), trainable_state(resumed)) < 1e-6


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_to_one_rank_stops_both_at_the_same_step(tiny_model_path, tmp_path):
    """SIGTERM reaches only rank 1: the ranks agree at the step boundary, save one checkpoint, and exit 0."""
    args = _cli_args(tiny_model_path, tmp_path, CONFIG)
    config = accelerate_config(tmp_path, 2)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), str(HELPER), *args]
    proc = _popen(cmd)
    _wait_for(tmp_path / "ready.0", proc)
    rank1 = _wait_for(tmp_path / "ready.1", proc)
    os.kill(rank1, signal.SIGTERM)
    output, _ = proc.communicate(timeout=150)
    assert proc.returncode == 0, output[-4000:]
    results = [json.loads((tmp_path / f"res.{r}").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in results] == [2, 2]
    steps = {r["global_step"] for r in results}
    assert len(steps) == 1 and steps.pop() < CONFIG["max_steps"], results
    checkpoint = tmp_path / "out" / f"checkpoint-{results[0]['global_step']}"
    assert (checkpoint / "rollout_state_0.pt").exists() and (checkpoint / "rollout_state_1.pt").exists()
    assert (checkpoint / "rng_state_1.pth").exists() and (checkpoint / "trainer_state.json").exists()
