"""Targets peft selects but cannot run (MoE routers that subclass nn.Linear and return a tuple) or refuses
(the Mamba mixers' out_proj)."""

from __future__ import annotations

import pytest
from conftest import codes

from lora_doctor import diagnose
from lora_doctor.measure.tiny import tiny_config
from lora_doctor.memory.targets import non_tensor_targets_note
from lora_doctor.models import resolve

ROUTERS = {"phimoe": "PhimoeTopKRouter", "llama4_text": "Llama4Router"}


@pytest.mark.parametrize("model_type", sorted(ROUTERS))
def test_all_linear_on_a_tuple_returning_router_is_an_error_with_the_fix(model_type):
    report = diagnose(tiny_config(model_type), {"target_modules": "all-linear"})
    found = [f for f in report.findings if f.code == "target-non-tensor-output"]
    assert len(found) == 1 and found[0].severity == "error" and not report.ok
    f = found[0]
    assert f.data["modules"] == ["router"] and f.data["classes"] == [ROUTERS[model_type]]
    assert "'tuple' object has no attribute 'dtype'" in f.message
    assert "exclude_modules=['router']" in f.fix and "q_proj" in f.fix


def test_excluding_the_router_or_a_plain_model_is_clean():
    excluded = diagnose(tiny_config("phimoe"), {"target_modules": "all-linear", "exclude_modules": ["router"]})
    assert "target-non-tensor-output" not in codes(excluded)
    assert "target-non-tensor-output" not in codes(diagnose(tiny_config("mixtral"), {"target_modules": "all-linear"}))
    # Falcon's FalconLinear overrides forward too, but returns a tensor
    assert "target-non-tensor-output" not in codes(diagnose(tiny_config("falcon"), {"target_modules": "all-linear"}))


def test_the_plan_carries_the_same_note():
    arch = resolve(tiny_config("llama4_text")).arch
    assert arch.extra["non_tensor_linears"] == ["router"]
    note = non_tensor_targets_note(arch, "all-linear")
    assert note and "exclude_modules=['router']" in note
    assert non_tensor_targets_note(arch, ("q_proj", "v_proj")) is None


def test_peft_really_fails_on_the_router_and_trains_without_it():
    """What the finding claims, on a real tiny PhiMoE (CPU, random weights): all-linear raises at the first
    forward; with exclude_modules=['router'] one forward and backward give every adapter a gradient."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(tiny_config("phimoe"))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    ids = torch.randint(0, 100, (1, 8))
    broken = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(target_modules="all-linear", r=2))
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'dtype'"):
        broken(input_ids=ids, labels=ids)
    fixed = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(target_modules="all-linear", exclude_modules=["router"], r=2))
    fixed(input_ids=ids, labels=ids).loss.backward()
    adapters = [p for n, p in fixed.named_parameters() if "lora_A" in n]
    assert adapters and all(p.grad is not None for p in adapters)


def test_all_linear_on_mamba_reaches_the_out_proj_peft_refuses():
    """peft refuses LoRA on the Mamba mixers' out_proj (asked of peft itself): the doctor says so with the fix,
    the plan carries the same note, and with exclude_modules=['out_proj'] a real tiny Mamba trains."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_doctor.memory.targets import peft_refused_note

    report = diagnose(tiny_config("mamba"), {"target_modules": "all-linear"})
    found = [f for f in report.findings if f.code == "target-peft-refused"]
    assert len(found) == 1 and found[0].severity == "error" and not report.ok
    assert found[0].data["modules"] == ["out_proj"] and "exclude_modules=['out_proj']" in found[0].fix
    excluded = diagnose(tiny_config("mamba"), {"target_modules": "all-linear", "exclude_modules": ["out_proj"]})
    assert "target-peft-refused" not in codes(excluded)
    assert "target-peft-refused" not in codes(diagnose(tiny_config("qwen3"), {"target_modules": "all-linear"}))
    arch = resolve(tiny_config("mamba")).arch
    assert arch.extra["peft_refused_linears"] == ["out_proj"]
    assert "exclude_modules=['out_proj']" in peft_refused_note(arch, "all-linear")
    assert peft_refused_note(arch, ("in_proj", "x_proj")) is None

    fields = dict(tiny_config("mamba"))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with pytest.raises(ValueError, match="incompatible with Mamba-based models"):
        get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(target_modules="all-linear", r=2))
    fixed = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(target_modules="all-linear", exclude_modules=["out_proj"], r=2))
    ids = torch.randint(0, 100, (1, 8))
    fixed(input_ids=ids, labels=ids).loss.backward()
    # in_proj and x_proj train; dt_proj's adapter gets no gradient (the mixer reads dt_proj.weight directly)
    assert all(p.grad is not None for n, p in fixed.named_parameters() if "lora_A" in n and "dt_proj" not in n)


def test_a_grouped_projection_whose_output_is_not_out_features_is_an_error_and_really_fails():
    """DeepSeek-V4's DeepseekV4GroupedLinear (o_a_proj) maps [..., groups, in/groups] to [..., groups, out/groups]:
    the probe finds it, the doctor and the plan say so with the fix, and on a real tiny model all-linear fails at
    the first forward while exclude_modules=['o_a_proj'] trains."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_doctor.linear_probe import RESHAPED, TENSOR, linear_output
    from lora_doctor.memory.targets import reshaped_targets_note

    report = diagnose(tiny_config("deepseek_v4"), {"target_modules": "all-linear"})
    found = [f for f in report.findings if f.code == "target-reshaped-output"]
    assert len(found) == 1 and found[0].severity == "error" and not report.ok
    assert found[0].data["modules"] == ["o_a_proj"] and found[0].data["classes"] == ["DeepseekV4GroupedLinear"]
    assert "exclude_modules=['o_a_proj']" in found[0].fix
    excluded = diagnose(tiny_config("deepseek_v4"), {"target_modules": "all-linear", "exclude_modules": ["o_a_proj"]})
    assert "target-reshaped-output" not in codes(excluded)
    arch = resolve(tiny_config("deepseek_v4")).arch
    assert arch.extra["reshaping_linears"] == ["o_a_proj"] and "non_tensor_linears" not in arch.extra
    assert "exclude_modules=['o_a_proj']" in reshaped_targets_note(arch, "all-linear")
    assert reshaped_targets_note(arch, ("q_a_proj", "o_b_proj")) is None

    fields = dict(tiny_config("deepseek_v4"))
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    model = AutoModelForCausalLM.from_config(config)
    grouped = model.get_submodule("model.layers.0.self_attn.o_a_proj")
    assert linear_output(grouped) == RESHAPED
    assert linear_output(model.get_submodule("model.layers.0.self_attn.o_b_proj")) == TENSOR
    ids = torch.randint(0, 100, (1, 8))
    broken = get_peft_model(model, LoraConfig(target_modules="all-linear", r=2))
    with pytest.raises(RuntimeError, match="must match the size of tensor b"):
        broken(input_ids=ids, labels=ids)
    fixed = get_peft_model(AutoModelForCausalLM.from_config(config),
                           LoraConfig(target_modules="all-linear", exclude_modules=["o_a_proj"], r=2))
    fixed(input_ids=ids, labels=ids).loss.backward()
    # the compressors run from compress_ratio tokens on, and the indexer only picks top-k positions
    adapters = [p for n, p in fixed.named_parameters() if "lora_A" in n and "compressor" not in n]
    assert len(adapters) == 4 * 7 and all(p.grad is not None for p in adapters)


def test_the_dry_run_names_adapted_layers_whose_forward_never_runs():
    """Mamba's mixer reads dt_proj.weight itself, so a LoRA on dt_proj never enters the loss: the dry run (a real
    tiny model on CPU) names the layer, and excluding it leaves every adapter with a gradient."""
    lora = {"target_modules": "all-linear", "exclude_modules": ["out_proj"]}
    f = next(f for f in diagnose(tiny_config("mamba"), lora, dry_run=True).findings if f.code.startswith("dry-run"))
    assert f.code == "dry-run-no-grad" and f.data["layers"] == ["dt_proj"]
    assert all(".dt_proj.lora_" in p for p in f.data["parameters"]) and "exclude_modules" in f.fix
    fixed = diagnose(tiny_config("mamba"), dict(lora, exclude_modules=["out_proj", "dt_proj"]), dry_run=True)
    assert "dry-run-passed" in codes(fixed) and "dry-run-no-grad" not in codes(fixed)
