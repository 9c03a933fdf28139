"""The math_verify subprocess behind the GSM8K accuracy reward (trl_sapo/gsm8k/math_verify_client.py) when it is
signalled, killed, cannot start, or the parent forks (issue 28.5). A comparison that does not finish in time is in
tests/test_reward_robustness.py."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

import pytest

from trl_sapo.gsm8k import math_verify_client
from trl_sapo.gsm8k.math_verify_client import _MathVerifyWorker
from trl_sapo.gsm8k.rewards import accuracy_reward

pytestmark = pytest.mark.timeout(300, method="thread")
NON_NUMERIC = ["\\boxed{\\frac{1}{3}}", "\\boxed{\\frac{2}{3}}"]  # reach math_verify (no finite decimal)
ANSWERS = ["#### 0.333333"] * 2


@pytest.fixture
def worker(monkeypatch):
    """A fresh subprocess client in place of the process-wide one, started and ready."""
    fresh = _MathVerifyWorker()
    monkeypatch.setattr(math_verify_client, "_MATH_VERIFY", fresh)
    assert fresh.equal("0.5", "1/2") is True
    yield fresh
    fresh.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1, signal.SIGINT])
def test_the_preemption_signals_do_not_stop_the_subprocess(worker, sig):
    """`scancel --signal=TERM` and the launcher's SIGUSR1 reach every process of the SLURM step: the subprocess used
    to die of it, and the trainer's next reward call raised BrokenPipeError (RewardFunctionError on every rank)."""
    pid = worker._proc.pid
    os.kill(pid, sig)
    time.sleep(0.5)
    assert accuracy_reward(NON_NUMERIC, answer=ANSWERS) == [1.0, 0.0]
    assert worker._proc.pid == pid and worker.no_reply == 0


@pytest.mark.parametrize("when", ["before_the_request", "with_the_request_in_flight"])
def test_a_killed_subprocess_scores_not_equal_is_counted_and_restarts(worker, monkeypatch, caplog, when):
    """SIGKILL (the OOM killer) just before a request is written (its write then fails with the request still
    buffered, and closing that buffer raised BrokenPipeError out of the reward) or while it is answered: the request
    scores 0.0 without raising, is counted and logged, and the next request starts a new subprocess."""
    hook = "_start" if when == "before_the_request" else "_read_reply"
    original = getattr(worker, hook)

    def kill_first(*args):
        proc = worker._proc
        if hook == "_start":
            original(*args)
            proc = worker._proc
        proc.kill()
        proc.wait()
        monkeypatch.setattr(worker, hook, original)  # once
        return None if hook == "_start" else original(*args)

    monkeypatch.setattr(worker, hook, kill_first)
    if hook == "_read_reply":  # held until the kill: on a loaded machine it could otherwise answer before it
        os.kill(worker._proc.pid, signal.SIGSTOP)
    with caplog.at_level(logging.WARNING, logger=math_verify_client.__name__):
        assert accuracy_reward(NON_NUMERIC[:1], answer=ANSWERS[:1]) == [0.0]
    assert worker.no_reply == 1 and worker.last_status == "no reply"
    assert "gave no reply" in caplog.text and "(1 so far in this process)" in caplog.text
    assert accuracy_reward(NON_NUMERIC, answer=ANSWERS) == [1.0, 0.0]
    assert worker.last_status == "ok" and worker.no_reply == 1


def test_a_stalled_subprocess_is_given_up_within_the_bound(worker):
    """The parent's own timeout (limit + margin) for a subprocess that stops answering at all (here: SIGSTOP; in
    practice an overloaded machine): no reply, scored 0, within the documented bound."""
    os.kill(worker._proc.pid, signal.SIGSTOP)
    started = time.monotonic()
    assert accuracy_reward(NON_NUMERIC[:1], answer=ANSWERS[:1]) == [0.0]
    assert time.monotonic() - started < 0.6 + 0.25 + 0.5
    assert worker.last_status == "no reply" and worker._proc is None  # killed (SIGKILL works on a stopped process)
    assert accuracy_reward(NON_NUMERIC, answer=ANSWERS) == [1.0, 0.0]


def test_a_start_up_crash_is_reported_with_its_stderr(tmp_path, monkeypatch):
    """EOF at start-up: reported at once with the end of the subprocess's stderr (it used to say "did not start
    within 300 s; is math-verify installed?" with the cause discarded)."""
    script = tmp_path / "crashing_worker.py"
    script.write_text(
        "import sys\nprint('ModuleNotFoundError: No module named math_verify', file=sys.stderr)\nsys.exit(3)\n"
    )
    monkeypatch.setattr(_MathVerifyWorker, "SCRIPT", script)
    crashing = _MathVerifyWorker()
    started = time.monotonic()
    with pytest.raises(
        RuntimeError,
        match=r"(?s)exited during start-up \(status 3\).*stderr ended with:\nModuleNotFoundError: No module named math_verify",
    ):
        crashing.equal("1", "1/1")
    assert time.monotonic() - started < 30


def test_a_start_up_timeout_is_told_apart_from_a_crash(tmp_path, monkeypatch):
    script = tmp_path / "silent_worker.py"
    script.write_text("import sys, time\nprint('still importing', file=sys.stderr, flush=True)\ntime.sleep(60)\n")
    monkeypatch.setattr(_MathVerifyWorker, "SCRIPT", script)
    monkeypatch.setattr(_MathVerifyWorker, "STARTUP_TIMEOUT_S", 2.0)
    slow = _MathVerifyWorker()
    with pytest.raises(RuntimeError, match=r"(?s)did not start within 2.0 s.*stderr ended with:\nstill importing"):
        slow.equal("1", "1/1")
    assert slow._proc is None  # killed, not left behind


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_a_fork_while_another_thread_holds_the_lock_does_not_deadlock_the_child(worker):
    """A process that forks (a DataLoader worker, multiprocessing) while another thread is inside a comparison: the
    child's copy of the lock was held forever, so its first math_verify call hung."""
    holding, release = threading.Event(), threading.Event()

    def hold_the_lock():
        with worker._lock:
            holding.set()
            release.wait(30)

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    holding.wait(10)
    pid = os.fork()
    if pid == 0:  # child: its own subprocess, a lock nobody holds
        ok = False
        try:
            ok = worker.equal("0.5", "1/2") is True and worker._proc.pid != os.getppid()
        finally:
            worker.close()
            os._exit(0 if ok else 1)
    release.set()
    holder.join()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on the math_verify lock")
    assert os.waitstatus_to_exitcode(status) == 0
