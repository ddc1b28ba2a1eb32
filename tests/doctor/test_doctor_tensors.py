"""Checks on real PeftModels: initialization, trainability, checkpointing, dtypes."""

from __future__ import annotations

import pytest
import torch
from conftest import codes, problems, tiny_config, tiny_peft

from lora_doctor import diagnose


def _lora_layers(model):
    return [m for m in model.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


def test_fresh_default_adapter_is_healthy():
    report = diagnose(tiny_peft("llama", target_modules="all-linear"))
    assert not problems(report), codes(report)


def test_both_zero():
    model = tiny_peft()
    for layer in _lora_layers(model):
        torch.nn.init.zeros_(layer.lora_A["default"].weight)
    report = diagnose(model, dry_run=True)
    assert {"init-both-zero", "dry-run-zero-grad"} <= set(codes(report))
    assert next(f for f in report.findings if f.code == "init-both-zero").severity == "error"


def test_a_zero_b_nonzero():
    model = tiny_peft()
    for layer in _lora_layers(model):
        torch.nn.init.zeros_(layer.lora_A["default"].weight)
        torch.nn.init.normal_(layer.lora_B["default"].weight)
    assert "init-a-zero" in codes(diagnose(model))


def test_b_nonzero_with_identity_init():
    model = tiny_peft()
    torch.nn.init.normal_(_lora_layers(model)[0].lora_B["default"].weight)
    f = next(f for f in diagnose(model).findings if f.code == "init-not-identity")
    assert len(f.data["modules"]) == 1


def test_random_init_is_flagged_once(configs):
    report = diagnose(tiny_peft(init_lora_weights=False))
    assert codes(report).count("init-random") == 1 and "init-not-identity" not in codes(report)
    assert "init-random" in codes(diagnose(configs["llama"], {"target_modules": ["q_proj"], "init_lora_weights": False}))


def test_no_trainable_params_and_frozen_adapters():
    assert "no-trainable-params" in codes(diagnose(tiny_peft(inference_mode=True)))
    model = tiny_peft()
    _lora_layers(model)[0].lora_A["default"].weight.requires_grad_(False)
    assert "adapter-frozen" in codes(diagnose(model))


def test_reentrant_checkpointing_without_input_hook():
    gc = {"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}}
    model = tiny_peft()
    base = model.get_base_model()
    base.gradient_checkpointing_enable({"use_reentrant": True})
    assert "checkpointing-frozen-inputs" not in codes(diagnose(model, training_args=gc))  # transformers hooked inputs
    base.disable_input_require_grads()
    report = diagnose(model, training_args=gc, dry_run=True)
    f = next(f for f in report.findings if f.code == "checkpointing-frozen-inputs")
    assert f.severity == "error" and "dry-run-no-grad" in codes(report)   # the dry run proves it
    base.enable_input_require_grads()
    fixed = diagnose(model, training_args=gc, dry_run=True)
    assert "checkpointing-frozen-inputs" not in codes(fixed) and "dry-run-passed" in codes(fixed)


def test_checkpointing_from_config_and_training_arguments(configs, tmp_path, monkeypatch):
    from transformers import TrainingArguments

    import lora_doctor.doctor.checkup as glue

    reentrant = TrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=True,
                                  gradient_checkpointing_kwargs={"use_reentrant": True})
    default = TrainingArguments(output_dir=str(tmp_path), report_to=[], gradient_checkpointing=True)
    lora = {"target_modules": ["q_proj"]}
    auto = glue.checkpointing_adds_input_hook()
    assert ("checkpointing-frozen-inputs" in codes(diagnose(configs["llama"], lora, training_args=reentrant))) != auto
    monkeypatch.setattr(glue, "checkpointing_adds_input_hook", lambda module=None: False)   # an older stack
    report = diagnose(configs["llama"], lora, training_args=reentrant)
    assert next(f for f in report.findings if f.code == "checkpointing-frozen-inputs").severity == "warning"
    assert "checkpointing-frozen-inputs" not in codes(diagnose(configs["llama"], lora, training_args=default))


def test_fp16_trainable_params_under_fp16_amp(tmp_path):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], fp16=True)
    model = tiny_peft()
    assert "fp16-trainable-params" not in codes(diagnose(model, training_args=args))  # peft keeps adapters fp32
    for layer in _lora_layers(model):
        layer.lora_A["default"].half()
    f = next(f for f in diagnose(model, training_args=args).findings if f.code == "fp16-trainable-params")
    assert f.severity == "error" and "unscale FP16" in f.message


def test_integer_adapter_weights():
    model = tiny_peft()
    layer = _lora_layers(model)[0]
    layer.lora_B["default"].weight = torch.nn.Parameter(torch.zeros(layer.lora_B["default"].weight.shape,
                                                                    dtype=torch.int8), requires_grad=False)
    assert "adapter-quantized" in codes(diagnose(model))


@pytest.mark.parametrize("quant, bf16, expected", [
    ({"load_in_4bit": True}, False, {("qlora-fp4", "warning"), ("qlora-compute-dtype", "info")}),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "float16"}, True,
     {("qlora-compute-dtype", "warning")}),
    ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16}, True, set()),
    ({"load_in_8bit": True}, True, set()),
])
def test_qlora_quantization(configs, quant, bf16, expected):
    report = diagnose(configs["llama"], {"target_modules": "all-linear"}, quantization_config=quant,
                      training_args={"bf16": bf16})
    got = {(f.code, f.severity) for f in report.findings if f.code.startswith("qlora")}
    if torch.cuda.is_available():   # bf16 availability is then known, severities may differ
        got = {(c, "?") for c, _ in got}
        expected = {(c, "?") for c, _ in expected}
    assert got == expected


def test_bitsandbytes_config_object(configs):
    from transformers import BitsAndBytesConfig

    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    report = diagnose(configs["llama"], {"target_modules": "all-linear"}, quantization_config=q)
    assert not [c for c in codes(report) if c.startswith("qlora")]


def test_peft_model_uses_its_own_config():
    report = diagnose(tiny_peft(target_modules=["q_proj", "v_proj"], r=16, lora_alpha=128))
    assert "scale-extreme" in codes(report) and report.summary["matched_modules"] == 4


def test_meta_config_has_no_tensor_findings():
    report = diagnose(tiny_config("llama"), {"target_modules": "all-linear", "r": 16, "lora_alpha": 32})
    assert not problems(report)


def test_peft_models_with_wrappers_and_target_parameters():
    wrapped = tiny_peft(modules_to_save=["lm_head"], trainable_token_indices=[1, 2])
    assert "dry-run-passed" in codes(diagnose(wrapped, dry_run=True))
    moe = tiny_peft("mixtral", target_modules=["q_proj"], target_parameters=["mlp.experts.down_proj"])
    report = diagnose(moe, dry_run=True)
    assert "target-parameter-no-match" not in codes(report) and "dry-run-passed" in codes(report)


def test_lora_config_as_dict_from_to_dict(configs):
    from peft import LoraConfig

    config = LoraConfig(target_modules=["q_proj", "v_proj"], r=16, lora_alpha=128, use_dora=True).to_dict()
    assert "scale-extreme" in codes(diagnose(configs["llama"], config))
