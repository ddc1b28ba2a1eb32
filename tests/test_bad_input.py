"""Every bad input gets one clear answer (issue 11): the CLI prints one line and exits 2, the API raises a
LoraDoctorError subclass, absurd configs are rejected in under a second, --json is strict JSON."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest

import lora_doctor as ld
from lora_doctor.cli import main
from lora_doctor.config_loader import parse_config, validate_config
from lora_doctor.errors import InvalidConfigError, InvalidGpuError, LoraDoctorError, ModelNotFoundError

TINY_LLAMA = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256,
              "max_position_embeddings": 512}


def one_line_exit_2(argv: list[str], capsys) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, (argv, captured)
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def write(tmp_path: Path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(path)


@pytest.mark.parametrize("gpu,needle", [
    (".", "unknown GPU"), ("1.2.3", "unknown GPU"), ("9" * 400, "400 characters"),
    ("1B", "256 MiB"), ("0.0000001GB", "256 MiB"), ("24", "did you mean 24GB"), ("nan", "unknown GPU"),
    ("0xH100", "count"),
])
def test_bad_gpu_is_one_line(gpu, needle, capsys):
    assert needle in one_line_exit_2(["plan", "gpt2", "--gpu", gpu], capsys)


@pytest.mark.parametrize("spec,count,name", [("8xH100", 8, "H100"), ("2x24GB", 2, "24GB"),
                                            ("2 x RTX4090", 2, "RTX4090"), ("4*A100", 4, "A100-80GB")])
def test_gpu_count_prefix(spec, count, name):
    gpu = ld.parse_gpu(spec)
    assert (gpu.count, gpu.name) == (count, name)
    assert gpu.memory_bytes == ld.parse_gpu(name).memory_bytes


@pytest.mark.parametrize("gpu", [float("nan"), float("inf"), -1.0, ".", 100, True, [24]])
def test_api_bad_gpu_is_invalid_gpu_error(gpu):
    with pytest.raises(InvalidGpuError):
        ld.plan("gpt2", gpu=gpu)


@pytest.mark.parametrize("name,data,needle", [
    ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00\x81\xff{}", "not a text config"),
    ("latin1.json", '{"model_type": "llama", "name": "caf\xe9"}'.encode("latin-1"), "not UTF-8"),
    ("null.json", "null", "JSON null"), ("num.json", "5", "JSON number"), ("str.json", '"model_type"', "JSON string"),
    ("deep.json", "[" * 100000 + "]" * 100000, "nests deeper"),
    ("empty.json", "", "is empty"), ("broken.json", '{"model_type": ', "not valid JSON"),
    ("nan.json", '{"model_type": "llama", "rope_theta": NaN}', "NaN"),
    ("notype.json", '{"hidden_size": 8}', "model_type"),
])
@pytest.mark.parametrize("command", ["plan", "check", "modules"])
def test_unreadable_configs_are_one_line(name, data, needle, command, tmp_path, capsys):
    assert needle in one_line_exit_2([command, write(tmp_path, name, data)], capsys)


@pytest.mark.parametrize("model,needle", [
    ("a" * 300, "neither a file nor a hub id"), ("~nosuchuser_lora_doctor/x", "no such user"),
    ("/dev/null", "not a regular file"), ("./nope/config.json", "no such file"), ("", "no model given"),
    ("/" + "b" * 300 + "/config.json", "cannot read"),
])
def test_bad_names_are_one_line(model, needle, capsys):
    assert needle in one_line_exit_2(["plan", model], capsys)


@pytest.mark.parametrize("field,value", [
    ("num_hidden_layers", 10**6), ("hidden_size", 10**7), ("vocab_size", 10**9), ("num_attention_heads", 10**5),
    ("intermediate_size", 10**8), ("num_local_experts", 10**6), ("max_position_embeddings", 10**12),
    ("max_position_embeddings", -1), ("num_hidden_layers", -3), ("hidden_size", 64.5), ("vocab_size", True),
    ("num_hidden_layers", "12"),
])
def test_absurd_sizes_are_rejected_fast_with_the_field_named(field, value, tmp_path, capsys):
    config = dict(TINY_LLAMA, **{field: value})
    start = time.perf_counter()
    line = one_line_exit_2(["plan", write(tmp_path, "config.json", json.dumps(config))], capsys)
    assert time.perf_counter() - start < 1.0
    assert field in line
    with pytest.raises(InvalidConfigError, match=field):
        ld.plan(config)


def test_sizes_in_nested_sub_configs_are_checked():
    config = {"model_type": "llava", "text_config": dict(TINY_LLAMA, num_hidden_layers=10**6)}
    with pytest.raises(InvalidConfigError, match="text_config.num_hidden_layers"):
        validate_config(config)


def test_parameter_bound_catches_sizes_each_in_range():
    config = dict(TINY_LLAMA, hidden_size=131072, intermediate_size=1 << 20, num_hidden_layers=1024)
    with pytest.raises(InvalidConfigError, match="parameters"):
        validate_config(config)


@pytest.mark.parametrize("field,value", [("architectures", 128), ("architectures", [1]), ("auto_map", "x"),
                                         ("tie_word_embeddings", "yes")])
def test_fields_lora_doctor_reads_have_the_right_shape(field, value):
    with pytest.raises(InvalidConfigError, match=field):
        ld.plan(dict(TINY_LLAMA, **{field: value}))


def test_layers_times_experts_is_bounded():
    with pytest.raises(InvalidConfigError, match="expert blocks"):
        validate_config(dict(TINY_LLAMA, num_hidden_layers=1024, num_local_experts=4096))


# Config classes whose defaults are the edge of the bounds (a sweep of all ~820 transformers config classes
# passed; it takes a minute here, so the suite keeps the outliers it found and a few big real ones).
EDGE_CONFIGS = ["doge", "glm5_next", "lxmert", "musicflamingo", "mamba2", "llama4", "deepseek_v3", "qwen3_next",
                "gemma3", "whisper", "t5", "swin", "clip", "mixtral"]


@pytest.mark.parametrize("model_type", EDGE_CONFIGS)
def test_transformers_config_defaults_pass_the_bounds(model_type):
    """No false alarm on the defaults of config classes transformers ships."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"this transformers has no {model_type}")
    validate_config(CONFIG_MAPPING[model_type]().to_dict(), model_type)


def test_real_configs_pass_the_bounds():
    from lora_doctor.catalog import _load

    for entry in _load()["models"].values():
        validate_config(dict(entry["config"]))
    big = {"model_type": "llama4", "text_config": {"vocab_size": 202048, "max_position_embeddings": 10485760,
                                                   "num_local_experts": 16, "hidden_size": 5120}}
    validate_config(big)


def test_parse_config_rejects_nan_accepts_infinity_and_a_utf8_bom():
    with pytest.raises(InvalidConfigError, match="NaN"):
        parse_config(b'{"model_type": "llama", "x": [1, NaN]}')
    with pytest.raises(InvalidConfigError, match="vocab_size"):
        parse_config(b'{"model_type": "llama", "vocab_size": Infinity}')
    # transformers itself writes Infinity for real defaults (Mamba-2's time_step_limit)
    assert parse_config(b'{"model_type": "mamba2", "time_step_limit": [0.0, Infinity]}')["time_step_limit"][1] > 1e308
    assert parse_config('\ufeff{"model_type": "llama"}'.encode())["model_type"] == "llama"


@pytest.mark.parametrize("flag", ["nan", "inf", "-inf"])
def test_nan_alpha_is_rejected_and_json_is_strict(flag, capsys):
    assert "lora_alpha" in one_line_exit_2(["plan", "gpt2", f"--alpha={flag}", "--json"], capsys)
    assert "lora_alpha" in one_line_exit_2(["check", "gpt2", f"--alpha={flag}", "--target-modules", "c_attn"], capsys)


def test_json_output_never_has_nan(capsys):
    from lora_doctor.strict_json import dumps

    assert json.loads(dumps({"a": math.nan, "b": [math.inf, (1, 2)], "c": {3}})) == {"a": None, "b": [None, [1, 2]],
                                                                                   "c": [3]}
    assert main(["plan", "gpt2", "--json", "--gpu", "T4", "--mode", "lora"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))


def test_max_seq_len_is_never_negative():
    plan = ld.plan(dict(TINY_LLAMA, max_position_embeddings=4096), gpu="24GB")
    assert plan.max_seq_len > 0
    with pytest.raises(InvalidConfigError, match="max_position_embeddings"):
        ld.plan(dict(TINY_LLAMA, max_position_embeddings=-1), gpu="24GB")


@pytest.mark.parametrize("kw", [
    {"target_modules": 5}, {"target_modules": [5]}, {"target_modules": []}, {"target_modules": ","},
    {"optim": []}, {"mode": {}}, {"dtype": 5}, {"lora_alpha": math.nan}, {"lora_alpha": math.inf},
    {"lora_dropout": math.nan}, {"batch_size": 10**9}, {"seq_len": 1.5}, {"r": True},
    {"gradient_checkpointing": "no"}, {"mixed_precision": 3}, {"engine": []}, {"device": {}},
])
def test_api_wrong_types_are_lora_doctor_errors(kw):
    with pytest.raises(LoraDoctorError):
        ld.plan("gpt2", **kw)


@pytest.mark.parametrize("config", [
    {"lora_dropout": "abc"}, {"target_modules": [5]}, {"rank_pattern": "x"}, {"alpha_pattern": {"a": "b"}},
    {"r": "8"}, {"lora_alpha": math.nan}, {"target_modules": []}, {"modules_to_save": 5},
    {"layers_to_transform": "x"}, {"init_lora_weights": 3}, {"bias": 5}, {"trainable_token_indices": "x"},
    5, "x",
])
def test_diagnose_wrong_types_are_lora_doctor_errors(config):
    with pytest.raises(LoraDoctorError):
        ld.diagnose("gpt2", config)


@pytest.mark.parametrize("kw", [{"tokenizer": 5}, {"tokenizer": "gpt2"}, {"num_examples": "many"},
                                {"num_examples": -1}, {"dry_run": "yes"}, {"dry_run_max_params": "x"}])
def test_diagnose_rejects_bad_arguments(kw):
    with pytest.raises(LoraDoctorError, match=next(iter(kw))):
        ld.diagnose("gpt2", {"target_modules": ["c_attn"]}, **kw)


def test_check_empty_target_modules_is_the_same_error_as_plan(capsys):
    check_line = one_line_exit_2(["check", "gpt2", "--target-modules", ","], capsys)
    plan_line = one_line_exit_2(["plan", "gpt2", "--target-modules", ","], capsys)
    assert "names no module" in plan_line and "target_modules is empty" in check_line


def test_usage_errors_are_one_line(capsys):
    assert "invalid int value" in one_line_exit_2(["plan", "gpt2", "--r", "abc"], capsys)
    assert "unrecognized" in one_line_exit_2(["plan", "gpt2", "--bogus"], capsys)
    assert "\\x1e" in one_line_exit_2(["plan", "plan", "\x1e"], capsys)  # control characters escaped
    assert "\\x1e" in one_line_exit_2(["plan", "a\x1eb/c"], capsys)


def test_phi3_plans_without_peft_defaults(capsys):
    assert main(["plan", "microsoft/Phi-3-mini-4k-instruct", "--gpu", "24GB", "--mode", "full"]) == 1
    out = capsys.readouterr().out
    assert "To fit" in out and "--mode lora" in out
    plan = ld.plan("microsoft/Phi-3-mini-4k-instruct", gpu="24GB", mode="lora")
    assert plan.settings.target_modules == "all-linear"
    assert set(plan.targets) == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert any("no default target_modules" in n and "all-linear" in n for n in plan.notes)


def test_diagnose_still_says_phi3_needs_explicit_targets():
    report = ld.diagnose("microsoft/Phi-3-mini-4k-instruct")
    assert any("no default target_modules" in f.message for f in report.errors)


def test_recommender_skips_a_failing_lever():
    from lora_doctor.verdict import recommend

    plan = ld.plan("meta-llama/Llama-2-7b-hf", mode="full", gpu="24GB")

    def broken(settings):
        raise ModelNotFoundError("lever cannot be planned")

    assert recommend(plan, broken).startswith("Does not fit")


def test_callback_console_failure_is_a_warning():
    from lora_doctor.callback.console import DoctorConsole, Status

    class Full:
        def write(self, text):
            raise OSError(28, "No space left on device")

        def flush(self):
            raise OSError(28, "No space left on device")

    console = DoctorConsole(file=Full(), rich=False)
    status = Status(step=1, loss=1.0)
    with pytest.warns(Warning, match="console output failed"):
        console.status(status)
    console.status(status)  # quiet afterwards: no second warning, no exception
