"""2-process `accelerate launch` runs of scripts/gsm8k_sapo.py on CPU (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3.

Each rank records what it trained with (world size, backend, a parameter checksum) through a callback passed to
`trl_sapo.gsm8k.train.main(callbacks=...)` by a small entry script written here, so the test
fails if the processes silently train alone. FSDP cannot run on CPU with accelerate 1.15 (it silently degrades to
DDP); the script rejects that, tested below.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO_ROOT, free_port
from test_script import REWARD_MODULE, assert_training_logged, logged, tiny_run_args

from trl_sapo.tools.offline import OFFLINE_ENV

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ACCELERATE = Path(sys.executable).with_name("accelerate")

ENTRY = """
import json, os
import torch
from accelerate.state import AcceleratorState
from transformers import TrainerCallback

from trl_sapo.gsm8k.train import main


class RecordRank(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):
        params = list(model.parameters())
        replicated = all(type(p.data) is torch.Tensor and p.numel() > 0 for p in params)  # ZeRO-3 shards: numel 0
        record = {
            "process_index": args.process_index,
            "world_size": args.world_size,
            "dist_world_size": torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1,
            "distributed_type": AcceleratorState().distributed_type.name,
            "global_step": state.global_step,
            "param_sum": float(sum(p.detach().double().sum() for p in params)) if replicated else None,
        }
        with open(os.path.join(os.environ["RECORD_DIR"], f"rank{args.process_index}.json"), "w") as f:
            json.dump(record, f)


main(callbacks=[RecordRank()])
"""


def launch(tmp_path: Path, config: str, model_path: Path, timeout: int = 420) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file accelerate_configs/<config>.yaml entry.py <2-step tiny run>` in tmp_path."""
    (tmp_path / "entry.py").write_text(ENTRY)
    (tmp_path / "tiny_rewards.py").write_text(REWARD_MODULE)
    (tmp_path / "records").mkdir()
    args = tiny_run_args(
        model_path, tmp_path / "out", reward_funcs=["accuracy", "format", "tiny_rewards.length_reward"]
    )
    env = {**os.environ, **OFFLINE_ENV, "RECORD_DIR": str(tmp_path / "records"), "OMP_NUM_THREADS": "1"}
    command = [
        str(ACCELERATE),
        "launch",
        "--config_file",
        str(REPO_ROOT / "accelerate_configs" / f"{config}.yaml"),
        "--main_process_port",
        str(free_port()),
        "entry.py",
        *args,
    ]
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "config, backend",
    [("cpu_2proc_ddp", "MULTI_CPU"), ("cpu_2proc_zero2", "DEEPSPEED"), ("cpu_2proc_zero3", "DEEPSPEED")],
)
def test_two_process_training(tmp_path, tiny_model_path, config, backend):
    import torch
    from transformers import AutoModelForCausalLM

    proc = launch(tmp_path, config, tiny_model_path)
    assert proc.returncode == 0, f"{config} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"

    records = [json.loads((tmp_path / "records" / f"rank{i}.json").read_text()) for i in range(2)]
    for rank, record in enumerate(records):
        assert record["process_index"] == rank
        assert record["world_size"] == record["dist_world_size"] == 2, record  # not two lone processes
        assert record["distributed_type"] == backend
        assert record["global_step"] == 2

    output_dir = tmp_path / "out"
    state = assert_training_logged(output_dir)
    assert logged(state, "sapo/ratio_max")[1] != 1.0  # the second step is off-policy
    # 4 completions per device and micro-batch; 2 processes; 2 micro-batches per generation round.
    assert logged(state, "num_tokens")[0] > 0

    trained = AutoModelForCausalLM.from_pretrained(output_dir)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    assert any(not torch.equal(p, q) for p, q in zip(trained.state_dict().values(), initial.state_dict().values()))
    saved_sum = float(sum(p.detach().double().sum() for p in trained.parameters()))
    assert math.isfinite(saved_sum)
    if records[0]["param_sum"] is not None:  # replicated parameters (DDP, ZeRO-2): ranks agree, and saved == live
        assert records[0]["param_sum"] == records[1]["param_sum"]
        assert saved_sum == pytest.approx(records[0]["param_sum"], rel=1e-9)
    else:
        assert backend == "DEEPSPEED" and config.endswith("zero3")  # sharded: the gathered save is what we check


def test_fsdp2_on_cpu_is_rejected(tmp_path, tiny_model_path):
    """accelerate runs FSDP only on accelerators; on CPU it would silently fall back to DDP. The script refuses."""
    proc = launch(tmp_path, "cpu_2proc_fsdp2", tiny_model_path)
    assert proc.returncode != 0
    assert "accelerate launch requested FSDP, but training would run with MULTI_CPU" in proc.stderr
    assert not (tmp_path / "records" / "rank0.json").exists()
