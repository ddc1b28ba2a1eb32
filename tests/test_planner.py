"""lora_doctor.plan: terms, invariants, formulas checked against real peft/bitsandbytes objects."""

from __future__ import annotations

import json

import pytest

import lora_doctor
from lora_doctor import InvalidSettingError, ModelNotFoundError, UnsupportedModelError, plan
from lora_doctor.plan_types import DEVICE_TERMS, TENSOR_TERMS
from lora_doctor.units import GIB

TINY_LLAMA = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=256)


@pytest.mark.parametrize("mode", ["full", "lora", "qlora"])
def test_breakdown_adds_up(mode):
    p = plan("meta-llama/Llama-2-7b-hf", mode=mode, gpu="24GB")
    assert set(p.breakdown) == set(TENSOR_TERMS) | set(DEVICE_TERMS)
    assert sum(p.breakdown[t] for t in TENSOR_TERMS) == p.peak_bytes
    assert p.peak_bytes + sum(p.breakdown[t] for t in DEVICE_TERMS) == p.device_peak_bytes
    assert p.headroom_bytes == 24 * GIB - p.device_peak_bytes
    assert p.fits == (p.headroom_bytes >= 0)
    json.dumps(p.to_dict())  # serializable


def test_llama2_7b_weights_by_mode():
    arch = lora_doctor.catalog.lookup("meta-llama/Llama-2-7b-hf").arch
    full = plan("meta-llama/Llama-2-7b-hf", mode="full")
    assert full.breakdown["weights"] == 6_738_415_616 * 2 + arch.buffer_bytes   # + rope tables (inv_freq)
    assert arch.buffer_bytes == 2 * 64 * 4   # inv_freq and original_inv_freq: head_dim / 2 fp32 values each
    assert full.trainable_params == 6_738_415_616
    qlora = plan("meta-llama/Llama-2-7b-hf", mode="qlora")
    linear = sum(f.weight_params for f in arch.linear_families if f.scope != "head")
    # NF4: half a byte per linear weight; everything else upcast to fp32 by prepare_model_for_kbit_training
    assert qlora.breakdown["weights"] == int(linear * 0.5 + (arch.total_params - linear) * 4) + arch.buffer_bytes
    assert qlora.breakdown["quantization_state"] == int(linear * (1 / 64 + 4 / (64 * 256)))
    no_dq = plan("meta-llama/Llama-2-7b-hf", mode="qlora", double_quant=False)
    assert no_dq.breakdown["quantization_state"] == int(linear / 16)


def test_lora_params_for_llama2_7b_q_v():
    p = plan("meta-llama/Llama-2-7b-hf", mode="lora", r=16)
    assert p.trainable_params == 2 * 32 * 16 * (4096 + 4096)
    assert p.breakdown["adapters"] == p.trainable_params * 4
    assert p.targets == ["q_proj", "v_proj"] and p.lora_scale == 2


@pytest.mark.parametrize("targets", [None, "all-linear", ["q_proj", "v_proj"], ["o_proj", "down_proj"],
                                     r".*\.(q|k)_proj"])
def test_trainable_params_match_real_peft(targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_doctor.models import config_from_dict

    model = AutoModelForCausalLM.from_config(config_from_dict(TINY_LLAMA))
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=targets, task_type="CAUSAL_LM"))
    real = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert plan(TINY_LLAMA, r=8, target_modules=targets).trainable_params == real


def test_rslora_scale():
    assert plan("gpt2", r=16, lora_alpha=32, use_rslora=True).lora_scale == pytest.approx(8.0)


def test_optimizer_states_follow_param_dtype_and_optimizer():
    n = 6_738_415_616
    assert plan("meta-llama/Llama-2-7b-hf", mode="full", dtype="bf16").breakdown["optimizer_states"] == 2 * 2 * n
    assert plan("meta-llama/Llama-2-7b-hf", mode="full", dtype="fp32").breakdown["optimizer_states"] == 2 * 4 * n
    assert plan("meta-llama/Llama-2-7b-hf", mode="full", optim="sgd").breakdown["optimizer_states"] == 0
    eight = plan("meta-llama/Llama-2-7b-hf", mode="full", optim="adamw_bnb_8bit").breakdown["optimizer_states"]
    assert eight == int(2 * n * (1 + 4 / 256))
    paged = plan("meta-llama/Llama-2-7b-hf", mode="full", optim="paged_adamw_8bit")
    assert paged.breakdown["optimizer_states"] == 0 and any("paged" in n for n in paged.notes)


def test_more_tokens_never_need_less_memory():
    prev = 0
    for seq in (128, 512, 2048, 8192):
        p = plan("meta-llama/Meta-Llama-3-8B", mode="qlora", seq_len=seq)
        assert p.peak_bytes > prev
        prev = p.peak_bytes


def test_gradient_checkpointing_shrinks_activations():
    off = plan("meta-llama/Llama-2-7b-hf", seq_len=4096)
    on = plan("meta-llama/Llama-2-7b-hf", seq_len=4096, gradient_checkpointing=True)
    assert on.peak_bytes < off.peak_bytes
    assert on.breakdown["activations"] < off.breakdown["activations"] / 4


def test_eager_attention_is_quadratic():
    sdpa = plan("meta-llama/Llama-2-7b-hf", seq_len=4096)
    eager = plan("meta-llama/Llama-2-7b-hf", seq_len=4096, attn_implementation="eager")
    # 32 heads x 4096 keys x (fp32 softmax + bf16 copy) per token per layer
    extra = 4096 * 32 * 4096 * (4 + 2) * 32
    assert eager.breakdown["activations"] - sdpa.breakdown["activations"] >= extra * 0.9


def test_large_vocab_logits_dominate():
    p = plan("meta-llama/Meta-Llama-3-8B", mode="qlora", seq_len=8192, gradient_checkpointing=True)
    # fp32 logits, log-softmax, their grad, over the 8191 positions the shifted labels score (the derived loss
    # moments; the recipe alone counts all 8192)
    assert p.breakdown["logits_and_loss"] >= 12 * 8191 * 128256


def test_max_batch_and_seq_are_the_largest_that_fit():
    p = plan("meta-llama/Llama-2-7b-hf", mode="qlora", gpu="24GB", seq_len=1024)
    assert p.fits and p.max_batch_size >= 1
    at_max = plan("meta-llama/Llama-2-7b-hf", mode="qlora", gpu="24GB", seq_len=1024, batch_size=p.max_batch_size)
    over = plan("meta-llama/Llama-2-7b-hf", mode="qlora", gpu="24GB", seq_len=1024, batch_size=p.max_batch_size + 1)
    assert at_max.fits and not over.fits
    seq_over = plan("meta-llama/Llama-2-7b-hf", mode="qlora", gpu="24GB", seq_len=p.max_seq_len + 1)
    assert not seq_over.fits


def test_without_gpu_no_verdict():
    p = plan("gpt2")
    assert p.fits is None and p.max_batch_size is None and p.headroom_bytes is None
    assert "--gpu" in p.recommendation


def test_recommendation_names_a_lever_that_fits():
    p = plan("meta-llama/Llama-2-7b-hf", mode="full", gpu="24GB")
    assert not p.fits and "--mode lora" in p.recommendation
    p = plan("meta-llama/Llama-2-13b-hf", mode="lora", gpu="24GB")
    assert not p.fits and "qlora" in p.recommendation
    assert plan("meta-llama/Llama-2-70b-hf", mode="full", gpu="24GB").recommendation.count("larger GPU") == 1


def test_t4_warns_about_bf16():
    p = plan("Qwen/Qwen2.5-0.5B", gpu="T4")
    assert any("bf16" in n for n in p.notes)


@pytest.mark.parametrize("kwargs,needle", [
    (dict(mode="half"), "mode"), (dict(batch_size=0), "batch_size"), (dict(seq_len=-1), "seq_len"),
    (dict(r=0), "r must"), (dict(dtype="int3"), "dtype"), (dict(optim="lion9000"), "optim"),
    (dict(attn_implementation="magic"), "attn_implementation"), (dict(lora_alpha=0), "lora_alpha"),
    (dict(mixed_precision="fp8"), "mixed_precision"), (dict(engine="guess"), "engine"),
])
def test_bad_settings_raise_one_clear_error(kwargs, needle):
    with pytest.raises(InvalidSettingError) as info:
        plan("gpt2", **kwargs)
    assert needle in str(info.value)


def test_all_problems_are_reported_together():
    with pytest.raises(InvalidSettingError) as info:
        plan("gpt2", batch_size=0, r=0, mode="x")
    assert "batch_size" in str(info.value) and "r must" in str(info.value) and "mode" in str(info.value)


def test_unknown_model_offline_names_nearest(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as info:
        plan("meta-llama/Llama-2-7bb-hf")
    msg = str(info.value)
    assert "meta-llama/Llama-2-7b-hf" in msg and "config.json" in msg


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError):
        plan(str(tmp_path / "nope" / "config.json"))
    with pytest.raises(ModelNotFoundError):
        plan(str(tmp_path))  # a directory without config.json


def test_local_config_json_and_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(TINY_LLAMA))
    by_dir = plan(str(tmp_path))
    by_file = plan(str(tmp_path / "config.json"))
    assert by_dir.peak_bytes == by_file.peak_bytes == plan(TINY_LLAMA).peak_bytes


def test_config_without_model_type(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    with pytest.raises(UnsupportedModelError):
        plan(str(tmp_path))


def test_pretrained_config_module_and_peft_model_agree():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_doctor.models import config_from_dict

    config = config_from_dict(TINY_LLAMA)
    model = AutoModelForCausalLM.from_config(config)
    expected = plan(TINY_LLAMA).peak_bytes
    assert plan(config).peak_bytes == expected
    assert plan(model).peak_bytes == expected
    peft_model = get_peft_model(model, LoraConfig(r=16, target_modules=["q_proj", "v_proj"]))
    assert plan(peft_model).peak_bytes == expected


def test_catalog_plan_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, lora_doctor; lora_doctor.plan('meta-llama/Llama-2-7b-hf', gpu='24GB'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_saved_config_with_lm_head_model_architecture_builds_causal_lm(tmp_path):
    """GPT2LMHeadModel ends in "Model": it must still plan as a causal LM, as from the catalog."""
    from lora_doctor.catalog import lookup

    fields = dict(lookup("gpt2").config, architectures=["GPT2LMHeadModel"])
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert plan(str(tmp_path)).total_params == 124_439_808


def test_unknown_model_online_path_fails_fast_when_the_hub_is_unreachable(monkeypatch):
    """Not offline, but no hub (a closed local port): one clear error in well under a second or two."""
    import time

    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        plan("someone/unknown-model")
    assert time.perf_counter() - start < 5
    assert "could not be downloaded" in str(info.value)


def test_lora_dropout_costs_a_mask_and_is_validated():
    base = plan("meta-llama/Llama-2-7b-hf", target_modules="all-linear", seq_len=2048)
    dropped = plan("meta-llama/Llama-2-7b-hf", target_modules="all-linear", seq_len=2048, lora_dropout=0.05)
    # one 1-byte mask per adapter input on CUDA: 4 x hidden (q,k,v,o) + 2 x hidden (gate, up) + intermediate
    per_token_layer = 6 * 4096 + 11008
    assert dropped.breakdown["activations"] - base.breakdown["activations"] == 2048 * 32 * per_token_layer
    assert dropped.settings.lora_dropout == 0.05
    with pytest.raises(InvalidSettingError):
        plan("gpt2", lora_dropout=1.5)


def test_peft_model_lora_config_is_used_unless_overridden():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_doctor.models import config_from_dict

    model = get_peft_model(AutoModelForCausalLM.from_config(config_from_dict(TINY_LLAMA)),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    real = sum(p.numel() for p in model.parameters() if p.requires_grad)
    p = plan(model)
    assert (p.settings.r, p.settings.lora_alpha, p.trainable_params) == (4, 8, real)
    assert plan(model, r=8).trainable_params == 2 * real


@pytest.mark.parametrize("targets", ["foo", ["qproj"], r"nothing\..*"])
def test_targets_that_match_nothing_are_an_error_as_in_peft(targets):
    with pytest.raises(InvalidSettingError) as info:
        plan("meta-llama/Llama-2-7b-hf", target_modules=targets)
    assert "q_proj" in str(info.value)


def test_all_linear_is_case_insensitive():
    assert plan("gpt2", target_modules="ALL-LINEAR").trainable_params == plan("gpt2", target_modules="all-linear").trainable_params


def test_max_seq_len_is_capped_at_the_models_positions():
    p = plan("gpt2", gpu="H200")
    assert p.max_seq_len == 1024 and any("max_position_embeddings" in n for n in p.notes)


def test_micro_batch_advice_keeps_the_effective_batch():
    p = plan("meta-llama/Llama-2-7b-hf", gpu="24GB", batch_size=7, seq_len=4096, gradient_checkpointing=True)
    assert not p.fits and "micro-batch 1 with 7x gradient accumulation" in p.recommendation


@pytest.mark.parametrize("field,value", [("num_attention_heads", 0), ("num_attention_heads", 3),
                                         ("hidden_size", "64"), ("hidden_size", -64)])
def test_odd_config_values_are_one_clear_error(tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps(dict(TINY_LLAMA, **{field: value})))
    with pytest.raises(UnsupportedModelError) as info:
        plan(str(tmp_path))
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_three_dimensional_non_expert_weights_are_not_moe():
    from transformers import AutoConfig

    mamba = AutoConfig.for_model("mamba", hidden_size=32, num_hidden_layers=2, vocab_size=128, state_size=4)
    p = plan(mamba, mode="full")
    assert lora_doctor.models.resolve(mamba).arch.expert_params == 0 and p.total_params > 0


def test_settings_axes_default_to_one_plain_step_on_one_gpu():
    from lora_doctor.plan_types import InputSettings, ParallelSettings, WorkloadSettings

    p = lora_doctor.plan("meta-llama/Llama-2-7b-hf", mode="lora")
    assert p.settings.workload == WorkloadSettings(trainer="hf")
    assert p.settings.parallel == ParallelSettings(num_gpus=1, strategy=None)
    assert p.settings.inputs == InputSettings()


@pytest.mark.parametrize("kwargs", [{"trainer": "ppo"}, {"strategy": "zero9", "num_gpus": 2}, {"num_gpus": 0},
                                    {"offload": "disk"}, {"images_per_sample": -1}])
def test_unknown_axis_values_are_one_clear_error(kwargs):
    with pytest.raises(lora_doctor.InvalidSettingError):
        lora_doctor.plan("meta-llama/Llama-2-7b-hf", **kwargs)
