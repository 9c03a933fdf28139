"""Reward functions by name or dotted import path, checked before any model is loaded.

`trl-sapo grpo` knows TRL 1.16's `trl grpo` names (the registry of trl/scripts/grpo.py) plus this project's GSM8K
rewards (`gsm8k_accuracy`, `gsm8k_format`); the GSM8K recipe resolves its own short names (`accuracy`, `format`,
`overlong`) with the same `resolve_reward_funcs`. A dotted path `pkg.module.func` imports `func` (the working
directory is importable, as with `python -m`). Each function's signature is checked against what
`GRPOTrainer._calculate_rewards` passes: `prompts`, `completions`, `completion_ids`, `trainer_state`, `log_extra`,
`log_metric` and every dataset column, all as keywords.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable, Iterable, Mapping

RewardFactory = Callable[[], Callable[..., list[float]]]

# Keywords GRPOTrainer._calculate_rewards (TRL 1.16) passes to every reward function besides the dataset columns.
TRAINER_REWARD_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")


def trl_reward_registry() -> dict[str, RewardFactory]:
    """TRL 1.16's `trl grpo` reward names, as in trl/scripts/grpo.py `main` (`reward_funcs_registry`, the same
    functions and the same fixed overlong values); factories so nothing is built until it is used."""
    from trl import rewards

    return {
        "accuracy_reward": lambda: rewards.accuracy_reward,
        "reasoning_accuracy_reward": lambda: rewards.reasoning_accuracy_reward,
        "think_format_reward": lambda: rewards.think_format_reward,
        "get_soft_overlong_punishment": lambda: rewards.get_soft_overlong_punishment(
            max_completion_len=1280, soft_punish_cache=256
        ),
    }


def gsm8k_reward_registry() -> dict[str, RewardFactory]:
    """This project's GSM8K rewards under names that say so (they need the dataset's `answer` column for accuracy)."""
    from ..gsm8k.rewards import get_reward_funcs

    return {
        "gsm8k_accuracy": lambda: get_reward_funcs(["accuracy"])[0],
        "gsm8k_format": lambda: get_reward_funcs(["format"])[0],
    }


def grpo_reward_registry() -> dict[str, RewardFactory]:
    """Every name `trl-sapo grpo --reward_funcs` accepts (besides dotted paths)."""
    return {**trl_reward_registry(), **gsm8k_reward_registry()}


def import_reward_func(path: str) -> Callable:
    """`pkg.module.func` -> the object, importable from the working directory; errors name the module."""
    module_name, attr = path.rsplit(".", 1)
    try:
        module = _import_from_working_directory(module_name)
    except ImportError as err:
        raise ValueError(
            f"reward function {path!r}: module {module_name!r} does not import ({type(err).__name__}: {err}). A "
            "dotted path must name an importable module (on PYTHONPATH or in the working directory) and a function."
        ) from err
    if not hasattr(module, attr):
        raise ValueError(f"reward function {path!r}: module {module_name!r} ({module.__file__}) has no {attr!r}.")
    return getattr(module, attr)


def _import_from_working_directory(module_name: str):
    """Import `module_name`, its top-level module or package looked up in the working directory first, as
    `python -m` does, without editing `sys.path` (which would leak the working directory into every later import)."""
    top = module_name.split(".", 1)[0]
    if top not in sys.modules:
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()])
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            sys.modules[top] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[top]
                raise
    return importlib.import_module(module_name)


def check_reward_signature(func: Callable, name: str) -> None:
    """Raise `ValueError` unless `func(**{every TRAINER_REWARD_KWARGS}, **columns)` can bind: TRL passes everything
    as keywords, so the function needs `**kwargs` (or to name every keyword) and no required positional-only
    parameter."""
    if not callable(func):
        raise ValueError(f"reward function {name!r} is a {type(func).__name__}, not a callable.")
    try:
        signature = inspect.signature(func)
    except (TypeError, ValueError):
        return  # builtins without a signature: nothing to check
    params = signature.parameters.values()
    positional_only = [p.name for p in params if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    has_var_keyword = any(p.kind is p.VAR_KEYWORD for p in params)
    missing = [] if has_var_keyword else [k for k in TRAINER_REWARD_KWARGS if k not in signature.parameters]
    if positional_only or missing:
        problem = f"positional-only {positional_only}" if positional_only else f"no parameter for {missing}"
        raise ValueError(
            f"reward function {name!r} cannot take TRL's arguments: its signature {signature} has {problem}. TRL "
            f"calls reward functions with keywords only ({', '.join(TRAINER_REWARD_KWARGS)} and one per dataset "
            "column); define it as `def reward(completions, **kwargs) -> list[float]`."
        )


def required_columns(func: Callable) -> set[str]:
    """Keyword parameters without a default that TRL fills from dataset columns (e.g. `answer`)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return set()
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in params if p.kind in keyword_kinds and p.default is p.empty} - set(TRAINER_REWARD_KWARGS)


def check_reward_columns(reward_funcs: Iterable, column_names: Iterable[str], split: str) -> None:
    """Raise `ValueError` when a reward function needs a column the dataset split lacks (e.g. GSM8K accuracy's
    `answer` on a dataset without one), before the first generation instead of after it."""
    columns = set(column_names)
    for func in reward_funcs:
        if isinstance(func, str):
            continue  # a reward model
        missing = required_columns(func) - columns
        if missing:
            name = getattr(func, "__name__", type(func).__name__)
            raise ValueError(
                f"reward function {name!r} needs the dataset column(s) {sorted(missing)}, which the {split!r} split "
                f"does not have (its columns: {sorted(columns)})."
            )


def resolve_reward_funcs(names: Iterable[str], registry: Mapping[str, RewardFactory]) -> list[Callable]:
    """Registry names and dotted import paths, in order, each checked with `check_reward_signature`. An unknown
    name without a dot lists the valid names."""
    funcs = []
    for name in names:
        if name in registry:
            func = registry[name]()
        elif "." in name:
            func = import_reward_func(name)
        else:
            raise ValueError(
                f"unknown reward function {name!r}: expected one of {sorted(registry)} or a dotted import path "
                "(e.g. 'my_lib.rewards.custom_reward')."
            )
        check_reward_signature(func, name)
        funcs.append(func)
    return funcs
