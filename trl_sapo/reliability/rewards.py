"""Reward-function errors: a reward function that raises, or returns ±inf or a non-number, stops the run with
`RewardFunctionError` naming the function and the first failing example, on every rank together.

TRL's contract is kept: a reward function may return `None` (or NaN) for a completion it does not apply to.
GRPOTrainer turns `None` into NaN, combines the functions with a weighted `nansum`, and a completion for which
*every* function returned None/NaN is "unscorable": it is left out of its group's mean/std (nan-aware) and its
advantage is set to 0, with a warning naming the example. What TRL does not handle is made explicit here:
  * a reward function that raises stops the run with `RewardFunctionError` naming the function and the first
    failing example (index in the local batch, truncated prompt and completion; found by re-calling the
    function on single examples, so side effects may run again);
  * ±inf or a non-number (str, list, ...) is rejected the same way: TRL would turn an inf into a NaN advantage
    for the whole group, silently zeroed by `nan_to_num`;
  * with several processes, all ranks agree on the failure right after TRL's reward gather: every rank raises
    the same error, instead of the healthy ranks failing later in (or waiting on) a collective with an
    unrelated message.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
from collections.abc import Iterator
from typing import Any

import torch
from trl.trainer.utils import is_async_callable

from .distributed import any_rank

_MAX_PROBES = 64  # single-example re-calls when locating the example that made a reward function raise
_SNIPPET = 200
_GUARDED = "_reliability_guarded"  # marks a wrapped reward function (not wrapped twice)


class RewardFunctionError(RuntimeError):
    """A reward function raised or returned a value that is not a finite number or None."""


def _snippet(value: Any) -> str:
    """Short, one-line text of a prompt or completion (last message content for conversations)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        value = value[-1].get("content", value[-1])
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= _SNIPPET else text[:_SNIPPET] + "…"


def _is_valid_reward(x: Any) -> bool:
    if x is None:
        return True
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        x = x.item()
    if not isinstance(x, numbers.Real):
        return False
    return not math.isinf(float(x))  # NaN is TRL's "not applicable", like None


class RewardGuard:
    """Wraps reward functions so that failures stop the run with an error naming the function and the example.

    With several processes set `defer=True`: a failing rank then returns None for the batch (so TRL's gather of the
    rewards still runs on every rank), and `raise_if_failed` — called by every rank right after that gather —
    makes all ranks raise the failing rank's error together.
    """

    def __init__(self, defer: bool = False):
        self.defer = defer
        self.error: str | None = None

    def wrap(self, func, name: str):
        """Return `func` wrapped (sync or async, `__name__` kept); `name` is the name TRL logs it under."""
        if getattr(func, _GUARDED, False):
            return func
        if is_async_callable(func):

            @functools.wraps(func)
            async def wrapped(*args, **kwargs):
                try:
                    out = await func(*args, **kwargs)
                except Exception as exc:
                    index, probe_exc = await self._alocate(func, kwargs)
                    return self._fail(name, kwargs, index, exc, probe_exc)
                return self._check(name, out, kwargs)

        else:

            @functools.wraps(func)
            def wrapped(*args, **kwargs):
                try:
                    out = func(*args, **kwargs)
                except Exception as exc:
                    index, probe_exc = self._locate(func, kwargs)
                    return self._fail(name, kwargs, index, exc, probe_exc)
                return self._check(name, out, kwargs)

        setattr(wrapped, _GUARDED, True)
        wrapped.__name__ = getattr(func, "__name__", name)  # callable objects have none: keep TRL's logged name
        return wrapped

    # -- failure reporting --

    @staticmethod
    def _single_example_kwargs(kwargs: dict, i: int, n: int) -> dict:
        single = {k: [v[i]] if isinstance(v, (list, tuple)) and len(v) == n else v for k, v in kwargs.items()}
        for k in ("log_extra", "log_metric"):  # don't log twice while probing
            if k in single:
                single[k] = lambda *a, **kw: None
        return single

    def _locate(self, func, kwargs):
        n = len(kwargs.get("completions") or [])
        for i in range(min(n, _MAX_PROBES)):
            try:
                func(**self._single_example_kwargs(kwargs, i, n))
            except Exception as exc:
                return i, exc
        return None, None

    async def _alocate(self, func, kwargs):
        n = len(kwargs.get("completions") or [])
        for i in range(min(n, _MAX_PROBES)):
            try:
                await func(**self._single_example_kwargs(kwargs, i, n))
            except Exception as exc:
                return i, exc
        return None, None

    def _where(self, kwargs, index) -> str:
        prompts, completions = kwargs.get("prompts") or [], kwargs.get("completions") or []
        rank = int(os.environ.get("RANK", "0"))
        where = f"on process {rank}" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
        if index is None:
            return f"{where} for a batch of {len(completions)} completions (no single completion reproduces it)"
        return (
            f"{where} at completion {index} of the local batch of {len(completions)}\n"
            f"  prompt:     {_snippet(prompts[index]) if index < len(prompts) else '?'}\n"
            f"  completion: {_snippet(completions[index])}"
        )

    def _fail(self, name, kwargs, index, exc, probe_exc):
        shown = probe_exc if probe_exc is not None else exc
        message = (
            f"Reward function '{name}' raised {type(shown).__name__}: {shown} {self._where(kwargs, index)}\n"
            "Return None for completions the function does not apply to; raise only for real bugs."
        )
        return self._report(message, exc, len(kwargs.get("completions") or []))

    def _check(self, name, out, kwargs):
        try:
            values = list(out)
        except TypeError:
            return out  # TRL raises its own error for a non-list output
        if isinstance(out, Iterator):  # a generator: list() consumed it, TRL gets the values (it takes any iterable)
            out = values
        for i, value in enumerate(values):
            if not _is_valid_reward(value):
                message = (
                    f"Reward function '{name}' returned {value!r} {self._where(kwargs, i)}\n"
                    "Rewards must be finite numbers, or None/NaN for 'not applicable' (TRL then ignores the "
                    "function for that completion)."
                )
                return self._report(message, None, len(values))
        return out

    def _report(self, message: str, cause, n: int):
        if self.defer:
            self.error = self.error or message
            return [None] * n
        raise RewardFunctionError(message) from cause

    def raise_if_failed(self, accelerator) -> None:
        """Called by every rank after the rewards are gathered: all ranks raise if any reward function failed."""
        if not self.defer:
            return
        if not any_rank(self.error is not None, accelerator):
            return
        from accelerate.utils import gather_object

        errors = [e for e in gather_object([self.error]) if e is not None]
        raise RewardFunctionError(errors[0] if self.error is None else self.error)


def guard_reward_funcs(trainer) -> RewardGuard:
    """Wrap `trainer.reward_funcs`' callables in place (reward models are left alone); return the guard."""
    guard = RewardGuard(defer=trainer.accelerator.num_processes > 1)
    trainer.reward_funcs = [
        f if isinstance(f, torch.nn.Module) or not callable(f) else guard.wrap(f, name)
        for f, name in zip(trainer.reward_funcs, trainer.reward_func_names)
    ]
    return guard
