"""Multi-node rehearsal without SLURM: two `accelerate launch --machine_rank 0|1` (num_machines 2, 127.0.0.1) must
join into ONE 2-process training job of scripts/gsm8k_sapo.py (tiny Llama, synthetic GSM8K, CPU/gloo DDP)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO_ROOT
from slurm_cluster import assert_world_size_two, finite_metrics, free_ports, write_tiny_run

ACCELERATE = Path(sys.executable).parent / "accelerate"
TIMEOUT = 120  # s for both machines together; ~45 s on 2 shared cores


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(TIMEOUT + 60)
def test_two_machines_over_loopback_form_one_job(tmp_path, tiny_model_path):
    recipe, env = write_tiny_run(tmp_path, tiny_model_path, max_steps=2)
    env = {**os.environ, **env}
    (port,) = free_ports(1)
    procs, timed_out = {}, False
    try:
        for rank in (0, 1):
            cmd = [
                str(ACCELERATE), "launch", "--config_file", "accelerate_configs/cpu_2proc_ddp.yaml",
                "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
                "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--max_restarts", "0",
                "scripts/gsm8k_sapo.py", "--config", str(recipe),
            ]  # fmt: skip
            with open(tmp_path / f"machine{rank}.log", "wb") as log:
                # Own session: on timeout the whole tree (accelerate -> torchrun -> python) is killed by its pgid.
                procs[rank] = subprocess.Popen(
                    cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
        deadline = time.monotonic() + TIMEOUT
        for proc in procs.values():
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        logs = {r: (tmp_path / f"machine{r}.log").read_text(errors="replace") for r in procs}
    assert not timed_out, f"no result after {TIMEOUT}s:\n" + "\n".join(
        f"--- machine {r}\n{t[-3000:]}" for r, t in logs.items()
    )
    for rank, proc in procs.items():
        assert proc.returncode == 0, f"machine {rank} exited {proc.returncode}:\n{logs[rank][-4000:]}"

    assert_world_size_two(logs)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert [e["step"] for e in finite_metrics(state)] == [1, 2]
