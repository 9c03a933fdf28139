"""LoRA through the training entry point (trl_sapo.gsm8k.train.main): the saved adapter loads with peft and changes the outputs; the merged model
(`merge_adapter_on_save`) loads as a plain model and matches base + adapter."""

from __future__ import annotations

import pytest
from test_script import assert_training_logged, tiny_run_args, write_reward_module

from trl_sapo.gsm8k.train import main


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_path):
    """One 2-step LoRA run (q/v projections, rank 8) with merging, shared by the tests below."""
    folder = tmp_path_factory.mktemp("lora")
    reward = write_reward_module(folder)
    output_dir = folder / "out"
    args = tiny_run_args(
        tiny_model_path,
        output_dir,
        reward_funcs=["accuracy", reward],
        use_peft="true",
        lora_r=8,
        lora_alpha=16,
        lora_target_modules=["q_proj", "v_proj"],
        merge_adapter_on_save="true",
        learning_rate=1e-2,
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))  # the dotted reward path resolves like it would from the launch folder
        main(args)
    return output_dir


def _logits(model, tokenizer):
    import torch

    inputs = tokenizer(["Mia has 12 apples and eats 3. How many are left?"], return_tensors="pt")
    with torch.no_grad():
        return model(**inputs).logits


def test_adapter_is_saved_alone_and_trained(lora_run):
    assert (lora_run / "adapter_config.json").is_file() and (lora_run / "adapter_model.safetensors").is_file()
    assert not (lora_run / "model.safetensors").exists()  # the adapter, not a copy of the base model
    assert (lora_run / "tokenizer_config.json").is_file()
    assert_training_logged(lora_run)


def test_adapter_loads_with_peft_and_changes_outputs(lora_run, tiny_model_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(lora_run)
    base_logits = _logits(AutoModelForCausalLM.from_pretrained(tiny_model_path).eval(), tokenizer)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), lora_run).eval()
    lora_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # lora_B starts at 0: non-zero means it trained
    peft_logits = _logits(peft_model, tokenizer)
    assert (peft_logits - base_logits).abs().max() > 1e-4
    assert torch.isfinite(peft_logits).all()


def test_merged_model_loads_and_matches_adapter(lora_run, tiny_model_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = lora_run / "merged"
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    assert not any("lora" in name for name in merged.state_dict())
    assert merged.config.use_cache is True
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), lora_run).eval()
    torch.testing.assert_close(_logits(merged, tokenizer), _logits(peft_model, tokenizer), atol=1e-4, rtol=1e-4)

    # The evaluation loader reads the adapter folder directly.
    from trl_sapo.gsm8k.evaluation import load_model_for_eval

    model, eval_tokenizer = load_model_for_eval(str(lora_run), dtype="float32", device="cpu")
    torch.testing.assert_close(_logits(model, eval_tokenizer), _logits(merged, tokenizer), atol=1e-4, rtol=1e-4)
