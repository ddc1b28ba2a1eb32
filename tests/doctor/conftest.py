"""Tiny models of several architectures, built offline with random weights (never from a hub)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

TINY: dict[str, dict] = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=128),
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64, bos_token_id=0, eos_token_id=0),
    "falcon": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                   bos_token_id=0, eos_token_id=0),
    "bloom": dict(hidden_size=32, n_layer=2, n_head=4, vocab_size=128),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=128,
                 pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "t5": dict(d_model=32, d_ff=64, num_layers=2, num_heads=4, d_kv=8, vocab_size=128, decoder_start_token_id=0,
               pad_token_id=0),
    "mixtral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=128, num_local_experts=4, num_experts_per_tok=2,
                    bos_token_id=0, eos_token_id=0),
}


def tiny_config(model_type: str, **overrides):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **{**TINY[model_type], **overrides})


def tiny_model(model_type: str, seed: int = 0, **overrides):
    """A real model with random weights (seeded)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_config(config)


def tiny_peft(model_type: str = "llama", seed: int = 0, **lora):
    from peft import LoraConfig, get_peft_model

    lora.setdefault("target_modules", ["q_proj", "v_proj"])
    return get_peft_model(tiny_model(model_type, seed), LoraConfig(**lora))


@pytest.fixture(scope="module")
def configs():
    return {mt: tiny_config(mt) for mt in TINY}


def codes(report) -> list[str]:
    return [f.code for f in report.findings]


def problems(report) -> list[str]:
    """Codes of warnings and errors (what a healthy config must not have)."""
    return [f.code for f in report.findings if f.severity in ("error", "warning")]
