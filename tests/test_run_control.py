"""One run per output_dir (trl_sapo/run_lock.py), one checkpoint choice for all ranks and the completion marker
(trl_sapo/checkpoints.py), and SIGUSR1 as a stop signal (PreemptionCallback). The 2-process test runs under
`accelerate launch` on CPU (gloo) and checks the world size."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from trl_sapo import run_lock
from trl_sapo.checkpoints import write_complete_marker
from trl_sapo.run_lock import LOCK_NAME, RunLockError, acquire_run_lock

REPO_ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = Path(sys.executable).with_name("accelerate")


def args(output_dir, resume=None):
    return SimpleNamespace(output_dir=str(output_dir), resume_from_checkpoint=resume)


def write_lock(output_dir: Path, age_seconds: float = 0.0, **info) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    path.write_text(json.dumps({"job_id": "111", "host": "other-node", "pid": 1, "start_time": "then"} | info))
    os.utime(path, (time.time() - age_seconds, time.time() - age_seconds))
    return path


@pytest.fixture(autouse=True)
def _no_slurm_job(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    monkeypatch.delenv(run_lock.STALE_ENV, raising=False)


def test_lock_is_created_refuses_a_live_run_and_is_released(tmp_path):
    lock = acquire_run_lock(args(tmp_path / "out"))
    info = json.loads((tmp_path / "out" / LOCK_NAME).read_text())
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid() and info["start_time"]
    lock.release()
    assert not (tmp_path / "out" / LOCK_NAME).exists()

    with subprocess.Popen(["sleep", "60"]) as other:  # a live run on this host
        try:
            write_lock(tmp_path / "out", host=socket.gethostname(), pid=other.pid, job_id="777")
            with pytest.raises(RunLockError, match=r"in use by SLURM job 777 on .* \(pid \d+, started then\)"):
                acquire_run_lock(args(tmp_path / "out"))
        finally:
            other.kill()
    write_lock(tmp_path / "out", age_seconds=30)  # another host, recent heartbeat
    with pytest.raises(RunLockError, match="last heartbeat 30s ago .*use another --output_dir.*delete"):
        acquire_run_lock(args(tmp_path / "out"))


@pytest.mark.parametrize(
    ("lock_info", "age", "job", "reason"),
    [({"host": socket.gethostname(), "pid": 2**22 + 7}, 0, None, "on this host is gone"),
     ({}, 700, None, "no heartbeat for 700s"),
     ({"job_id": "4242"}, 0, "4242", "left by an earlier run of this SLURM job (4242, restart 0 < 1)"),
     ({"host": socket.gethostname(), "pid": os.getpid()}, 0, None, "left by this process")],
    ids=["dead-pid", "old-heartbeat", "requeued-job", "same-process"],
)  # fmt: skip
def test_stale_lock_is_reported_and_taken_over(tmp_path, monkeypatch, caplog, lock_info, age, job, reason):
    if job:
        monkeypatch.setenv("SLURM_JOB_ID", job)
        monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # requeued once
    path = write_lock(tmp_path / "out", age_seconds=age, **lock_info)
    with caplog.at_level("WARNING", logger="trl_sapo.run_lock"):
        lock = acquire_run_lock(args(tmp_path / "out"))
    assert f"Taking over the stale lock {path}" in caplog.text and reason in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize("restart", [None, "2"])
def test_a_live_run_of_the_same_slurm_job_keeps_its_lock(tmp_path, monkeypatch, restart):
    """Two runs in one allocation (salloc, two srun steps) share SLURM_JOB_ID and the restart count: the same job id
    alone does not make a lock stale (it used to, and the second run took over the live run's lock)."""
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    if restart:
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
    write_lock(tmp_path / "out", job_id="4242", restart=restart, host="other-node")  # fresh heartbeat
    with pytest.raises(RunLockError, match="in use by SLURM job 4242 on other-node"):
        acquire_run_lock(args(tmp_path / "out"))
    with subprocess.Popen(["sleep", "60"]) as other:  # the same, on this host: its process is alive
        try:
            write_lock(tmp_path / "out", job_id="4242", restart=restart, host=socket.gethostname(), pid=other.pid)
            with pytest.raises(RunLockError, match="in use by SLURM job 4242"):
                acquire_run_lock(args(tmp_path / "out"))
        finally:
            other.kill()


def _contend(output_dir: str, report: str) -> None:
    """One contender for a stale lock, in a forked process; the staleness decision is slowed down so that both
    contenders decide before either replaces the lock (the window a plain read-decide-replace leaves open)."""
    decide = run_lock.stale_reason

    def slow_decision(*a):
        reason = decide(*a)
        time.sleep(1.0)
        return reason

    run_lock.stale_reason = slow_decision
    try:
        run_lock._acquire_here(output_dir)
        outcome = ["acquired", os.getpid()]
    except RunLockError as exc:
        outcome = ["refused", str(exc)]
    Path(report).write_text(json.dumps(outcome))
    deadline = time.time() + 60  # stay alive (a live holder) until the test has looked
    while not Path(report).with_suffix(".done").exists() and time.time() < deadline:
        time.sleep(0.05)
    os._exit(0)  # no atexit: the lock stays as it is for the check


def test_two_contenders_for_a_stale_lock_one_wins(tmp_path):
    import multiprocessing

    path = write_lock(tmp_path / "out", age_seconds=3600)  # another host, no heartbeat for an hour
    context = multiprocessing.get_context("fork")
    reports = [tmp_path / f"contender{i}.json" for i in range(2)]
    contenders = [context.Process(target=_contend, args=(str(tmp_path / "out"), str(r))) for r in reports]
    for p in contenders:
        p.start()
    deadline = time.time() + 60
    while not all(r.exists() for r in reports) and time.time() < deadline:
        time.sleep(0.05)
    outcomes = sorted(json.loads(r.read_text()) for r in reports)
    for r, p in zip(reports, contenders):
        r.with_suffix(".done").touch()
        p.join(timeout=60)
    assert [kind for kind, _ in outcomes] == ["acquired", "refused"], outcomes
    assert json.loads(path.read_text())["pid"] == outcomes[0][1]  # the winner holds the file
    assert f"(pid {outcomes[0][1]}," in outcomes[1][1]  # the loser names the winner
    assert not list((tmp_path / "out").glob("*.takeover-*")) and not list((tmp_path / "out").glob("*.tmp"))


def test_heartbeat_survives_a_transient_error(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
    real_utime, failures = os.utime, []

    def flaky_utime(path, *a, **k):
        if len(failures) < 2:  # the first two refreshes fail (NFS hiccup)
            failures.append(path)
            raise OSError(5, "Input/output error")
        return real_utime(path, *a, **k)

    path = tmp_path / "out" / LOCK_NAME
    with caplog.at_level("WARNING", logger="trl_sapo.run_lock"):
        lock = acquire_run_lock(args(tmp_path / "out"))
        try:
            os.utime(path, (time.time() - 3600, time.time() - 3600))
            monkeypatch.setattr(run_lock.os, "utime", flaky_utime)
            deadline = time.time() + 20
            while time.time() - path.stat().st_mtime > 60 and time.time() < deadline:
                time.sleep(0.05)
            assert time.time() - path.stat().st_mtime < 60, "the heartbeat stopped after an error"
            assert len(failures) == 2 and lock.lost is None
        finally:
            lock.release()
    assert "Could not refresh the run lock" in caplog.text and "refreshed again" in caplog.text


def test_heartbeat_notices_a_takeover_and_stops_the_run(tmp_path, monkeypatch, caplog):
    """Another run took the lock (this one's heartbeat was missing past the stale interval): the holder learns it at
    its next heartbeat, logs it, and the main thread is interrupted (default `on_lost`)."""
    monkeypatch.setattr(run_lock, "HEARTBEAT_SECONDS", 0.05)
    with caplog.at_level("ERROR", logger="trl_sapo.run_lock"):
        lock = acquire_run_lock(args(tmp_path / "out"))
        try:
            with pytest.raises(KeyboardInterrupt):
                write_lock(tmp_path / "out", job_id="555", host="gpu-node-2")  # the file is someone else's now
                for _ in range(400):
                    time.sleep(0.05)
        finally:
            lock.release()
    assert lock.lost == "now held by SLURM job 555 on gpu-node-2 (pid 1, started then)"
    assert f"This run lost its lock {tmp_path / 'out' / LOCK_NAME}" in caplog.text
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["job_id"] == "555"  # release leaves it alone


@pytest.mark.parametrize("value", ["10m", "-5", "0", "inf", "nan"])
def test_bad_stale_seconds_is_a_clear_error(tmp_path, monkeypatch, value):
    monkeypatch.setenv(run_lock.STALE_ENV, value)
    write_lock(tmp_path / "out", age_seconds=30)
    with pytest.raises(RunLockError, match=rf"{run_lock.STALE_ENV}='{value}': must be a positive number of seconds"):
        acquire_run_lock(args(tmp_path / "out"))


def test_sigusr1_stops_like_sigterm():
    """The SLURM launcher's fallback signal (SIGUSR1 through srun) sets the same stop flag as SIGTERM; the previous
    handlers come back afterwards."""
    from trl_sapo.reliability import PreemptionCallback

    before = signal.getsignal(signal.SIGUSR1)
    callback = PreemptionCallback(trainer=None)
    callback.on_train_begin(None, None, None)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
        assert callback.requested
    finally:
        callback.uninstall()
    assert signal.getsignal(signal.SIGUSR1) is before


# ---- 2 processes -------------------------------------------------------------------------------------------------

ENTRY = """
import json, os, sys
import torch.distributed as dist
from pathlib import Path
from trl_sapo import SAPOConfig
from trl_sapo.checkpoints import CheckpointError, resolve_resume_from_checkpoint, write_complete_marker
from trl_sapo.run_lock import RunLockError, acquire_run_lock

base = Path(sys.argv[1])
config = SAPOConfig(output_dir=str(base / "shared"), use_cpu=True, bf16=False, report_to="none")
rank, record = config.process_index, {"world_size": config.world_size, "dist": dist.get_world_size()}

def outcome(fn):
    try:
        return ["ok", fn()]
    except Exception as exc:
        return [type(exc).__name__, str(exc)]

# Shared storage with checkpoint-2 and -3 complete: one choice, logged once.
record["shared"] = outcome(lambda: resolve_resume_from_checkpoint(config))
# Node-local storage: the same output_dir "out" is another folder on each node (rank 0: checkpoint-5, rank 1:
# checkpoint-4), as with a relative path and per-rank working directories.
os.chdir(base / f"node{rank}")
config.output_dir = "out"
record["local"] = outcome(lambda: resolve_resume_from_checkpoint(config))
os.chdir(base)
# `true` with nothing to resume: rank 0's error on every rank.
config.output_dir = str(base / "empty")
record["true_empty"] = outcome(lambda: resolve_resume_from_checkpoint(config, "true"))
# A live run (another host, fresh heartbeat) holds the lock: every rank refuses.
config.output_dir = str(base / "locked")
record["locked"] = outcome(lambda: acquire_run_lock(config) and "acquired")
# Rank 0 fails in a way that is not a CheckpointError/RunLockError: every rank raises at once (no collective hang).
from trl_sapo import checkpoints
real_list = checkpoints.list_checkpoints
if rank == 0:
    def unreadable(output_dir):
        raise PermissionError(13, "Permission denied", str(output_dir))
    checkpoints.list_checkpoints = unreadable
config.output_dir = str(base / "shared")
record["rank0_crash"] = outcome(lambda: resolve_resume_from_checkpoint(config))
checkpoints.list_checkpoints = real_list
os.environ["SAPO_RUN_LOCK_STALE_SECONDS"] = "10m"  # read by rank 0 only
config.output_dir = str(base / "locked")
record["bad_stale_env"] = outcome(lambda: acquire_run_lock(config) and "acquired")
(base / f"rank{rank}.json").write_text(json.dumps(record))
dist.barrier()
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_two_ranks_share_rank0s_choice_and_its_errors(tmp_path):
    for name, steps in {"shared": (2, 3), "node0/out": (5,), "node1/out": (4,)}.items():
        for step in steps:
            ckpt = tmp_path / name / f"checkpoint-{step}"
            ckpt.mkdir(parents=True)
            (ckpt / "trainer_state.json").write_text("{}")
            write_complete_marker(ckpt, step, 2)
    write_lock(tmp_path / "locked", job_id="999", host="gpu-node-7")
    (tmp_path / "entry.py").write_text(ENTRY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    env.pop("SLURM_JOB_ID", None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [str(ACCELERATE), "launch", "--config_file", str(REPO_ROOT / "accelerate_configs" / "cpu_2proc_ddp.yaml"),
         "--main_process_port", str(port), str(tmp_path / "entry.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == r["dist"] == 2 for r in records), records

    assert [r["shared"] for r in records] == [["ok", str(tmp_path / "shared" / "checkpoint-3")]] * 2
    assert proc.stderr.count(f"Resuming from {tmp_path / 'shared' / 'checkpoint-3'}") == 1  # rank 0 logs it

    local = [r["local"] for r in records]
    assert local[0] == local[1] and local[0][0] == "CheckpointError", local
    message = local[0][1]  # names rank 0's choice, the rank that cannot see it, and that rank's own latest
    assert "Rank 0 resumes from out/checkpoint-5, but process 1 on" in message, message
    assert "see out/checkpoint-5/checkpoint_complete.json (its latest: out/checkpoint-4)" in message, message
    assert "storage all nodes share" in message

    assert records[0]["true_empty"] == records[1]["true_empty"]
    assert records[0]["true_empty"][0] == "CheckpointError" and "holds no finished" in records[0]["true_empty"][1]

    assert [r["locked"][0] for r in records] == ["RunLockError"] * 2, records
    assert "in use by SLURM job 999 on gpu-node-7" in records[1]["locked"][1]

    crash = [r["rank0_crash"] for r in records]  # rank 0 its own error, rank 1 the same, named
    assert crash[0] == ["PermissionError", f"[Errno 13] Permission denied: '{tmp_path / 'shared'}'"], crash
    assert crash[1][0] == "RuntimeError" and crash[1][1].startswith(
        "Rank 0 failed while choosing the checkpoint to resume from: PermissionError: [Errno 13]"
    ), crash
    bad_env = [r["bad_stale_env"] for r in records]
    assert [kind for kind, _ in bad_env] == ["RunLockError"] * 2, bad_env
    assert all("SAPO_RUN_LOCK_STALE_SECONDS='10m': must be a positive number" in m for _, m in bad_env), bad_env


@pytest.mark.slow
def test_rotation_keeps_the_last_complete_checkpoint_until_the_new_one_is_marked(
    tiny_model_path, tmp_path, monkeypatch
):
    """save_total_limit: 1. transformers rotates inside `_save_checkpoint`, before the other ranks are known to be
    done: a save cut off right after it would leave no complete checkpoint. At the point where the new checkpoint is
    written but not yet marked (a user callback's on_save runs before the marker), the previous, complete one is still
    there; after training only the last one is left, marked, and the run reported its progress."""
    from test_script import tiny_run_args, write_reward_module
    from transformers import TrainerCallback

    from trl_sapo.checkpoints import COMPLETE_MARKER_NAME, RUN_STATUS_ENV
    from trl_sapo.gsm8k.recipe import parse_args
    from trl_sapo.gsm8k.train import train_gsm8k

    seen = []

    class RecordCheckpoints(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            out = Path(args.output_dir)
            seen.append({p.name: (p / COMPLETE_MARKER_NAME).exists() for p in sorted(out.glob("checkpoint-*"))})

    monkeypatch.chdir(tmp_path)  # the reward module is imported from the working directory
    monkeypatch.setenv(RUN_STATUS_ENV, str(tmp_path / "run_status"))
    out = tmp_path / "out"
    flags = tiny_run_args(tiny_model_path, out, reward_funcs=[write_reward_module(tmp_path)], save_strategy="steps",
                          save_steps=1, save_total_limit=1, max_steps=3)  # fmt: skip
    trainer = train_gsm8k(*parse_args(flags), callbacks=[RecordCheckpoints()])
    assert seen == [{"checkpoint-1": False}, {"checkpoint-1": True, "checkpoint-2": False},
                    {"checkpoint-2": True, "checkpoint-3": False}]  # fmt: skip
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert (out / "checkpoint-3" / COMPLETE_MARKER_NAME).exists()
    assert trainer.args.save_total_limit == 1  # restored after training
    assert not (out / LOCK_NAME).exists()  # released at the end of main()
    assert (tmp_path / "run_status").read_text().splitlines() == [
        "train_begin restart=0 step=0",
        *(f"checkpoint restart=0 step={s} path={out / f'checkpoint-{s}'}" for s in (1, 2, 3)),
        "train_end restart=0 step=3",
    ]
