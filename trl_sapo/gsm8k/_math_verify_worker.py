"""Subprocess behind ``trl_sapo.gsm8k.math_verify_client``: math_verify comparisons under a hard, signal-free time limit.

Run as a script (``python _math_verify_worker.py``; it imports nothing from trl_sapo). Protocol, one JSON object per
line: the parent writes ``{"id": n, "gold": str, "pred": str, "time_limit": seconds}`` to stdin; this process
answers ``{"id": n, "equal": bool, "status": "ok" | "timeout" | "error"}`` on its stdout, after a first
``{"ready": true}`` once math_verify is imported.

It ignores SIGTERM, SIGINT and SIGUSR1 and exits when its stdin closes. This process imports math_verify once, then
forks a single-threaded helper that does the parsing and verifying. When the helper has not answered within ``time_limit``, it is SIGKILLed (sympy evaluates big powers and integrals in
C loops that never look at signals, so ``signal.alarm`` cannot stop them) and a fresh helper is forked from this
already-imported process: milliseconds, instead of the seconds a new Python + sympy import takes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import select
import signal
import sys
import time

HELPER_MEMORY_LIMIT_BYTES = 4 << 30  # address space of a helper: a runaway sympy expression raises MemoryError
# The shapes of answer spans that reach math_verify. The first call of each shape costs sympy up to ~1 s of lazy
# imports and cache building (measured: 0.8 s for "1.5 \times 2"); done before forking, every helper starts warm.
WARM_UP = [
    ("3", "$1.5 \\times 2$"), ("1", "$\\frac{2}{2}$"), ("0.333333", "$\\dfrac{1}{3}$"), ("1024", "$2^{10}$"),
    ("4", "$\\sqrt{16}$"), ("16", "18 - 2 = 16"), ("5", "2 + 3"), ("0.5", "1/2"), ("6", "2 * 3"), ("8", "2^3"),
    ("18", "$18 \\text{ dollars}$"), ("2", "$\\frac{1}{\\frac{1}{2}}$"), ("25", "25\\%"), ("1.5", "1.50 cups"),
    ("2", "$6 \\div 3$"), ("7", "$(3 + 4)$"), ("-2", "$-\\frac{4}{2}$"), ("0.1", "$10\\%$"), ("3", "x = 3"),
]  # fmt: skip


# Parts of an answer span that do not change its value: blanks, math delimiters, LaTeX spaces, \text{units}.
_NEUTRAL_RE = re.compile(r"\s+|\$|\\[()\[\]]|\\[,;:! ]|\\text\{[^{}]*\}|\\left|\\right")


def _squash(text: str) -> str:
    return _NEUTRAL_RE.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").rstrip(".")


def _covers(span: str, extracted: str) -> bool:
    """Whether math_verify's extracted expression is the whole answer span: the span itself, up to units in words
    (``1/3 cup``), or the right-hand side of an equation (``5 - 4 = 1 sticker``). math_verify picks the last number-like
    piece it recognizes, so ``1e5`` reads as 1, ``3!`` as 3 and ``x - 5`` as 5: accepting those would reward them
    for the answers 1, 3 and 5 (false positives)."""
    span, extracted = _squash(span), _squash(extracted)
    return bool(extracted) and re.fullmatch(rf"(?:.*=)?{re.escape(extracted)}[A-Za-z.,]*", span) is not None


def _compare(gold: str, pred: str) -> bool:
    from math_verify import parse, verify

    gold_parsed = parse(gold, parsing_timeout=None)
    pred_parsed = parse(pred, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    if not any(isinstance(p, str) and _covers(pred, p) for p in pred_parsed):
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _helper_loop(requests: int, replies: int) -> None:
    """Forked helper: answer requests until EOF; never returns."""
    try:
        import ctypes
        import resource

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with this process, even mid-computation
        resource.setrlimit(resource.RLIMIT_AS, (HELPER_MEMORY_LIMIT_BYTES, HELPER_MEMORY_LIMIT_BYTES))
    except Exception:  # not Linux: the parent still kills a helper that runs past its time limit
        pass
    with os.fdopen(requests, "r", encoding="utf-8") as inp, os.fdopen(replies, "w", encoding="utf-8") as out:
        for line in inp:
            request = json.loads(line)
            try:
                equal, status = _compare(request["gold"], request["pred"]), "ok"
            except BaseException:  # MemoryError, RecursionError, sympy/latex2sympy errors: "not equal"
                equal, status = False, "error"
            out.write(json.dumps({"id": request["id"], "equal": equal, "status": status}) + "\n")
            out.flush()
    os._exit(0)


class _Helper:
    def __init__(self, parent_fds: tuple[int, ...]):
        request_r, self.request_w = os.pipe()
        self.reply_r, reply_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            for fd in (self.request_w, self.reply_r, *parent_fds):  # only this process talks to the parent
                os.close(fd)
            _helper_loop(request_r, reply_w)
        os.close(request_r)
        os.close(reply_w)
        self.buffer = b""

    def ask(self, line: bytes, time_limit: float) -> dict | None:
        """The helper's reply, or None when it did not answer in time (or died)."""
        os.write(self.request_w, line)
        deadline = time.monotonic() + time_limit
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.reply_r], [], [], remaining)[0]:
                return None
            chunk = os.read(self.reply_r, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        reply, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(reply)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self.request_w)
        os.close(self.reply_r)


def main() -> None:
    # SIGTERM/SIGUSR1 (SLURM's pre-emption signals reach every process of the step) and SIGINT (Ctrl-C reaches the
    # whole process group) are for the trainer, which still scores its last step: this process exits on stdin EOF.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    # Anything a library prints must not corrupt the protocol: replies go to a private copy of stdout, fd 1 -> stderr.
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.CRITICAL)  # "timeout disabled" and parse-failure warnings
    for gold, pred in WARM_UP:  # imports and warms up sympy's lazy parts here, once, for every forked helper
        _compare(gold, pred)
    parent_fds = (0, replies.fileno())
    helper = _Helper(parent_fds)
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin.buffer:
        request = json.loads(line)
        reply = helper.ask(line if line.endswith(b"\n") else line + b"\n", float(request["time_limit"]))
        if reply is None:
            reply = {"id": request["id"], "equal": False, "status": "timeout"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if reply["status"] != "ok":
            helper.kill()  # a timed-out helper is still computing; an erroring one may be in a bad state
            helper = _Helper(parent_fds)
    helper.kill()


if __name__ == "__main__":
    main()
