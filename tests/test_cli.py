from __future__ import annotations

import json

import pytest

from lora_doctor.cli import main


def test_plan_prints_table_verdict_and_recommendation(capsys):
    assert main(["plan", "meta-llama/Llama-2-7b-hf", "--gpu", "24GB"]) == 0
    out = capsys.readouterr().out
    for needle in ("Full", "LoRA", "QLoRA", "weights", "optimizer states", "activations", "logits and loss",
                   "cuda context", "allocator reserve", "device peak", "max micro-batch", "max seq len",
                   "NO", "yes", "To fit: use LoRA"):
        assert needle in out, needle
    assert "\x1b[" not in out  # plain text when stdout is not a terminal


def test_plan_without_gpu_shows_common_gpus(capsys):
    assert main(["plan", "Qwen/Qwen2.5-7B", "--mode", "qlora"]) == 0
    out = capsys.readouterr().out
    assert "Fits on common GPUs" in out and "RTX3060" in out and "A100-80GB" in out


def test_plan_json_has_every_term_in_bytes(capsys):
    assert main(["plan", "gpt2", "--json", "--gpu", "T4", "--seq-len", "1024"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [p["mode"] for p in data["plans"]] == ["full", "lora", "qlora"]
    for p in data["plans"]:
        assert all(isinstance(v, int) for v in p["breakdown"].values())
        assert p["settings"]["seq_len"] == 1024 and isinstance(p["fits"], bool)


def test_single_mode_exit_code_reflects_fit(capsys):
    assert main(["plan", "meta-llama/Llama-2-7b-hf", "--mode", "full", "--gpu", "24GB"]) == 1
    assert main(["plan", "meta-llama/Llama-2-7b-hf", "--mode", "qlora", "--gpu", "24GB"]) == 0


def test_options_reach_the_planner(capsys):
    main(["plan", "meta-llama/Llama-2-7b-hf", "--mode", "lora", "--json", "--r", "64", "--alpha", "16",
          "--target-modules", "q_proj,k_proj,v_proj,o_proj", "--batch-size", "4", "--seq-len", "2048",
          "--gradient-checkpointing", "--optim", "adamw_bnb_8bit", "--dtype", "fp16", "--attn", "eager"])
    p = json.loads(capsys.readouterr().out)["plans"][0]
    s = p["settings"]
    assert (s["r"], s["lora_alpha"], s["batch_size"], s["seq_len"]) == (64, 16, 4, 2048)
    assert s["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj"] and s["gradient_checkpointing"]
    assert (s["optim"], s["dtype"], s["attn_implementation"]) == ("adamw_bnb_8bit", "fp16", "eager")
    assert p["lora_scale"] == 0.25


@pytest.mark.parametrize("argv,needle", [
    (["plan", "meta-llama/Llama-2-7bb-hf"], "Did you mean meta-llama/Llama-2-7b-hf"),
    (["plan", "gpt2", "--gpu", "24 parsecs"], "unknown GPU"),
    (["plan", "gpt2", "--batch-size", "0"], "batch_size must be a positive integer"),
    (["plan", "gpt2", "--r", "0"], "r must be a positive integer"),
    (["plan", "./missing/config.json"], "no such file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, needle, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "lora-doctor plan meta-llama/Llama-2-7b-hf --gpu 24GB" in out


def test_catalog_command(capsys):
    assert main(["catalog", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    llama = next(row for row in rows if row["model"] == "meta-llama/Llama-2-7b-hf")
    assert llama == {"model": "meta-llama/Llama-2-7b-hf", "family": "Llama", "model_type": "llama",
                     "params": 6_738_415_616, "moe": False}


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "plan" in capsys.readouterr().out


def test_trace_prints_the_largest_tensors(tmp_path, capsys):
    config = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, vocab_size=1000)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["plan", str(tmp_path), "--trace", "--mode", "lora", "--seq-len", "128", "--gpu", "24GB"]) == 0
    out = capsys.readouterr().out
    assert "largest tensors alive at the traced peak" in out
    assert "[128, 1000]" in out and "float32" in out and "logits and loss" in out
