"""Client of the ``_math_verify_worker.py`` subprocess: math_verify (sympy) comparisons under a hard time limit.

Part of :mod:`trl_sapo.gsm8k.rewards` (which re-exports the public names); see its docstring for the bounds. Spans
are pre-screened (:func:`verifiable_span`) before they reach sympy; the subprocess SIGKILLs a comparison that runs
past :data:`MATH_VERIFY_TIME_LIMIT_S`.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_VERIFY_CHARS = 1000  # longest answer span handed to math_verify
MAX_VERIFY_DIGITS = 30  # longest digit run in a span handed to math_verify
MAX_VERIFY_NESTING = 10  # deepest ({[ nesting in a span handed to math_verify
MATH_VERIFY_TIME_LIMIT_S = 0.6  # hard limit per math_verify comparison (subprocess killed beyond it)

_DIGIT_RUN_RE = re.compile(r"\d+")
_BRACKET_RE = re.compile(r"[(){}\[\]]")
_POWER_RE = re.compile(r"\^|\*\*")
_HEAVY_LATEX_RE = re.compile(r"\\(?:int|iint|iiint|oint|sum|prod|lim|infty|partial|overline)(?![a-zA-Z])")


class _MathVerifyWorker:
    """One ``_math_verify_worker.py`` subprocess per process, shared by all threads (one request at a time).

    The subprocess kills and re-forks its helper after :data:`MATH_VERIFY_TIME_LIMIT_S`; should the subprocess itself
    not answer within that plus a margin (it never runs sympy, so only a crash, a kill or an overloaded machine does
    that), the comparison counts as "not equal" (``no_reply`` counts them, each is logged), the subprocess is killed
    here and restarted on the next request. The subprocess ignores SIGTERM/SIGINT/SIGUSR1 (the pre-emption signals
    reach every process of a SLURM step; it exits when its stdin closes), and the tail of its stderr is kept for the
    error when it cannot start. A forked copy of this process starts its own subprocess, with a fresh lock.
    """

    SCRIPT = Path(__file__).with_name("_math_verify_worker.py")
    STARTUP_TIMEOUT_S = 300.0  # importing sympy + math_verify: ~1-3 s, much longer on an overloaded machine
    REPLY_MARGIN_S = 0.25
    STDERR_TAIL_BYTES = 4000

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pid = os.getpid()  # a forked copy of this process must not share the parent's pipes
        self._ready = False
        self._buffer = b""
        self._stderr_tail = bytearray()
        self._next_id = 0
        self.last_status = ""  # of the last request: "ok", "timeout", "error" (see the worker), or "no reply"
        self.no_reply = 0  # requests the subprocess did not answer (scored "not equal")
        _INSTANCES.add(self)

    def _after_fork_in_child(self) -> None:
        # The parent's lock may have been held by another thread at the fork: it would never be released here.
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the subprocess in the background (no-op when it runs); returns at once."""
        with self._lock:
            self._start()

    def _start(self) -> None:
        if self._proc is not None and self._pid == os.getpid() and self._proc.poll() is None:
            return
        if self._proc is not None and self._pid == os.getpid():
            self._stop()
        self._proc = subprocess.Popen(
            [sys.executable, str(self.SCRIPT)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
        )
        self._pid, self._ready, self._buffer, self._stderr_tail = os.getpid(), False, b"", bytearray()
        tail = self._stderr_tail
        threading.Thread(target=self._keep_tail, args=(self._proc.stderr, tail), daemon=True).start()

    def _keep_tail(self, stream, tail: bytearray) -> None:
        """Read the subprocess's stderr until EOF, keeping its last STDERR_TAIL_BYTES (a full pipe would block it)."""
        with contextlib.suppress(OSError, ValueError):
            for chunk in iter(lambda: stream.read1(65536), b""):
                tail += chunk
                del tail[: -self.STDERR_TAIL_BYTES]

    def _stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout):  # not stderr: the tail reader closes nothing, it just hits EOF
            with contextlib.suppress(OSError):  # BrokenPipeError: a request still buffered for the dead process
                stream.close()

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._stop()

    def _read_reply(self, timeout: float) -> dict | str:
        """The next reply, or why there is none: "eof" (the subprocess closed its stdout: it died) or "timeout"."""
        import select

        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return "timeout"
            chunk = os.read(fd, 65536)
            if not chunk:
                return "eof"
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        try:
            reply = json.loads(line)
        except ValueError:
            return "garbled"
        return reply if isinstance(reply, dict) else "garbled"

    def _startup_error(self, why: str) -> RuntimeError:
        proc = self._proc
        if why == "eof":
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            time.sleep(0.1)  # let the tail reader take the last of stderr
            what = f"exited during start-up (status {proc.returncode})"
        else:
            what = f"did not start within {self.STARTUP_TIMEOUT_S} s" if why == "timeout" else f"sent {why} output"
        tail = bytes(self._stderr_tail).decode(errors="replace").strip()
        self._stop()
        return RuntimeError(
            f"the math_verify subprocess ({self.SCRIPT}) {what}; is math-verify installed? (pip install "
            "'math-verify>=0.9,<0.10')" + (f"\nIts stderr ended with:\n{tail}" if tail else " (no stderr output)")
        )

    def equal(self, gold: str, pred: str) -> bool:
        """math_verify's ``verify(parse(gold), parse(pred))``; False when it fails or exceeds the time limit."""
        with self._lock:
            self._start()
            if not self._ready:
                reply = self._read_reply(self.STARTUP_TIMEOUT_S)
                if reply != {"ready": True}:
                    raise self._startup_error(reply if isinstance(reply, str) else "unexpected")
                self._ready = True
            self._next_id += 1
            request = {"id": self._next_id, "gold": gold, "pred": pred, "time_limit": MATH_VERIFY_TIME_LIMIT_S}
            try:  # ensure_ascii: lone surrogates and control characters travel as \u escapes
                self._proc.stdin.write((json.dumps(request, ensure_ascii=True) + "\n").encode())
                self._proc.stdin.flush()
                reply = self._read_reply(MATH_VERIFY_TIME_LIMIT_S + self.REPLY_MARGIN_S)
            except OSError as exc:  # the subprocess died (a kill, the OOM killer): restarted on the next request
                reply = f"{type(exc).__name__}: {exc}"
            if isinstance(reply, str) or reply.get("id") != self._next_id:
                self._stop()
                self.last_status = "no reply"
                self.no_reply += 1
                logger.warning(
                    f"The math_verify subprocess gave no reply ({reply if isinstance(reply, str) else 'wrong id'}); "
                    f"scored as not equal ({self.no_reply} so far in this process); it restarts on the next request."
                )
                return False
            self.last_status = reply["status"]
            return bool(reply["equal"])


_INSTANCES: weakref.WeakSet[_MathVerifyWorker] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [worker._after_fork_in_child() for worker in list(_INSTANCES)])
_MATH_VERIFY = _MathVerifyWorker()
atexit.register(_MATH_VERIFY.close)


def start_math_verify_worker() -> None:
    """Start the math_verify subprocess in the background, so that the first non-numeric answer does not wait for it."""
    _MATH_VERIFY.start()


def verifiable_span(span: str) -> bool:
    """Whether an answer span is small enough to hand to math_verify (sympy): see the module docstring."""
    if len(span) > MAX_VERIFY_CHARS or _HEAVY_LATEX_RE.search(span):
        return False
    digit_runs = [len(run) for run in _DIGIT_RUN_RE.findall(span)]
    if max(digit_runs, default=0) > MAX_VERIFY_DIGITS:
        return False
    powers = len(_POWER_RE.findall(span))
    if powers > 1 or (powers == 1 and max(digit_runs, default=0) > 4):  # 2^2^2^2^2, 9^{999999}: huge integers
        return False
    depth = deepest = 0
    for bracket in _BRACKET_RE.findall(span):
        depth = depth + 1 if bracket in "({[" else max(0, depth - 1)
        deepest = max(deepest, depth)
    return deepest <= MAX_VERIFY_NESTING


def math_verify_equal(reference: str, span: str) -> bool:
    """math_verify comparison of a reference number with a non-plain answer span (fractions, LaTeX, expressions)."""
    if not verifiable_span(span):
        return False
    span = span.replace("**", "^")  # math_verify's LaTeX parser reads "2**2" as 2
    latex = ("\\" in span or "{" in span) and "$" not in span  # "2^{10}", "\\sqrt{16}": math mode for the parser
    return _MATH_VERIFY.equal(reference, f"${span}$" if latex else span)
