"""One training run per `output_dir`: a lock file that refuses a second concurrent run and detects stale locks.

Two runs writing the same `output_dir` (a manual resubmission while the requeued job is still pending, two users, a
copy-pasted command, two `srun` steps in one allocation) interleave their `checkpoint-N` folders, and
`save_total_limit` then deletes the other run's checkpoints. `acquire_run_lock(args)` creates
`output_dir/sapo_run.lock` (job id, restart count, host, pid, start time) before anything is loaded; a second run
fails at once with a `RunLockError` naming the holder. The holder refreshes the file's modification time every
`HEARTBEAT_SECONDS` (a failed refresh, e.g. a transient NFS error, is logged and retried) and checks that the file is
still its own: should another run have taken it over (this run's heartbeat was missing for the stale interval), the
heartbeat logs an error and interrupts the main thread (KeyboardInterrupt), so the two runs do not go on together. The
lock is removed at exit (also after SIGTERM's checkpoint).

A lock is stale, reported with a warning and taken over, when
  * it was left by an earlier run of the same SLURM job (same `SLURM_JOB_ID`, lower `SLURM_RESTART_COUNT`: a
    requeued job runs again only after SLURM has ended the previous run; the same job and restart count is another
    run in the same allocation, judged by the rules below), or
  * its holder ran on this host and that process is gone (or is this process: `main()` called again), or
  * its heartbeat is older than `SAPO_RUN_LOCK_STALE_SECONDS` (default 600 s: a holder killed on another host).

Taking over is a compare-and-swap: the contenders that saw the same stale lock race to create (`os.link`, atomic
also on NFS) a claim file named after that lock's content; only the winner, after checking that the lock is still
the one it judged, replaces it. A claim left by a contender that died is passed over after `CLAIM_STALE_SECONDS`.

With several processes only rank 0 touches the file; every rank raises the same error (any error of rank 0, e.g. a
bad `SAPO_RUN_LOCK_STALE_SECONDS`, reaches every rank at once).
"""

from __future__ import annotations

import _thread
import atexit
import contextlib
import glob
import hashlib
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
CLAIM_STALE_SECONDS = 30.0  # a takeover claim this old belongs to a contender that died between two file operations


class RunLockError(RuntimeError):
    """Another run holds the lock of this `output_dir` (or took it over from this run)."""


class RunLock:
    """The lock this process holds on `output_dir` (`release()` removes it; also at interpreter exit).

    `lost` is None while the file is this run's, else why it is not any more (set by the heartbeat, which then calls
    `on_lost(reason)`: by default, interrupt the main thread)."""

    def __init__(self, path: str, info: dict, on_lost=None, heartbeat_seconds: float | None = None):
        self.path = path
        self.info = info
        self.lost: str | None = None
        self.on_lost = on_lost if on_lost is not None else _interrupt_main_thread
        self.heartbeat_seconds = HEARTBEAT_SECONDS if heartbeat_seconds is None else heartbeat_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="sapo-run-lock", daemon=True)
        self._thread.start()
        atexit.register(self.release)

    def _heartbeat(self) -> None:
        failing = False
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                held = _read_strict(self.path)
                if held == self.info:
                    os.utime(self.path)
            except OSError as exc:  # transient (NFS, a full disk): keep trying, the lock is still ours
                if not failing:
                    logger.warning(f"Could not refresh the run lock {self.path} ({exc}); retrying.")
                failing = True
                continue
            if failing:
                logger.warning(f"Run lock {self.path} refreshed again.")
                failing = False
            if held != self.info and not self._stop.is_set():
                self.lost = f"now held by {_describe(held)}" if held is not None else "its file was removed"
                logger.error(
                    f"This run lost its lock {self.path} ({self.lost}): another run writes the same output_dir. "
                    "Stopping this run."
                )
                self.on_lost(self.lost)
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


def _interrupt_main_thread(reason: str) -> None:
    _thread.interrupt_main()  # KeyboardInterrupt in the main thread, after the error above


_HELD: dict[str, RunLock] = {}


def _read_strict(path: str) -> dict | None:
    """The lock's content; None when it is gone or not a lock (OSError other than "not found" propagates)."""
    try:
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _read(path: str) -> dict | None:
    try:
        return _read_strict(path)
    except OSError:
        return None


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True
    return True


def _restart_count(value) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def stale_seconds() -> float:
    """`SAPO_RUN_LOCK_STALE_SECONDS` (default 600); RunLockError naming the variable when it is not a positive number
    of seconds."""
    text = os.environ.get(STALE_ENV, "").strip()
    if not text:
        return DEFAULT_STALE_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise RunLockError(f"{STALE_ENV}={text!r}: must be a positive number of seconds (e.g. 600).")
    return value


def stale_reason(info: dict | None, age_seconds: float, stale_after: float) -> str | None:
    """Why the lock described by `info` (None: unreadable) with heartbeat `age_seconds` ago is stale, or None if its
    holder may still be running."""
    job = os.environ.get("SLURM_JOB_ID")
    if info is not None:
        restart, held_restart = os.environ.get("SLURM_RESTART_COUNT"), info.get("restart")
        if job and str(info.get("job_id")) == job and _restart_count(held_restart) < _restart_count(restart):
            return f"left by an earlier run of this SLURM job ({job}, restart {held_restart or 0} < {restart})"
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


def _snapshot(path: str) -> tuple[bytes, int] | None:
    """The lock file's bytes and modification time (ns), or None when it is gone: what a takeover compares."""
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno()).st_mtime_ns
    except FileNotFoundError:
        return None


class _LostRace(Exception):
    """Another contender took over the stale lock first (or it changed under us)."""


def _take_over(path: str, tmp: str, seen: tuple[bytes, int]) -> None:
    """Replace the stale lock `path`, judged from `seen`, by `tmp`: compare-and-swap through a claim file (see the
    module docstring). Raises `_LostRace` when another contender wins or the lock changed since it was judged."""
    prefix = f"{path}.takeover-{hashlib.sha256(seen[0] + str(seen[1]).encode()).hexdigest()[:16]}-"
    claim = None
    for n in range(1000):
        try:
            os.link(tmp, f"{prefix}{n}")
            claim = f"{prefix}{n}"
            break
        except FileExistsError:
            try:
                claimed_age = time.time() - os.stat(f"{prefix}{n}").st_mtime
            except FileNotFoundError:  # its winner finished and cleaned up
                raise _LostRace from None
            if claimed_age < CLAIM_STALE_SECONDS:
                raise _LostRace from None
    if claim is None:
        raise _LostRace
    try:
        if _snapshot(path) != seen:
            raise _LostRace
        os.replace(tmp, path)
    finally:
        for leftover in glob.glob(glob.escape(prefix) + "*"):
            with contextlib.suppress(OSError):
                os.remove(leftover)


def _acquire_here(output_dir: str, on_lost=None) -> RunLock:
    stale_after = stale_seconds()
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
        for _attempt in range(3):  # a lost takeover race: judge the winner's lock afresh
            try:
                os.link(tmp, path)  # atomic create-if-absent, with the content already in place
                break
            except FileExistsError:
                pass
            seen = _snapshot(path)
            if seen is None:  # released meanwhile
                continue
            held = _read(path)
            age = time.time() - seen[1] / 1e9
            reason = stale_reason(held, age, stale_after)
            if reason is None:
                raise RunLockError(
                    f"output_dir {output_dir!r} is in use by {_describe(held)}, last heartbeat {age:.0f}s ago "
                    f"({path}). Two runs writing one output_dir mix their checkpoints. Wait for it to finish (or "
                    f"scancel it), or use another --output_dir. If that run is gone, delete {path}."
                )
            try:
                _take_over(path, tmp, seen)
            except _LostRace:
                continue
            logger.warning(f"Taking over the stale lock {path} of {_describe(held)}: {reason}.")
            break
        else:
            raise RunLockError(f"output_dir {output_dir!r}: its lock {path} keeps changing; is another run starting?")
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    lock = RunLock(path, info, on_lost=on_lost)
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
        except Exception as exc:  # any error (not only RunLockError): the other ranks must not wait for rank 0
            failure = exc
            outcome = [str(exc) if isinstance(exc, RunLockError) else f"rank 0: {type(exc).__name__}: {exc}"]
    (error,) = broadcast_object_list(outcome, from_process=0)
    if failure is not None:
        raise failure
    if error is not None:
        raise RunLockError(error)
    return lock
