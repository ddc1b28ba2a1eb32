"""The trainer axis: plan(trainer="sft"|"dpo"|"grpo"), TRL's version defaults, the trl --config YAML."""

from __future__ import annotations

import pytest

import lora_doctor
import lora_doctor.workloads as workloads
from lora_doctor import InvalidSettingError, plan
from lora_doctor.cli import main
from lora_doctor.workloads.fused_head import fused_head_bytes
from lora_doctor.workloads.grpo import kv_cache_bytes
from lora_doctor.workloads.trl_yaml import plan_kwargs, trl_field_names

LLAMA8B = "meta-llama/Llama-3.1-8B"
GIB = 2**30
TINY = dict(model_type="llama", hidden_size=64, intermediate_size=172, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096)


def test_sft_fused_head_removes_the_logits_that_trl_never_builds():
    """The issue's case: Llama-3.1-8B LoRA 4x1024 on 24 GB does not fit as a plain Trainer, fits under SFTTrainer."""
    kw = dict(mode="lora", batch_size=4, seq_len=1024, gpu="24GB", gradient_checkpointing=True)
    hf, sft = plan(LLAMA8B, **kw), plan(LLAMA8B, trainer="sft", **kw)
    assert hf.fits is False and sft.fits is True
    assert hf.breakdown["logits_and_loss"] > 5 * GIB
    assert sft.details["phases"]["backward_start"] < hf.details["phases"]["backward_start"] - 5 * GIB
    assert any("fused LM head" in n for n in sft.notes) and any("TRL" in n and "defaults" in n for n in sft.notes)


def test_fused_lm_head_false_plans_the_models_own_logits():
    kw = dict(mode="lora", batch_size=4, seq_len=1024, gradient_checkpointing=True)
    assert plan(LLAMA8B, trainer="sft", fused_lm_head=False, **kw).peak_bytes == plan(LLAMA8B, **kw).peak_bytes


def test_fused_head_cpu_formula_matches_trl_kernel_measured():
    """The CPU (torch fold) constants against the real TRL kernel under the live-storage tracker."""
    import torch
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction

    from lora_doctor.measure.tracker import StorageTracker

    n, h, v = 600, 64, 5000
    hidden = torch.randn(n, h, requires_grad=True)
    weight, targets = torch.randn(v, h), torch.randint(0, v, (n,))
    tracker = StorageTracker()
    tracker.register([hidden, weight, targets], "inputs")
    with tracker:
        logps, *_ = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 32768, None, 1.0,
                                                 ("log_probs", "entropy", "is_top1"))
        (-logps.sum()).backward()
    baseline = hidden.nbytes + weight.nbytes + targets.nbytes
    head = fused_head_bytes(tokens=n, hidden=h, vocab=v, stream=4, compute=4, head_weight=4, triton=False,
                            trains_head=False)
    predicted = max(head.forward, head.backward + n * h * 4)   # + the hidden gradient handed back
    assert predicted == pytest.approx(tracker.peak_bytes - baseline, rel=0.05)


def test_packing_plans_one_row_of_batch_times_max_length():
    packed = plan(TINY, trainer="sft", batch_size=4, seq_len=100, packing=True, max_length=256, device="cpu")
    assert any("4 packed sequences of max_length=256" in n for n in packed.notes)
    capped = plan(TINY, trainer="sft", batch_size=4, seq_len=4000, max_length=256, device="cpu")
    assert any("capped at max_length=256" in n for n in capped.notes)


def test_dpo_reference_model_copy_only_without_peft_or_precompute():
    kw = dict(batch_size=2, seq_len=512, trainer="dpo", gradient_checkpointing=True)
    full = plan(LLAMA8B, mode="full", **kw)
    pre = plan(LLAMA8B, mode="full", precompute_ref_log_probs=True, **kw)
    lora = plan(LLAMA8B, mode="lora", **kw)
    assert full.breakdown["weights"] - pre.breakdown["weights"] == pre.breakdown["weights"]
    assert "reference_forward" in lora.details["phases"]
    assert any("adapters disabled" in n for n in lora.notes)


def test_grpo_generation_phase_and_vllm_reserve():
    kw = dict(mode="lora", batch_size=8, seq_len=256, trainer="grpo", gradient_checkpointing=True)
    p = plan(LLAMA8B, max_completion_length=1024, **kw)
    assert list(p.details["phases"])[0] == "generation"
    arch = lora_doctor.models.resolve(LLAMA8B).arch
    assert kv_cache_bytes(arch, 8, 1280, 2) == 8 * 1280 * 32 * 2 * 8 * 128 * 2
    v = plan(LLAMA8B, use_vllm=True, gpu="80GB", **kw)
    assert v.breakdown["vllm_reserve"] == int(0.3 * 80 * GIB)
    assert p.details["phases"]["backward_start"] > 0 and "reference_forward" not in p.details["phases"]   # beta=0
    assert "reference_forward" in plan(LLAMA8B, beta=0.04, **kw).details["phases"]


def test_bad_trainer_settings_are_one_clear_error():
    with pytest.raises(InvalidSettingError, match="trainer must be one of"):
        plan(TINY, trainer="ppo")
    with pytest.raises(InvalidSettingError, match="unknown options for trainer='sft': num_generations"):
        plan(TINY, trainer="sft", num_generations=4)
    with pytest.raises(InvalidSettingError, match="packing must be True or False"):
        plan(TINY, trainer="sft", packing="yes")
    with pytest.raises(InvalidSettingError, match="divisible by num_generations"):
        plan(TINY, trainer="grpo", generation_batch_size=6, num_generations=4)


@pytest.mark.parametrize("version, expected", [
    (None, "TRL is not installed"), ("0.19.1", "lora-doctor models TRL 1.16"), ("1.16.3", "TRL 1.16.3's defaults")])
def test_the_plan_says_which_trl_defaults_it_assumed(monkeypatch, version, expected):
    monkeypatch.setattr(workloads, "installed_trl_version", lambda: version)
    assert any(expected in n for n in plan(TINY, trainer="sft").notes)


def test_trl_yaml_maps_trl_field_names():
    data = {"model_name_or_path": LLAMA8B, "per_device_train_batch_size": 2, "max_length": 2048, "use_peft": True,
            "load_in_4bit": True, "lora_r": 32, "lora_target_modules": ["all-linear"], "packing": True,
            "learning_rate": 1e-4, "dataset_name": "x", "use_dora": True}
    kw, notes = plan_kwargs(data, "sft", trl_field_names("sft"))
    assert kw["mode"] == "qlora" and kw["r"] == 32 and kw["target_modules"] == "all-linear"
    assert kw["seq_len"] == 2048 and kw["packing"] is True and kw["batch_size"] == 2
    assert kw["gradient_checkpointing"] is True and kw["mixed_precision"] == "bf16" and kw["lora_dropout"] == 0.05
    assert any("use_dora" in n for n in notes)
    with pytest.raises(InvalidSettingError, match="unknown keys .*max_seq_length"):
        plan_kwargs({**data, "max_seq_length": 512}, "sft", trl_field_names("sft"))


def test_cli_config_and_trainer_flags(tmp_path, capsys):
    good = tmp_path / "sft.yaml"
    good.write_text(f"model_name_or_path: {LLAMA8B}\nper_device_train_batch_size: 4\nuse_peft: true\n"
                    "dtype: bfloat16\nmax_length: 1024\n")
    assert main(["plan", "--config", str(good), "--gpu", "24GB"]) == 0
    assert "SFT trainer" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"model_name_or_path: {LLAMA8B}\nmax_seq_length: 512\n")
    assert main(["plan", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "max_seq_length" in err
    assert main(["plan", LLAMA8B, "--trainer", "dpo", "--packing"]) == 2
    assert main(["plan", LLAMA8B, "--mode", "lora", "--trainer", "grpo", "--batch-size", "8", "--json"]) == 0
    assert '"generation"' in capsys.readouterr().out   # the phases are in the JSON details


@pytest.mark.parametrize("trainer", ["sft", "dpo", "grpo"])
def test_trl_plans_keep_the_layers_backward_phase(trainer):
    """The walk through the layers' backward (trace-derived moments) is a phase of TRL plans too: under
    checkpointing it is where a LoRA step peaks once the fused head has removed the logits."""
    kw = dict(mode="lora", batch_size=4, seq_len=1024, gradient_checkpointing=True)   # SFT's max_length is 1024
    trl = plan("Qwen/Qwen3-8B", trainer=trainer, **kw)
    phases = trl.details["phases"]
    assert "backward_layers" in phases and trl.peak_bytes >= phases["backward_layers"]
    if trainer == "sft":   # same rows and length as a plain Trainer step: the phase is the step's own
        hf = plan("Qwen/Qwen3-8B", **kw).details["phases"]
        assert phases["backward_layers"] == hf["backward_layers"]
        assert trl.peak_phase == "backward_layers"
