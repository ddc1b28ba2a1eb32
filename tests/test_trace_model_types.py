"""Model types whose trace used to fail (benchmarks/trace_sweep.py --all), one mechanism each: the tiny
configs (DeepSeek-V2's routing, MLA's key/value heads), the build in the load dtype (GPT-1's causal-mask
buffer), shared submodules named by their running parent, balanced routing where the model reads it in
Python (JetMoE, LongCat-Flash, DBRX's looping experts), Qwen4-Exp's real causal mask, LongCat-Flash's layer count and MiniMax's lightning-attention block."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from lora_doctor.measure.tiny import tiny_config
from lora_doctor.models import resolve
from lora_doctor.plan_types import PlanSettings
from lora_doctor.trace import trace_step


def test_tiny_configs_route_and_expand_mla_to_every_head():
    assert tiny_config("deepseek_v2")["num_experts_per_tok"] == 2   # its default None cannot route
    for model_type in ("deepseek_v32", "deepseek_v3", "glm_moe_dsa"):
        cfg = tiny_config(model_type)
        assert cfg["num_key_value_heads"] == cfg["num_attention_heads"], model_type
    assert "num_experts_per_tok" not in tiny_config("llama")


def test_buffers_made_at_init_take_the_load_dtype_as_from_config_does():
    """GPT-1's causal mask is made in the default dtype: bf16 in a bf16 load, so the trace's must be too."""
    import transformers

    from lora_doctor.introspect import build_meta_model

    resolved = resolve(tiny_config("openai-gpt"))
    meta = build_meta_model(resolved.config(), dtype=torch.bfloat16)
    real = transformers.AutoModelForCausalLM.from_config(resolved.config(), dtype=torch.bfloat16)
    assert {n: b.dtype for n, b in meta.named_buffers()} == {n: b.dtype for n, b in real.named_buffers()}
    masks = [b for n, b in meta.named_buffers() if n.endswith("attn.bias")]
    assert masks and all(b.dtype == torch.bfloat16 for b in masks)
    assert resolved.arch.load_dtype_buffer_params == sum(b.numel() for b in masks)
    assert resolve(tiny_config("llama")).arch.load_dtype_buffer_params == 0   # only rope's fp32 inv_freq


def test_gpt1_fake_step_equals_real_step():
    resolved = resolve(tiny_config("openai-gpt"))
    s = PlanSettings(mode="full", batch_size=1, seq_len=64)
    fake = trace_step(resolved, s, foreach=False)
    real = trace_step(resolved, s, fake=False, steps=2, prime=False, foreach=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.005)


def test_shared_submodule_is_named_by_its_running_parent():
    from lora_doctor.trace.modules import module_scope

    act = nn.GELU()
    model = nn.Sequential(*(nn.Sequential(nn.Linear(4, 4), act) for _ in range(3)))
    seen: list[str] = []
    with module_scope(model, lambda name: seen.append(name) if name.endswith(".1") else None):
        model(torch.zeros(1, 4))
    assert seen == ["0.1", "1.1", "2.1"]


@pytest.mark.parametrize("model_type,rel", [("jetmoe", 0.005), ("longcat_flash", 0.02)])
def test_balanced_routing_fake_step_matches_real_routing(model_type, rel):
    """Fake trace with a balanced router vs the real step routing by its random weights. JetMoE's memory does not
    depend on the routing; LongCat-Flash's zero experts skip the MLP, so its share moves the peak a little."""
    import importlib

    from torch._subclasses.fake_tensor import FakeTensor

    from lora_doctor.trace.routing import ROUTERS

    resolved = resolve(tiny_config(model_type))
    module_name, dotted, _, _ = ROUTERS[model_type]
    cls_name, attr = dotted.split(".")
    owner = getattr(importlib.import_module(module_name), cls_name)
    original, tolist = vars(owner)[attr], FakeTensor.tolist
    s = PlanSettings(mode="lora", target_modules="all-linear", batch_size=2, seq_len=64)
    fake = trace_step(resolved, s, foreach=False)
    real = trace_step(resolved, s, fake=False, steps=2, prime=False, foreach=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=rel)
    assert vars(owner)[attr] is original and FakeTensor.tolist is tolist   # restored after the trace


def test_looping_experts_are_found_by_code_and_balanced():
    """DBRX's experts loop over ``nonzero`` of the router's one-hot: found on the model by that code (not by model
    type), given balanced real indices in the fake trace, restored after; the peak is the real step's."""
    from lora_doctor.trace.routing import looping_experts

    resolved = resolve(tiny_config("dbrx"))
    found = looping_experts(resolved.meta_model())
    assert [cls.__name__ for cls in found] == ["DbrxExperts"]
    assert looping_experts(resolve(tiny_config("mixtral")).meta_model()) == []   # grouped_mm traces as it is
    original = vars(found[0])["forward"]
    s = PlanSettings(mode="lora", target_modules="all-linear", batch_size=2, seq_len=64)
    fake = trace_step(resolved, s, foreach=False)
    real = trace_step(resolved, s, fake=False, steps=2, prime=False, foreach=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.005)
    assert vars(found[0])["forward"] is original


def test_qwen4_exp_indexer_reads_a_real_causal_mask():
    """Qwen4-Exp's QSA indexer runs ``nonzero`` over each query's visible keys: the trace builds its causal mask
    for real (trace/metadata.py), so the indexer's loop runs as in a real step."""
    resolved = resolve(tiny_config("qwen4_exp_text"))
    s = PlanSettings(mode="lora", target_modules="all-linear", batch_size=1, seq_len=32)
    fake = trace_step(resolved, s, foreach=False)
    real = trace_step(resolved, s, fake=False, steps=2, prime=False, foreach=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.005)


def test_balanced_assignments():
    from lora_doctor.trace.routing import balanced_counts, balanced_topk

    assert balanced_counts(10, 4) == [3, 3, 2, 2]
    idx = balanced_topk(6, 2, 5)
    assert idx.shape == (6, 2) and all(len(set(row.tolist())) == 2 for row in idx)
    assert torch.bincount(idx.flatten(), minlength=5).tolist() == [3, 3, 2, 2, 2]


def test_longcat_layers_are_its_decoder_layer_modules():
    from lora_doctor.memory.derive import layer_kinds

    resolved = resolve(tiny_config("longcat_flash"))
    model = resolved.meta_model()
    assert resolved.arch.num_layers == len(model.model.layers) == resolved.config().num_layers
    assert len(layer_kinds(model, resolved.arch.num_layers)) == resolved.arch.num_layers


def test_minimax_lightning_block_is_a_window():
    from lora_doctor.memory.layer_terms import long_regime, window_of

    arch = resolve(tiny_config("minimax")).arch
    assert arch.extra["linear_attention_block"] == 256 and window_of(arch) == 256
    assert long_regime(arch, 512) and not long_regime(arch, 128)
    assert "linear_attention_block" not in resolve(tiny_config("llama")).arch.extra
