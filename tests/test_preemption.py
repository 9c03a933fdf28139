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
    free_port,
    max_abs_diff,
    subprocess_env,
    tiny_dataset,
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


# ---- every save/eval strategy: skip evaluation, save exactly once, say what was saved (issue 28.4) --------------

STRATEGIES = {
    # the shipped recipes: eval_steps == save_steps, the stop step is an eval and save step
    "steps+eval": dict(save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=2),
    # epoch strategies: transformers' epoch-end handling runs after the loop breaks
    "epoch": dict(save_strategy="epoch", eval_strategy="epoch"),
    # an evaluation's result decides should_save
    "best": dict(save_strategy="best", eval_strategy="steps", eval_steps=1, metric_for_best_model="loss"),
    "steps": dict(save_strategy="steps", save_steps=3),
}


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_sigterm_skips_evaluation_and_saves_once_with_every_strategy(tiny_model_path, tmp_path, caplog, strategy):
    """SIGTERM during optimizer step 2: no evaluation after it, one save of step 2 (marked), training stops there,
    and the log names the checkpoint that exists. Before: "best" stopped with no checkpoint while the log said
    "after saving checkpoint-2", "epoch" evaluated and saved step 2 again in place, "steps+eval" evaluated first."""
    from transformers import TrainerCallback

    from trl_sapo.checkpoints import COMPLETE_MARKER_NAME

    events = []

    class SignalAndRecord(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:  # SIGTERM arrives during optimizer step 2
                events.append(("sigterm", state.global_step))
                os.kill(os.getpid(), signal.SIGTERM)

        def on_evaluate(self, args, state, control, **kwargs):
            events.append(("evaluate", state.global_step))

        def on_save(self, args, state, control, **kwargs):
            events.append(("save", state.global_step))

    trainer = tiny_trainer(
        tiny_model_path,
        tmp_path / "out",
        max_steps=6,
        eval_dataset=tiny_dataset(4),
        per_device_eval_batch_size=4,
        **STRATEGIES[strategy],
    )
    trainer.add_callback(SignalAndRecord())
    with caplog.at_level("WARNING", logger="trl_sapo.reliability.mixin"):
        trainer.train()
    after_signal = events[events.index(("sigterm", 1)) + 1 :]
    assert after_signal == [("save", 2)], events
    assert trainer.preempted and trainer.state.global_step == 2
    assert (tmp_path / "out" / "checkpoint-2" / COMPLETE_MARKER_NAME).is_file()
    assert "Stopped by SIGTERM after saving checkpoint-2" in caplog.text


def test_the_stop_message_tells_when_no_checkpoint_was_saved(tiny_model_path, tmp_path, caplog, monkeypatch):
    """Should the save not happen (here: another callback vetoes it), the log says so instead of claiming it."""
    from transformers import TrainerCallback

    class Veto(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

        def on_step_end(self, args, state, control, **kwargs):
            control.should_save = False  # runs after PreemptionCallback: vetoes its save (and its retry at the
            # epoch end, below)

        on_epoch_end = on_step_end

    trainer = tiny_trainer(tiny_model_path, tmp_path / "out", max_steps=4)
    trainer.add_callback(Veto())
    with caplog.at_level("WARNING", logger="trl_sapo.reliability.mixin"):
        trainer.train()
    assert trainer.preempted and trainer.state.global_step == 2
    assert "Stopped by SIGTERM after saving" not in caplog.text
    assert "Stopped by SIGTERM at step 2 without saving a checkpoint there (last save: step None)" in caplog.text


LAUNCHED_WORKER = """
import os, signal, sys, time
from pathlib import Path
from trl_sapo.reliability import PREEMPTED_EXIT_CODE

def stop(signum, frame):  # what the training entry point does after its checkpoint: exit PREEMPTED_EXIT_CODE
    Path(sys.argv[1], f"stopped.{os.environ['RANK']}").write_text(str(signum))
    sys.exit(PREEMPTED_EXIT_CODE)

signal.signal(signal.SIGTERM, stop)
Path(sys.argv[1], f"ready.{os.environ['RANK']}").write_text(str(os.getpid()))
time.sleep(120)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_accelerate_launch_exits_1_after_a_clean_sigterm_stop(tmp_path):
    """What README's "Pre-emption" says: a SIGTERM to the `accelerate launch` process (torchrun's agent) is
    forwarded to the workers, which stop cleanly with status 0, and the launcher itself then exits 1 (torch's
    elastic agent re-raises the signal as SignalException, torch/distributed/elastic/agent/server/api.py). The
    SLURM launcher therefore reads the run-status file, not the exit status."""
    from trl_sapo.reliability import PREEMPTED_EXIT_CODE

    (tmp_path / "worker.py").write_text(LAUNCHED_WORKER)
    config = accelerate_config(tmp_path, 2)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    proc = _popen([*cmd, "--main_process_port", str(free_port()), str(tmp_path / "worker.py"), str(tmp_path)])
    for rank in (0, 1):
        _wait_for(tmp_path / f"ready.{rank}", proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert PREEMPTED_EXIT_CODE == 0
    assert all((tmp_path / f"stopped.{r}").read_text() == str(int(signal.SIGTERM)) for r in (0, 1)), output[-3000:]
    assert proc.returncode == 1, output[-3000:]
    assert "SignalException" in output
