"""Real Trainer runs on CPU with tiny random Llamas: healthy, exploding, NaN, dead adapters, broken sources."""

from callback_support import tiny_llama, tiny_lora, trainer_factory  # noqa: F401  first: offline env; fixture

import io
import math
import os
import warnings

import pytest
import torch
from transformers import TrainerCallback

from lora_doctor import LoraDoctorCallback
from lora_doctor.callback import DoctorConsole, LoraDoctorWarning, Thresholds

pytestmark = pytest.mark.slow
STEPS, BAD_STEP = 20, 15


class ScaleGradientsAt(TrainerCallback):
    """Multiplies every trainable gradient by ``factor`` during optimizer step ``step`` (a tensor hook)."""

    def __init__(self, model, step, factor):
        self.step, self.factor, self.active = step, factor, False
        for p in model.parameters():
            if p.requires_grad:
                p.register_hook(lambda g: g * self.factor if self.active else g)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step + 1 == self.step


class SeesLogs(TrainerCallback):
    """Stands in for a report_to integration (they run before user callbacks)."""

    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def quiet(**kw):
    out = io.StringIO()
    return LoraDoctorCallback(console=DoctorConsole(file=out), **kw), out


def problems(cb):
    return [f for f in cb.findings if f.severity != "info"]


def test_healthy_lora_run(trainer_factory):
    cb, out = quiet()
    reporter = SeesLogs()
    trainer = trainer_factory(tiny_lora(), cb, max_steps=STEPS, logging_steps=5, extra_callbacks=[reporter])
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoraDoctorWarning)
        trainer.train()
    assert problems(cb) == [] and cb.stopped_at is None
    assert trainer.state.global_step == STEPS
    # the planner (at the dataset's longest example) and the config doctor ran on the real model
    settings = cb.report.plan.settings
    assert (settings.mode, settings.batch_size, settings.seq_len, settings.r) == ("lora", 4, 16, 4)
    assert not {"planner-unavailable", "doctor-unavailable"} & {f.code for f in cb.findings}
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(entry["doctor/grad_norm"] == pytest.approx(entry["grad_norm"], rel=1e-4) for entry in logged)
    # metrics reach callbacks that run before ours (report_to integrations)
    assert all("doctor/grad_norm_median" in entry for entry in reporter.logs if "loss" in entry)
    assert "doctor/dead_adapters" in logged[-1] and logged[-1]["doctor/dead_adapters"] == 0
    text = out.getvalue()
    assert "lora-doctor pre-flight" in text and "doctor step 20" in text and "\x1b[" not in text


def test_healthy_full_finetuning_run(trainer_factory):
    cb, _ = quiet()
    trainer = trainer_factory(tiny_llama(), cb, max_steps=12, logging_steps=4, lr=1e-4)
    trainer.train()
    assert problems(cb) == [] and cb.report.summary.mode == "full"


@pytest.mark.parametrize("action", ["warn", "stop"])
def test_explosion_alarm_at_the_injected_step(trainer_factory, action):
    model = tiny_lora()
    cb, out = quiet(on_explosion=action)
    trainer = trainer_factory(model, cb, max_steps=STEPS, logging_steps=5,
                              extra_callbacks=[ScaleGradientsAt(model, BAD_STEP, 1e3)])
    trainer.train()
    [alarm] = [f for f in cb.findings if f.code == "grad-norm-spike"]
    assert alarm.data["step"] == BAD_STEP and alarm.data["top_modules"]
    assert "lora-doctor alarm" in out.getvalue()
    if action == "warn":
        assert cb.stopped_at is None and trainer.state.global_step == STEPS
    else:
        assert cb.stopped_at == BAD_STEP == trainer.state.global_step
        assert os.path.isfile(os.path.join(cb.checkpoint, "adapter_model.safetensors"))
        assert os.path.isfile(os.path.join(cb.checkpoint, "trainer_state.json"))
        stopped = [f for f in cb.findings if f.code == "training-stopped"]
        assert stopped and cb.checkpoint in stopped[0].message


def test_nan_gradients_stop_with_finite_checkpoint(trainer_factory):
    from safetensors.torch import load_file

    model = tiny_lora()
    cb, _ = quiet()   # on_nonfinite="stop" is the default
    trainer = trainer_factory(model, cb, max_steps=STEPS, logging_steps=5,
                              extra_callbacks=[ScaleGradientsAt(model, 6, math.nan)])
    trainer.train()
    codes = [f.code for f in cb.findings]
    assert "grad-norm-non-finite" in codes and cb.stopped_at == 6 == trainer.state.global_step
    saved = load_file(os.path.join(cb.checkpoint, "adapter_model.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert "last finite ones" in next(f.message for f in cb.findings if f.code == "training-stopped")


def test_nan_loss_in_full_finetuning(trainer_factory):
    model = tiny_llama()
    state = {"step": 0}

    class Step(TrainerCallback):
        def on_step_begin(self, args, s, control, **kwargs):
            state["step"] = s.global_step + 1

    def poison(module, args, output):
        if module.training and state["step"] == 4:
            output.loss = output.loss * math.nan
        return output

    model.register_forward_hook(poison)
    cb, _ = quiet(on_nonfinite="warn")
    trainer = trainer_factory(model, cb, max_steps=8, logging_steps=4, extra_callbacks=[Step()])
    trainer.train()
    steps = {f.code: f.data["step"] for f in cb.findings if f.code in {"loss-non-finite", "grad-norm-non-finite", "loss-spike", "grad-norm-spike"}}
    assert steps == {"loss-non-finite": 4, "grad-norm-non-finite": 4}
    assert cb.stopped_at is None and trainer.state.global_step == 8


def test_zero_a_and_b_is_caught(trainer_factory):
    model = tiny_lora()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name:
                p.zero_()
    cb, _ = quiet(thresholds=Thresholds(dead_adapter_steps=5))
    trainer_factory(model, cb, max_steps=8, logging_steps=4).train()
    codes = {f.code: f for f in cb.findings}
    assert codes["init-both-zero"].severity == "error"
    assert codes["adapters-dead"].data["count"] == 4


def test_crashing_metric_sources_do_not_stop_training(trainer_factory, monkeypatch):
    from lora_doctor.callback import memory, monitor

    def boom(*args, **kwargs):
        raise RuntimeError("metric source exploded")

    monkeypatch.setattr(monitor, "delta_norms", boom)
    monkeypatch.setattr(memory.MemoryMeter, "read", boom)
    cb, _ = quiet()
    trainer = trainer_factory(tiny_lora(), cb, max_steps=6, logging_steps=2)
    with pytest.warns(LoraDoctorWarning) as record:
        trainer.train()
    assert trainer.state.global_step == 6
    assert len(record) == 2   # once per failing source, not once per step
    assert [f.data["where"] for f in cb.findings if f.code == "callback-internal-error"] == [
        "adapter checks", "memory readings"]


def test_only_the_main_process_prints(trainer_factory):
    cb, out = quiet()
    trainer = trainer_factory(tiny_lora(), cb, max_steps=3, logging_steps=1)
    original = cb.on_train_begin

    def as_rank_one(args, state, control, **kwargs):
        state.is_world_process_zero = False
        return original(args, state, control, **kwargs)

    cb.on_train_begin = as_rank_one
    trainer.train()
    assert out.getvalue() == "" and cb.report is not None   # detection still ran


def test_bad_options_are_rejected():
    from lora_doctor.errors import InvalidSettingError

    with pytest.raises(InvalidSettingError):
        LoraDoctorCallback(on_explosion="panic")
    with pytest.raises(InvalidSettingError):
        LoraDoctorCallback(check_every=0)


def test_grad_norm_matches_trainer_under_gradient_accumulation(trainer_factory):
    cb, _ = quiet()
    trainer = trainer_factory(tiny_lora(), cb, max_steps=4, logging_steps=1, gradient_accumulation_steps=3)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "grad_norm" in entry]
    assert len(logged) == 4
    assert all(entry["doctor/grad_norm"] == pytest.approx(entry["grad_norm"], rel=1e-4) for entry in logged)


def test_gpu_option_is_validated_up_front():
    from lora_doctor.errors import InvalidGpuError

    assert LoraDoctorCallback(gpu="24GB").gpu.memory_bytes == 24 * 1024**3
    assert LoraDoctorCallback(gpu="auto").gpu is None   # the local GPU, looked up before step 1
    with pytest.raises(InvalidGpuError):
        LoraDoctorCallback(gpu="a potato")


def test_same_callback_in_a_second_train_call(trainer_factory):
    cb, _ = quiet()
    first, second = tiny_lora(), tiny_lora(seed=1)
    trainer_factory(first, cb, max_steps=3, logging_steps=1).train()
    trainer_factory(second, cb, max_steps=3, logging_steps=1).train()
    assert problems(cb) == []
    hooks = lambda model: sum(len(p._post_accumulate_grad_hooks or {}) for p in model.parameters())  # noqa: E731
    assert hooks(first) == 0 and hooks(second) == 0   # removed at the end of each run


def test_doctor_loss_matches_the_trainer_loss_with_gradient_accumulation(tmp_path):
    from callback_support import make_trainer

    cb = LoraDoctorCallback(console=False, preflight=False)
    trainer = make_trainer(tiny_lora(), cb, tmp_path, max_steps=3, gradient_accumulation_steps=4)
    trainer.train()
    logged = [(h["loss"], h["doctor/loss"]) for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 3
    assert all(d == pytest.approx(l, rel=1e-3) for l, d in logged)  # summed micro-batch losses, not their mean


def test_stop_checkpoint_exists_even_when_the_save_strategy_overrides_it(tmp_path):
    """save_strategy="best" resets should_save after our callback: the stop checkpoint must still be on disk."""
    from transformers import Trainer, TrainingArguments

    from callback_support import TokenDataset

    model = tiny_lora()
    calls = {"n": 0}

    def poison(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == 5:
                return output * float("nan")

    model.base_model.model.model.norm.register_forward_hook(poison)
    cb = LoraDoctorCallback(console=False, preflight=False)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4, learning_rate=1e-3,
                             logging_steps=1, save_strategy="best", eval_strategy="steps", eval_steps=1,
                             metric_for_best_model="loss", report_to="none", disable_tqdm=True, use_cpu=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=TokenDataset(), eval_dataset=TokenDataset(8), callbacks=[cb])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    assert cb.stopped_at == 5 and os.path.isdir(cb.checkpoint)
    assert any(name.startswith("adapter_model") for name in os.listdir(cb.checkpoint))
