"""GSM8K evaluation (trl_sapo.gsm8k.evaluation) and its CLI (scripts/gsm8k_eval.py)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from peft import PeftModel

from trl_sapo.gsm8k import evaluation
from trl_sapo.gsm8k.data import generate_problems, load_gsm8k
from trl_sapo.gsm8k.evaluation import evaluate, load_model_for_eval


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Generation is many tiny matmuls: on a shared 2-core box, 2 spinning OpenMP threads were 15x slower than 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eval_script():
    from scripts import gsm8k_eval

    return gsm8k_eval


@pytest.fixture(scope="module")
def tiny(tiny_model_path):
    return load_model_for_eval(tiny_model_path, device="cpu")


@pytest.fixture(scope="module")
def lora_adapter(tiny_model_path, tmp_path_factory):
    """A randomly initialised LoRA adapter (non-zero B, so it changes the outputs) on the tiny model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    path = tmp_path_factory.mktemp("lora")
    get_peft_model(base, config).save_pretrained(path)
    return path


def test_cli_writes_summary_and_predictions(eval_script, tiny_model_path, tmp_path, capsys):
    out = tmp_path / "eval"
    summary = eval_script.main(
        ["--model_name_or_path", str(tiny_model_path), "--dataset", "synthetic", "--limit", "5", "--batch_size", "2",
         "--max_new_tokens", "6", "--output_dir", str(out), "--progress", "false", "--device", "cpu"]
    )  # fmt: skip
    assert "GSM8K synthetic:test n=5 accuracy" in capsys.readouterr().out
    on_disk = json.loads((out / "eval_summary.json").read_text())
    assert on_disk == summary and "predictions" not in on_disk
    assert on_disk["num_examples"] == 5 and on_disk["args"]["limit"] == 5 and on_disk["args"]["split"] == "test"
    assert 0 < on_disk["mean_completion_tokens"] <= 6
    rows = [json.loads(line) for line in (out / "eval_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 5
    # Same problems, same order as the loader gives them (batches are length-sorted internally).
    assert [r["question"] for r in rows] == load_gsm8k("synthetic", "test", num_examples=5)["question"]
    for r in rows:
        assert set(r) == {"question", "reference", "completions", "extracted", "correct"}
        assert len(r["completions"]) == len(r["extracted"]) == len(r["correct"]) == 1
        assert r["reference"].isdigit()


def test_cli_yaml_config_and_local_file(eval_script, tiny_model_path, gsm8k_dir, tmp_path):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"model_name_or_path: {tiny_model_path}\ndataset: {gsm8k_dir}\nlimit: 3\nmax_new_tokens: 4\n"
        "num_samples: 2\ntemperature: 1.0\nprogress: false\ndevice: cpu\n"
    )
    summary = eval_script.main(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    assert summary["num_examples"] == 3 and summary["num_samples"] == 2 and "pass@2" in summary
    assert summary["args"]["dataset"] == str(gsm8k_dir) and summary["args"]["temperature"] == 1.0
    rows = (tmp_path / "out" / "eval_predictions.jsonl").read_text().splitlines()
    assert len(rows) == 3 and all(len(json.loads(r)["completions"]) == 2 for r in rows)


def test_batched_greedy_matches_unbatched(tiny):
    # Left padding must not change greedy outputs: batch of 4 prompts of different lengths vs one at a time.
    model, tokenizer = tiny
    dataset = generate_problems(4, seed=1)
    batched = evaluate(model, tokenizer, dataset, batch_size=4, max_new_tokens=8, progress=False)
    single = evaluate(model, tokenizer, dataset, batch_size=1, max_new_tokens=8, progress=False)
    assert [p["completions"] for p in batched["predictions"]] == [p["completions"] for p in single["predictions"]]
    assert batched["mean_completion_tokens"] == single["mean_completion_tokens"]


def test_caller_tokenizer_and_model_mode_untouched(tiny_model_path, tiny):
    # A training loop's tokenizer (right padding) and model (train mode) are used as-is and left as they were.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path).train()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path, padding_side="right")
    dataset = generate_problems(4, seed=1)
    result = evaluate(model, tokenizer, dataset, batch_size=4, max_new_tokens=8, progress=False)
    assert model.training and tokenizer.padding_side == "right"
    reference = evaluate(*tiny, dataset, batch_size=1, max_new_tokens=8, progress=False)
    assert [p["completions"] for p in result["predictions"]] == [p["completions"] for p in reference["predictions"]]


def test_scoring_and_pass_at_k(tiny, monkeypatch):
    """Scoring on controlled completions: accuracy = pass@1 over all samples, pass@k = any sample right."""
    model, tokenizer = tiny
    dataset = generate_problems(3, seed=0)
    answers = dataset["answer"]
    ref = [a.rsplit("#### ", 1)[1] for a in answers]
    fake = [[answers[0], "#### -1"], ["#### -1", "#### -1"], [f"The answer is {ref[2]}", f"\\boxed{{{ref[2]}}}"]]

    def fake_generate(model, tokenizer, prompts, **kwargs):
        assert len(prompts) == 3 and kwargs["num_samples"] == 2 and kwargs["temperature"] == 0.7
        return fake, [[5, 7], [3, 3], [4, 4]]

    monkeypatch.setattr(evaluation, "_generate_transformers", fake_generate)
    result = evaluate(model, tokenizer, dataset, num_samples=2, temperature=0.7, progress=False)
    assert result["accuracy"] == result["pass@1"] == pytest.approx(3 / 6)
    assert result["pass@2"] == pytest.approx(2 / 3)
    assert result["format_rate"] == pytest.approx(4 / 6)  # the reference solution and the three "#### -1"
    assert result["mean_completion_tokens"] == pytest.approx(26 / 6)
    assert result["predictions"][0]["correct"] == [True, False]
    assert result["predictions"][2]["extracted"] == [ref[2], ref[2]]


def test_evaluate_rejects_bad_options(tiny):
    model, tokenizer = tiny
    dataset = generate_problems(2)
    with pytest.raises(ValueError, match="greedy decoding"):
        evaluate(model, tokenizer, dataset, num_samples=2)
    with pytest.raises(ValueError, match="top_p"):
        evaluate(model, tokenizer, dataset, temperature=1.0, top_p=0.0)
    with pytest.raises(ValueError, match="num_few_shot must be in"):
        evaluate(model, tokenizer, dataset, num_few_shot=9)
    with pytest.raises(ValueError, match="dtype must be"):
        load_model_for_eval("unused", dtype="float8")
    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match="use_vllm=True needs vLLM"):
            evaluate(model, tokenizer, dataset, use_vllm=True)


def test_cli_use_vllm_without_vllm(eval_script, tiny_model_path):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed")
    with pytest.raises(ImportError, match="use_vllm=True needs vLLM"):
        eval_script.main(
            ["--model_name_or_path", str(tiny_model_path), "--dataset", "synthetic", "--use_vllm", "true"]
        )


def test_lora_adapter(tiny_model_path, lora_adapter, tiny, eval_script, tmp_path):
    dataset = generate_problems(3, seed=2)
    kwargs = dict(max_new_tokens=6, progress=False)
    base = evaluate(*tiny, dataset, **kwargs)
    merged = evaluate(*load_model_for_eval(tiny_model_path, lora_adapter, device="cpu"), dataset, **kwargs)
    unmerged_model, tokenizer = load_model_for_eval(tiny_model_path, lora_adapter, device="cpu", merge_adapter=False)
    assert isinstance(unmerged_model, PeftModel)
    unmerged = evaluate(unmerged_model, tokenizer, dataset, **kwargs)
    completions = lambda r: [p["completions"] for p in r["predictions"]]  # noqa: E731
    assert completions(merged) == completions(unmerged) != completions(base)
    # The CLI also accepts the adapter folder as the model (base read from adapter_config.json).
    summary = eval_script.main(
        ["--model_name_or_path", str(lora_adapter), "--dataset", "synthetic", "--limit", "2", "--max_new_tokens", "6",
         "--progress", "false", "--device", "cpu", "--output_dir", str(tmp_path)]
    )  # fmt: skip
    assert summary["num_examples"] == 2
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        load_model_for_eval(tiny_model_path, adapter_path=tmp_path)


def test_smollm2_on_synthetic_problems(smollm2_path, eval_script, tmp_path):
    """The real pretrained model answers in English with numbers, through the chat template."""
    summary = eval_script.main(
        ["--model_name_or_path", str(smollm2_path), "--dataset", "synthetic:num_steps=1,max_value=20", "--limit", "4",
         "--batch_size", "4", "--max_new_tokens", "24", "--progress", "false", "--device", "cpu",
         "--output_dir", str(tmp_path)]
    )  # fmt: skip
    rows = [json.loads(line) for line in (tmp_path / "eval_predictions.jsonl").read_text().splitlines()]
    assert summary["num_examples"] == 4 and len(rows) == 4
    texts = [r["completions"][0] for r in rows]
    # A random model emits token soup; SmolLM2 writes words and works with the question's numbers.
    assert sum(any(ch.isdigit() for ch in t) for t in texts) >= 3, texts
    assert sum(t.count(" ") >= 5 for t in texts) >= 3, texts
    assert 0 < summary["mean_completion_tokens"] <= 24
