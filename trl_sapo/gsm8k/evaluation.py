"""GSM8K evaluation: batched chat generation (transformers or vLLM) scored with ``trl_sapo.gsm8k.rewards``.

Greedy decoding by default (accuracy = pass@1). With ``num_samples=k > 1`` and ``temperature > 0``, k completions
are sampled per problem: ``pass@1`` is the mean accuracy over all samples and ``pass@k`` the fraction of problems
solved by at least one sample.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from tqdm.auto import tqdm

from ..launch import check_model_revision
from .data import FEW_SHOT_EXAMPLES, SYSTEM_PROMPT, build_prompt, validate
from .rewards import (
    answer_span,
    answers_match,
    extract_final_answer,
    format_reward,
    reference_answer,
    start_math_verify_worker,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":  # bf16 where it is fast (CUDA with bf16 support), float32 elsewhere (CPU bf16 is slow)
        cuda = device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def adapter_base_model(path: str | os.PathLike) -> str | None:
    """Base model recorded in a peft adapter folder, or None when ``path`` is not an adapter folder."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text())["base_model_name_or_path"]


def check_base_revision(
    model_name_or_path: str | os.PathLike, adapter_path: str | os.PathLike | None, revision: str | None
) -> None:
    """Refuse ``revision`` when the base model to load at it is a local folder (transformers and vLLM ignore a
    revision there); the base is ``model_name_or_path``, or the one an adapter folder given as the model records."""
    base = model_name_or_path if adapter_path is not None else adapter_base_model(model_name_or_path)
    check_model_revision(str(base or model_name_or_path), revision)


def load_model_for_eval(
    model_name_or_path: str | os.PathLike,
    adapter_path: str | os.PathLike | None = None,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    merge_adapter: bool = True,
    revision: str | None = None,
):
    """Load ``(model, tokenizer)`` for generation: a base model, a full checkpoint folder, or base + LoRA adapter.

    ``model_name_or_path`` may itself be an adapter folder (e.g. a LoRA run's ``output_dir``); its base model is
    read from ``adapter_config.json``. The adapter is merged into the weights for faster generation unless
    ``merge_adapter=False``. The tokenizer comes from the adapter folder when it has one (training scripts save
    it there), else from the base model. ``device`` defaults to CUDA when available. ``revision``: the base model's
    Hub revision (branch, tag or commit); an adapter's ``adapter_config.json`` does not record it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_base_revision(model_name_or_path, adapter_path, revision)
    if adapter_path is None and adapter_base_model(model_name_or_path) is not None:
        model_name_or_path, adapter_path = adapter_base_model(model_name_or_path), model_name_or_path
    if adapter_path is not None and adapter_base_model(adapter_path) is None:
        raise FileNotFoundError(f"adapter_path {adapter_path} has no adapter_config.json (not a peft adapter folder)")
    model = AutoModelForCausalLM.from_pretrained(
        model_name_or_path, dtype=resolve_dtype(dtype, device), revision=revision
    )
    tokenizer_source, tokenizer_revision = model_name_or_path, revision
    if adapter_path is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter_path)
        if merge_adapter:
            model = model.merge_and_unload()
        if (Path(adapter_path) / "tokenizer_config.json").is_file():
            tokenizer_source, tokenizer_revision = adapter_path, None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, revision=tokenizer_revision)
    prepare_tokenizer(tokenizer)
    return model.to(device).eval(), tokenizer


def prepare_tokenizer(tokenizer) -> None:
    """Left padding (decoder-only batched generation) and a pad token (EOS when the tokenizer has none)."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def _render_prompts(tokenizer, dataset: Dataset, system_prompt: str | None, num_few_shot: int) -> list[str]:
    if tokenizer.chat_template is None:
        raise ValueError("the tokenizer has no chat template; evaluate() prompts through apply_chat_template")
    if not 0 <= num_few_shot <= len(FEW_SHOT_EXAMPLES):
        raise ValueError(f"num_few_shot must be in [0, {len(FEW_SHOT_EXAMPLES)}], got {num_few_shot}")
    few_shot = FEW_SHOT_EXAMPLES[:num_few_shot]
    return [
        tokenizer.apply_chat_template(
            build_prompt(q, system_prompt=system_prompt, few_shot=few_shot), tokenize=False, add_generation_prompt=True
        )
        for q in dataset["question"]
    ]


def _eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


@contextlib.contextmanager
def _neutral_model_defaults(model):
    """Blank ``model.generation_config`` for the duration (restored after).

    ``generate()`` fills every field the passed config leaves unset (None) from the model's generation config, e.g.
    Qwen2.5-Instruct's ``repetition_penalty`` and ``top_k``, or a ``min_new_tokens``/``suppress_tokens``/
    ``bad_words_ids`` that no explicit value can switch off. With a blank one only transformers' global defaults
    fill the gaps, so the decoding is the one ``_generate_transformers`` asks for on every checkpoint.
    """
    from transformers import GenerationConfig

    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the transformers model
    saved = target.generation_config
    target.generation_config = GenerationConfig()
    try:
        yield
    finally:
        target.generation_config = saved


@torch.no_grad()
def _generate_transformers(
    model, tokenizer, prompts, *, batch_size, max_new_tokens, num_samples, temperature, top_p, progress
) -> tuple[list[list[str]], list[list[int]]]:
    """``num_samples`` completions and their token counts (up to and including EOS) per prompt."""
    from transformers import GenerationConfig

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    eos_ids = _eos_ids(model, tokenizer)
    # Plain greedy, or plain temperature + top_p sampling (vLLM's SamplingParams, GRPOConfig's defaults): no top-k,
    # min-p or penalties, whatever the checkpoint's generation_config.json says (see _neutral_model_defaults).
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=temperature > 0,
        temperature=temperature if temperature > 0 else None,
        top_p=top_p if temperature > 0 else None,
        top_k=0 if temperature > 0 else None,  # 0 = off (transformers' global default is 50)
        repetition_penalty=1.0,
        num_beams=1,
        num_return_sequences=num_samples,
        eos_token_id=eos_ids,
        pad_token_id=tokenizer.pad_token_id,
    )
    # Batch prompts of similar length together (less padding), then restore the dataset order.
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    texts: list[list[str]] = [[] for _ in prompts]
    counts: list[list[int]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    eos = torch.tensor(eos_ids, device=device)
    for start in tqdm(range(0, len(order), batch_size), desc="generating", unit="batch", disable=not progress):
        batch = order[start : start + batch_size]
        # Left padding (decoder-only generation) per call: the caller's tokenizer settings are left untouched.
        enc = tokenizer(
            [prompts[i] for i in batch],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(device)
        with _neutral_model_defaults(model):
            out = model.generate(**enc, generation_config=config)[:, enc["input_ids"].shape[1] :]
        is_eos = torch.isin(out, eos)
        # Tokens up to and including the first EOS (all of them when generation hit max_new_tokens).
        n_tokens = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, torch.full_like(out[:, 0], out.shape[1]))
        decoded = tokenizer.batch_decode(out, skip_special_tokens=True)
        for j, (text, n) in enumerate(zip(decoded, n_tokens.tolist())):
            i = batch[j // num_samples]  # generate() returns the samples of one prompt contiguously
            texts[i].append(text)
            counts[i].append(n)
    return texts, counts


def require_vllm() -> None:
    """Raise a clear ImportError when vLLM is not installed."""
    if importlib.util.find_spec("vllm") is None:
        raise ImportError("use_vllm=True needs vLLM: pip install 'trl-sapo[vllm]' (CUDA machines only)")


def _generate_vllm(model, tokenizer, prompts, *, max_new_tokens, num_samples, temperature, top_p, seed):
    """Same as :func:`_generate_transformers` with vLLM; ``model`` is a ``vllm.LLM`` or a model folder / Hub id."""
    require_vllm()
    from vllm import LLM, SamplingParams

    if not isinstance(model, (LLM, str, os.PathLike)):
        raise TypeError(f"use_vllm=True needs a vllm.LLM or a model path, got {type(model).__name__}")
    llm = model if isinstance(model, LLM) else LLM(model=str(model), seed=seed)
    params = SamplingParams(n=num_samples, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed)
    # Token ids, not strings: the chat template already holds any BOS, vLLM's own tokenization would add another.
    token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in token_ids], params)
    return [[o.text for o in out.outputs] for out in outputs], [
        [len(o.token_ids) for o in out.outputs] for out in outputs
    ]


def evaluate(
    model,
    tokenizer,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    max_new_tokens: int = 512,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    system_prompt: str | None = SYSTEM_PROMPT,
    num_few_shot: int = 0,
    seed: int = 0,
    progress: bool = True,
    use_vllm: bool = False,
) -> dict[str, Any]:
    """Generate answers for a GSM8K-style ``dataset`` (question/answer) and score them.

    Returns ``{"accuracy", "pass@1", "pass@k" (k > 1 only), "format_rate", "num_examples", "num_samples",
    "mean_completion_tokens", "predictions"}``; ``accuracy == pass@1`` (mean over all samples), ``format_rate`` is
    the mean ``format_reward`` and each prediction is ``{question, reference, completions, extracted, correct}``
    (lists over samples). With ``use_vllm=True``, ``model`` is a ``vllm.LLM`` or a model path. Scoring uses the
    rewards' extraction and comparison, total and bounded on any completion text (``trl_sapo.gsm8k.rewards``).
    """
    if batch_size < 1 or max_new_tokens < 1 or num_samples < 1:
        raise ValueError(
            f"batch_size, max_new_tokens, num_samples must be >= 1, got {batch_size}, {max_new_tokens}, {num_samples}"
        )
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if num_samples > 1 and temperature == 0:
        raise ValueError(
            "num_samples > 1 with greedy decoding (temperature=0) gives identical samples; set temperature"
        )
    dataset = validate(dataset, source="evaluation dataset")
    start_math_verify_worker()  # ready by the time generation is done (scoring is total and bounded per completion)
    prompts = _render_prompts(tokenizer, dataset, system_prompt, num_few_shot)
    torch.manual_seed(seed)
    sampling = dict(max_new_tokens=max_new_tokens, num_samples=num_samples, temperature=temperature, top_p=top_p)
    if use_vllm:
        texts, counts = _generate_vllm(model, tokenizer, prompts, seed=seed, **sampling)
    else:
        was_training = model.training
        model.eval()  # no dropout while generating; the caller's mode is restored below
        try:
            texts, counts = _generate_transformers(
                model, tokenizer, prompts, batch_size=batch_size, progress=progress, **sampling
            )
        finally:
            model.train(was_training)
    predictions = []
    for question, answer, completions in zip(dataset["question"], dataset["answer"], texts):
        reference = reference_answer(answer)
        predictions.append(
            {
                "question": question,
                "reference": reference,
                "completions": completions,
                "extracted": [extract_final_answer(c) for c in completions],
                "correct": [answers_match(answer_span(c), reference) for c in completions],
            }
        )
    all_correct = [c for p in predictions for c in p["correct"]]
    all_texts = [c for p in predictions for c in p["completions"]]
    all_counts = [n for row in counts for n in row]
    result: dict[str, Any] = {"accuracy": sum(all_correct) / len(all_correct)}
    result["pass@1"] = result["accuracy"]
    if num_samples > 1:
        result[f"pass@{num_samples}"] = sum(any(p["correct"]) for p in predictions) / len(predictions)
    result.update(
        format_rate=sum(format_reward(all_texts)) / len(all_texts),
        num_examples=len(predictions),
        num_samples=num_samples,
        mean_completion_tokens=sum(all_counts) / len(all_counts),
        predictions=predictions,
    )
    return result


def merged_model_dir(
    model_name_or_path: str,
    adapter_path: str,
    output_dir: str | None = None,
    dtype: str = "bfloat16",
    revision: str | None = None,
) -> str:
    """Merge a LoRA adapter into its base model (at ``revision``) and save the result in ``dtype`` (vLLM loads plain
    folders); return the folder (a new temporary one, which the caller removes, when ``output_dir`` is None)."""
    model, tokenizer = load_model_for_eval(
        model_name_or_path, adapter_path, dtype=dtype, device="cpu", revision=revision
    )
    output_dir = output_dir or tempfile.mkdtemp(prefix="trl-sapo-merged-")
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
