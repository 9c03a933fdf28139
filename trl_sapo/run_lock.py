"""One training run per `output_dir`: a lock file that refuses a second concurrent run and detects stale locks.

Two runs writing the same `output_dir` (a manual resubmission while the requeued job is still pending, two users, a
copy-pasted command) interleave their `checkpoint-N` folders, and `save_total_limit` then deletes the other run's
checkpoints. `acquire_run_lock(args)` creates `output_dir/sapo_run.lock` (job id, host, pid, start time) before
anything is loaded; a second run fails at once with a `RunLockError` naming the holder. The holder refreshes the
file's modification time every `HEARTBEAT_SECONDS` and removes it at exit (also after SIGTERM's checkpoint).

A lock is stale, reported with a warning and taken over, when
  * it was left by an earlier run of the same SLURM job (same `SLURM_JOB_ID`: a requeued job runs again only after
    SLURM has ended the previous run), or
  * its holder ran on this host and that process is gone (or is this process: `main()` called again), or
  * its heartbeat is older than `SAPO_RUN_LOCK_STALE_SECONDS` (default 600 s: a holder killed on another host).

With several processes only rank 0 touches the file; every rank raises the same error.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import threading
import time

from transformers.utils import logging

logger = logging.get_logger(__name__)

LOCK_NAME = "sapo_run.lock"
HEARTBEAT_SECONDS = 60.0
STALE_ENV = "SAPO_RUN_LOCK_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 600.0


class RunLockError(RuntimeError):
    """Another run holds the lock of this `output_dir`."""


class RunLock:
    """The lock this process holds on `output_dir` (`release()` removes it; also at interpreter exit)."""

    def __init__(self, path: str, info: dict):
        self.path = path
        self.info = info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="sapo-run-lock", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still this run's."""
        if self._stop.is_set():
            return
        self._stop.set()
        _HELD.pop(self.path, None)
        if _read(self.path) == self.info:
            with contextlib.suppress(OSError):
                os.remove(self.path)


_HELD: dict[str, RunLock] = {}


def _read(path: str) -> dict | None:
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def stale_reason(info: dict | None, age_seconds: float, stale_after: float) -> str | None:
    """Why the lock described by `info` (None: unreadable) with heartbeat `age_seconds` ago is stale, or None if its
    holder may still be running."""
    job = os.environ.get("SLURM_JOB_ID")
    if info is not None:
        if job and str(info.get("job_id")) == job:
            return f"left by an earlier run of this SLURM job ({job})"
        if info.get("host") == socket.gethostname():
            if info.get("pid") == os.getpid():
                return "left by this process"
            if not _pid_alive(info.get("pid")):
                return f"its process {info.get('pid')} on this host is gone"
    if age_seconds > stale_after:
        return f"no heartbeat for {age_seconds:.0f}s (> {stale_after:.0f}s, {STALE_ENV})"
    return None


def _describe(info: dict | None) -> str:
    if info is None:
        return "an unreadable lock"
    job = f"SLURM job {info['job_id']}" if info.get("job_id") else "a run"
    return f"{job} on {info.get('host')} (pid {info.get('pid')}, started {info.get('start_time')})"


def _acquire_here(output_dir: str) -> RunLock:
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(os.path.abspath(output_dir), LOCK_NAME)
    if path in _HELD:  # main() called again in this process
        _HELD.pop(path).release()
    info = {
        "job_id": os.environ.get("SLURM_JOB_ID"),
        "restart": os.environ.get("SLURM_RESTART_COUNT"),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    try:
        try:
            os.link(tmp, path)  # atomic create-if-absent, with the content already in place
        except FileExistsError:
            held = _read(path)
            try:
                age = time.time() - os.stat(path).st_mtime
            except FileNotFoundError:
                age = 0.0
            stale_after = float(os.environ.get(STALE_ENV, DEFAULT_STALE_SECONDS))
            reason = stale_reason(held, age, stale_after)
            if reason is None:
                raise RunLockError(
                    f"output_dir {output_dir!r} is in use by {_describe(held)}, last heartbeat {age:.0f}s ago "
                    f"({path}). Two runs writing one output_dir mix their checkpoints. Wait for it to finish (or "
                    f"scancel it), or use another --output_dir. If that run is gone, delete {path}."
                ) from None
            logger.warning(f"Taking over the stale lock {path} of {_describe(held)}: {reason}.")
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    lock = RunLock(path, info)
    _HELD[path] = lock
    return lock


def acquire_run_lock(args) -> RunLock | None:
    """Lock `args.output_dir` for this run (rank 0 holds it; other ranks get None). Raises `RunLockError` on every
    rank when another live run holds it. A collective with several processes: call it on every rank."""
    from .checkpoints import _distributed_state

    state = _distributed_state()
    if state is None:
        return _acquire_here(args.output_dir)
    from accelerate.utils import broadcast_object_list

    lock, failure, outcome = None, None, [None]
    if state.is_main_process:
        try:
            lock = _acquire_here(args.output_dir)
        except (RunLockError, OSError) as exc:
            failure, outcome = exc, [str(exc)]
    (error,) = broadcast_object_list(outcome, from_process=0)
    if failure is not None:
        raise failure
    if error is not None:
        raise RunLockError(error)
    return lock
