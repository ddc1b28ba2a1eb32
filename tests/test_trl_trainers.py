"""Real TRL trainers on CPU (tiny Llama, local tokenizer): plan_trainer's batch and accuracy, the callback's
objective, TRL findings, no false pad-is-eos."""

from __future__ import annotations

import tempfile

import pytest

from callback_support import torch  # noqa: F401  (first: offline environment, one thread)

import lora_doctor
from lora_doctor.callback.trl_health import trl_log_findings
from lora_doctor.doctor.tokenizer import masks_padding_by_length
from lora_doctor.measure.trl_runs import TrlCase, build_trainer, measure_trainer

pytestmark = pytest.mark.filterwarnings("ignore")


def test_plan_trainer_plans_the_longest_example_or_max_length_with_packing():
    with tempfile.TemporaryDirectory() as d:
        trainer = build_trainer(TrlCase("sft", "sft", vocab=256, batch_size=2, lengths=(10, 40)), d)
        p = lora_doctor.plan_trainer(trainer)
        assert p.details["batch"]["seq_len"] == 41 and p.settings.workload.trainer == "sft"   # 40 words + eos
        assert "longest tokenized example" in p.notes[0]
        packed = build_trainer(TrlCase("sft", "sft", vocab=256, lengths=(10, 40), config={"packing": True,
                                                                                          "max_length": 64}), d)
        assert lora_doctor.plan_trainer(packed).details["batch"]["seq_len"] == 64


def test_sft_fused_head_plan_matches_the_measured_peak():
    case = TrlCase("sft", "sft", vocab=8000, batch_size=2, lengths=(64, 64), config={"gradient_checkpointing": False})
    with tempfile.TemporaryDirectory() as d:
        trainer = build_trainer(case, d, steps=1)
        planned = lora_doctor.plan_trainer(trainer)
        measured = measure_trainer(trainer)
    assert planned.peak_bytes == pytest.approx(measured.peak_bytes, rel=0.05)


def test_callback_watches_the_dpo_objective_without_false_pad_is_eos():
    cb = lora_doctor.LoraDoctorCallback()
    with tempfile.TemporaryDirectory() as d:
        trainer = build_trainer(TrlCase("dpo", "dpo", vocab=256, lengths=(8, 16)), d, callbacks=[cb])
        trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["doctor/loss"] == pytest.approx(h["loss"], rel=1e-5) for h in logged)
    assert logged[0]["loss"] == pytest.approx(0.6931, abs=1e-3)   # DPO's loss at start, not the token NLL
    codes = {f.code for f in cb.findings}
    assert "pad-is-eos" not in codes and "planner-failed" not in codes
    assert cb.report.plan.settings.workload.trainer == "dpo"


def _constant_reward(completions, **_):
    return [1.0 for _ in completions]


def test_callback_flags_grpo_groups_whose_rewards_tie():
    cb = lora_doctor.LoraDoctorCallback()
    case = TrlCase("grpo", "grpo", vocab=256, batch_size=4, lengths=(4, 8),
                   config={"num_generations": 4, "max_completion_length": 4})
    with tempfile.TemporaryDirectory() as d:
        trainer = build_trainer(case, d, steps=1, callbacks=[cb])
        trainer.reward_funcs = [_constant_reward]
        trainer.train()
    assert "grpo-rewards-tie" in {f.code for f in cb.findings}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and logged[0]["doctor/loss"] == pytest.approx(logged[0]["loss"], abs=1e-6)


def test_trl_metric_findings():
    assert [f.code for f in trl_log_findings({"rewards/chosen": float("nan"), "loss": 0.7}, 3)] == ["trl-non-finite-reward"]
    assert [f.code for f in trl_log_findings({"frac_reward_zero_std": 1.0, "reward_std": 0.0}, 3)] == ["grpo-rewards-tie"]
    assert trl_log_findings({"frac_reward_zero_std": 0.5, "rewards/margins": 0.1}, 3) == []


def test_trl_collators_mask_padding_by_position():
    from transformers import DataCollatorForLanguageModeling
    from trl.trainer.dpo_trainer import DataCollatorForPreference
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TrlLM

    from lora_doctor.measure.trl_runs import word_tokenizer

    tok = word_tokenizer(64)
    tok.pad_token = tok.eos_token
    assert masks_padding_by_length(TrlLM(pad_token_id=tok.pad_token_id)) == "trl.DataCollatorForLanguageModeling"
    assert masks_padding_by_length(DataCollatorForPreference(pad_token_id=tok.pad_token_id))
    assert masks_padding_by_length(DataCollatorForLanguageModeling(tok, mlm=False)) is None   # masks by token id
    # and TRL's collator really keeps the eos label when pad == eos
    batch = TrlLM(pad_token_id=tok.pad_token_id)([{"input_ids": [5, 6, 1]}, {"input_ids": [7, 1]}])
    assert batch["labels"][1].tolist() == [7, 1, -100]
