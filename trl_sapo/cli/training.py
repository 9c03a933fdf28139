"""The training path every entry point shares (`trl-sapo grpo`, `trl-sapo async-grpo`, the GSM8K recipe): lock,
resume, rewards, data, `SAPOTrainer` (or `AsyncSAPOTrainer` for an AsyncSAPOConfig), train, save, model card, Hub
push; and the rule that a user error ends with its message, not a traceback (`exit_on_user_error`).

An entry point supplies what differs (how rewards and datasets load, the model card's dataset and tags); everything
from `acquire_run_lock` to `trainer.end()` is here once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from transformers import TrainerCallback
from trl import ModelConfig, get_peft_config, get_quantization_config

from ..checkpoints import resolve_resume_from_checkpoint
from ..config import SAPOConfig
from ..launch import check_backend, check_model_revision, check_world_size, merge_adapter
from ..run_lock import RunLockError, acquire_run_lock
from ..trainer import SAPOTrainer
from .rewards import check_reward_columns

USAGE_EXIT_CODE = 2
"""Exit status of a run refused for a user error (bad option, data or resume choice), as argparse uses."""


class UsageError(ValueError):
    """An option, dataset or resume choice that cannot work, found before training; its message says what to do."""

    is_user_error = True


USER_ERROR_TYPES = (ValueError, OSError, RunLockError)
"""What a check of user input raises: bad values (`ValueError`: CheckpointError, DataError, SAPOConfigError, ...),
a file that is not there (`OSError`: a recipe, a dataset) and an output_dir in use by another run (`RunLockError`)."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Mark the `USER_ERROR_TYPES` exceptions of a block that only checks and loads user input as user errors (their
    type is kept, so callers can still catch `CheckpointError`, `DataError`, ...)."""
    try:
        yield
    except USER_ERROR_TYPES as err:
        err.is_user_error = True
        raise


def exit_on_user_error(prog: str, run: Callable[[], object]) -> object:
    """`run()`; an exception marked by `user_errors` (or a `UsageError`) prints `<prog>: error: <message>` to stderr
    and exits with `USAGE_EXIT_CODE`: the message is the whole story, a traceback would bury it. Other exceptions
    propagate with their traceback."""
    try:
        return run()
    except USER_ERROR_TYPES as err:
        if not getattr(err, "is_user_error", False):
            raise
        print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
        sys.exit(USAGE_EXIT_CODE)


def run_entry_point(prog: str, parse_and_train: Callable[[], SAPOTrainer]) -> None:
    """What every training entry point does around `parse_and_train()`: default logging, a user error ends with its
    message and status 2 (`exit_on_user_error`), a run stopped by SIGTERM after its checkpoint exits with
    `PREEMPTED_EXIT_CODE` at once (nothing after training runs inside the scheduler's grace period)."""
    from ..reliability import PREEMPTED_EXIT_CODE

    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    trainer = exit_on_user_error(prog, parse_and_train)
    if trainer.preempted:
        sys.exit(PREEMPTED_EXIT_CODE)


def is_async_config(training_args) -> bool:
    """True for an AsyncSAPOConfig (without importing the async package for synchronous runs)."""
    module = sys.modules.get("trl_sapo.async_sapo.config")
    return module is not None and isinstance(training_args, module.AsyncSAPOConfig)


@dataclass
class TrainingPlan:
    """What an entry point adds to the shared path.

    `load_rewards()`: the reward functions / reward-model paths, called after the resume choice and before data.
    `load_datasets()`: `(train_dataset, eval_dataset or None)`, called on rank 0 first (it may download and cache).
    """

    load_rewards: Callable[[], list]
    load_datasets: Callable[[], tuple]
    dataset_name: str | None  # the Hub id for the model card and `push_to_hub`; None for local data
    description: str  # "from <dataset>" in the start-up line
    tags: list[str] = field(default_factory=list)
    merge_adapter_on_save: bool = False


def run_training(
    plan: TrainingPlan,
    training_args: SAPOConfig,
    model_args: ModelConfig,
    callbacks: list[TrainerCallback] | None = None,
) -> SAPOTrainer:
    """Train, save (`output_dir`: model or LoRA adapter, tokenizer, trainer_state.json, model card), optionally
    merge the adapter and push to the Hub. Returns the trainer (its process group is already closed).

    Errors in what the user chose (resume option, rewards, data) are raised as user errors (`user_errors`) before
    any model is loaded. A run
    stopped by SIGTERM returns right after its checkpoint is saved, with `trainer.preempted` True and nothing else
    done; the caller decides how to exit."""
    try:
        check_world_size(training_args.world_size)
    except RuntimeError as err:  # the launch did not match the machine: the message says which config to use
        raise UsageError(str(err)) from err
    # The lock refuses a second run writing the same output_dir (trl_sapo/run_lock.py); resume: true / false / auto
    # (default: the latest checkpoint in output_dir, if any) / a path (trl_sapo/checkpoints.py). Both are resolved
    # before any loading, so an impossible choice fails at once; both are collectives: every rank calls them.
    with user_errors():
        check_model_revision(model_args.model_name_or_path, model_args.model_revision)
        run_lock = acquire_run_lock(training_args)
        resume_from = resolve_resume_from_checkpoint(training_args)
        reward_funcs = plan.load_rewards()

    model_init_kwargs = {
        "revision": model_args.model_revision,
        "trust_remote_code": training_args.trust_remote_code,
        "attn_implementation": model_args.attn_implementation,
        "dtype": model_args.dtype,
    }
    if is_async_config(training_args):  # AsyncGRPOTrainer sets its own attention; the dtype is its config's
        del model_init_kwargs["attn_implementation"], model_init_kwargs["dtype"]
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    # Rank 0 downloads / generates (and caches) first; the other ranks then read the cache.
    with training_args.main_process_first(desc="dataset loading"), user_errors():
        train_dataset, eval_dataset = plan.load_datasets()
        for split, dataset in (("train", train_dataset), ("eval", eval_dataset)):
            if dataset is not None and dataset.column_names is not None:  # None: a streamed dataset
                check_reward_columns(reward_funcs, dataset.column_names, split)

    if is_async_config(training_args):  # it takes no eval_dataset or quantization_config (check_async_args)
        from ..async_sapo import AsyncSAPOTrainer as trainer_class

        if eval_dataset is not None:
            raise UsageError("AsyncSAPOTrainer has no evaluation loop: set eval_strategy: no.")
        trainer_kwargs = {}
    else:
        trainer_class = SAPOTrainer
        trainer_kwargs = {"eval_dataset": eval_dataset, "quantization_config": get_quantization_config(model_args)}
    trainer = trainer_class(
        model=model_args.model_name_or_path,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=train_dataset,
        callbacks=callbacks,
        peft_config=get_peft_config(model_args),
        **trainer_kwargs,
    )
    try:
        check_backend(trainer.accelerator.distributed_type)
    except RuntimeError as err:
        raise UsageError(str(err)) from err
    objective = "SAPO" if training_args.use_sapo_loss else f"GRPO-clipped ({training_args.loss_type})"
    if is_async_config(training_args):
        objective += f" on asynchronous rollouts ({training_args.rollout_backend} worker)"
    size = f"{len(train_dataset)} examples" if hasattr(train_dataset, "__len__") else "a streamed dataset"
    trainer.accelerator.print(
        f"Training {model_args.model_name_or_path} with {objective} on {size} {plan.description} "
        f"({trainer.accelerator.num_processes} process(es))."
    )

    train_result = trainer.train(resume_from_checkpoint=resume_from)
    if trainer.preempted:
        if run_lock is not None:
            run_lock.release()
        return trainer  # the checkpoint is saved; the grace period is for exiting, not for the final save
    # GRPOTrainer.log merges the metrics not yet logged (steps since the last logging step) into this summary, with
    # None for metrics without data (e.g. sapo/*_pos when no token had A > 0); Trainer.log_metrics cannot print None.
    metrics = {key: value for key, value in train_result.metrics.items() if value is not None}
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()

    trainer.save_model(training_args.output_dir)  # gathers ZeRO-3 / FSDP shards; LoRA: the adapter only
    if trainer.accelerator.is_main_process:
        trainer.create_model_card(
            model_name=os.path.basename(os.path.normpath(training_args.output_dir)),
            dataset_name=plan.dataset_name,
            tags=plan.tags or None,
        )
        if not model_args.use_peft:
            # Training turns the KV cache off (gradient checkpointing); the saved model should generate fast.
            trainer.model.config.use_cache = True
            trainer.model.config.save_pretrained(training_args.output_dir)
        if plan.merge_adapter_on_save:
            merged_dir = merge_adapter(training_args.output_dir, model_args, training_args.trust_remote_code)
            trainer.accelerator.print(f"Merged model saved to {merged_dir}.")
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.print(f"Model saved to {training_args.output_dir}.")

    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=plan.dataset_name, tags=plan.tags or None)
        trainer.accelerator.print(f"Model pushed to https://huggingface.co/{trainer.hub_model_id}.")
    if run_lock is not None:
        run_lock.release()
    trainer.end()
    return trainer
