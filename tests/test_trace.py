"""The traced engine: fake-tensor step == real CPU step, MemoryPlan shape, fallback, plan()/CLI wiring."""

from __future__ import annotations

import json

import pytest

from lora_doctor import MemoryPlan
from lora_doctor.models import resolve
from lora_doctor.plan_types import DEVICE_TERMS, TENSOR_TERMS, PlanSettings

TINY = dict(model_type="llama", hidden_size=128, intermediate_size=344, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=2000)


@pytest.fixture(scope="module")
def tiny():
    return resolve(dict(TINY))


@pytest.mark.parametrize("mode,gc", [("lora", False), ("lora", True), ("qlora", False), ("full", False)])
def test_fake_step_equals_real_step(tiny, mode, gc):
    """Same code on fake tensors (one primed step) and on real CPU tensors (two steps): same peak."""
    from lora_doctor.trace import trace_step

    s = PlanSettings(mode=mode, batch_size=2, seq_len=64, gradient_checkpointing=gc)
    fake = trace_step(tiny, s, foreach=False)
    real = trace_step(tiny, s, fake=False, steps=2, prime=False, foreach=False)
    assert fake.peak_bytes == pytest.approx(real.peak_bytes, rel=0.005)
    assert fake.peak_phase == real.peak_phase


def test_trace_plan_is_a_memory_plan(tiny):
    from lora_doctor.trace import trace_plan

    p = trace_plan(tiny, PlanSettings(mode="lora", batch_size=1, seq_len=256))
    assert isinstance(p, MemoryPlan) and p.engine == "trace"
    assert set(p.breakdown) == set(TENSOR_TERMS) | set(DEVICE_TERMS)
    assert sum(p.breakdown[t] for t in TENSOR_TERMS) == p.peak_bytes
    assert p.device_peak_bytes == p.peak_bytes + sum(p.breakdown[t] for t in DEVICE_TERMS)
    assert p.peak_phase in ("forward", "backward", "optimizer_step")
    assert set(p.details["phases"]) == {"forward", "backward", "optimizer_step"}
    assert max(p.details["phases"].values()) == p.peak_bytes
    top = p.details["top_tensors"]
    assert 0 < len(top) <= 5 and top[0]["nbytes"] >= top[-1]["nbytes"]
    # the fp32 log-softmax of [tokens, vocab] is the classic biggest tensor
    assert any(t["dtype"] == "float32" and t["shape"][-1] == 2000 and t["term"] == "logits_and_loss" for t in top)
    adapters, states = p.breakdown["adapters"], p.breakdown["optimizer_states"]
    assert adapters > 0 and 2 * adapters < states <= 2 * adapters + 512 * 16  # exp_avg, exp_avg_sq + `step`
    assert p.trainable_params > 0 and p.lora_scale == 2.0 and p.targets
    json.dumps(p.to_dict())


def test_qlora_weights_have_true_packed_sizes(tiny):
    from lora_doctor.trace import trace_step

    s = PlanSettings(mode="qlora", batch_size=1, seq_len=32, double_quant=False)
    res = trace_step(tiny, s)
    arch = tiny.arch
    quantized = [f for f in arch.linear_families if f.scope != "head"]
    packed = sum(f.count * ((f.in_features * f.out_features + 1) // 2) for f in quantized)
    absmax = sum(f.count * (f.in_features * f.out_features // 64) * 4 for f in quantized)
    # quantization state: absmax (fp32 per 64 values) + a 16-entry code per layer, 512-byte rounded
    assert res.breakdown["quantization_state"] >= absmax
    assert res.breakdown["quantization_state"] < absmax + sum(f.count for f in quantized) * 2048
    # weights: packed uint8 + fp32 (prepare_model_for_kbit_training) embeddings, head and norms
    rest = (arch.total_params - sum(f.weight_params for f in quantized)) * 4
    assert res.breakdown["weights"] >= packed + rest


def test_trace_failure_falls_back_to_analytic(tiny, monkeypatch):
    from lora_doctor.trace import engine

    def boom(*a, **k):
        raise NotImplementedError("aten::frobnicate has no fake kernel")

    monkeypatch.setattr(engine, "trace_step", boom)
    p = engine.trace_plan(tiny, PlanSettings())
    assert p.engine == "analytic"
    assert "trace failed" in p.notes[0] and "frobnicate" in p.notes[0]


def test_plan_engine_trace_with_gpu_verdict():
    from lora_doctor.planner import plan

    p = plan(dict(TINY), mode="lora", seq_len=128, gpu="24GB", engine="trace")
    assert p.engine == "trace" and p.fits is True and p.max_batch_size and p.recommendation


def test_cli_plan_trace_json(tmp_path, capsys):
    from lora_doctor.cli import main

    (tmp_path / "config.json").write_text(json.dumps(TINY))
    code = main(["plan", str(tmp_path), "--trace", "--mode", "qlora", "--seq-len", "64", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["plans"][0]["engine"] == "trace" and out["plans"][0]["details"]["top_tensors"]


def test_replay_finds_peak_and_live_set():
    import torch

    from lora_doctor.measure.timeline import StorageTimeline, replay

    tl = StorageTimeline()
    with tl:
        tl.set_phase("forward")
        a = torch.ones(1000)          # 4000 B -> 4096
        b = torch.ones(2000)          # 8000 B -> 8192
        del a
        c = torch.ones(100)           # 400 B -> 512
        tl.set_phase("backward")
        del b, c
    r = replay(tl)
    assert r.peak_bytes == 4096 + 8192 and r.peak_phase == "forward" and r.final_bytes == 0
    assert sorted(rec.nbytes for rec in r.alive_at_peak) == [4096, 8192]


def test_models_without_sdpa_are_traced_with_eager_and_match_analytic():
    """Gemma-2 has no SDPA path: both engines plan eager attention and its soft-capping tensors."""
    from lora_doctor.memory.tables import CUBLAS_WORKSPACE_BYTES
    from lora_doctor.models import resolve
    from lora_doctor.memory.engine import analytic_plan as _analytic
    from lora_doctor.trace import trace_step

    gemma = resolve(dict(model_type="gemma2", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=4000))
    s = PlanSettings(mode="lora", batch_size=2, seq_len=256, target_modules="all-linear")
    traced = trace_step(gemma, s)
    assert any("eager" in n for n in traced.notes)
    analytic = _analytic(gemma, s).peak_bytes - CUBLAS_WORKSPACE_BYTES
    assert abs(analytic / traced.peak_bytes - 1) < 0.05
