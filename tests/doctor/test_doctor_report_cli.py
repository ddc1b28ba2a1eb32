"""Healthy configurations across architectures, the report's rendering and JSON, the CLI, and the docs registry."""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path

import pytest
from conftest import problems, tiny_config

from lora_doctor import DoctorReport, Finding, diagnose
from lora_doctor.cli import main
from lora_doctor.doctor.registry import REGISTRY, finding

HEALTHY = [
    ("llama", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
               "r": 16, "lora_alpha": 32, "lora_dropout": 0.05}),
    ("llama", {"target_modules": "all-linear", "r": 64, "lora_alpha": 16, "use_rslora": True}),
    ("gpt2", {"target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True, "r": 8, "lora_alpha": 16}),
    ("falcon", {"target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], "lora_alpha": 16}),
    ("bloom", {"target_modules": "all-linear", "r": 16, "lora_alpha": 32}),
    ("phi3", {"target_modules": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"], "r": 16, "lora_alpha": 32}),
    ("t5", {"target_modules": ["q", "k", "v", "o", "wi", "wo"], "r": 8, "lora_alpha": 16}),
    ("mixtral", {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "r": 8, "lora_alpha": 16,
                 "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}),
]


@pytest.mark.parametrize("model_type, lora", HEALTHY, ids=[f"{m}-{i}" for i, (m, _) in enumerate(HEALTHY)])
def test_healthy_configs_have_no_warnings(configs, model_type, lora):
    four_bit = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"}
    # 4-bit leaves an MoE's fused experts (qlora-moe-experts-unquantized) and Falcon's FalconLinear layers
    # (qlora-weights-unquantized) unquantized: LoRA there
    report = diagnose(configs[model_type], lora, training_args={"bf16": True},
                      quantization_config=None if model_type in ("mixtral", "falcon") else four_bit)
    assert not problems(report), [(f.code, f.message) for f in report.findings]
    assert report.ok and report.summary["matched_modules"] > 0


def test_healthy_peft_config_object():
    from peft import LoraConfig

    config = LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                        r=16, lora_alpha=32, task_type="CAUSAL_LM")
    assert not problems(diagnose(tiny_config("llama"), config))


def _report() -> DoctorReport:
    return diagnose(tiny_config("llama"), {"target_modules": ["qproj", "v_proj"], "r": 16, "lora_alpha": 128})


def test_report_json_and_order():
    report = _report()
    data = json.loads(report.to_json())
    assert data["ok"] is False and data["worst"] == "error"
    assert [f["severity"] for f in data["findings"]] == sorted((f["severity"] for f in data["findings"]),
                                                               key=["error", "warning", "info"].index)
    assert data["summary"]["matched_per_pattern"] == {"qproj": 0, "v_proj": 2}
    assert set(data["findings"][0]) == {"code", "severity", "message", "fix", "data"}


def test_report_renders_with_rich_and_as_text():
    from rich.console import Console

    report = _report()
    buf = StringIO()
    Console(file=buf, width=120, color_system=None).print(report)
    out = buf.getvalue()
    assert "scale-extreme" in out and "target-partial-match" in out
    text = str(report)
    assert "fix:" in text and "1 warning(s)" in text
    healthy = DoctorReport("m", [], {})
    assert "healthy" in str(healthy) and healthy.ok


def test_registry_rejects_unknown_codes_and_severities():
    with pytest.raises(KeyError):
        finding("no-such-code", "m", "f")
    with pytest.raises(ValueError):
        finding("scale-high", "m", "f", severity="error")
    assert isinstance(finding("scale-high", "m", "f"), Finding)


def _config_dir(tmp_path: Path, model_type: str = "llama") -> str:
    tiny_config(model_type).save_pretrained(tmp_path)
    return str(tmp_path)


def test_cli_check_exit_codes_and_json(tmp_path, capsys):
    model = _config_dir(tmp_path)
    assert main(["check", model, "--target-modules", "q_proj,v_proj", "--r", "16", "--alpha", "128", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert "scale-extreme" in [f["code"] for f in data["findings"]]
    assert main(["check", model, "--target-modules", "all-linear", "--r", "16", "--alpha", "32", "--bf16",
                 "--quant", "4bit"]) == 0
    out = capsys.readouterr().out
    assert "effective scale" in out and "no findings" in out
    assert main(["check", model, "--target-modules", r".*\.q_proj", "--regex", "--quant", "4bit",
                 "--quant-type", "fp4", "--json"]) == 0
    assert "qlora-fp4" in capsys.readouterr().out
    assert main(["check", "no-such/model-xyz"]) == 2
    assert "lora-doctor: error:" in capsys.readouterr().err


def test_cli_check_options_reach_the_config(tmp_path, capsys):
    model = _config_dir(tmp_path, "gpt2")
    main(["check", model, "--target-modules", "c_attn", "--dropout", "0.5", "--bias", "all", "--init", "false",
          "--use-rslora", "--fp16", "--json"])
    found = set(c["code"] for c in json.loads(capsys.readouterr().out)["findings"])
    assert {"fan-in-fan-out", "dropout-high", "bias-trainable", "init-random"} <= found
    assert main(["check", model, "--r", "0"]) == 2


def test_cli_modules(tmp_path, capsys):
    assert main(["modules", "gpt2"]) == 0   # offline catalog
    out = capsys.readouterr().out
    assert "c_attn" in out and "conv1d" in out and "suggested target_modules" in out
    assert main(["modules", _config_dir(tmp_path, "mixtral"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {f["name"] for f in data["families"]} >= {"q_proj", "lm_head"}
    assert data["suggested_target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert "mlp.experts.down_proj" in data["suggested_target_parameters"]


def _documented() -> dict[str, str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "checks.md").read_text()
    return dict(re.findall(r"^### `([a-z0-9-]+)`\s*\n+\*\*severity:\*\* ([a-z, ]+)", text, flags=re.M))


def test_docs_list_every_registered_code():
    documented = _documented()
    assert sorted(documented) == sorted(REGISTRY)
    for code, severities in documented.items():
        assert tuple(s.strip() for s in severities.split(",")) == REGISTRY[code].severities, code


def test_every_code_is_emitted_somewhere_in_the_package():
    source = "\n".join(p.read_text() for p in (Path(__file__).resolve().parents[2] / "lora_doctor" / "doctor").glob("*.py")
                       if p.name != "registry.py")
    assert [c for c in REGISTRY if f'"{c}"' not in source] == []
