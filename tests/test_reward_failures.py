"""Reward functions that raise or return bad values stop the run with an error naming the function and example.

None/NaN keep TRL's meaning ("not applicable"); exceptions, ±inf and non-numbers are errors. With two processes a
reward that raises on one rank ends the whole job promptly on every rank (no hang in the next collective).
"""

from __future__ import annotations

import asyncio
import json
import math
import time

import pytest
import torch
from _reliability_helpers import launch, tiny_trainer, trainable_state

from trl_sapo.reliability import RewardFunctionError, RewardGuard


def picky_reward(prompts, completions, **kwargs):
    """Raises on the prompt "Count to 3:" only (so the guard must locate that example)."""
    if any(p == "Count to 3:" for p in prompts):
        for p in prompts:
            if p == "Count to 3:":
                raise KeyError("no rule for three")
    return [1.0] * len(completions)


def test_raising_reward_names_function_and_example():
    guard = RewardGuard()
    wrapped = guard.wrap(picky_reward, "picky_reward")
    assert wrapped.__name__ == "picky_reward"
    prompts = ["Count to 1:", "Count to 2:", "Count to 3:", "Count to 4:"]
    with pytest.raises(RewardFunctionError) as info:
        wrapped(prompts=prompts, completions=["a", "b", "c" * 500, "d"], completion_ids=[[1]] * 4)
    message = str(info.value)
    assert "'picky_reward' raised KeyError" in message and "no rule for three" in message
    assert "completion 2 of the local batch of 4" in message and "Count to 3:" in message
    assert "ccc…" in message and "c" * 250 not in message  # truncated
    assert isinstance(info.value.__cause__, KeyError)


def test_async_reward_is_guarded_and_stays_async():
    async def slow_reward(prompts, completions, **kwargs):
        if "bad" in completions:
            raise RuntimeError("async failure")
        return [0.5] * len(completions)

    wrapped = RewardGuard().wrap(slow_reward, "slow_reward")
    assert asyncio.iscoroutinefunction(wrapped) and wrapped.__name__ == "slow_reward"
    assert asyncio.run(wrapped(prompts=["p", "q"], completions=["ok", "ok"])) == [0.5, 0.5]
    with pytest.raises(RewardFunctionError, match=r"'slow_reward' raised RuntimeError.*completion 1"):
        asyncio.run(wrapped(prompts=["p", "q"], completions=["ok", "bad"]))


@pytest.mark.parametrize("bad", [math.inf, -math.inf, "1.0", [1.0]])
def test_non_numeric_or_infinite_rewards_rejected(bad):
    def reward(completions, **kwargs):
        return [0.0, bad]

    with pytest.raises(RewardFunctionError, match=r"'reward' returned .* completion 1"):
        RewardGuard().wrap(reward, "reward")(prompts=["p", "q"], completions=["a", "b"])


def test_none_and_nan_pass_through_unchanged():
    out = [None, math.nan, 1.0, torch.tensor(2.0)]
    wrapped = RewardGuard().wrap(lambda completions, **kw: out, "partial")
    assert wrapped(prompts=[""] * 4, completions=[""] * 4) is out


def test_a_generator_of_rewards_reaches_trl_with_its_values():
    """TRL takes any iterable of rewards; the guard reads the values to check them, and used to hand TRL the
    exhausted generator (no rewards at all)."""
    wrapped = RewardGuard().wrap(lambda completions, **kw: (float(len(c)) for c in completions), "lengths")
    assert list(wrapped(prompts=["p", "q"], completions=["ab", "abc"])) == [2.0, 3.0]
    with pytest.raises(RewardFunctionError, match="returned inf"):
        RewardGuard().wrap(lambda completions, **kw: (math.inf for _ in completions), "g")(
            prompts=["p"], completions=["a"]
        )


def test_deferred_failure_returns_none_then_raises_on_every_rank():
    class OneProcess:
        num_processes, device = 1, "cpu"

    guard = RewardGuard(defer=True)
    wrapped = guard.wrap(picky_reward, "picky_reward")
    assert wrapped(prompts=["Count to 3:"], completions=["x"]) == [None]  # lets TRL's gather run on every rank
    with pytest.raises(RewardFunctionError, match="picky_reward"):
        guard.raise_if_failed(OneProcess())


def test_trainer_stops_with_named_error(tiny_model_path, tmp_path):
    trainer = tiny_trainer(tiny_model_path, tmp_path, reward_funcs=[picky_reward], max_steps=2)
    trainer.train_dataset = trainer.train_dataset.select([2, 3])  # "Count to 3:" is in the first batch
    with pytest.raises(RewardFunctionError, match=r"'picky_reward' raised KeyError(.|\n)*Count to 3:"):
        trainer.train()


def test_none_rewards_keep_trl_semantics(tiny_model_path, tmp_path):
    """A function that never applies (all None) next to one that sometimes applies (NaN): training proceeds."""

    def never(completions, **kwargs):
        return [None] * len(completions)

    def sometimes(completions, **kwargs):
        return [float(len(c)) if i % 2 else math.nan for i, c in enumerate(completions)]

    trainer = tiny_trainer(tiny_model_path, tmp_path, reward_funcs=[never, sometimes], max_steps=1)
    trainer.train()
    logs = trainer.state.log_history[0]
    assert logs["rewards/never/mean"] is None  # TRL logs None when no value was finite
    assert math.isfinite(logs["rewards/sometimes/mean"]) and math.isfinite(logs["loss"])
    assert all(torch.isfinite(v).all() for v in trainable_state(trainer).values())


@pytest.mark.slow
@pytest.mark.distributed
def test_reward_failure_on_one_rank_ends_the_job(tiny_model_path, tmp_path):
    start = time.monotonic()
    proc = launch(
        ["--model", str(tiny_model_path), "--output_dir", str(tmp_path / "out"), "--result", str(tmp_path / "res")]
        + ["--fail_rank", "1", "--fail_step", "1", "--config", json.dumps({"max_steps": 3})],
        tmp_path=tmp_path,
        num_processes=2,
        timeout=120,
    )
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "Reward function 'flaky_reward' raised ZeroDivisionError: boom from the test reward" in output
    assert "on process 1" in output
    # Both ranks stopped at the same step (1 completed step), each with the error: nobody waited for a timeout.
    for rank in (0, 1):
        result = json.loads((tmp_path / f"res.{rank}").read_text())
        assert result["world_size"] == 2 and result["global_step"] == 1
    assert elapsed < 120
