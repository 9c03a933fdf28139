"""Every invalid setting is rejected at construction with an error that names the offending field or row.

One table for SAPOConfig (Python and the TRL CLI/YAML path) and one for the data and reward helpers.
"""

from __future__ import annotations

import json
import warnings

import pytest
import yaml
from datasets import Dataset
from trl import TrlParser

from trl_sapo import SAPOConfig, SAPOConfigError

BASE = dict(output_dir="unused", use_cpu=True, bf16=False, report_to="none")

# (case id, overrides, exception type, text the message must contain)
INVALID_CONFIGS = [
    ("tau_pos_zero", dict(sapo_tau_pos=0.0), SAPOConfigError, "sapo_tau_pos"),
    ("tau_pos_negative", dict(sapo_tau_pos=-1.0), SAPOConfigError, "sapo_tau_pos"),
    ("tau_neg_zero", dict(sapo_tau_neg=0), SAPOConfigError, "sapo_tau_neg"),
    ("tau_neg_nan", dict(sapo_tau_neg=float("nan")), SAPOConfigError, "sapo_tau_neg"),
    ("tau_pos_inf", dict(sapo_tau_pos=float("inf")), SAPOConfigError, "sapo_tau_pos"),
    ("tau_neg_minus_inf", dict(sapo_tau_neg=float("-inf")), SAPOConfigError, "sapo_tau_neg"),
    ("tau_pos_string", dict(sapo_tau_pos="1.0"), SAPOConfigError, "sapo_tau_pos"),
    ("tau_neg_none", dict(sapo_tau_neg=None), SAPOConfigError, "sapo_tau_neg"),
    ("tau_pos_bool", dict(sapo_tau_pos=True), SAPOConfigError, "sapo_tau_pos"),
    ("decoupled_loss", dict(use_decoupled_loss=True), SAPOConfigError, "use_decoupled_loss"),
    ("loss_type_cispo", dict(loss_type="cispo"), SAPOConfigError, "loss_type='cispo'"),
    ("loss_type_vespo", dict(loss_type="vespo"), SAPOConfigError, "loss_type='vespo'"),
    ("loss_type_unknown", dict(loss_type="ppo2"), SAPOConfigError, "loss_type='ppo2'"),
    ("delta_set", dict(delta=1.5), SAPOConfigError, "delta"),
    ("trl_temperature_pos", dict(sapo_temperature_pos=2.0), SAPOConfigError, "sapo_temperature_pos"),
    ("trl_temperature_neg", dict(sapo_temperature_neg=0.5), SAPOConfigError, "sapo_temperature_neg"),
    ("clipped_arm_with_sapo_type", dict(use_sapo_loss=False, loss_type="sapo"), SAPOConfigError, "use_sapo_loss"),
    ("nonfinite_policy_unknown", dict(nonfinite_policy="ignore"), SAPOConfigError, "nonfinite_policy"),
    ("save_on_sigterm_not_bool", dict(save_on_sigterm="sometimes"), SAPOConfigError, "save_on_sigterm"),
]

# (case id, overrides, text the warning must contain)
WARNING_CONFIGS = [
    ("tau_neg_below_tau_pos", dict(sapo_tau_pos=1.5, sapo_tau_neg=1.0), "sapo_tau_neg"),
    ("epsilon_changed", dict(epsilon=0.3), "epsilon"),
    ("epsilon_high_changed", dict(epsilon_high=0.28), "epsilon_high"),
    ("jit_checkpoint_replaced", dict(enable_jit_checkpoint=True), "enable_jit_checkpoint"),
]


@pytest.mark.parametrize("overrides, exc, text", [c[1:] for c in INVALID_CONFIGS], ids=[c[0] for c in INVALID_CONFIGS])
def test_invalid_config_rejected(overrides, exc, text):
    with pytest.raises(exc) as info:
        SAPOConfig(**BASE, **overrides)
    assert text in str(info.value)


@pytest.mark.parametrize("overrides, text", [c[1:] for c in WARNING_CONFIGS], ids=[c[0] for c in WARNING_CONFIGS])
def test_discouraged_config_warns(overrides, text):
    with pytest.warns(UserWarning, match=text):
        config = SAPOConfig(**BASE, **overrides)
    if "enable_jit_checkpoint" in overrides:
        assert config.enable_jit_checkpoint is False and config.save_on_sigterm is True


def test_valid_configs_are_quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        SAPOConfig(**BASE)
        SAPOConfig(**BASE, use_sapo_loss=False, loss_type="dapo", epsilon=0.3, delta=1.5)
        SAPOConfig(**BASE, sapo_tau_pos=2, sapo_tau_neg=2.5, loss_type="sapo", nonfinite_policy="raise")
        SAPOConfig(**BASE, save_on_sigterm=False, enable_jit_checkpoint=True)


# The CLI path: a YAML --config read by TrlParser, as in `accelerate launch script.py --config recipe.yaml`.
# Type errors never reach SAPOConfig there: argparse converts the value first (see the test below).
NOT_CLI = ("tau_pos_string", "tau_neg_none", "tau_pos_bool", "save_on_sigterm_not_bool")
CLI_CASES = [c for c in INVALID_CONFIGS if c[0] not in NOT_CLI]


def _yaml_value(value):
    return {float("inf"): ".inf", float("-inf"): "-.inf"}.get(value, value) if isinstance(value, float) else value


@pytest.mark.parametrize("overrides, exc, text", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_invalid_config_rejected_from_yaml(tmp_path, overrides, exc, text):
    recipe = tmp_path / "recipe.yaml"
    body = {**BASE, **overrides}
    # nan has no JSON spelling and yaml.safe_dump writes .nan/.inf correctly.
    recipe.write_text(yaml.safe_dump(body))
    with pytest.raises(exc) as info:
        TrlParser((SAPOConfig,)).parse_args_and_config(args=["--config", str(recipe)])
    assert text in str(info.value)


@pytest.mark.parametrize("key, value", [("sapo_tau_pos", "one"), ("save_on_sigterm", "sometimes")])
def test_cli_type_errors_name_the_field(tmp_path, capsys, key, value):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**BASE, key: value}))
    with pytest.raises(SystemExit) as info:  # argparse: usage + "argument --KEY: ..." on stderr, exit status 2
        TrlParser((SAPOConfig,)).parse_args_and_config(args=["--config", str(recipe)])
    assert info.value.code == 2
    assert f"--{key}" in capsys.readouterr().err


def test_invalid_config_rejected_from_command_line():
    with pytest.raises(SAPOConfigError, match="sapo_tau_neg"):
        TrlParser((SAPOConfig,)).parse_args_and_config(
            args=["--output_dir", "unused", "--use_cpu", "true", "--bf16", "false", "--sapo_tau_neg", "-1"]
        )


# ---- Data and rewards -------------------------------------------------------------------------------------------

data = pytest.importorskip("trl_sapo.gsm8k.data")
rewards = pytest.importorskip("trl_sapo.gsm8k.rewards")

GOOD = {"question": ["What is 2 + 3?"], "answer": ["2 + 3 = 5\n#### 5"]}


def _jsonl(tmp_path, rows):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# (case id, callable(tmp_path) that must raise, exception type, text the message must contain)
INVALID_DATA = [
    (
        "missing_answer_column",
        lambda tmp: data.load_gsm8k(Dataset.from_dict({"question": ["q"]})),
        data.DataError,
        "answer",
    ),
    (
        "missing_question_column_file",
        lambda tmp: data.load_gsm8k(_jsonl(tmp, [{"problem": "q", "answer": "#### 1"}])),
        data.DataError,
        "question",
    ),
    (
        "empty_split",
        lambda tmp: data.load_gsm8k(Dataset.from_dict({"question": [], "answer": []})),
        data.DataError,
        "empty",
    ),
    ("missing_split_file", lambda tmp: data.load_gsm8k(_jsonl(tmp, []).parent, split="test"), data.DataError, "test"),
    (
        "unparsable_reference",
        lambda tmp: data.load_gsm8k(
            Dataset.from_dict({"question": ["q1", "q2"], "answer": ["#### 4", "the answer is four"]})
        ),
        data.DataError,
        "row 1",
    ),
    (
        "non_numeric_reference",
        lambda tmp: data.load_gsm8k(_jsonl(tmp, [{"question": "q", "answer": "#### four"}])),
        data.DataError,
        "row 0",
    ),
    (
        "empty_question",
        lambda tmp: data.load_gsm8k(Dataset.from_dict({"question": ["  "], "answer": ["#### 1"]})),
        data.DataError,
        "row 0",
    ),
    ("bad_num_examples", lambda tmp: data.load_gsm8k("synthetic", num_examples=0), data.DataError, "num_examples"),
    (
        "non_string_completion",
        lambda tmp: rewards.accuracy_reward([["not", "messages"]], answer=["#### 1"]),
        TypeError,
        "completion 0",
    ),
    ("non_string_completion_format", lambda tmp: rewards.format_reward([None, 3]), TypeError, "completion 0"),
    (
        "unparsable_reference_reward",
        lambda tmp: rewards.accuracy_reward(["#### 1"], answer=["no number"]),
        ValueError,
        "answer 0",
    ),
    ("unknown_reward_name", lambda tmp: rewards.get_reward_funcs(["accuracy", "bleu"]), ValueError, "bleu"),
]


@pytest.mark.parametrize("make, exc, text", [c[1:] for c in INVALID_DATA], ids=[c[0] for c in INVALID_DATA])
def test_invalid_data_rejected(tmp_path, make, exc, text):
    with pytest.raises(exc) as info:
        make(tmp_path)
    assert text in str(info.value)


def test_skip_invalid_drops_bad_rows():
    ds = Dataset.from_dict({"question": ["q1", "q2"], "answer": ["#### 4", "no number"]})
    assert data.load_gsm8k(ds, skip_invalid=True)["question"] == ["q1"]
