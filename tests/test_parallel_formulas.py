"""The parallel layer's formulas: ZeRO against DeepSpeed's estimators, DDP buckets, FSDP units, validation."""

from __future__ import annotations

import re

import pytest

from lora_doctor import InvalidSettingError, plan
from lora_doctor.parallel.zero import auto_values, zero_model_states
from lora_doctor.plan_types import TENSOR_TERMS

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=256)
P, LAYER = 6_738_415_616, 131_072_000   # Llama-2-7B: parameters, largest module (embed_tokens)


def _deepspeed_estimators():
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except Exception as exc:  # not installed, or no usable accelerator backend
        pytest.skip(f"deepspeed cannot be imported here: {exc}")
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_zero2_and_zero3_gpu_states_equal_deepspeeds_estimators(n):
    zero2, zero3 = _deepspeed_estimators()
    _, ds2 = zero2(P, num_gpus_per_node=n, cpu_offload=False)
    _, ds2_off = zero2(P, num_gpus_per_node=n, cpu_offload=True)
    assert abs(zero_model_states(P, n, 2).gpu - ds2) <= 4
    assert abs(zero_model_states(P, n, 2, offload="optimizer").gpu - ds2_off) <= 4
    for offload, flags in ((None, dict(cpu_offload=False)),
                           ("optimizer", dict(cpu_offload=True, cpu_offload_params=False)),
                           ("all", dict(cpu_offload=True, cpu_offload_params=True))):
        _, ds3, _ = zero3(P, LAYER, num_gpus_per_node=n, **flags)
        assert abs(zero_model_states(P, n, 3, largest_layer=LAYER, offload=offload).gpu - ds3) <= 4, offload


def test_zero_stages_follow_the_paper_with_deepspeeds_fp32_gradients():
    n = 8
    s1, s2, s3 = (zero_model_states(P, n, stage) for stage in (1, 2, 3))
    assert s1.gpu == pytest.approx(2 * P + 2 * P + 16 * P / n, abs=8)
    assert s2.gpu == pytest.approx(2 * P + 18 * P / n, abs=8)
    assert s3.gpu == pytest.approx(18 * P / n, abs=8)
    assert zero_model_states(P, n, 3, offload="all").host == pytest.approx(18 * P / n, abs=8)


def test_ddp_buckets_are_a_second_copy_of_the_gradients_unless_views():
    one = plan(TINY, mode="full", device="cpu")
    ddp = plan(TINY, mode="full", device="cpu", num_gpus=2)
    grads = one.trainable_params * 2          # bf16 gradients
    assert ddp.settings.parallel.strategy == "ddp"
    assert ddp.breakdown["parallel_buffers"] == grads
    for phase, total in one.details["phases"].items():
        assert ddp.details["phases"][phase] == total + grads
    view = plan(TINY, mode="full", device="cpu", num_gpus=2, parallel_options={"gradient_as_bucket_view": True})
    assert view.details["phases"]["optimizer_step"] == one.details["phases"]["optimizer_step"]
    assert view.details["phases"]["backward_start"] == one.details["phases"]["backward_start"] + grads


def test_fsdp_units_match_the_real_model():
    import torch
    from transformers import AutoModelForCausalLM

    from lora_doctor.models import config_from_dict, resolve
    from lora_doctor.parallel.context import Context

    model = AutoModelForCausalLM.from_config(config_from_dict(TINY), dtype=torch.float32)
    layer = sum(p.numel() for p in model.model.layers[0].parameters())
    ctx = Context(resolve(TINY).arch, plan(TINY).settings, None, {}, "cpu")  # type: ignore[arg-type]
    assert ctx.layer_params == layer
    assert ctx.root_params == sum(p.numel() for p in model.parameters()) - 2 * layer


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_full_sharding_splits_weights_and_states(strategy):
    one = plan("meta-llama/Llama-2-7b-hf", mode="full")
    eight = plan("meta-llama/Llama-2-7b-hf", mode="full", num_gpus=8, strategy=strategy)
    assert eight.breakdown["weights"] == pytest.approx(one.breakdown["weights"] / 8, rel=1e-6)
    assert eight.peak_bytes < one.peak_bytes / 2
    assert sum(eight.breakdown[t] for t in TENSOR_TERMS) == eight.peak_bytes


def test_lora_base_is_replicated_by_zero2_and_sharded_by_zero3():
    one = plan("meta-llama/Llama-2-7b-hf", mode="lora")
    z2 = plan("meta-llama/Llama-2-7b-hf", mode="lora", num_gpus=8, strategy="zero2")
    z3 = plan("meta-llama/Llama-2-7b-hf", mode="lora", num_gpus=8, strategy="zero3")
    assert z2.breakdown["weights"] >= one.breakdown["weights"]
    assert z3.breakdown["weights"] < one.breakdown["weights"] / 7


def test_fsdp_qlora_shards_4bit_weights_only_with_float_quant_storage():
    bf16 = plan("meta-llama/Llama-2-7b-hf", mode="qlora", num_gpus=4, strategy="fsdp")
    uint8 = plan("meta-llama/Llama-2-7b-hf", mode="qlora", num_gpus=4, strategy="fsdp",
                 parallel_options={"quant_storage": "uint8"})
    assert uint8.breakdown["weights"] > 2 * bf16.breakdown["weights"]
    assert any("bnb_4bit_quant_storage" in n for n in uint8.notes)


def test_offload_reports_host_ram_per_node():
    p = plan("meta-llama/Llama-2-7b-hf", mode="full", num_gpus=8, strategy="zero3", offload="all")
    assert p.host_peak_bytes == pytest.approx(18 * p.total_params, rel=0.01)   # 8 ranks x 18P/8
    assert plan("meta-llama/Llama-2-7b-hf", mode="full", num_gpus=8, strategy="zero3").host_peak_bytes is None


def test_reduce_bucket_auto_follows_the_trainers_fill():
    assert auto_values(4096)["reduce_bucket_size"] == 4096 * 4096
    p = plan("meta-llama/Llama-2-7b-hf", mode="full", num_gpus=8, strategy="zero2",
             parallel_options={"reduce_bucket_size": "auto"})
    assert "reduce_bucket_size 16,777,216" in " ".join(p.notes)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_gpus=0), "num_gpus"),
    (dict(num_gpus=2, strategy="zero4"), "strategy"),
    (dict(num_gpus=2, strategy="ddp", offload="optimizer"), "DDP cannot offload"),
    (dict(num_gpus=2, strategy="zero2", offload="all"), "zero3"),
    (dict(num_gpus=2, strategy="fsdp", offload="optimizer"), "offload='all'"),
    (dict(num_gpus=2, parallel_options={"reduce_bucket": 1}), "unknown parallel option"),
    (dict(num_gpus=2, engine="trace"), "trace engine"),
])
def test_bad_parallel_settings_raise_one_clear_error(kwargs, message):
    with pytest.raises(InvalidSettingError, match=message):
        plan(TINY, **kwargs)


def test_recommendation_says_how_many_gpus_and_never_raises():
    p = plan("meta-llama/Llama-2-70b-hf", mode="full", gpu="A100-80GB")
    assert not p.fits
    assert "x A100-80GB with" in p.recommendation and "--strategy" in p.recommendation
    small = plan("meta-llama/Llama-2-7b-hf", mode="full", gpu="A100-80GB", num_gpus=8, strategy="ddp",
                 seq_len=4096, batch_size=8)
    assert "zero3" in small.recommendation or small.fits


def test_scale_out_names_gpu_counts_people_launch():
    # activations over ~4k vision patches do not shard: FSDP only fits at 256 GPUs, ZeRO-3 with offload at 2
    p = plan("Qwen/Qwen2.5-VL-7B-Instruct", mode="full", gpu="24GB", images_per_sample=1, image_size=(1024, 768))
    assert not p.fits
    counts = [int(c) for c in re.findall(r"(\d+)x 24GB with", p.recommendation)]
    assert counts and max(counts) <= 64
    # the fastest option is named beside the cheapest one only within 8x its GPU count
    assert len(counts) == 1 or max(counts) <= 8 * min(counts)
    llama = plan("meta-llama/Llama-2-7b-hf", mode="full", gpu="24GB")
    assert re.findall(r"(\d+)x 24GB with", llama.recommendation) == ["16", "2"]
