"""A controlled RL task small enough for learning tests and many-seed studies on a CPU: "repeat the first digit".

The prompt is three digits (``"4 0 2"``); the policy should answer with the first one, four times (``"4 4 4 4"``).
The reward is the fraction of the first four completion tokens that equal the first prompt digit, so a random
policy over the 12-token vocabulary scores ~0.08 and has reward variance inside every group from step one. A
2-layer, 64-wide Llama learns it from random initialisation in a few hundred GRPO/SAPO steps (~25 ms each on one CPU
core), through the real `SAPOTrainer` with its real generation, advantages and loss. Prompts are split into disjoint
train and held-out sets; evaluation is greedy decoding on the held-out prompts.

    tokenizer = make_tokenizer(); model = make_model(seed=0)
    train, heldout = make_prompts()
    trainer = SAPOTrainer(model, copy_reward, args=SAPOConfig(..., max_completion_length=ANSWER_LENGTH),
                          train_dataset=train, processing_class=tokenizer)
    evaluate_greedy(trainer.model, tokenizer, heldout)   # {"reward": ..., "exact_match": ...}
"""

from __future__ import annotations

import itertools
import random

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

DIGITS = [str(d) for d in range(10)]
VOCAB = {"<pad>": 0, "<eos>": 1, **{d: i + 2 for i, d in enumerate(DIGITS)}}
ANSWER_LENGTH = 4  # completion tokens scored (and generated: use it as max_completion_length)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the ten digits plus pad/eos; text is whitespace-separated digits."""
    backend = Tokenizer(models.WordLevel(vocab=VOCAB, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def make_model(seed: int = 0, hidden_size: int = 64, num_layers: int = 2) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama (~70k parameters at the defaults), the same for the same seed."""
    config = LlamaConfig(
        vocab_size=len(VOCAB),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=32,
        pad_token_id=VOCAB["<pad>"],
        bos_token_id=VOCAB["<eos>"],
        eos_token_id=VOCAB["<eos>"],
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def make_prompts(num_heldout: int = 200, seed: int = 0) -> tuple[Dataset, Dataset]:
    """All 1000 three-digit prompts, shuffled with `seed` and split into (train, held-out) `prompt` datasets."""
    prompts = [" ".join(p) for p in itertools.product(DIGITS, repeat=3)]
    random.Random(seed).shuffle(prompts)
    return Dataset.from_dict({"prompt": prompts[num_heldout:]}), Dataset.from_dict({"prompt": prompts[:num_heldout]})


def target(prompt: str) -> str:
    """The ideal completion for a prompt: its first digit, ANSWER_LENGTH times."""
    return " ".join([prompt.split()[0]] * ANSWER_LENGTH)


def copy_reward(completions: list[str], prompts: list[str], **kwargs) -> list[float]:
    """Fraction of the first ANSWER_LENGTH completion tokens equal to the prompt's first digit (TRL reward API)."""
    rewards = []
    for prompt, completion in zip(prompts, completions):
        first = prompt.split()[0]
        rewards.append(sum(token == first for token in completion.split()[:ANSWER_LENGTH]) / ANSWER_LENGTH)
    return rewards


@torch.no_grad()
def evaluate_greedy(model, tokenizer, dataset: Dataset) -> dict[str, float]:
    """Greedy completions for every held-out prompt: mean reward and exact-match rate (reward == 1)."""
    was_training = model.training
    model.eval()
    prompts = list(dataset["prompt"])
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    out = model.generate(
        **batch,
        max_new_tokens=ANSWER_LENGTH,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.train(was_training)
    completions = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    rewards = copy_reward(completions, prompts)
    return {"reward": sum(rewards) / len(rewards), "exact_match": sum(r == 1.0 for r in rewards) / len(rewards)}
