"""AsyncSAPOTrainer the way users train (issue 26 item 5): the GSM8K entry point with `async_rollouts` (flag or
recipe key) and `trl-sapo async-grpo`: 2-step runs that save a checkpoint, and every refused option's error."""

from __future__ import annotations

import json

import pytest
from helpers import CPU_TRAINING_KWARGS, REPO_ROOT, as_cli_flags

from trl_sapo.cli import async_grpo
from trl_sapo.cli.main import main as trl_sapo_main
from trl_sapo.gsm8k import recipe as gsm8k_recipe
from trl_sapo.gsm8k.train import main as gsm8k_main

ASYNC_RECIPE = REPO_ROOT / "recipes" / "smollm2-135m_cpu_async.yaml"
GPU_ASYNC_RECIPE = REPO_ROOT / "recipes" / "qwen2.5-0.5b-instruct_sapo_async.yaml"


def flags(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        args += [f"--{key}", *(value if isinstance(value, list) else [str(value)])]
    return args


def async_run_options(model_path, output_dir, **overrides) -> dict:
    """A 2-step async run of the tiny model (transformers worker, lag 1), checkpoint at step 2."""
    return {
        **as_cli_flags(CPU_TRAINING_KWARGS),
        "model_name_or_path": str(model_path),
        "output_dir": str(output_dir),
        "max_steps": 2,
        "max_completion_length": 6,
        "learning_rate": 1e-3,
        "gradient_checkpointing": "false",
        "disable_tqdm": "true",
        "rollout_backend": "transformers",
        "fixed_lag": 1,
        "max_staleness": 1,
        "token_budget": -1,
        "heartbeat_stale_after_s": 30,
        "save_strategy": "steps",
        "save_steps": 2,
        "reward_funcs": "helpers.length_reward",  # varied rewards: non-zero advantages on a random model
        **overrides,
    }


def check_trained(output_dir) -> None:
    state = json.loads((output_dir / "checkpoint-2" / "trainer_state.json").read_text())
    losses = [row["loss"] for row in state["log_history"] if "loss" in row]
    assert len(losses) == 2 and all(loss == loss for loss in losses)
    assert [row["sample/staleness_max"] for row in state["log_history"] if "sample/staleness_max" in row] == [0, 1]
    assert (output_dir / "checkpoint-2" / "async_sapo_state.json").is_file()  # written by AsyncSAPOTrainer
    assert (output_dir / "model.safetensors").is_file()


def test_gsm8k_entry_point_trains_async_from_one_flag(tiny_model_path, tmp_path):
    options = async_run_options(tiny_model_path, tmp_path / "out", dataset_name="synthetic", num_train_examples=16)
    gsm8k_main(["--async_rollouts", "true", *flags(options)])
    check_trained(tmp_path / "out")
    first = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    # The same command with one more step resumes from checkpoint-2 (the shared path's default resume: auto): steps
    # 1-2 come back from the checkpoint verbatim (timings included), step 3 is new.
    gsm8k_main(["--async_rollouts", "true", *flags({**options, "max_steps": 3})])
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    steps = [row for row in state["log_history"] if "loss" in row]
    assert state["global_step"] == 3 and [row["step"] for row in steps] == [1, 2, 3]
    assert steps[:2] == [row for row in first if "loss" in row]


def test_async_recipe_parses_as_async_and_the_flag_selects_it():
    from trl_sapo import SAPOConfig
    from trl_sapo.async_sapo import AsyncSAPOConfig

    for recipe in (ASYNC_RECIPE, GPU_ASYNC_RECIPE):
        script_args, training_args, model_args = gsm8k_recipe.parse_args(["--config", str(recipe)])
        gsm8k_recipe.check_args(script_args, training_args, model_args)
        assert script_args.async_rollouts and isinstance(training_args, AsyncSAPOConfig)
        assert model_args.dtype == training_args.dtype
    with pytest.raises(ValueError, match="set async_rollouts: true"):
        gsm8k_recipe.parse_args(["--config", str(ASYNC_RECIPE), "--async_rollouts", "false"])
    *_, training_args, _ = gsm8k_recipe.parse_args(["--dataset_name", "synthetic"])
    assert type(training_args) is SAPOConfig
    for switch in (["--async_rollouts"], ["--async_rollouts=true"], ["--async_rollouts", "True"]):
        *_, training_args, _ = gsm8k_recipe.parse_args([*switch, "--dataset_name", "synthetic"])
        assert isinstance(training_args, AsyncSAPOConfig), switch
    *_, training_args, _ = gsm8k_recipe.parse_args(["--async_rollouts", "false", "--dataset_name", "synthetic"])
    assert type(training_args) is SAPOConfig


REFUSED = [
    (["--reward_weights", "1.0"], "sums the rewards"),
    (["--beta", "0.04"], "no reference model"),
    (["--use_vllm", "true", "--vllm_mode", "colocate"], "no vLLM colocate mode"),
    (["--vllm_mode", "server"], "colocate is not"),
    (["--num_iterations", "2"], "trained on once"),
    (["--scale_rewards", "batch"], "AsyncSAPOConfig has no such option"),  # no special reason
    (["--load_in_4bit", "true"], "quantization"),
    (["--attn_implementation", "sdpa"], "sets its own"),
    (["--eval_strategy", "steps"], "no evaluation loop"),
]


@pytest.mark.parametrize(("extra", "message"), REFUSED, ids=[e[0].lstrip("-") for e, _ in REFUSED])
def test_gsm8k_async_refuses_what_the_async_trainer_lacks(extra, message, tmp_path):
    argv = ["--config", str(ASYNC_RECIPE), "--output_dir", str(tmp_path), *extra]
    with pytest.raises(ValueError, match=message):
        gsm8k_recipe.check_args(*gsm8k_recipe.parse_args(argv))


def test_gsm8k_async_accepts_sync_options_at_their_default(tmp_path):
    argv = ["--config", str(ASYNC_RECIPE), "--beta", "0.0", "--num_iterations", "1", "--output_dir", str(tmp_path)]
    gsm8k_recipe.check_args(*gsm8k_recipe.parse_args(argv))


def test_gsm8k_async_refuses_yaml_keys_of_the_sync_trainer(tmp_path):
    recipe = tmp_path / "sync_keys.yaml"
    recipe.write_text(ASYNC_RECIPE.read_text() + "reward_weights: [1.0, 0.5]\nbeta: 0.04\n")
    with pytest.raises(ValueError, match=r"in the --config YAML: `reward_weights`.*`beta`"):
        gsm8k_recipe.parse_args(["--config", str(recipe)])


def test_async_grpo_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        trl_sapo_main(["async-grpo", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    for text in ("trl-sapo async-grpo", "--config recipe.yaml", "--rollout_backend", "--fixed_lag", "--sapo_tau_pos"):
        assert text in out
    assert "--reward_weights" not in out and "--use_vllm" not in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [*REFUSED, (["--reward_model_name_or_path", "some/reward-model"], "reward models")],
    ids=[e[0].lstrip("-") for e, _ in REFUSED] + ["reward_model"],
)
def test_async_grpo_refuses_before_launch(extra, message, tmp_path, capsys, monkeypatch):
    launched = []
    monkeypatch.setattr("accelerate.commands.launch.launch_command", launched.append)
    argv = ["async-grpo", "--model_name_or_path", "m", "--dataset_name", "d", "--reward_funcs", "think_format_reward",
            "--output_dir", str(tmp_path), *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        trl_sapo_main(argv)
    assert exit_.value.code == 2 and not launched
    assert message in capsys.readouterr().err


def test_async_grpo_trains_two_steps(tiny_model_path, tmp_path, monkeypatch):
    """`trl-sapo async-grpo` (validation, then accelerate launch of `-m trl_sapo.cli.async_grpo`) on a local dataset."""
    from datasets import Dataset

    data = tmp_path / "data"
    Dataset.from_dict({"prompt": [f"Add {i} and {2 * i}." for i in range(16)]}).to_json(str(data / "train.jsonl"))
    monkeypatch.setenv("PYTHONPATH", f"{REPO_ROOT}:{REPO_ROOT / 'tests'}")
    options = async_run_options(tiny_model_path, tmp_path / "out", dataset_name=str(data))
    assert trl_sapo_main(["async-grpo", *flags(options)]) == 0
    check_trained(tmp_path / "out")


def test_async_grpo_parses_the_gpu_recipe_shape():
    """`trl-sapo async-grpo` takes AsyncSAPOConfig's keys, with `--dtype` as the config's (one option, not two)."""
    *parsed, config_remaining, cli_remaining = async_grpo.parse_args(
        [
            "--model_name_or_path",
            "m",
            "--dataset_name",
            "d",
            "--reward_funcs",
            "x.y",
            "--dtype",
            "bfloat16",
            "--rollout_backend",
            "vllm",
            "--max_staleness",
            "4",
            "--output_dir",
            "o",
        ]  # fmt: skip
    )
    assert parsed[1].dtype == "bfloat16" and parsed[1].max_staleness == 4 and not config_remaining + cli_remaining
