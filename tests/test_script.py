"""The training entry point (`trl_sapo.gsm8k.train.main`, `scripts/gsm8k_sapo.py`, the `trl-sapo-gsm8k` console
script): recipes parse, CLI overrides YAML, precision fallback, end-to-end training and saving."""

from __future__ import annotations

import importlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import CPU_TRAINING_KWARGS, REPO_ROOT, as_cli_flags

from trl_sapo import launch
from trl_sapo.gsm8k import recipe as gsm8k_recipe
from trl_sapo.gsm8k import train as gsm8k_train
from trl_sapo.gsm8k.train import main
from trl_sapo.tools.offline import OFFLINE_ENV

SCRIPT = REPO_ROOT / "scripts" / "gsm8k_sapo.py"
RECIPES = sorted(p for p in (REPO_ROOT / "recipes").glob("*.yaml") if p.name != "eval.yaml")  # eval: test_docs.py
GPU_RECIPES = [r for r in RECIPES if "cpu" not in r.name and "async" not in r.name]  # async: test_async_cli.py
# What may differ between a SAPO recipe and its GRPO twin.
TWIN_DIFFERENCES = {"use_sapo_loss", "output_dir", "run_name", "hub_model_id", "logging_dir"}

# A reward module importable by dotted path: varied rewards give non-zero advantages, hence real updates, even for
# a random tiny model that never produces a correct answer (the GSM8K rewards would all be 0).
REWARD_MODULE = '''
def length_reward(completions, **kwargs):
    """Pseudo-random but deterministic reward in [0, 1): depends on the completion text."""
    return [(sum(map(ord, c[-1]["content"])) % 97) / 97 for c in completions]
'''


def tiny_run_args(model_path, output_dir, **overrides) -> list[str]:
    """CLI flags of a 2-step run on the tiny model; the second optimizer step is off-policy (2 steps/generation)."""
    options = {
        **as_cli_flags(CPU_TRAINING_KWARGS),
        "model_name_or_path": str(model_path),
        "dataset_name": "synthetic",
        "num_train_examples": 16,
        "output_dir": str(output_dir),
        "max_steps": 2,
        "max_completion_length": 8,
        "gradient_accumulation_steps": 1,
        "steps_per_generation": 2,
        "learning_rate": 1e-3,
        "gradient_checkpointing": "false",
        "disable_tqdm": "true",
        **overrides,
    }
    args = []
    for key, value in options.items():
        args += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return args


def write_reward_module(folder: Path) -> str:
    (folder / "tiny_rewards.py").write_text(REWARD_MODULE)
    return "tiny_rewards.length_reward"


def logged(state: dict, key: str) -> list[float]:
    return [entry[key] for entry in state["log_history"] if entry.get(key) is not None]


def assert_training_logged(output_dir: Path, steps: int = 2) -> dict:
    """trainer_state.json holds `steps` steps with finite losses and the sapo/ gate diagnostics."""
    state = json.loads((output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == steps
    losses = logged(state, "loss")
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    for key in ("sapo/gate_mean", "sapo/grad_weight_mean", "sapo/soft_clip_ratio", "sapo/ratio_max"):
        values = logged(state, key)
        assert len(values) == steps and all(math.isfinite(x) for x in values), (key, values)
    return state


def run_module(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """`accelerate launch --num_processes 1 -m trl_sapo.gsm8k.train ARGS`, the installed entry point, in `cwd`."""
    env = {
        **os.environ,
        **OFFLINE_ENV,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "--cpu"]
    proc = subprocess.run(
        [*launch, "-m", "trl_sapo.gsm8k.train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"trl_sapo.gsm8k.train failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


# ---------------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(recipe):
    """Every key of every recipe is a real option (TrlParser rejects unknown ones) and the values validate."""
    from trl import ModelConfig

    from trl_sapo import SAPOConfig

    script_args, training_args, model_args = gsm8k_recipe.parse_args(["--config", str(recipe)])
    config = yaml.safe_load(recipe.read_text())
    if config.get("async_rollouts"):  # AsyncSAPOConfig: no reward_weights, no steps_per_generation (test_async_cli)
        gsm8k_recipe.check_args(script_args, training_args, model_args)
        assert type(training_args).__name__ == "AsyncSAPOConfig" and model_args.dtype == config["dtype"]
        assert script_args.reward_funcs == config["reward_funcs"]
        return
    assert isinstance(training_args, SAPOConfig) and isinstance(model_args, ModelConfig)
    assert model_args.model_name_or_path == config["model_name_or_path"]
    assert training_args.use_sapo_loss == config.get("use_sapo_loss", True)
    assert script_args.reward_funcs == config["reward_funcs"]
    gsm8k_recipe.check_args(script_args, training_args, model_args)
    gsm8k_recipe.load_reward_funcs(
        script_args.reward_funcs, training_args.max_completion_length, script_args.soft_punish_cache
    )
    if training_args.reward_weights is not None:
        assert len(training_args.reward_weights) == len(script_args.reward_funcs)
    # Off-policy regime: each generation round feeds more than one optimizer step.
    assert training_args.steps_per_generation > training_args.gradient_accumulation_steps


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.name)
def test_gpu_recipe_batches_divide_on_8_gpus(recipe):
    """GRPOConfig checks batch divisibility for the parsing process only; check the 8-GPU launch too."""
    config = yaml.safe_load(recipe.read_text())
    assert config["bf16"] is True and config["dtype"] == "bfloat16"
    assert config["use_vllm"] is True and config["vllm_mode"] == "colocate"
    assert 1e-6 <= config["learning_rate"] <= (1e-5 if config.get("use_peft") else 3e-6)
    for world_size in (1, 8, 16):
        generation_batch = config["per_device_train_batch_size"] * world_size * config["steps_per_generation"]
        assert generation_batch % config["num_generations"] == 0
        assert (config["per_device_eval_batch_size"] * world_size) % config["num_generations"] == 0


def test_grpo_twin_differs_only_in_the_loss():
    parsed = {}
    for arm in ("sapo", "grpo"):
        script_args, training_args, model_args = gsm8k_recipe.parse_args(
            ["--config", str(REPO_ROOT / "recipes" / f"qwen2.5-0.5b-instruct_{arm}.yaml")]
        )
        parsed[arm] = {**vars(script_args), **training_args.to_dict(), **vars(model_args)}
    differing = {k for k in parsed["sapo"] if parsed["sapo"][k] != parsed["grpo"][k]}
    assert "use_sapo_loss" in differing
    assert differing <= TWIN_DIFFERENCES, differing - TWIN_DIFFERENCES


def test_cpu_demo_recipe_is_cpu_and_off_policy():
    config = yaml.safe_load((REPO_ROOT / "recipes" / "smollm2-135m_cpu_demo.yaml").read_text())
    assert config["use_cpu"] is True and config["bf16"] is False
    assert config["model_name_or_path"] == "models/SmolLM2-135M-Instruct"
    assert config["steps_per_generation"] > config["gradient_accumulation_steps"]


def test_unknown_recipe_key_is_rejected(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("model_name_or_path: x\nsapo_tau_pso: 2.0\n")
    with pytest.raises(ValueError, match="sapo_tau_pso"):
        gsm8k_recipe.parse_args(["--config", str(recipe)])


def test_help_lists_every_sapo_and_script_option():
    help_text = gsm8k_recipe.make_parser().format_help()
    for option in (
        "--sapo_tau_pos",
        "--sapo_tau_neg",
        "--use_sapo_loss",
        "--use_decoupled_loss",
        "--loss_type",
        "--steps_per_generation",
        "--use_vllm",
        "--vllm_mode",
        "--use_peft",
        "--lora_r",
        "--dataset_name",
        "--num_train_examples",
        "--num_eval_examples",
        "--skip_invalid_rows",
        "--system_prompt",
        "--num_few_shot",
        "--reward_funcs",
        "--reward_weights",
        "--merge_adapter_on_save",
    ):
        assert option in help_text, option


def test_cli_overrides_yaml(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "some/model",
                "sapo_tau_pos": 2.0,
                "sapo_tau_neg": 2.5,
                "learning_rate": 3e-6,
                "reward_funcs": ["accuracy"],
                "num_train_examples": 100,
                "use_cpu": True,
                "bf16": False,
            }
        )
    )
    script_args, training_args, model_args = gsm8k_recipe.parse_args(
        ["--config", str(recipe), "--sapo_tau_pos", "0.5", "--reward_funcs", "format", "accuracy"]
    )
    assert training_args.sapo_tau_pos == 0.5  # CLI wins
    assert script_args.reward_funcs == ["format", "accuracy"]
    assert training_args.sapo_tau_neg == 2.5 and training_args.learning_rate == 3e-6  # YAML kept
    assert script_args.num_train_examples == 100 and model_args.model_name_or_path == "some/model"
    assert script_args.dataset_name == "openai/gsm8k" and training_args.use_sapo_loss  # defaults kept


def test_defaults():
    script_args, training_args, model_args = gsm8k_recipe.parse_args(["--use_cpu", "true", "--bf16", "false"])
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    assert script_args.dataset_name == "openai/gsm8k" and script_args.dataset_config == "main"
    assert script_args.reward_funcs == ["accuracy", "format"]
    assert (training_args.sapo_tau_pos, training_args.sapo_tau_neg) == (1.0, 1.05)


def test_precision_fallback_without_gpu(caplog):
    """No bf16 GPU: bf16 defaults off and use_cpu on (with a warning); explicit values are used as given."""
    from transformers.utils import is_torch_bf16_gpu_available

    if is_torch_bf16_gpu_available():
        pytest.skip("a bf16-capable accelerator is present: GRPOConfig's bf16=True default applies")
    with caplog.at_level("WARNING", logger="trl_sapo.launch"):
        _, training_args, _ = gsm8k_recipe.parse_args([])
    assert training_args.bf16 is False and training_args.use_cpu is True
    assert "bf16=False" in caplog.text and "use_cpu=True" in caplog.text

    caplog.clear()
    with caplog.at_level("WARNING", logger="trl_sapo.launch"):
        _, training_args, _ = gsm8k_recipe.parse_args(["--bf16", "true"])
    assert training_args.bf16 is True and training_args.use_cpu is True  # explicit bf16 honoured (CPU autocast)
    assert "bf16=False" not in caplog.text


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--merge_adapter_on_save", "true"], "use_peft"),
        (["--reward_funcs", "accuracy", "corectness"], "corectness"),
        (["--reward_funcs", "no_such_module.reward"], "no_such_module"),
        (["--num_train_examples", "0"], "num_train_examples"),
        (["--reward_funcs", "accuracy", "--soft_punish_cache", "8"], "add 'overlong' to reward_funcs"),
        (["--reward_funcs", "overlong", "--soft_punish_cache", "0"], "soft_punish_cache"),
        (["--reward_funcs", "overlong", "--max_completion_length", "32", "--soft_punish_cache", "32"], "between 1"),
    ],
)
def test_bad_options_fail_before_training(flags, message, capsys):
    """A user error ends the entry point with its message on stderr and status 2 (no traceback), before training."""
    with pytest.raises(SystemExit) as exit_info:
        main(["--use_cpu", "true", "--bf16", "false", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_launch_guards_reject_silent_fallbacks(monkeypatch):
    """Processes that would train alone, or an FSDP/DeepSpeed launch that accelerate would quietly replace."""
    from accelerate.utils import DistributedType

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="use_cpu true"):
        launch.check_world_size(1)
    launch.check_world_size(2)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(RuntimeError, match="requested FSDP, but training would run with MULTI_CPU"):
        launch.check_backend(DistributedType.MULTI_CPU)
    launch.check_backend(DistributedType.FSDP)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(RuntimeError, match="requested DEEPSPEED"):
        launch.check_backend(DistributedType.MULTI_CPU)
    launch.check_backend(DistributedType.DEEPSPEED)


def test_bad_data_error_names_the_row(tmp_path):
    from trl_sapo.gsm8k.data import DataError

    rows = [
        {"question": "1 + 1?", "answer": "1 + 1 = 2\n#### 2"},
        {"question": "2 + 2?", "answer": "four, no marker"},
        {"question": "3 + 3?", "answer": "#### 6"},
    ]
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError, match="row 1"):  # fails while loading data, before any model is loaded
        gsm8k_train.train_gsm8k(
            *gsm8k_recipe.parse_args(["--use_cpu", "true", "--bf16", "false", "--dataset_name", str(data)])
        )

    script_args, _, _ = gsm8k_recipe.parse_args(
        ["--use_cpu", "true", "--bf16", "false", "--dataset_name", str(data), "--skip_invalid_rows", "true"]
    )
    dataset = gsm8k_recipe.load_split(script_args, "train", None, seed=0)
    assert dataset["answer"] == [rows[0]["answer"], rows[2]["answer"]]
    assert dataset[0]["prompt"][-1] == {"role": "user", "content": "1 + 1?"}


# ---------------------------------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess; fast checks of main(): the pre-emption and short-run tests below
def test_end_to_end_tiny_model(tmp_path, tiny_model_path):
    """`accelerate launch -m trl_sapo.gsm8k.train --config ... --flag ...`: 2 steps (one off-policy), saved model
    loads. (`python scripts/gsm8k_sapo.py`, the checkout shim, runs in test_demo.py and test_multinode.py.)"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    output_dir = tmp_path / "out"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"sapo_tau_pos": 1.0, "sapo_tau_neg": 1.5, "max_steps": 5}))
    reward = write_reward_module(tmp_path)
    args = tiny_run_args(tiny_model_path, output_dir, reward_funcs=["accuracy", "format", reward])
    run_module(["--config", str(recipe), *args], cwd=tmp_path)  # CLI max_steps=2 overrides the YAML's 5

    state = assert_training_logged(output_dir)
    assert [e["rewards/length_reward/std"] for e in state["log_history"] if "rewards/length_reward/std" in e][0] > 0
    # Step 2 reuses step 1's generations after one update: the ratio moved away from 1 (off-policy).
    assert logged(state, "sapo/ratio_max")[1] != 1.0
    assert (output_dir / "training_args.bin").exists()
    assert json.loads((output_dir / "config.json").read_text())["use_cache"] is True  # re-enabled for inference
    assert (output_dir / "README.md").read_text().count("SAPO") >= 1

    trained = AutoModelForCausalLM.from_pretrained(output_dir)
    initial = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    AutoTokenizer.from_pretrained(output_dir)
    changed = [
        name
        for (name, p), q in zip(trained.named_parameters(), initial.parameters())
        if not torch.equal(p.detach(), q.detach())
    ]
    assert changed, "training did not change any weight"


@pytest.mark.slow
def test_smollm2_one_step(tmp_path, smollm2_path):
    """The real pretrained model through main() in-process: 2 steps, GSM8K rewards, finite loss and sapo/ metrics."""
    output_dir = tmp_path / "out"
    args = tiny_run_args(
        smollm2_path,
        output_dir,
        max_completion_length=16,
        per_device_train_batch_size=2,
        num_generations=2,
        num_train_examples=4,
        learning_rate=1e-5,
    )
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread is several times faster than oversubscribed ones on a busy CI machine
    try:
        main(args)
    finally:
        torch.set_num_threads(threads)
    assert_training_logged(output_dir)


def test_console_script_is_the_entry_point():
    """pyproject's `trl-sapo-gsm8k` names `trl_sapo.gsm8k.train:main`, and the checkout shim runs that same main."""
    import tomllib

    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, attr = scripts["trl-sapo-gsm8k"].split(":")
    assert getattr(importlib.import_module(module), attr) is main
    shim = SCRIPT.read_text()
    assert "from trl_sapo.gsm8k.train import main" in shim and shim.rstrip().endswith("main()")


class SigtermAfterFirstStep:
    """Sends this process SIGTERM at the end of optimizer step 1, as a scheduler's pre-emption warning would."""

    def __new__(cls):
        import signal

        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 1:
                    os.kill(os.getpid(), signal.SIGTERM)

        return _Callback()


def test_preemption_exits_from_the_entry_point_without_final_save(tmp_path, tiny_model_path, monkeypatch):
    """SIGTERM: the library's train() returns after saving checkpoint-1; main() exits with PREEMPTED_EXIT_CODE
    before the final save, metrics or model card (they would eat the grace period)."""
    from trl_sapo.reliability import PREEMPTED_EXIT_CODE

    monkeypatch.chdir(tmp_path)
    output_dir = tmp_path / "out"
    args = tiny_run_args(tiny_model_path, output_dir, reward_funcs=[write_reward_module(tmp_path)], max_steps=3)
    with pytest.raises(SystemExit) as exit_info:
        main(args, callbacks=[SigtermAfterFirstStep()])
    assert exit_info.value.code == PREEMPTED_EXIT_CODE
    assert (output_dir / "checkpoint-1" / "trainer_state.json").is_file()
    assert (output_dir / "checkpoint-1" / "rollout_state.pt").is_file()
    assert not (output_dir / "train_results.json").exists() and not (output_dir / "model.safetensors").exists()


def test_summary_after_fewer_steps_than_logging_steps(tmp_path, tiny_model_path, monkeypatch):
    """max_steps < logging_steps: GRPOTrainer merges the unlogged step's metrics (None where a metric has no data,
    e.g. sapo/gate_mean_pos) into the final summary; main() must still print and save it, and save the model."""
    monkeypatch.chdir(tmp_path)
    output_dir = tmp_path / "out"
    main(tiny_run_args(tiny_model_path, output_dir, max_steps=1, logging_steps=10))
    summary = json.loads((output_dir / "train_results.json").read_text())
    assert "train_runtime" in summary and None not in summary.values()
    assert (output_dir / "model.safetensors").is_file()


def test_user_error_at_resume_prints_the_message_and_exits_2(tmp_path, tiny_model_path, monkeypatch, capsys):
    """Issue 31: `--resume_from_checkpoint false` into an output_dir that holds a (real) checkpoint is refused with
    one line on stderr and status 2, not a traceback around the message; nothing is trained or deleted."""
    monkeypatch.chdir(tmp_path)
    output_dir = tmp_path / "out"
    main(tiny_run_args(tiny_model_path, output_dir, max_steps=1, save_strategy="steps", save_steps=1))
    assert (output_dir / "checkpoint-1" / "trainer_state.json").is_file()
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        main(tiny_run_args(tiny_model_path, output_dir, resume_from_checkpoint="false"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("trl-sapo-gsm8k: error: ") and "already holds 1 checkpoint(s)" in err
    assert "Traceback" not in err and (output_dir / "checkpoint-1" / "trainer_state.json").is_file()


class _NoEditsPath(list):
    """sys.path stand-in that fails on any edit (issue 29: nothing in the repository edits sys.path)."""

    def insert(self, *args):
        raise AssertionError("sys.path.insert")

    def append(self, *args):
        raise AssertionError("sys.path.append")


def test_reward_functions_from_the_working_directory_without_editing_sys_path(tmp_path, monkeypatch):
    """`--reward_funcs module.func` finds a module or package in the working directory, as `python -m` would."""
    (tmp_path / "cwd_rewards.py").write_text("def short(completions, **kw):\n    return [1.0 for _ in completions]\n")
    (tmp_path / "cwd_reward_pkg").mkdir()
    (tmp_path / "cwd_reward_pkg" / "__init__.py").write_text("")
    (tmp_path / "cwd_reward_pkg" / "scores.py").write_text("def zero(completions, **kw):\n    return [0.0]\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", _NoEditsPath(p for p in sys.path if p not in ("", str(tmp_path))))
    for name in ("cwd_rewards", "cwd_reward_pkg", "cwd_reward_pkg.scores"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    short, zero = gsm8k_recipe.load_reward_funcs(["cwd_rewards.short", "cwd_reward_pkg.scores.zero"], 32, None)
    assert short(["a", "b"]) == [1.0, 1.0] and zero(["a"]) == [0.0]
    assert short.__module__ == "cwd_rewards" and zero.__module__ == "cwd_reward_pkg.scores"
    for bad in ("cwd_rewards.missing", "no_such_module_here.reward", "cwd_reward_pkg.nope.f"):
        with pytest.raises(ValueError, match=r"reward function .*(does not import|has no)"):
            gsm8k_recipe.load_reward_funcs([bad], 32, None)
