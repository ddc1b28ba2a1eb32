"""Launch configs: DeepSpeed JSON, accelerate YAML and TrainingArguments become plan() kwargs."""

from __future__ import annotations

import json

import pytest

from lora_doctor import InvalidSettingError, plan
from lora_doctor.cli import main
from lora_doctor.parallel.launch import from_accelerate_config, from_deepspeed_config, from_training_args

DS_ZERO3 = {"bf16": {"enabled": True}, "train_micro_batch_size_per_gpu": "auto",
            "zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
                                  "overlap_comm": True, "reduce_bucket_size": "auto",
                                  "stage3_prefetch_bucket_size": 5e7,
                                  "stage3_param_persistence_threshold": "auto"}}


def test_deepspeed_config_gives_stage_offload_buckets_and_precision(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(DS_ZERO3))
    kw = from_deepspeed_config(str(path))
    assert kw == {"strategy": "zero3", "offload": "optimizer", "mixed_precision": "bf16",
                  "parallel_options": {"overlap_comm": True, "reduce_bucket_size": "auto",
                                       "stage3_prefetch_bucket_size": 50_000_000,
                                       "stage3_param_persistence_threshold": "auto"}}
    p = plan("meta-llama/Llama-2-7b-hf", mode="full", num_gpus=8, **kw)
    assert p.host_peak_bytes and p.settings.parallel.strategy == "zero3"


@pytest.mark.parametrize("zero, expected", [
    ({}, {"strategy": "ddp"}),
    ({"stage": 1}, {"strategy": "zero1"}),
    ({"stage": 2, "offload_optimizer": {"device": "nvme"}}, {"strategy": "zero2", "offload": "optimizer"}),
    ({"stage": 3, "offload_param": {"device": "cpu"}, "offload_optimizer": {"device": "cpu"}},
     {"strategy": "zero3", "offload": "all"}),
])
def test_deepspeed_stages(zero, expected):
    assert from_deepspeed_config({"zero_optimization": zero}) == expected


@pytest.mark.parametrize("config, message", [
    ({"zero_optimization": {"stage": 4}}, "stage must be 0-3"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, "offload_param needs stage 3"),
    ({"zero_optimization": {"stage": 2, "reduce_bucket_size": "big"}}, "reduce_bucket_size"),
])
def test_bad_deepspeed_configs_raise(config, message):
    with pytest.raises(InvalidSettingError, match=message):
        from_deepspeed_config(config)


def test_unreadable_config_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "ds.json"
    bad.write_text("{not json")
    assert main(["plan", "meta-llama/Llama-2-7b-hf", "--deepspeed", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not valid" in err and len(err.splitlines()) == 1


def test_accelerate_yaml_fsdp_and_deepspeed(tmp_path):
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text("distributed_type: FSDP\nnum_processes: 8\nnum_machines: 2\nmixed_precision: bf16\n"
                    "fsdp_config:\n  fsdp_version: 2\n  fsdp_reshard_after_forward: false\n  fsdp_offload_params: true\n")
    assert from_accelerate_config(str(fsdp)) == {"num_gpus": 8, "strategy": "fsdp_grad_op", "offload": "all",
                                                 "parallel_options": {"gpus_per_node": 4}, "mixed_precision": "bf16"}
    ds = tmp_path / "ds.yaml"
    ds.write_text("distributed_type: DEEPSPEED\nnum_processes: 4\ndeepspeed_config:\n  zero_stage: 3\n"
                  "  offload_optimizer_device: cpu\n  offload_param_device: none\n")
    assert from_accelerate_config(str(ds)) == {"num_gpus": 4, "strategy": "zero3", "offload": "optimizer"}
    fsdp1 = {"distributed_type": "FSDP", "num_processes": 2,
             "fsdp_config": {"fsdp_version": 1, "fsdp_sharding_strategy": "SHARD_GRAD_OP"}}
    assert from_accelerate_config(fsdp1)["strategy"] == "fsdp_grad_op"
    with pytest.raises(InvalidSettingError, match="num_processes"):
        from_accelerate_config({"distributed_type": "MULTI_GPU", "num_processes": 0})


def test_cli_flags_override_the_config(tmp_path, capsys):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    assert main(["plan", "meta-llama/Llama-2-7b-hf", "--mode", "full", "--gpu", "A100-80GB", "--num-gpus", "4",
                 "--deepspeed", str(path), "--strategy", "zero3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["plans"][0]
    assert out["settings"]["parallel"]["strategy"] == "zero3" and out["settings"]["parallel"]["num_gpus"] == 4


def test_training_args_fsdp_deepspeed_and_ddp(tmp_path):
    from transformers import TrainingArguments

    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    fsdp = TrainingArguments(fsdp="full_shard offload", **common)
    assert from_training_args(fsdp, num_gpus=4) == {"num_gpus": 4, "strategy": "fsdp", "offload": "all"}
    ds = TrainingArguments(deepspeed={"zero_optimization": {"stage": 2}}, **common)
    assert from_training_args(ds, num_gpus=8) == {"num_gpus": 8, "strategy": "zero2"}
    ddp = TrainingArguments(ddp_bucket_cap_mb=50, **common)
    assert from_training_args(ddp) == {"num_gpus": 1}    # not launched: one process
    assert from_training_args(ddp, num_gpus=2) == {"num_gpus": 2, "strategy": "ddp",
                                                   "parallel_options": {"bucket_cap_mb": 50}}
