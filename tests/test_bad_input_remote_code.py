"""lora-doctor never runs code from a config and never prompts (issue 11), and the CLI's output is its own:
third-party warnings and logs go to the debug stream that -v shows."""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import lora_doctor as ld
from lora_doctor.cli import main
from lora_doctor.debug_stream import debug_stream

LLAMA = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512}
EVIL = '''
from pathlib import Path
Path({marker!r}).write_text("custom code ran")
from transformers import PretrainedConfig, PreTrainedModel
class EvilConfig(PretrainedConfig):
    model_type = "evil"
class EvilModel(PreTrainedModel):
    config_class = EvilConfig
'''
AUTO_MAP = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel", "AutoModelForCausalLM": "evil.EvilModel"}


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def evil_repo(tmp_path, monkeypatch):
    """A model directory whose custom code would write a marker file, a stdin that answers "y" like a
    terminal, and an input() that fails the test: nothing may run and nothing may prompt."""
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    monkeypatch.setattr(sys, "stdin", _TTY("y\n" * 10))
    monkeypatch.setattr(builtins, "input", lambda *a, **k: pytest.fail("lora-doctor prompted"))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, marker
    assert not marker.exists(), "custom code from the config was executed"
    sys.modules.pop("evil", None)


def _config(repo: Path, model_type: str) -> dict:
    return {"model_type": model_type, "_name_or_path": str(repo), "auto_map": AUTO_MAP, **LLAMA}


def test_known_model_type_with_auto_map_plans_without_the_custom_code(evil_repo, capsys):
    repo, _ = evil_repo
    config = _config(repo, "llama")
    plan = ld.plan(config, gpu="24GB")
    assert any("custom code (auto_map)" in n and "not run" in n for n in plan.notes)
    assert config["auto_map"] == AUTO_MAP  # the caller's dict is not changed
    (repo / "config.json").write_text(json.dumps(config))
    assert main(["plan", str(repo), "--mode", "lora", "--gpu", "24GB"]) == 0
    assert "was not run" in " ".join(capsys.readouterr().out.split())


def test_known_non_causal_model_type_with_auto_map_never_prompts(evil_repo):
    repo, _ = evil_repo
    vit = {"model_type": "vit", "_name_or_path": str(repo), "auto_map": AUTO_MAP, "hidden_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    with pytest.raises(ld.LoraDoctorError):
        ld.plan(vit)


def test_build_meta_model_passes_trust_remote_code_false(evil_repo):
    """Below the loader too: a PretrainedConfig that still carries auto_map is refused, not prompted."""
    from transformers import AutoConfig

    from lora_doctor.introspect import build_meta_model

    repo, _ = evil_repo
    config = AutoConfig.for_model("vit", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64)
    config.auto_map, config._name_or_path = dict(AUTO_MAP), str(repo)
    with pytest.raises(ld.UnsupportedModelError, match="custom code"):
        build_meta_model(config)


def test_unknown_model_type_with_auto_map_is_a_clear_error(evil_repo, capsys):
    repo, _ = evil_repo
    with pytest.raises(ld.InvalidConfigError, match="never runs code"):
        ld.plan(_config(repo, "evil"))
    (repo / "config.json").write_text(json.dumps(_config(repo, "evil")))
    assert main(["check", str(repo)]) == 2
    assert "never runs code" in capsys.readouterr().err


def test_cli_without_stdin_never_prompts(tmp_path):
    """As in CI: no stdin at all. The custom code must not run and the command must not wait."""
    marker = tmp_path / "MARKER"
    (tmp_path / "evil.py").write_text(EVIL.format(marker=str(marker)))
    config = {"model_type": "vit", "_name_or_path": str(tmp_path), "auto_map": AUTO_MAP, "hidden_size": 32,
              "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "lora_doctor.cli", "modules", str(tmp_path)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not marker.exists()


def test_debug_stream_routes_third_party_output(capsys):
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")  # no handler: logging's last resort, stderr
    for verbose in (False, True):
        with debug_stream(verbose) as err:
            noisy.warning("Failed to load CPU gemm_4bit_forward from kernels-community: test")
            warnings.warn("a third-party warning", RuntimeWarning)
            print("own line", file=err)
        captured = capsys.readouterr().err
        assert "own line" in captured
        assert ("gemm_4bit_forward" in captured) == verbose
        assert ("a third-party warning" in captured) == verbose


def test_moe_qlora_trace_output_is_lora_doctors_own(tmp_path, capsys):
    """The MoE QLoRA trace used to print torch's fake-tensor traceback before falling back; it now runs (fp32
    experts through transformers' fallback kernel) and neither torch, peft nor transformers reaches the CLI
    output, with or without -v (test_debug_stream_routes_third_party_output covers what -v shows)."""
    config = {"model_type": "mixtral", **LLAMA, "num_local_experts": 4, "num_experts_per_tok": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    argv = ["plan", str(tmp_path), "--trace", "--mode", "qlora", "--seq-len", "32", "--target-modules", "all-linear"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "Traceback" not in captured.out
    assert "trace failed" not in captured.out
    assert main([*argv, "-v"]) == 0
    assert "Traceback" not in capsys.readouterr().err
