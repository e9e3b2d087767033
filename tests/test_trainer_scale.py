"""Scaling a saved LoRA adapter scales the merged update exactly (what the gate's scale search relies on)."""

from __future__ import annotations

from pathlib import Path

from trainer.scale import SCALE_FILE, scale_adapters


def _tiny_lora(out: Path):
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    base = AutoModelForCausalLM.from_config(config)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    get_peft_model(copy.deepcopy(base), lora).save_pretrained(out)  # peft wraps the model it is given
    return base


def _delta(base, adapter: Path):
    import copy

    from peft import PeftModel

    original = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(copy.deepcopy(base), adapter).merge_and_unload().state_dict()
    return {k: merged[k] - original[k] for k in original}


def test_scaling_an_adapter_scales_its_merged_update_exactly(tmp_path: Path):
    import torch

    adapter = tmp_path / "0-dpo"
    base = _tiny_lora(adapter)
    full = _delta(base, adapter)
    changed = [k for k, d in full.items() if d.abs().max() > 0]
    assert {k.split(".")[-2] for k in changed} == {"q_proj", "down_proj"}
    scale_adapters([adapter], 0.5)
    half = _delta(base, adapter)
    for key, d in full.items():
        torch.testing.assert_close(half[key], 0.5 * d, rtol=1e-5, atol=1e-7)
    scale_adapters([adapter], 0.5)
    assert (adapter / SCALE_FILE).read_text().strip() == "0.25"
    quarter = _delta(base, adapter)
    torch.testing.assert_close(quarter[changed[0]], 0.25 * full[changed[0]], rtol=1e-5, atol=1e-7)
