"""QLoRA on MoE models: bitsandbytes quantizes nn.Linear only, not transformers 5's fused 3-D experts."""

from __future__ import annotations

import tempfile

import pytest
from conftest import codes, tiny_config

from lora_doctor import diagnose

FOUR_BIT = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16",
            "bnb_4bit_use_double_quant": True}


def test_qlora_on_moe_warns_that_experts_stay_unquantized(configs):
    report = diagnose(configs["mixtral"], {"target_modules": "all-linear"}, quantization_config=FOUR_BIT)
    found = [f for f in report.findings if f.code == "qlora-moe-experts-unquantized"]
    assert len(found) == 1 and found[0].severity == "warning"
    f = found[0]
    assert f.data["share"] > 0.5 and "mlp.experts.gate_up_proj" in f.data["parameters"]
    assert "fp32" in f.message and "--mode lora" in f.fix


def test_no_warning_without_quantization_or_experts(configs):
    assert "qlora-moe-experts-unquantized" not in codes(diagnose(configs["mixtral"], {"target_modules": "all-linear"}))
    assert "qlora-moe-experts-unquantized" not in codes(diagnose(configs["llama"], None, quantization_config=FOUR_BIT))


@pytest.mark.slow
def test_bitsandbytes_really_leaves_fused_experts_unquantized():
    """A real 4-bit load on CPU: only the attention projections become Params4bit; the doctor sees it."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = tiny_config("mixtral")
    with tempfile.TemporaryDirectory() as workdir:
        AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).save_pretrained(workdir)
        model = AutoModelForCausalLM.from_pretrained(
            workdir, quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.bfloat16),
            dtype=torch.bfloat16, device_map={"": "cpu"})
    four_bit = {n.rsplit(".", 1)[0].rsplit(".", 1)[-1] for n, p in model.named_parameters()
                if isinstance(p, bnb.nn.Params4bit)}
    assert four_bit == {"q_proj", "k_proj", "v_proj", "o_proj"}
    experts = {n: p for n, p in model.named_parameters() if "experts" in n}
    assert experts and all(p.dim() == 3 and p.dtype == torch.bfloat16 for p in experts.values())
    assert "qlora-moe-experts-unquantized" in codes(diagnose(model, {"target_modules": "all-linear"}))
