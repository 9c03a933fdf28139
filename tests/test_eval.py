"""GSM8K evaluation (trl_sapo.gsm8k.evaluation) and its CLI (scripts/gsm8k_eval.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from pathlib import Path

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


def test_cli_invalid_rows_advice_works(eval_script, tiny_model_path, tmp_path):
    """The DataError's advice for command-line users, --skip_invalid_rows true, is accepted by this CLI and drops
    the bad row (issue 31 item 4: it said only skip_invalid=True, a Python argument)."""
    from trl_sapo.gsm8k.data import DataError

    rows = [{"question": "Mia has 2 cats and gets 3 more. How many?", "answer": "2 + 3 = 5\n#### 5"}] * 2
    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [rows[0], {"question": "Q?", "answer": "no number"}, rows[1]]))
    argv = ["--model_name_or_path", str(tiny_model_path), "--dataset", str(path), "--max_new_tokens", "2",
            "--progress", "false", "--device", "cpu"]  # fmt: skip
    with pytest.raises(DataError, match="row 1") as info:
        eval_script.main(argv)
    flag = re.search(r"(--skip_invalid_rows true) on the command line", str(info.value)).group(1)
    assert eval_script.main([*argv, *flag.split()])["num_examples"] == 2


def test_revision_of_a_local_base_is_refused(tiny_model_path, lora_adapter):
    """transformers and vLLM ignore a revision for a local folder: refused whether the folder is the model, the base
    under --adapter_path or the base an adapter folder records (lora_adapter's is tiny_model_path); `main` passes."""
    for model, adapter in ((tiny_model_path, None), (tiny_model_path, lora_adapter), (lora_adapter, None)):
        with pytest.raises(ValueError, match="is a local folder, which transformers loads as it is"):
            load_model_for_eval(model, adapter, device="cpu", revision="v2")
    evaluation.check_base_revision("org/base-on-the-hub", None, "v2")  # a Hub id: the revision is used
    load_model_for_eval(tiny_model_path, device="cpu", revision="main")


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model_revision", "v2", "--dataset", "synthetic"], "model_revision 'v2' picks a version of a Hub model"),
        (["--dataset", "/no/such/gsm8k"], "'/no/such/gsm8k' is not a local path"),
    ],
)
def test_cli_user_errors_are_one_line_and_status_2(tiny_model_path, extra, message):
    """`python scripts/gsm8k_eval.py` as a user runs it: a bad option or dataset prints `gsm8k_eval.py: error:
    <message>` and exits 2, without a traceback (it printed one and exited 1 before)."""
    import subprocess

    from trl_sapo.tools.offline import OFFLINE_ENV

    script = Path(__file__).resolve().parents[1] / "scripts" / "gsm8k_eval.py"
    command = [sys.executable, str(script), "--model_name_or_path", str(tiny_model_path), "--limit", "2", *extra]
    result = subprocess.run(command, env={**os.environ, **OFFLINE_ENV}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("gsm8k_eval.py: error: ") and message in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr


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


# What a chat checkpoint's generation_config.json may ship (Qwen2.5-Instruct: repetition_penalty 1.05, top_k 20, ...).
SHIPPED_GENERATION_DEFAULTS = {
    "do_sample": True,
    "temperature": 0.7,
    "top_p": 0.8,
    "repetition_penalty": 3.0,
    "no_repeat_ngram_size": 2,
    "top_k": 1,
    "min_p": 0.5,
    "min_new_tokens": 8,
}


@pytest.fixture(scope="module")
def tiny_with_shipped_defaults(tiny_model_path, tmp_path_factory):
    """The tiny model saved again with a generation_config.json that sets penalties and truncations."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-shipped-defaults")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    for key, value in SHIPPED_GENERATION_DEFAULTS.items():
        setattr(model.generation_config, key, value)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_path).save_pretrained(path)
    return path


@pytest.mark.parametrize("sampled", [False, True], ids=["greedy", "sampled"])
def test_checkpoint_generation_config_does_not_change_decoding(sampled, tiny, tiny_with_shipped_defaults):
    """Greedy is plain argmax and sampling plain temperature + top_p on every checkpoint: the fields a model's
    generation_config.json sets (penalties, top_k, min_p, min_new_tokens) are not applied (issue 30 item 8)."""
    shipped, tokenizer = load_model_for_eval(tiny_with_shipped_defaults, device="cpu")
    assert shipped.generation_config.repetition_penalty == 3.0  # the shipped config is really loaded
    dataset = generate_problems(4, seed=1)
    kwargs = dict(max_new_tokens=8, progress=False, batch_size=4)
    if sampled:
        kwargs.update(num_samples=3, temperature=1.0, seed=7)
    reference = evaluate(*tiny, dataset, **kwargs)  # same weights, transformers' own blank defaults
    result = evaluate(shipped, tokenizer, dataset, **kwargs)
    completions = lambda r: [p["completions"] for p in r["predictions"]]  # noqa: E731
    assert completions(result) == completions(reference)
    assert result["mean_completion_tokens"] == reference["mean_completion_tokens"]
    assert shipped.generation_config.repetition_penalty == 3.0  # restored after generation


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


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module (vLLM needs CUDA): records what ``LLM`` was built with and what its model folder
    held at that moment, and answers every prompt with a fixed completion."""
    import importlib.machinery
    import types

    built = []

    class LLM:
        def __init__(self, model, **kwargs):
            folder = Path(model)
            built.append({"model": folder, "kwargs": kwargs, "files": sorted(p.name for p in folder.iterdir())})

        def generate(self, prompts, params):
            output = types.SimpleNamespace(text="#### 7", token_ids=[1, 2, 3])
            return [types.SimpleNamespace(outputs=[output] * params.n) for _ in prompts]

    class SamplingParams:
        def __init__(self, **kwargs):
            self.__dict__.update(kwargs)

    module = types.ModuleType("vllm")
    module.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    module.LLM, module.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return built


def test_cli_use_vllm_honours_dtype_and_removes_the_merged_copy(eval_script, fake_vllm, lora_adapter, tmp_path):
    """--use_vllm passes --dtype to vLLM (and merges the adapter in it), refuses a --device it cannot honour, and
    removes the merged adapter copy after the evaluation (issue 30 item 10: all three were silent before)."""
    common = ["--dataset", "synthetic", "--limit", "2", "--max_new_tokens", "6", "--progress", "false", "--use_vllm", "true"]  # fmt: skip
    summary = eval_script.main(["--model_name_or_path", str(lora_adapter), "--dtype", "float32", *common])
    assert summary["num_examples"] == 2 and summary["mean_completion_tokens"] == 3
    (llm,) = fake_vllm
    assert llm["kwargs"]["dtype"] == "float32" and llm["kwargs"]["seed"] == 0
    assert "model.safetensors" in llm["files"] and "adapter_config.json" not in llm["files"]  # a merged copy
    assert not llm["model"].exists()  # removed once evaluated
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        eval_script.main(["--model_name_or_path", str(lora_adapter), "--device", "cpu", *common])
    assert len(fake_vllm) == 1


def test_merged_model_dir_saves_in_the_requested_dtype(tiny_model_path, lora_adapter, tmp_path):
    from safetensors import safe_open

    for dtype in ("float32", "bfloat16"):
        folder = evaluation.merged_model_dir(str(tiny_model_path), str(lora_adapter), str(tmp_path / dtype), dtype)
        with safe_open(Path(folder) / "model.safetensors", "pt") as f:
            assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {f"torch.{dtype}"}  # noqa: SIM118


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


@pytest.fixture
def hub_repo_with_revisions(tiny_model_path, tmp_path, monkeypatch):
    """Hub id "local/tiny" in a local hub cache: branches `main` and `v2` hold different weights (same tokenizer),
    and an adapter trained on `v2` (its adapter_config.json names the base but no revision, as TRL saves it)."""
    import huggingface_hub.constants
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo = tmp_path / "hub" / "models--local--tiny"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    torch.manual_seed(1)
    for branch, commit, noise in (("main", "a" * 40, 0.0), ("v2", "b" * 40, 0.05)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(noise * torch.randn_like(param))
        model.save_pretrained(repo / "snapshots" / commit)
        tokenizer.save_pretrained(repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / branch).write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter_dir = tmp_path / "adapter"
    lora = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained("local/tiny", revision="v2"), lora).save_pretrained(
        adapter_dir
    )
    tokenizer.save_pretrained(adapter_dir)
    return adapter_dir


def _logits(model, tokenizer):
    inputs = tokenizer(["Mia has 12 apples and eats 3."], return_tensors="pt")
    with torch.no_grad():
        return model.eval()(**inputs).logits


def _adapter_on(revision, adapter_dir):
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained("local/tiny", revision=revision), adapter_dir
    )


def test_merge_adapter_uses_the_model_revision(hub_repo_with_revisions):
    """`merge_adapter` (training's merge_adapter_on_save) merges onto the base at `model_revision`, not `main`
    (issue 30 item 10)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import ModelConfig

    from trl_sapo.launch import merge_adapter

    adapter_dir = hub_repo_with_revisions
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model_args = ModelConfig(model_name_or_path="local/tiny", model_revision="v2", dtype="float32")
    merged = AutoModelForCausalLM.from_pretrained(merge_adapter(str(adapter_dir), model_args))
    on_base = {rev: _logits(_adapter_on(rev, adapter_dir), tokenizer) for rev in ("main", "v2")}
    torch.testing.assert_close(_logits(merged, tokenizer), on_base["v2"], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(on_base["v2"], on_base["main"], atol=1e-3)  # the revisions really differ


def test_eval_loads_the_base_at_model_revision(hub_repo_with_revisions, eval_script, tmp_path):
    """The evaluation side of the same defect: --model_revision picks the base an adapter is merged onto."""
    from transformers import AutoTokenizer

    adapter_dir = hub_repo_with_revisions
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model, _ = load_model_for_eval(adapter_dir, dtype="float32", device="cpu", revision="v2")
    torch.testing.assert_close(_logits(model, tokenizer), _logits(_adapter_on("v2", adapter_dir), tokenizer))
    argv = ["--model_name_or_path", str(adapter_dir), "--dataset", "synthetic", "--limit", "3", "--max_new_tokens",
            "6", "--progress", "false", "--device", "cpu", "--dtype", "float32"]  # fmt: skip
    completions = {}
    for revision in ("main", "v2"):
        eval_script.main([*argv, "--model_revision", revision, "--output_dir", str(tmp_path / revision)])
        rows = (tmp_path / revision / "eval_predictions.jsonl").read_text().splitlines()
        completions[revision] = [json.loads(row)["completions"] for row in rows]
    expected = evaluate(
        model, tokenizer, load_gsm8k("synthetic", "test", num_examples=3), max_new_tokens=6, progress=False
    )
    assert completions["v2"] == [p["completions"] for p in expected["predictions"]] != completions["main"]
