"""benchmarks/learning.py's own measurements: the probe KL after a resume, and the per-run summaries."""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def learning():
    from benchmarks import learning

    return learning


def test_probe_kl_after_a_resume_is_measured_from_the_loaded_weights(learning):
    """The trainer loads a checkpoint between the callback's construction (π_0) and the first step: the first
    per-step KL must compare with the loaded weights, while KL to the start still compares with π_0."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    model = LlamaForCausalLM(config)
    trainer = SimpleNamespace(model=model, _metrics={"train": defaultdict(list)})
    ids = torch.tensor([[1, 2, 3, 4, 5], [0, 6, 7, 8, 9]])
    probe = learning.ProbeKLCallback(trainer, ids, (ids > 0).long(), torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 1, 1]]))
    with torch.no_grad():  # "resume": the checkpoint's weights differ from π_0
        for param in model.parameters():
            param.add_(0.5 * torch.randn_like(param))
    probe.on_train_begin(None, None, None)
    probe.on_step_end(None, None, None)  # no optimizer update since the resume
    metrics = trainer._metrics["train"]
    assert metrics["study/kl_to_init"][0] > 1e-3
    assert abs(metrics["study/step_kl"][0]) < 1e-6


def test_stale_step_kl_after_an_old_resume_is_dropped(learning):
    run = {"resumed_from": "checkpoint-2", "series": {"step_kl": [0.1, 0.2, 0.9, 0.3], "reward": [0.0] * 4}}
    assert learning.drop_stale_step_kl(run)["series"]["step_kl"] == [0.1, 0.2, None, 0.3]
    assert run["series"]["step_kl"][2] == 0.9  # the input record is left as it was
    fresh = {"resumed_from": None, "series": {"step_kl": [0.1, 0.2]}}
    assert learning.drop_stale_step_kl(fresh) is fresh


def _run(task: str, reward: list[float]) -> dict:
    n = len(reward)
    return {
        "task": task,
        "eval_before": {"accuracy": 0.1, "reward": 0.1},
        "eval_after": {"accuracy": 0.2, "reward": 0.2},
        "nonfinite_steps": [],
        "series": {"reward": reward, "kl_to_init": [0.01] * n, "step_kl": [0.001] * n, "entropy": [1.0] * n,
                   "grad_norm": [1.0] * n, "ratio_max": [1.0] * n, "abs_log_ratio": [0.0] * n},
    }  # fmt: skip


def test_final_reward_is_the_last_fifth_of_a_short_run(learning):
    """gsm8k runs are 16-32 steps: 'final' = the last 20 % of them, not the copy task's 20-step floor (the whole run)."""
    reward = [0.0] * 12 + [1.0] * 4
    summary = learning.summarise_run(_run("gsm8k", reward))
    assert summary["train_reward_final"] == 1.0 and summary["train_reward_mean"] == 0.25
    assert learning.summarise_run(_run("copy", reward))["train_reward_final"] == 0.25


def test_runs_of_one_regime_with_different_settings_are_not_pooled(learning):
    settings = {"learning_rate": 1.5e-5, "reward_weights": [1.0, 1.0]}
    runs = [
        {"regime": "demo", "arm": "grpo", "seed": 0, "settings": settings},
        {"regime": "demo", "arm": "sapo", "seed": 0, "settings": dict(settings)},
        {"regime": "reuse", "arm": "sapo", "seed": 0, "settings": {**settings, "learning_rate": 1e-5}},
    ]
    learning.check_one_setting_per_regime(runs)  # one setting per regime: fine
    runs.append({"regime": "demo", "arm": "sapo", "seed": 1, "settings": {**settings, "reward_weights": [1.0, 0.5]}})
    with pytest.raises(SystemExit, match=r"regime 'demo': runs \[\('sapo', 1\)\].*differing: \['reward_weights'\]"):
        learning.check_one_setting_per_regime(runs)


def test_a_run_is_claimed_by_one_live_process_at_a_time(learning, tmp_path):
    """Two copies of a study command share the runs: a run locked by a live process is skipped, a lock left by a
    dead one is taken over."""
    import subprocess

    assert learning.claim_run(tmp_path) and (tmp_path / learning.LOCK_NAME).read_text() == str(os.getpid())
    assert learning.claim_run(tmp_path)  # this process already holds it
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        (tmp_path / learning.LOCK_NAME).write_text(str(other.pid))
        assert not learning.claim_run(tmp_path)
        other.kill()
    assert learning.claim_run(tmp_path)  # the holder is gone: stale lock taken over
    assert (tmp_path / learning.LOCK_NAME).read_text() == str(os.getpid())


def test_gsm8k_report_leaves_out_the_copy_tasks_threshold_and_tau_rows(learning):
    """The 0.8 "learned" threshold and the τ-ε interpolation belong to the copy task's τ sweep: a gsm8k report (two
    arms, rewards ~0.1-0.3) would print 'n/a', 'never reached: all' and 'no pair brackets it' in every regime."""

    def study(task: str, arms: tuple[str, ...]) -> str:
        runs = [
            {**_run(task, [0.9] * 30), "regime": "reuse", "arm": arm, "seed": seed} for arm in arms for seed in (0, 1)
        ]
        args = SimpleNamespace(task=task, batch_size=16, num_generations=8, max_steps=None, learning_rate=None)
        return learning.markdown({"regimes": learning.aggregate(runs)}, args, runs)

    copy_report = study("copy", ("grpo", "sapo", "sapo-tau2"))
    assert "Steps until 20-step reward ≥ 0.8" in copy_report and "never reached 0.8" in copy_report
    assert "τ_pos whose" in copy_report
    gsm8k_report = study("gsm8k", ("grpo", "sapo"))
    assert "≥ 0.8" not in gsm8k_report and "reached 0.8" not in gsm8k_report and "τ_pos whose" not in gsm8k_report
    assert "Held-out score after training" in gsm8k_report and "Collapses" in gsm8k_report
    tables, previous = [], ""
    for line in gsm8k_report.splitlines():  # every row of a table has its header's cell count: no stray '|' in a label
        if line.startswith("|"):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line.replace("\\|", "").count("|"))
        previous = line
    assert len(tables) >= 3 and all(len(set(cells)) == 1 for cells in tables), tables


def test_a_run_stopped_by_sigterm_is_not_recorded_as_done(learning, tmp_path, monkeypatch):
    """SIGTERM during training: the trainer saves a checkpoint and returns early (`trainer.preempted`); the run must
    stop the command without a done.json (a done.json would make the re-run skip a truncated run), and the re-run
    trains it in full. A real signal into a real copy-task run (sync SAPOTrainer, 8 steps)."""
    import signal

    class SigtermAtStep3(learning.ProbeKLCallback):
        def on_step_end(self, args, state, control, **kwargs):
            super().on_step_end(args, state, control, **kwargs)
            if state.global_step == 3 and not getattr(self.trainer, "_signalled", False):
                self.trainer._signalled = True
                os.kill(os.getpid(), signal.SIGTERM)

    argv = ["--task", "copy", "--regimes", "base", "--arms", "grpo", "--seeds", "0", "--max_steps", "8",
            "--eval_examples", "16", "--num_probe", "4", "--output_dir", str(tmp_path / "out"),
            "--results_dir", str(tmp_path / "results")]  # fmt: skip
    monkeypatch.setattr(learning, "ProbeKLCallback", SigtermAtStep3)
    done = tmp_path / "out" / "base" / "grpo-seed0" / "done.json"
    with pytest.raises(SystemExit, match=r"stopped by SIGTERM at step [34] \(checkpoint saved\)"):
        learning.main(argv)
    assert not done.exists()
    monkeypatch.undo()  # the plain callback: no signal
    learning.main(argv)
    assert learning.json.loads(done.read_text())["steps"] == 8


def test_gsm8k_async_task_settings(learning):
    """--task gsm8k-async: the SmolLM2 data and report, one micro-batch of 16 completions per optimizer step (no
    gradient accumulation), lag 4; GPU options are refused with a reason; --smoke is SmolLM2 at tiny sizes."""
    args = learning.parse_args(["--task", "gsm8k-async", "--report_only"])
    assert (args.batch_size, args.gradient_accumulation_steps, args.num_generations) == (16, 1, 8)
    assert args.regimes == ["lag4"] and args.arms == ["grpo", "sapo"] and args.max_completion_length == 96
    assert learning.REGIMES["gsm8k-async"]["lag4"]["fixed_lag"] == 4 and args.eval_examples == 128
    smoke = learning.parse_args(["--task", "gsm8k-async", "--smoke"])
    assert (smoke.max_steps, smoke.eval_examples, smoke.max_completion_length, smoke.seeds) == (3, 4, 16, [0])
    assert smoke.output_dir == "benchmarks/out/learning_gsm8k-async-smoke"
    for bad in (["--device", "cuda"], ["--regimes", "lag2"]):
        with pytest.raises(SystemExit):
            learning.parse_args(["--task", "gsm8k-async", "--report_only", *bad])
    with pytest.raises(SystemExit):
        learning.parse_args(["--task", "gsm8k", "--smoke"])


@pytest.mark.slow
def test_gsm8k_async_smoke_trains_both_arms_and_reports(learning, tmp_path):
    """The pipeline of the SmolLM2 async regime end to end on a tiny random model with SmolLM2's tokenizer: both arms
    train at lag 4 through AsyncSAPOTrainer, checkpoint, evaluate, and write the report the docs blocks read."""
    from tools.models import build_tiny_model

    model = build_tiny_model(tmp_path / "tiny")
    out = tmp_path / "out"
    result = learning.main(["--task", "gsm8k-async", "--smoke", "--model", str(model), "--output_dir", str(out),
                            "--results_dir", str(tmp_path / "results")])  # fmt: skip
    arms = result["regimes"]["lag4"]["arms"]
    assert set(arms) == {"grpo", "sapo"} and arms["sapo"]["vs_grpo"]["heldout_after"]["n"] == 1
    for arm in ("grpo", "sapo"):
        run = learning.json.loads((out / "lag4" / f"{arm}-seed0" / "done.json").read_text())
        assert (
            run["steps"] == 3
            and run["eval_seconds"] > 0
            and not list((out / "lag4" / f"{arm}-seed0").glob("checkpoint-*"))
        )
        assert all(x is not None for x in run["series"]["reward"])  # the async worker's accuracy reward, every step
        assert max(run["series"]["ratio_max"][1:]) != 1.0  # stale from the second step on: r != 1
    assert (tmp_path / "results" / "learning_gsm8k-async-smoke.json").exists()
