"""`make gpu-check` (scripts/gpu_check.py) on CPU: its command line, the refusal without CUDA, the runner (one check's
failure is reported and the next one runs), the JSON and table, and the commands its checks would run, each parsed
by the real parser it reaches. The GPU runs themselves need a CUDA machine."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch
from helpers import REPO_ROOT

from scripts import gpu_check
from scripts.gpu_check import Check, Context, Skip


def _ctx(tmp_path, **kwargs) -> Context:
    return Context(work_dir=tmp_path, model_dir=tmp_path / "model", **kwargs)


def test_help_names_every_check_and_the_offline_fallback(capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert set(gpu_check.CHECKS) == {"bf16-generate", "bf16-vllm", "lora", "zero2", "throughput", "loss-overhead",
                                     "async"}  # fmt: skip
    for name in gpu_check.CHECKS:
        assert f"\n  {name} " in text, name  # the docstring's list covers the registry
    assert "random model of Qwen2.5-0.5B's shape" in text and "exits with status 2" in text


@pytest.mark.parametrize(
    "argv", [["--only", "bf16"], ["--steps", "0"], ["--budget_s", "0"], ["--child", "throughput"], ["--child", "lora"]]
)
def test_bad_arguments_are_rejected(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(argv)
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_list_needs_no_gpu(capsys):
    assert gpu_check.main(["--list"]) == 0
    assert capsys.readouterr().out.count("\n") == len(gpu_check.CHECKS)


@pytest.mark.parametrize("argv", [[], ["--child", "throughput", "--work_dir", "w"]])
def test_refuses_cleanly_without_cuda(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ran = []
    monkeypatch.setattr(gpu_check, "run_checks", lambda *a, **k: ran.append(a))
    monkeypatch.setattr(gpu_check, "prepare_model", lambda *a, **k: ran.append(a))
    output = tmp_path / "report.json"
    assert gpu_check.main([*argv, "--output", str(output)]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert not ran and not output.exists()  # no partial run, no report


def _registry():
    def passes(ctx):
        return {"tokens_per_s": 1234.5, "note": "ok"}

    def fails(ctx):
        raise RuntimeError("CUDA error: an illegal memory access | was encountered")

    def skips(ctx):
        raise Skip("vllm is not installed")

    def also_passes(ctx):
        return {"steps": 3}

    return [Check("a", "", passes), Check("b", "", fails), Check("c", "", skips), Check("d", "", also_passes)]


def test_one_failure_is_reported_and_the_next_checks_run(tmp_path, capsys):
    results = gpu_check.run_checks(_registry(), _ctx(tmp_path), budget_s=60)
    assert [r["status"] for r in results] == ["PASS", "FAIL", "SKIP", "PASS"]
    assert results[1]["error"].startswith("RuntimeError: CUDA error") and "fails" in results[1]["traceback"]
    assert results[2]["error"] == "vllm is not installed" and results[3]["details"] == {"steps": 3}
    assert "[FAIL] b" in capsys.readouterr().out  # progress is printed as the checks finish

    table = gpu_check.format_table(results).splitlines()
    assert len(table) == 2 + 4 and all(row.count(" | ") == 3 for row in table)  # the '|' in the error is escaped
    assert "tokens_per_s 1234" in table[2] and "illegal memory access \\| was" in table[3]
    report = tmp_path / "out" / "gpu_check.json"
    gpu_check.write_report(report, results, {"gpu": "test"})
    loaded = json.loads(report.read_text())
    assert loaded["gpu"] == "test" and [r["name"] for r in loaded["results"]] == ["a", "b", "c", "d"]


def test_main_prints_the_table_writes_the_json_and_exits_1_on_a_failure(tmp_path, monkeypatch, capsys):
    """The whole command with the GPU and the checks faked: --only picks checks, the report is written, FAIL -> 1."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Fake GPU")
    monkeypatch.setattr(gpu_check, "prepare_model", lambda model, tokenizer, work_dir: (work_dir, "fake model"))
    monkeypatch.setattr(gpu_check, "CHECKS", {c.name: c for c in _registry()})
    output = tmp_path / "report.json"
    argv = ["--output", str(output), "--work_dir", str(tmp_path / "work")]
    assert gpu_check.main([*argv, "--only", "a", "c"]) == 0  # PASS and SKIP: success
    report = json.loads(output.read_text())
    assert [r["status"] for r in report["results"]] == ["PASS", "SKIP"] and report["gpu"] == "Fake GPU"
    assert report["model"] == "fake model" and report["versions"]["trl"] and "| a | PASS |" in capsys.readouterr().out
    assert gpu_check.main(argv) == 1  # all four, one FAIL
    assert [r["status"] for r in json.loads(output.read_text())["results"]] == ["PASS", "FAIL", "SKIP", "PASS"]


def test_checks_past_the_budget_are_skipped(tmp_path):
    ticks = iter([0.0, 0.0, 5.0, 5.0, 100.0, 100.0, 200.0, 200.0])
    results = gpu_check.run_checks(_registry(), _ctx(tmp_path), budget_s=50, clock=lambda: next(ticks))
    assert [r["status"] for r in results] == ["PASS", "FAIL", "SKIP", "SKIP"]
    assert "budget" in results[3]["error"]


def test_a_failing_command_fails_its_check_with_the_log_tail(tmp_path):
    def crashes(ctx):
        gpu_check.run_command(ctx, [sys.executable, "-c", "print('loading'); raise SystemExit(3)"], "crash")

    def times_out(ctx):
        gpu_check.run_command(ctx, [sys.executable, "-c", "import time; time.sleep(30)"], "hang")

    checks = [Check("crash", "", crashes), Check("hang", "", times_out), _registry()[0]]
    results = gpu_check.run_checks(checks, _ctx(tmp_path, timeout_s=2), budget_s=60)
    assert [r["status"] for r in results] == ["FAIL", "FAIL", "PASS"]
    assert "exit 3" in results[0]["error"] and "loading" in results[0]["error"]
    assert "TimeoutExpired" in results[1]["error"]
    import time

    past_deadline = _ctx(tmp_path, timeout_s=100, deadline=time.monotonic() + 1)  # the run's deadline comes first
    began = time.monotonic()
    assert gpu_check.run_checks([Check("hang", "", times_out)], past_deadline, budget_s=60)[0]["status"] == "FAIL"
    assert time.monotonic() - began < 10


def test_a_timeout_also_stops_the_commands_workers(tmp_path):
    """A launcher's worker processes (accelerate launch -> training) die with it, so the GPU is free for the next."""
    import time
    from pathlib import Path

    pid_file = tmp_path / "worker.pid"
    spawn = ("import subprocess, sys, time; w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
             f" open({str(pid_file)!r}, 'w').write(str(w.pid)); time.sleep(60)")  # fmt: skip
    with pytest.raises(Exception, match="timed out"):
        gpu_check.run_command(_ctx(tmp_path, timeout_s=3), [sys.executable, "-c", spawn], "launcher")
    worker = int(pid_file.read_text())
    time.sleep(0.5)
    status = Path(f"/proc/{worker}/status")  # gone, or a zombie nobody reaped yet: not running
    assert not status.exists() or "State:\tZ" in status.read_text(), "the worker outlived the timeout"


def test_training_log_check():
    good = {"global_step": 2, "log_history": [{"loss": 0.1, "sapo/gate_mean": 0.9}, {"loss": 0.2}, {"train_loss": 1}]}
    assert gpu_check.check_training_log(good) == {"losses": [0.1, 0.2], "sapo_metrics": ["sapo/gate_mean"],
                                                  "global_step": 2}  # fmt: skip
    with pytest.raises(AssertionError, match="non-finite"):
        gpu_check.check_training_log({"global_step": 1, "log_history": [{"loss": float("nan"), "sapo/x": 1}]})
    with pytest.raises(AssertionError, match="sapo"):
        gpu_check.check_training_log({"global_step": 1, "log_history": [{"loss": 0.1}]})
    with pytest.raises(AssertionError, match="no training loss"):
        gpu_check.check_training_log({"global_step": 0, "log_history": []})


@pytest.mark.parametrize("name", ["bf16-generate", "bf16-vllm", "lora", "zero2"])
def test_training_checks_run_commands_their_parsers_accept(name, tmp_path, monkeypatch):
    """Each training check's two commands (train, resume) as they would run: the launcher's flags by accelerate's
    parser, the recipe and overrides by the training parser (unknown flags or bad values fail here, not on the GPU)."""
    from accelerate.commands.launch import launch_command_parser

    from trl_sapo.gsm8k.recipe import parse_args

    commands = []
    monkeypatch.setattr(gpu_check, "run_command", lambda ctx, command, log: commands.append(command) or "")
    monkeypatch.setattr(gpu_check, "installed", lambda package: True)  # vllm, deepspeed "installed"
    ctx = _ctx(tmp_path)
    with pytest.raises(AssertionError, match="no checkpoint-2"):  # nothing was trained: stops after the first command
        gpu_check.CHECKS[name].func(ctx)
    (tmp_path / name / "checkpoint-2").mkdir(parents=True)
    (tmp_path / name / "checkpoint-2" / "trainer_state.json").write_text("{}")
    (tmp_path / name / "trainer_state.json").write_text(
        json.dumps({"global_step": 3, "log_history": [{"loss": 0.5, "sapo/gate_mean": 1.0}]})
    )
    assert gpu_check.CHECKS[name].func(ctx) == {"final_loss": 0.5, "sapo_metrics": 1, "resumed_to_step": 3}
    train, resume = commands[1:]  # (commands[0] is the first attempt's)
    steps_flag = train.index("--max_steps") + 1
    assert (
        train == commands[0]
        and resume[:steps_flag] + resume[steps_flag + 1 :] == train[:steps_flag] + train[steps_flag + 1 :]
    )  # the resume run is the same command, one step more
    for command, steps in ((train, 2), (resume, 3)):
        script = command.index("scripts/gsm8k_sapo.py")
        if name == "zero2":
            launch = launch_command_parser().parse_args(command[3 : script + 1])  # after `python -m accelerate...`
            assert launch.num_processes == 1 and launch.config_file == "accelerate_configs/zero2.yaml"
        monkeypatch.chdir(REPO_ROOT)
        script_args, training_args, model_args = parse_args(command[script + 1 :])
        assert script_args.dataset_name == "synthetic" and training_args.save_steps == 2
        assert training_args.max_steps == steps and model_args.model_name_or_path == str(tmp_path / "model")
        assert training_args.use_vllm == (name == "bf16-vllm")
        assert (model_args.use_peft is True) == (name == "lora")


def test_loss_overhead_command_parses(tmp_path, monkeypatch):
    from benchmarks import loss_overhead

    command = gpu_check.loss_overhead_command(tmp_path / "x.json")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = loss_overhead.parse_args(command[3:])
    assert args.device == "cuda" and args.models == ["random-1b"] and args.batch_sizes == [4]


def test_async_check_runs_its_child(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "run_child", lambda ctx, name: {"child": name})
    assert gpu_check.run_checks([gpu_check.CHECKS["async"]], _ctx(tmp_path), 60)[0]["details"] == {"child": "async"}


def test_async_child_check_runs_on_cpu(tiny_model_path, tmp_path):
    """The async check's child, for real on CPU with the tiny model: the GPU recipe through the GSM8K entry point."""
    from scripts.gpu_check_children import async_trainer

    details = async_trainer(tiny_model_path, tmp_path, steps=1, device="cpu")
    assert details["global_step"] == 2 and math.isfinite(details["final_loss"])
    assert (tmp_path / "async" / "model.safetensors").is_file()


def test_random_stand_in_model_when_the_hub_is_unreachable(tmp_path, monkeypatch, smollm2_path):
    """Offline and not cached: a random Qwen2 model of the recipe's shape (shrunk here) with the given tokenizer."""
    monkeypatch.setattr(gpu_check, "QWEN25_05B", {**gpu_check.QWEN25_05B, "hidden_size": 32, "intermediate_size": 64,
                                                  "num_hidden_layers": 2, "num_attention_heads": 4})  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, note = gpu_check.prepare_model("no-such-org/no-such-model", smollm2_path, tmp_path, device="cpu")
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "qwen2" and config.num_key_value_heads == 2 and config.tie_word_embeddings
    assert config.vocab_size == len(AutoTokenizer.from_pretrained(folder)) and "random weights" in note
    assert gpu_check.prepare_model(str(folder), smollm2_path, tmp_path)[0] == folder  # a folder is used as given


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [gpu_check.QWEN_RECIPE, gpu_check.LORA_RECIPE])
def test_train_and_resume_end_to_end_on_cpu(recipe, tmp_path, tiny_model_path):
    """The training checks' own flow, for real on a tiny model on CPU (float32, not bf16): two steps and a
    checkpoint through scripts/gsm8k_sapo.py with the Qwen recipe (full and LoRA), then the same command resumes
    for a third."""
    import os

    ctx = Context(tmp_path, tiny_model_path, steps=2, timeout_s=500,
                  env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)})  # fmt: skip
    cpu = ["--bf16", "false", "--dtype", "float32", "--use_cpu", "true", "--max_completion_length", "8"]
    details = gpu_check.train_and_resume(ctx, "cpu", recipe, extra=cpu)
    assert details["resumed_to_step"] == 3 and details["sapo_metrics"] >= 4
    assert "Resuming from" in (tmp_path / "cpu-resume.log").read_text()


def test_wheel_set_closure_is_the_tested_versions_minus_the_image():
    """`make gpu-wheels` carries what the GPU image lacks, at the versions installed (and tested) here."""
    from importlib.metadata import version

    from scripts import gpu_wheels

    versions = gpu_wheels.closure(gpu_wheels.project_roots())
    for name in ("trl", "transformers", "accelerate", "peft", "datasets", "math-verify", "deepspeed"):
        assert versions[name] == version(name)
    assert "latex2sympy2-extended" in versions  # math-verify's own dependency
    assert not {"torch", "numpy", "pyarrow", "sympy"} & set(versions)
    assert not [n for n in versions if n.startswith("nvidia-")]


def test_wheel_set_check_refuses_duplicates_other_versions_and_other_platforms(tmp_path):
    from importlib.metadata import version

    from scripts import gpu_wheels

    def wheel_set(*names):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        for name in names:
            (folder / name).write_bytes(b"")
        return folder

    sapo = f"trl_sapo-{version('trl-sapo')}-py3-none-any.whl"
    wanted = {"tokenizers": "0.23.3", "trl": "1.16.0"}
    good = [
        "tokenizers-0.23.3-cp310-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
        "trl-1.16.0-py3-none-any.whl",
    ]
    gpu_wheels.check_wheels(wheel_set(*good, sapo), wanted)
    with pytest.raises(SystemExit, match="two wheels of trl"):
        gpu_wheels.check_wheels(wheel_set(*good, sapo, "trl-1.15.0-py3-none-any.whl"), wanted)
    with pytest.raises(SystemExit, match="does not install"):
        gpu_wheels.check_wheels(wheel_set("tokenizers-0.23.3-cp310-abi3-macosx_11_0_arm64.whl", good[1], sapo), wanted)
    with pytest.raises(SystemExit, match="does not install"):
        gpu_wheels.check_wheels(wheel_set("tokenizers-0.23.3-cp311-cp311-manylinux_2_17_x86_64.whl", good[1], sapo),
                                wanted)  # fmt: skip
    with pytest.raises(SystemExit, match="missing or at other versions"):
        gpu_wheels.check_wheels(wheel_set(*good), wanted)  # no trl-sapo wheel


def test_loss_overhead_summary_reads_the_benchmark_json():
    committed = json.loads((REPO_ROOT / "docs" / "results" / "loss_overhead.json").read_text())
    summary = gpu_check.loss_overhead_summary(committed)
    assert set(summary) == {"time_ratio_vs_trl_sapo", "memory_ratio_vs_trl_sapo", "isolated_time_ratio_vs_trl_sapo"}
    assert all(isinstance(v, float) and v > 0 for v in summary.values())


@pytest.mark.slow
def test_throughput_child_on_cpu(tmp_path, tiny_model_path):
    """The throughput check's trainers, callbacks and arithmetic on a tiny model on CPU (no memory figures there)."""
    from scripts.gpu_check_children import throughput

    torch.set_num_threads(1)
    result = throughput(tiny_model_path, tmp_path, steps=1, device="cpu")
    assert result["sapo_tokens_per_s"] > 0 and result["trl_sapo_tokens_per_s"] > 0
    assert result["tokens_per_s_ratio_sapo_over_trl"] == pytest.approx(
        result["sapo_tokens_per_s"] / result["trl_sapo_tokens_per_s"]
    )
