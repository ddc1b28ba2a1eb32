"""The validation set: small models built from configs and the training settings to measure.

Each case is run for real on CPU (``measure_training``) and compared with the planner's prediction
(``benchmarks/accuracy.py``; a subset in tests/test_accuracy.py). Sizes are chosen so that every
term matters (activations and logits comparable to weights) and each run takes a few seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..plan_types import PlanSettings

TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "llama": dict(model_type="llama", hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048),
    "qwen2-gqa-tied": dict(model_type="qwen2", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                           num_attention_heads=8, num_key_value_heads=2, vocab_size=16000,
                           tie_word_embeddings=True, max_position_embeddings=2048),
    "gpt2": dict(model_type="gpt2", n_embd=128, n_layer=2, n_head=4, vocab_size=4096, n_positions=1024,
                 attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0),
    "phi3": dict(model_type="phi3", hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048,
                 original_max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=2),
    "opt": dict(model_type="opt", hidden_size=128, ffn_dim=512, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=4096, max_position_embeddings=2048, word_embed_proj_dim=128, dropout=0.0,
                pad_token_id=1, bos_token_id=2, eos_token_id=2),
    # issue 12: the models people fine-tune now, and config dropouts left at their defaults
    "qwen3": dict(model_type="qwen3", hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=4096,
                  max_position_embeddings=2048),
    "gemma3-text": dict(model_type="gemma3_text", hidden_size=128, intermediate_size=352, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=4096,
                        sliding_window=128, sliding_window_pattern=3, max_position_embeddings=2048),
    "qwen3-moe": dict(model_type="qwen3_moe", hidden_size=128, intermediate_size=352, moe_intermediate_size=96,
                      num_experts=8, num_experts_per_tok=2, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=4096, max_position_embeddings=2048),
    "olmo2": dict(model_type="olmo2", hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=4096, max_position_embeddings=2048,
                  pad_token_id=1, bos_token_id=None, eos_token_id=0),
    "smollm3": dict(model_type="smollm3", hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, vocab_size=4096, max_position_embeddings=2048,
                    pad_token_id=0, bos_token_id=0, eos_token_id=0),
    "gpt2-dropout": dict(model_type="gpt2", n_embd=128, n_layer=2, n_head=4, vocab_size=4096, n_positions=1024),
    "bert-dropout": dict(model_type="bert", hidden_size=128, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, vocab_size=4096, max_position_embeddings=512),
}


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    settings: PlanSettings = field(default_factory=PlanSettings)


def _s(**kw: Any) -> PlanSettings:
    return PlanSettings(**kw)


QV = ["q_proj", "v_proj"]
CASES: tuple[Case, ...] = (
    Case("llama full fp32 adamw", "llama", _s(mode="full", dtype="fp32", seq_len=256, batch_size=2)),
    Case("llama full fp32 +bf16 autocast", "llama", _s(mode="full", dtype="fp32", mixed_precision="bf16", seq_len=256, batch_size=2)),
    Case("llama full bf16 sgd", "llama", _s(mode="full", dtype="bf16", optim="sgd", seq_len=256, batch_size=2)),
    Case("llama lora q,v bf16", "llama", _s(mode="lora", target_modules=QV, seq_len=256, batch_size=2)),
    Case("llama lora all-linear bf16", "llama", _s(mode="lora", target_modules="all-linear", seq_len=256, batch_size=2)),
    Case("llama lora all-linear bf16 dropout 0.05", "llama", _s(mode="lora", target_modules="all-linear", lora_dropout=0.05, seq_len=256, batch_size=2)),
    Case("llama qlora q,v dropout 0.1 no autocast", "llama", _s(mode="qlora", target_modules=QV, lora_dropout=0.1, seq_len=256, batch_size=2)),
    Case("llama lora all-linear bf16 +gc", "llama", _s(mode="lora", target_modules="all-linear", seq_len=256, batch_size=2, gradient_checkpointing=True)),
    Case("llama lora q,v bf16 eager", "llama", _s(mode="lora", target_modules=QV, seq_len=256, batch_size=2, attn_implementation="eager")),
    Case("llama lora q,v fp32 +bf16 autocast", "llama", _s(mode="lora", dtype="fp32", mixed_precision="bf16", target_modules=QV, seq_len=256, batch_size=2)),
    Case("llama qlora q,v +bf16 autocast", "llama", _s(mode="qlora", target_modules=QV, mixed_precision="bf16", seq_len=256, batch_size=2)),
    Case("llama qlora all-linear +gc", "llama", _s(mode="qlora", target_modules="all-linear", mixed_precision="bf16", seq_len=256, batch_size=2, gradient_checkpointing=True)),
    Case("llama qlora q,v no autocast", "llama", _s(mode="qlora", target_modules=QV, seq_len=256, batch_size=2)),
    Case("qwen2 gqa tied lora q,v bf16", "qwen2-gqa-tied", _s(mode="lora", target_modules=QV, seq_len=256, batch_size=2)),
    Case("qwen2 gqa tied full bf16 adamw", "qwen2-gqa-tied", _s(mode="full", seq_len=256, batch_size=2)),
    Case("qwen2 gqa tied qlora +gc", "qwen2-gqa-tied", _s(mode="qlora", target_modules="all-linear", mixed_precision="bf16", seq_len=256, batch_size=2, gradient_checkpointing=True)),
    Case("gpt2 lora c_attn bf16", "gpt2", _s(mode="lora", target_modules=["c_attn"], seq_len=256, batch_size=2)),
    Case("gpt2 full fp32 adamw", "gpt2", _s(mode="full", dtype="fp32", seq_len=256, batch_size=2)),
    Case("phi3 lora qkv,gate_up bf16", "phi3", _s(mode="lora", target_modules=["qkv_proj", "gate_up_proj"], seq_len=256, batch_size=2)),
    Case("phi3 full bf16 sgd +gc", "phi3", _s(mode="full", optim="sgd", seq_len=256, batch_size=2, gradient_checkpointing=True)),
    Case("opt lora q,v bf16", "opt", _s(mode="lora", target_modules=QV, seq_len=256, batch_size=2)),
    Case("opt full fp32 adamw", "opt", _s(mode="full", dtype="fp32", seq_len=256, batch_size=2)),
    Case("qwen3 lora all-linear bf16", "qwen3", _s(mode="lora", target_modules="all-linear", seq_len=256, batch_size=2)),
    Case("qwen3 full bf16 adamw", "qwen3", _s(mode="full", seq_len=256, batch_size=2)),
    Case("gemma3-text lora all-linear bf16", "gemma3-text", _s(mode="lora", target_modules="all-linear", seq_len=256, batch_size=2)),
    Case("gemma3-text full bf16 adamw", "gemma3-text", _s(mode="full", seq_len=256, batch_size=2)),
    Case("qwen3-moe lora all-linear bf16", "qwen3-moe", _s(mode="lora", target_modules="all-linear", seq_len=256, batch_size=2)),
    Case("qwen3-moe full bf16 adamw", "qwen3-moe", _s(mode="full", seq_len=256, batch_size=2)),
    Case("olmo2 lora all-linear bf16", "olmo2", _s(mode="lora", target_modules="all-linear", seq_len=256, batch_size=2)),
    Case("smollm3 lora all-linear bf16", "smollm3", _s(mode="lora", target_modules="all-linear", seq_len=256, batch_size=2)),
    Case("gpt2 dropout 0.1 lora c_attn bf16", "gpt2-dropout", _s(mode="lora", target_modules=["c_attn"], seq_len=256, batch_size=2)),
    Case("gpt2 dropout 0.1 full fp32 adamw", "gpt2-dropout", _s(mode="full", dtype="fp32", seq_len=256, batch_size=2)),
    Case("bert dropout 0.1 full fp32 adamw", "bert-dropout", _s(mode="full", dtype="fp32", seq_len=256, batch_size=2)),
    Case("bert dropout 0.1 lora query,value bf16", "bert-dropout", _s(mode="lora", target_modules=["query", "value"], seq_len=256, batch_size=2)),
)


def case_config(name: str) -> Any:
    """The transformers config of a TINY_CONFIGS entry."""
    from ..models import config_from_dict

    return config_from_dict(TINY_CONFIGS[name])
