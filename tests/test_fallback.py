"""Auto-fallback: the lever search, load_for_training, in-place 4-bit conversion, the callback option
and oom_guard. CPU only, real bitsandbytes NF4, tiny random Llama models (no download)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from callback_support import TokenDataset  # noqa: F401  (sets offline env, one thread)
from lora_doctor.errors import GpuNotAvailableError, WontFitError
from lora_doctor.fallback.decision import decide
from lora_doctor.plan_types import MemoryPlan, PlanSettings

TARGETS = ["q_proj", "v_proj"]
BATCH, SEQ, VOCAB = 2, 8, 64


# ---- the lever search (pure) ---------------------------------------------------------------
def _fake_plan(s: PlanSettings) -> MemoryPlan:
    peak = 100 * s.batch_size + (0 if s.gradient_checkpointing else 50) + (0 if s.mode == "qlora" else 300)
    return MemoryPlan(model="fake", settings=s, breakdown={"weights": peak}, peak_bytes=peak,
                      device_peak_bytes=peak, total_params=0, trainable_params=0)


@pytest.mark.parametrize("capacity, levers, micro, accum", [
    (2000, [], 8, 1),
    (1100, ["gradient_checkpointing"], 8, 1),
    (800, ["gradient_checkpointing", "quantize_4bit"], 8, 1),
    (450, ["gradient_checkpointing", "quantize_4bit", "micro_batch"], 4, 2),
    (100, ["gradient_checkpointing", "quantize_4bit", "micro_batch"], 1, 8),
])
def test_levers_in_order_keep_the_effective_batch(capacity, levers, micro, accum):
    decision = decide(PlanSettings(batch_size=8), capacity, _fake_plan)
    assert decision.changed == levers and decision.fits
    assert (decision.micro_batch_size, decision.gradient_accumulation_steps) == (micro, accum)
    assert decision.micro_batch_size * decision.gradient_accumulation_steps == 8
    assert decision.plan.device_peak_bytes <= capacity
    d = decision.to_dict()
    assert [s["lever"] for s in d["steps"]] == ["as_requested", *levers] and d["plan"]["model"] == "fake"
    assert "fits" in decision.summary().splitlines()[-1 if accum == 1 else -2]


def test_nothing_fits_raises_with_the_plan():
    with pytest.raises(WontFitError, match="nothing fits") as info:
        decide(PlanSettings(batch_size=8), 99, _fake_plan)
    assert info.value.plan.settings.batch_size == 1 and info.value.plan.settings.mode == "qlora"
    assert info.value.decision.fits is False


def test_import_stays_light():
    import subprocess
    import sys

    code = "import sys, lora_doctor; lora_doctor.FallbackDecision; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=".")


# ---- tiny models ----------------------------------------------------------------------------
def _config():
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64)


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, task_type="CAUSAL_LM")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(_config(), dtype=torch.bfloat16).save_pretrained(path)
    return str(path)


def _peaks(model, batch_size: int = BATCH, **settings):
    import lora_doctor

    kw = dict(dict(batch_size=batch_size, seq_len=SEQ, r=4, lora_alpha=8, target_modules=TARGETS),
              **settings, gradient_checkpointing=True)
    return (lora_doctor.plan(model, mode="qlora", **kw).device_peak_bytes,
            lora_doctor.plan(model, mode="lora", **kw).device_peak_bytes)


def _train(model, steps: int = 2) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    losses = []
    for i in range(steps):
        x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(i))
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
    return losses


def _is_4bit(linear) -> bool:
    import bitsandbytes as bnb

    return isinstance(linear, bnb.nn.Linear4bit)


# ---- load_for_training ----------------------------------------------------------------------
def test_load_for_training_falls_back_to_4bit_and_trains(saved_model):
    import lora_doctor

    qlora, lora = _peaks(saved_model)
    assert qlora < lora
    model, decision = lora_doctor.load_for_training(saved_model, _lora_config(), gpu=(qlora + lora) // 2,
                                                    batch_size=BATCH, seq_len=SEQ)
    assert decision.changed == ["gradient_checkpointing", "quantize_4bit"] and decision.quantized
    assert decision.plan.device_peak_bytes == qlora and decision.fits
    layer = model.get_base_model().model.layers[0]
    assert _is_4bit(layer.self_attn.q_proj.base_layer) and _is_4bit(layer.mlp.down_proj)
    assert not _is_4bit(model.get_base_model().lm_head)
    assert model.get_base_model().is_gradient_checkpointing
    assert all(math.isfinite(v) for v in _train(model))


def test_load_for_training_wont_fit_loads_nothing(saved_model, monkeypatch):
    import lora_doctor
    from transformers import AutoModelForCausalLM

    def no_loading(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_loading)
    qlora, _ = _peaks(saved_model, batch_size=1)   # the smallest micro-batch with every lever
    with pytest.raises(WontFitError) as info:
        lora_doctor.load_for_training(saved_model, _lora_config(), gpu=qlora - 1, batch_size=BATCH, seq_len=SEQ)
    assert info.value.plan.mode == "qlora" and info.value.plan.fits is False
    assert info.value.plan.settings.batch_size == 1 and info.value.decision.changed[-1] == "micro_batch"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message")
def test_load_for_training_auto_without_gpu_says_what_to_pass(saved_model):
    import lora_doctor

    with pytest.raises(GpuNotAvailableError, match="gpu=None"):
        lora_doctor.load_for_training(saved_model, _lora_config(), batch_size=BATCH, seq_len=SEQ)


# ---- in-place conversion --------------------------------------------------------------------
def _tiny_peft():
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    return get_peft_model(AutoModelForCausalLM.from_config(_config()), _lora_config())


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _nf4_round_trip(model) -> float:
    """Replace each convertible weight by its NF4 dequantization (fp32); the largest weight error."""
    import bitsandbytes.functional as F
    from lora_doctor.fallback.convert import convertible_linears

    worst = 0.0
    for _name, _parent, _attr, linear in convertible_linears(model):
        w = linear.weight.data
        packed, state = F.quantize_4bit(w, quant_type="nf4", compress_statistics=True)
        rounded = F.dequantize_4bit(packed, state)
        worst = max(worst, _relative(rounded, w))
        linear.weight.data = rounded
    return worst


def test_in_place_conversion_keeps_outputs_params_and_optimizer():
    import copy

    from lora_doctor.fallback.convert import quantize_base_linears

    model = _tiny_peft()
    x = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(7))
    model.eval()
    reference = copy.deepcopy(model)
    weight_error = _nf4_round_trip(reference)
    with torch.no_grad():
        before, nf4 = model(input_ids=x).logits, reference(input_ids=x).logits
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-3)
    conversion = quantize_base_linears(model)
    assert len(conversion.converted) == 14 and conversion.freed_bytes > 0.7 * conversion.bytes_before
    with torch.no_grad():
        after = model(input_ids=x).logits
    rel, vs_nf4 = _relative(after, before), _relative(after, nf4)
    print(f"NF4 relative error: weights {weight_error:.4f}, logits {rel:.4f}, vs NF4 reference {vs_nf4:.4f}")
    assert 0 < rel < 2 * weight_error     # the model's error stays within the NF4 weight error
    assert vs_nf4 < 0.02                  # and is that error: only bf16 compute rounding on top
    now = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert now.keys() == trainable.keys() and all(now[n] is trainable[n] for n in now)
    assert not _is_4bit(model.get_base_model().lm_head)
    model.train()
    loss = model(input_ids=x, labels=x).loss
    loss.backward()
    optimizer.step()   # the optimizer made before the conversion still holds the live adapters
    assert math.isfinite(float(loss.detach())) and all(math.isfinite(v) for v in _train(model))


# ---- the callback option --------------------------------------------------------------------
def _args(tmp_path, steps: int = 2):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=steps, per_device_train_batch_size=BATCH,
                             learning_rate=1e-3, save_strategy="no", report_to="none", disable_tqdm=True,
                             use_cpu=True, seed=0, dataloader_num_workers=0, logging_steps=1)


def _trainer(model, callback, tmp_path):
    from transformers import Trainer

    return Trainer(model=model, args=_args(tmp_path), train_dataset=TokenDataset(n=16, seq=SEQ, vocab=VOCAB),
                   callbacks=[callback])


def _callback_peaks(model, tmp_path):
    from lora_doctor.callback.lora_stats import summarize
    from lora_doctor.callback.preflight import plan_settings

    settings = plan_settings(model, _args(tmp_path), summarize(model), BATCH, SEQ)
    return _peaks(model, **{k: v for k, v in settings.items()
                            if k not in ("batch_size", "seq_len", "mode", "gradient_checkpointing")})


def test_callback_auto_fallback_converts_and_trains(tmp_path):
    from lora_doctor import LoraDoctorCallback

    assert LoraDoctorCallback().auto_fallback is False
    model = _tiny_peft()
    qlora, lora = _callback_peaks(model, tmp_path)
    assert qlora < lora
    callback = LoraDoctorCallback(auto_fallback=True, gpu=(qlora + lora) // 2, console=False)
    ids = {n: id(p) for n, p in model.named_parameters() if p.requires_grad}
    trainer = _trainer(model, callback, tmp_path)
    trainer.train()
    assert trainer.state.global_step == 2
    assert all(math.isfinite(h["loss"]) for h in trainer.state.log_history if "loss" in h)
    assert _is_4bit(model.get_base_model().model.layers[1].mlp.up_proj)
    assert {n: id(p) for n, p in model.named_parameters() if p.requires_grad} == ids
    found = next(f for f in callback.findings if f.code == "auto-fallback-applied")
    assert found.data["changed"] == ["gradient_checkpointing", "quantize_4bit"]
    assert callback.report.plan.mode == "qlora" and callback.report.plan.fits


def test_callback_auto_fallback_stops_before_the_first_step(tmp_path):
    from lora_doctor import LoraDoctorCallback

    model = _tiny_peft()
    qlora, _ = _callback_peaks(model, tmp_path)
    callback = LoraDoctorCallback(auto_fallback=True, gpu=qlora - 1, console=False)
    trainer = _trainer(model, callback, tmp_path)
    with pytest.raises(WontFitError):
        trainer.train()
    assert trainer.state.global_step == 0 and callback.findings[-1].code == "auto-fallback-wont-fit"
    assert not _is_4bit(model.get_base_model().model.layers[0].mlp.up_proj)


# ---- oom_guard ------------------------------------------------------------------------------
def test_oom_guard_turns_a_real_oom_into_a_diagnosis(tmp_path):
    import lora_doctor
    from lora_doctor.fallback.oom import TrainingOutOfMemoryError
    from transformers import TrainerCallback

    model = _tiny_peft()
    trainer = _trainer(model, TrainerCallback(), tmp_path)

    def out_of_memory(*_):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model.get_base_model().model.layers[1].register_forward_hook(out_of_memory)
    with pytest.raises(torch.OutOfMemoryError) as info:
        with lora_doctor.oom_guard(trainer, gpu="1GB"):
            trainer.train()
    error = info.value
    assert isinstance(error, TrainingOutOfMemoryError) and isinstance(error, lora_doctor.LoraDoctorError)
    assert isinstance(error.__cause__, torch.OutOfMemoryError)
    message = str(error)
    assert "predicted device peak" in message and "what to change" in message and "Tried to allocate" in message
    assert error.plan.settings.batch_size == BATCH and error.plan.settings.seq_len == SEQ


def test_callback_fallback_failure_other_than_wont_fit_never_breaks_training(tmp_path):
    """An architecture without gradient checkpointing: the fallback fails, training goes on with a warning."""
    from lora_doctor import LoraDoctorCallback

    model = _tiny_peft()
    base_cls = type(model.get_base_model())
    previous = base_cls.supports_gradient_checkpointing
    base_cls.supports_gradient_checkpointing = False
    try:
        qlora, lora = _callback_peaks(model, tmp_path)
        cb = LoraDoctorCallback(auto_fallback=True, gpu=(qlora + lora) // 2, console=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _trainer(model, cb, tmp_path).train()
    finally:
        base_cls.supports_gradient_checkpointing = previous
    assert "callback-internal-error" in [f.code for f in cb.findings]


def test_callback_fallback_monitor_reads_the_converted_weights(tmp_path):
    from lora_doctor import LoraDoctorCallback

    model = _tiny_peft()
    qlora, lora = _callback_peaks(model, tmp_path)
    cb = LoraDoctorCallback(auto_fallback=True, gpu=(qlora + lora) // 2, console=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(model, cb, tmp_path).train()
    codes = [f.code for f in cb.findings]
    assert "auto-fallback-applied" in codes and "memory-wont-fit" not in codes
    live = {id(m.base_layer.weight) for m in model.modules() if hasattr(m, "base_layer")}
    assert all(id(a.base_weight) in live for a in cb.monitor.adapters)  # no stale full-precision weights
