"""`trl-sapo grpo` (trl_sapo/cli/): TRL 1.16's own `trl grpo` CLI tests with the command swapped, offline.

TRL's tests (huggingface/trl tests/test_cli.py `test_help_no_type_error`, `TestCLI.test_grpo`; tests/distributed/
test_distributed.py `test_grpo` with its ddp / zero2 / zero3 configs) use a tiny Qwen2 policy, a tiny Qwen2 reward
model and the `zen` dataset from the Hub; tools/trl_test_assets.py builds the same kinds locally. The commands are
TRL's, word for word, with `trl grpo` -> `trl-sapo grpo` and `trl/scripts/grpo.py` -> `-m trl_sapo.cli.grpo`; on CPU
the multi-process ones use this repository's `use_cpu: true` twins of TRL's accelerate configs and check that two
processes trained together. Then: recipes and argument routing, and every user error before any model loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO_ROOT, free_port

from trl_sapo.cli import grpo
from trl_sapo.cli.main import main as trl_sapo_main
from trl_sapo.tools.offline import OFFLINE_ENV

REWARD_MODULE = '''
def length_reward(completions, **kwargs):
    """Deterministic reward with spread: the completion's character count / 10."""
    return [len(c[-1]["content"] if isinstance(c, list) else c) / 10 for c in completions]


def positional_reward(completions, /):
    return [0.0 for _ in completions]
'''


@pytest.fixture(scope="session")
def assets(tmp_path_factory, smollm2_path) -> dict[str, Path]:
    """Offline twins of TRL's test assets: {"policy", "reward_model", "zen"}."""
    from tools.trl_test_assets import build_all

    return build_all(tmp_path_factory.mktemp("trl-assets"), tokenizer_dir=smollm2_path)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """The working directory of a run, with an importable reward module `my_rewards`."""
    (tmp_path / "my_rewards.py").write_text(REWARD_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def env() -> dict[str, str]:
    return {
        **os.environ,
        **OFFLINE_ENV,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }


def run(command: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{command[:4]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def trl_sapo(*args: str) -> list[str]:
    """The `trl-sapo` console script as this interpreter runs it (pyproject: trl_sapo.cli.main:main)."""
    return [sys.executable, "-c", "import sys; from trl_sapo.cli.main import main; sys.exit(main())", *args]


def exit_message(capsys, call) -> str:
    """Run `call()`, which must end with status 2; return its stderr (one line, no traceback)."""
    with pytest.raises(SystemExit) as exit_info:
        call()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


# ---- TRL's own tests, command swapped -------------------------------------------------------------------------------


def test_help_no_type_error(capsys):
    """TRL tests/test_cli.py::test_help_no_type_error[grpo]; plus what a user needs from --help: --config and the
    precedence of flags over YAML, the SAPO options next to TRL's."""
    with pytest.raises(SystemExit) as exit_info:
        trl_sapo_main(["grpo", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "usage: trl-sapo grpo [--config recipe.yaml]" in help_text
    assert "Precedence: a flag on the command line > the same key in the --config YAML > the defaults" in help_text
    for option in ("--sapo_tau_pos", "--use_sapo_loss", "--reward_model_name_or_path", "--reward_funcs", "--datasets"):
        assert option in help_text, option
    assert trl_sapo_main([]) == 0 and "grpo" in capsys.readouterr().out


@pytest.mark.slow  # ~30 s: TRL's command trains 3 epochs
def test_grpo(tmp_path, assets):
    """TRL tests/test_cli.py::TestCLI::test_grpo, `trl grpo` -> `trl-sapo grpo`, through accelerate launch."""
    command = (
        f"grpo --output_dir {tmp_path / 'out'} --model_name_or_path {assets['policy']} --reward_model_name_or_path "
        f"{assets['reward_model']} --dataset_name {assets['zen']} --dataset_config standard_prompt_only "
        "--num_generations 4 --max_completion_length 32 --report_to none"
    )
    proc = run(trl_sapo(*command.split(" ")), cwd=tmp_path)
    assert "with SAPO on 17 examples" in proc.stdout + proc.stderr
    assert (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("config", ["ddp", "zero2", "zero3"])
def test_grpo_distributed(tmp_path, assets, config):
    """TRL tests/distributed/test_distributed.py::TestDistributed::test_grpo, `trl/scripts/grpo.py` ->
    `-m trl_sapo.cli.grpo`, with the CPU twin (use_cpu: true) of TRL's 2-process config; both processes train
    together (world size 2). `--max_steps 2` is the one addition: TRL's command trains 24 steps of 256-token
    completions, ~40 s each on 2 CPU cores."""
    if config != "ddp":
        pytest.importorskip("deepspeed")
    # fmt: off
    proc = run(
        [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(REPO_ROOT / "accelerate_configs" / f"cpu_2proc_{config}.yaml"),
            "--main_process_port", str(free_port()), "-m", "trl_sapo.cli.grpo",
            "--output_dir", str(tmp_path / "out"),
            "--model_name_or_path", str(assets["policy"]),
            "--dataset_name", str(assets["zen"]),
            "--dataset_config", "conversational_prompt_only",
            "--reward_model_name_or_path", str(assets["reward_model"]),
            "--max_steps", "2",
        ],
        cwd=tmp_path,
    )
    # fmt: on
    assert "(2 process(es))" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_through_trl_sapo(tmp_path, assets):
    """`trl-sapo grpo` starts accelerate itself: `accelerate_config` as a YAML key (a file path), an accelerate flag
    on the command line; both processes train together."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "accelerate_config": str(REPO_ROOT / "accelerate_configs" / "cpu_2proc_ddp.yaml"),
                "model_name_or_path": str(assets["policy"]),
                "dataset_name": str(assets["zen"]),
                "dataset_config": "conversational_prompt_only",
                "reward_model_name_or_path": str(assets["reward_model"]),
                "per_device_train_batch_size": 2,
                "num_generations": 4,
                "max_completion_length": 16,
                "max_steps": 2,
                "report_to": "none",
                "output_dir": str(tmp_path / "out"),
            }
        )
    )
    proc = run(trl_sapo("grpo", "--config", str(recipe), "--main_process_port", str(free_port())), cwd=tmp_path)
    assert "(2 process(es))" in proc.stdout + proc.stderr
    assert json.loads((tmp_path / "out" / "trainer_state.json").read_text())["global_step"] == 2


# ---- recipes and argument routing -----------------------------------------------------------------------------------


def test_trl_recipe_with_dataset_mixture_trains_in_process(workdir, assets, capsys):
    """A `trl grpo` YAML recipe (a `datasets:` mixture, reward_funcs by dotted path, a reward model) plus one SAPO key
    runs unchanged: 1 step in this process; the flag overrides the YAML's max_steps."""
    recipe = workdir / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(assets["policy"]),
                "datasets": [
                    {"path": str(assets["zen"]), "name": "standard_prompt_only", "split": "train"},
                    {"path": str(assets["zen"]), "name": "standard_prompt_only", "split": "test"},
                ],
                "reward_funcs": ["my_rewards.length_reward"],
                "reward_model_name_or_path": str(assets["reward_model"]),
                "per_device_train_batch_size": 4,
                "num_generations": 4,
                "max_completion_length": 8,
                "max_steps": 5,
                "report_to": "none",
                "output_dir": str(workdir / "out"),
                "sapo_tau_neg": 1.5,
            }
        )
    )
    grpo.cli_main(["--config", str(recipe), "--max_steps", "1", "--save_steps", "1"])
    state = json.loads((workdir / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    assert "rewards/length_reward/mean" in state["log_history"][0]
    assert "rewards/tiny-Qwen2ForSequenceClassification/mean" in state["log_history"][0]
    assert (workdir / "out" / "checkpoint-1").is_dir() and (workdir / "out" / "model.safetensors").is_file()
    assert "on 19 examples from a dataset mixture" in capsys.readouterr().out  # 17 train + 2 test rows


def test_accelerate_options_go_to_accelerate(tmp_path):
    """`--accelerate_config NAME` (TRL's names) and accelerate flags, on the command line or as YAML keys, become the
    launch arguments; the training processes get everything else (the --config YAML whole)."""
    from trl_sapo.cli.main import COMMANDS

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": "some/model",
                "dataset_name": "some/data",
                "reward_funcs": ["think_format_reward"],
                "num_processes": 2,
                "cpu": True,
                "same_network": False,
            }
        )
    )
    argv = ["--config", str(recipe), "--accelerate_config", "zero2", "--main_process_port", "29999", "--seed", "3"]
    launch_args, script_args = COMMANDS[0].split_args(argv)
    assert launch_args[:2] == [
        "--config_file",
        str(Path(__import__("trl").__file__).parent / "accelerate_configs" / "zero2.yaml"),
    ]
    assert launch_args[2:] == [
        "--cpu",
        "--num_processes",
        "2",
        "--main_process_port",
        "29999",
    ]  # same_network: false dropped
    assert script_args == ["--config", str(recipe), "--seed", "3"]


def test_batch_sizes_are_checked_for_the_launched_processes(tmp_path, capsys):
    """GRPOConfig's batch checks depend on the world size: the calling process checks them for the processes it will
    launch (per device 2 x 2 processes = 4 completions, one group of 4), not for itself (2: not whole groups)."""
    from trl_sapo.cli.main import COMMANDS

    recipe = tmp_path / "recipe.yaml"
    config = {"model_name_or_path": "m", "dataset_name": "d", "reward_funcs": ["think_format_reward"]}
    recipe.write_text(yaml.safe_dump({**config, "per_device_train_batch_size": 2, "num_generations": 4}))
    ddp = str(REPO_ROOT / "accelerate_configs" / "cpu_2proc_ddp.yaml")
    for launch in (["--num_processes", "2"], ["--accelerate_config", ddp], ["--config_file", ddp]):
        COMMANDS[0].split_args(["--config", str(recipe), *launch])
    err = exit_message(capsys, lambda: trl_sapo_main(["grpo", "--config", str(recipe), "--num_processes", "1"]))
    assert "generation_batch_size (2) must be divisible by num_generations (4)" in err
    from transformers import TrainingArguments

    assert TrainingArguments(output_dir=str(tmp_path), use_cpu=True).world_size == 1  # restored


# ---- user errors: one line, status 2, before any model loads --------------------------------------------------------


def base_args(assets, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(assets["policy"]), "--dataset_name", str(assets["zen"]),
        "--dataset_config", "standard_prompt_only", "--output_dir", "out", "--report_to", "none", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reward_funcs", "acuracy_reward"], "unknown reward function 'acuracy_reward': expected one of"),
        (["--reward_funcs", "no_such_pkg.rewards.r"], "module 'no_such_pkg.rewards' does not import"),
        (["--reward_funcs", "my_rewards.missing"], "module 'my_rewards' ("),
        (["--reward_funcs", "my_rewards.positional_reward"], "cannot take TRL's arguments"),
        (["--reward_funcs", "think_format_reward", "--no_such_flag", "1"], "unknown option(s) ['--no_such_flag'"),
        (["--max_steps", "2", "stray", "--reward_funcs", "think_format_reward"], "unknown option(s) ['stray']"),
        (["--reward_funcs", "think_format_reward", "--ignore_bias_buffers", "true"], "`trl dpo` option"),
        ([], "No reward"),
        (["--reward_funcs", "think_format_reward", "--accelerate_config", "nope"], "Accelerate config nope"),
        (
            [
                "--reward_funcs",
                "think_format_reward",
                "--accelerate_config",
                str(REPO_ROOT / "accelerate_configs" / "cpu_2proc_fsdp2.yaml"),
            ],
            "asks for FSDP",
        ),
        (["--reward_funcs", "think_format_reward", "--accelerate_config", "multi_gpu"], "starts 8 GPU processes"),
        (["--reward_funcs", "think_format_reward", "--model_revision", "v2"], "is a local folder, which transformers"),
    ],
)
def test_launcher_rejects_bad_arguments_before_launching(workdir, assets, capsys, monkeypatch, extra, message):
    """Checked in the calling process: nothing is launched (a launch would fail the test)."""
    import torch

    monkeypatch.setattr("accelerate.commands.launch.launch_command", lambda args: pytest.fail("launched"))
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)
    err = exit_message(capsys, lambda: trl_sapo_main(["grpo", *base_args(assets, *extra)]))
    assert err.startswith("trl-sapo grpo: error: ") and message in err, err


def test_reward_column_and_split_errors_before_model_loading(workdir, assets, capsys, monkeypatch):
    """A reward that needs a column the data lacks (GSM8K accuracy needs `answer`), or a missing split, stops after
    loading the data and before loading any model."""
    monkeypatch.setattr("trl_sapo.cli.training.SAPOTrainer", lambda **kwargs: pytest.fail("model loaded"))
    err = exit_message(capsys, lambda: grpo.cli_main(base_args(assets, "--reward_funcs", "gsm8k_accuracy")))
    assert "needs the dataset column(s) ['answer']" in err and "columns: ['prompt']" in err
    err = exit_message(
        capsys,
        lambda: grpo.cli_main(
            base_args(assets, "--reward_funcs", "think_format_reward", "--dataset_train_split", "dev")
        ),
    )
    assert "the dataset has no split 'dev'; its splits: ['test', 'train']" in err


def test_model_revision_of_a_local_folder_in_the_training_process(workdir, assets, capsys, monkeypatch):
    """What accelerate starts (and the GSM8K entry point, same path) refuses a revision transformers would ignore
    (the model is a local folder) before loading anything; TRL's default `main` passes."""
    monkeypatch.setattr("trl_sapo.cli.training.SAPOTrainer", lambda **kwargs: pytest.fail("model loaded"))
    args = base_args(assets, "--reward_funcs", "think_format_reward", "--model_revision", "v2")
    err = exit_message(capsys, lambda: grpo.cli_main(args))
    assert f"model_revision 'v2' picks a version of a Hub model, but '{assets['policy']}' is a local folder" in err
    from trl_sapo.launch import check_model_revision

    check_model_revision(str(assets["policy"]), "main")
    check_model_revision("org/not-a-folder", "v2")


def test_unknown_yaml_key_in_the_training_process(workdir, assets, capsys):
    """`python -m trl_sapo.cli.grpo` (what accelerate starts) accepts accelerate keys in the YAML, nothing else."""
    recipe = workdir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"num_processes": 1, "sapo_tau_pso": 2.0}))
    err = exit_message(capsys, lambda: grpo.cli_main(["--config", str(recipe), *base_args(assets)]))
    assert "unknown option(s) ['--sapo_tau_pso'" in err and "in the --config YAML" in err


@pytest.mark.slow
def test_wheel_from_an_empty_folder(tmp_path, assets):
    """Issue 27's bar: only the built wheel installed (a fresh venv that sees this environment's dependencies, not
    this checkout), in an empty folder: `trl-sapo grpo --config <a trl grpo recipe> --max_steps 2` trains the tiny
    model with a dotted-path reward and a reward model, and writes the model and a checkpoint."""
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist)]
    run([*pip_wheel, str(REPO_ROOT)], cwd=tmp_path)
    run([sys._base_executable, "-m", "venv", str(venv)], cwd=tmp_path)
    venv_python = venv / "bin" / "python"
    site = subprocess.check_output([venv_python, "-c", "import site; print(site.getsitepackages()[0])"], text=True)
    import site as this_site

    # A plain path line: the dependencies are importable, this environment's editable trl_sapo finder is not.
    (Path(site.strip()) / "dependencies.pth").write_text(this_site.getsitepackages()[0] + "\n")
    # --force-reinstall: pip sees this environment's (editable) trl-sapo through that path and would skip the wheel.
    pip_install = [venv_python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--force-reinstall"]
    run([*pip_install, *map(str, dist.glob("*.whl"))], cwd=tmp_path)

    work.mkdir()
    (work / "my_rewards.py").write_text(REWARD_MODULE)
    (work / "recipe.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(assets["policy"]),
                "datasets": [{"path": str(assets["zen"]), "name": "conversational_prompt_only", "split": "train"}],
                "reward_funcs": ["my_rewards.length_reward"],
                "reward_model_name_or_path": str(assets["reward_model"]),
                "per_device_train_batch_size": 4,
                "num_generations": 4,
                "max_completion_length": 8,
                "output_dir": "out",
                "report_to": "none",
            }
        )
    )
    environment = {k: v for k, v in env().items() if k != "PYTHONPATH"}
    environment["PATH"] = f"{venv / 'bin'}{os.pathsep}{environment['PATH']}"
    proc = subprocess.run(
        ["trl-sapo", "grpo", "--config", "recipe.yaml", "--max_steps", "2"],
        cwd=work, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert str(venv) in subprocess.check_output(
        [venv_python, "-c", "import trl_sapo; print(trl_sapo.__file__)"], cwd=work, env=environment, text=True
    )
    state = json.loads((work / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and "rewards/length_reward/mean" in state["log_history"][0]
    assert (work / "out" / "model.safetensors").is_file()
    assert (work / "out" / "checkpoint-2" / "checkpoint_complete.json").is_file()


@pytest.mark.slow  # ~15 s: a launch
def test_training_process_user_error_exits_2_through_the_launcher(workdir, assets):
    """Issue 31: an error found in the training process (here `--resume_from_checkpoint true` with no checkpoint)
    reaches the user as one line and status 2 through `trl-sapo grpo` and accelerate, without a traceback."""
    args = base_args(assets, "--reward_funcs", "think_format_reward", "--resume_from_checkpoint", "true")
    proc = subprocess.run(trl_sapo("grpo", *args), cwd=workdir, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "trl-sapo grpo: error: " in proc.stderr and "holds no finished" in proc.stderr
    assert "Traceback" not in proc.stderr
