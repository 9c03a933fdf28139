"""AsyncSAPOTrainer under `accelerate launch` with 2 CPU processes (DDP over gloo), transformers rollout worker on
rank 0 at fixed lag 1: both ranks train the same steps and end with the same weights; and `trl-sapo async-grpo`
launching the same 2 processes itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, free_port

from trl_sapo.tools.offline import OFFLINE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ENTRY = """
import json, sys
import torch
from datasets import Dataset
from trl_sapo.async_sapo import AsyncSAPOConfig, AsyncSAPOTrainer

model, out = sys.argv[1], sys.argv[2]


def length_reward(completions, **kwargs):
    return [len(c) / 10.0 for c in completions]


prompts = Dataset.from_dict({"prompt": [f"Add {i} and {2 * i}." for i in range(16)]})
args = AsyncSAPOConfig(
    out, use_cpu=True, per_device_train_batch_size=4, num_generations=4, max_completion_length=6, max_steps=3,
    fixed_lag=1, max_staleness=1, token_budget=-1, gradient_checkpointing=False, report_to="none", logging_steps=1,
    learning_rate=0.05, save_strategy="no", heartbeat_stale_after_s=60,
)
trainer = AsyncSAPOTrainer(model, length_reward, args=args, train_dataset=prompts)
trainer.train()
record = {
    "world_size": torch.distributed.get_world_size(),
    "global_step": trainer.state.global_step,
    "param_sum": float(sum(p.detach().double().sum() for p in trainer.model.parameters())),
    "gate_logged": any("sapo/grad_weight_mean" in row for row in trainer.state.log_history),
}
with open(f"{out}/rank{args.process_index}.json", "w") as f:
    json.dump(record, f)
"""


def test_two_process_gloo_run(tmp_path, tiny_model_path):
    (tmp_path / "entry.py").write_text(ENTRY)
    command = [str(Path(sys.executable).with_name("accelerate")), "launch",
               "--config_file", str(REPO_ROOT / "accelerate_configs" / "cpu_2proc_ddp.yaml"),
               "--main_process_port", str(free_port()), str(tmp_path / "entry.py"), str(tiny_model_path),
               str(tmp_path)]  # fmt: skip
    env = {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO_ROOT), "TRL_EXPERIMENTAL_SILENCE": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [3, 3]
    assert ranks[0]["param_sum"] == pytest.approx(ranks[1]["param_sum"], rel=1e-6)  # DDP kept them in step
    assert ranks[0]["gate_logged"]


def test_trl_sapo_async_grpo_two_processes(tmp_path, tiny_model_path):
    """`trl-sapo async-grpo` launching 2 CPU processes itself (the accelerate config and port as flags, as a user
    types them): both processes train together (world size 2, logged by the CLI), the checkpoint carries the async
    trainer's state, the rollouts reach lag 1 and the SAPO gate acts."""
    from datasets import Dataset

    data = tmp_path / "data"
    Dataset.from_dict({"prompt": [f"Add {i} and {2 * i}." for i in range(16)]}).to_json(str(data / "train.jsonl"))
    # fmt: off
    command = [sys.executable, "-c", "import sys; from trl_sapo.cli.main import main; sys.exit(main())",
               "async-grpo", "--config_file", str(REPO_ROOT / "accelerate_configs" / "cpu_2proc_ddp.yaml"),
               "--main_process_port", str(free_port()),
               "--model_name_or_path", str(tiny_model_path), "--dataset_name", str(data),
               "--reward_funcs", "helpers.length_reward", "--output_dir", str(tmp_path / "out"),
               "--use_cpu", "true", "--per_device_train_batch_size", "4", "--num_generations", "4",
               "--max_completion_length", "6", "--max_steps", "2", "--learning_rate", "1e-3", "--logging_steps", "1",
               "--gradient_checkpointing", "false", "--report_to", "none", "--rollout_backend", "transformers",
               "--fixed_lag", "1", "--max_staleness", "1", "--token_budget", "-1", "--heartbeat_stale_after_s", "60",
               "--save_strategy", "steps", "--save_steps", "2"]
    # fmt: on
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PYTHONPATH": f"{REPO_ROOT}:{REPO_ROOT / 'tests'}",
        "TRL_EXPERIMENTAL_SILENCE": "1",
    }
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "(2 process(es))" in result.stdout + result.stderr
    state = json.loads((tmp_path / "out" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    rows = [row for row in state["log_history"] if "loss" in row]
    # The lag is real: step 1 trains on-policy (r = 1), step 2 on policy 0's rollouts after one update (r != 1).
    assert abs(rows[0]["sapo/ratio_max"] - 1) < 1e-4 and rows[1]["sapo/ratio_max"] > 1.01
    assert rows[1]["sapo/grad_weight_mean"] != 1.0  # the gate acts
    # With several processes accelerate's dispatcher fetches a micro-batch before the previous step's weight sync, so
    # TRL's fetch-time staleness reads one less than the lag trained on (AsyncSAPOTrainer's docstring says so).
    assert [row["sample/staleness_max"] for row in rows] == [0, 0]
    assert (tmp_path / "out" / "checkpoint-2" / "async_sapo_state.json").is_file()
    assert (tmp_path / "out" / "model.safetensors").is_file()
