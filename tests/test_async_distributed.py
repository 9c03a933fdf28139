"""AsyncSAPOTrainer under `accelerate launch` with 2 CPU processes (DDP over gloo), transformers rollout worker on
rank 0 at fixed lag 1: both ranks train the same steps and end with the same weights."""

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
