"""Regenerate lora_doctor/data/catalog.json: config fields of popular models + their ArchSpec.

Run after editing CATALOG below: ``python scripts/build_catalog.py``. Each model is built on the meta
device from its config (no download) and summarized; tests/test_catalog.py rebuilds every entry and
checks it against the JSON and against the published parameter count.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lora_doctor.introspect import arch_from_model, build_meta_model  # noqa: E402

L2 = dict(model_type="llama", vocab_size=32000, rms_norm_eps=1e-5, max_position_embeddings=4096)
L3 = dict(model_type="llama", vocab_size=128256, rms_norm_eps=1e-5, rope_theta=500000.0,
          max_position_embeddings=8192, bos_token_id=128000, eos_token_id=128001)
L31_ROPE = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192, rope_theta=500000.0)
Q25 = dict(model_type="qwen2", vocab_size=152064, rms_norm_eps=1e-6, rope_theta=1000000.0,
           max_position_embeddings=32768, hidden_act="silu")
G2 = dict(model_type="gemma2", vocab_size=256000, hidden_activation="gelu_pytorch_tanh",
          final_logit_softcapping=30.0, attn_logit_softcapping=50.0, sliding_window=4096,
          max_position_embeddings=8192, query_pre_attn_scalar=256)

# id -> (config fields, published parameter count of the model class we plan for: *ForCausalLM, and
# BertForMaskedLM for BERT, whose model card count of 109,482,240 is BertModel with its pooler)
CATALOG: dict[str, tuple[dict, int]] = {
    "meta-llama/Llama-2-7b-hf": (dict(L2, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=32), 6_738_415_616),
    "meta-llama/Llama-2-13b-hf": (dict(L2, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                       num_attention_heads=40, num_key_value_heads=40), 13_015_864_320),
    "meta-llama/Llama-2-70b-hf": (dict(L2, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                       num_attention_heads=64, num_key_value_heads=8), 68_976_648_192),
    "meta-llama/Meta-Llama-3-8B": (dict(L3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                        num_attention_heads=32, num_key_value_heads=8), 8_030_261_248),
    "meta-llama/Meta-Llama-3-70B": (dict(L3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                         num_attention_heads=64, num_key_value_heads=8), 70_553_706_496),
    "meta-llama/Llama-3.1-8B": (dict(L3, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                     num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                                     rope_scaling=L31_ROPE), 8_030_261_248),
    "meta-llama/Llama-3.1-70B": (dict(L3, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                                      num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=131072,
                                      rope_scaling=L31_ROPE), 70_553_706_496),
    "meta-llama/Llama-3.2-1B": (dict(L3, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                     num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                                     tie_word_embeddings=True, max_position_embeddings=131072,
                                     rope_scaling=dict(L31_ROPE, factor=32.0)), 1_235_814_400),
    "meta-llama/Llama-3.2-3B": (dict(L3, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                                     num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                                     tie_word_embeddings=True, max_position_embeddings=131072,
                                     rope_scaling=dict(L31_ROPE, factor=32.0)), 3_212_749_824),
    "mistralai/Mistral-7B-v0.1": (dict(model_type="mistral", vocab_size=32000, hidden_size=4096,
                                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                       num_key_value_heads=8, sliding_window=4096, rope_theta=10000.0,
                                       max_position_embeddings=32768), 7_241_732_096),
    "mistralai/Mistral-7B-v0.3": (dict(model_type="mistral", vocab_size=32768, hidden_size=4096,
                                       intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                       num_key_value_heads=8, sliding_window=None, rope_theta=1000000.0,
                                       max_position_embeddings=32768), 7_248_023_552),
    "mistralai/Mixtral-8x7B-v0.1": (dict(model_type="mixtral", vocab_size=32000, hidden_size=4096,
                                         intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                         num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
                                         rope_theta=1000000.0, max_position_embeddings=32768), 46_702_792_704),
    "Qwen/Qwen2.5-0.5B": (dict(Q25, vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                               num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True), 494_032_768),
    "Qwen/Qwen2.5-1.5B": (dict(Q25, vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                               num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True), 1_543_714_304),
    "Qwen/Qwen2.5-7B": (dict(Q25, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                             num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False), 7_615_616_512),
    "Qwen/Qwen2.5-14B": (dict(Q25, hidden_size=5120, intermediate_size=13824, num_hidden_layers=48,
                              num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False), 14_770_033_664),
    "Qwen/Qwen2.5-32B": (dict(Q25, hidden_size=5120, intermediate_size=27648, num_hidden_layers=64,
                              num_attention_heads=40, num_key_value_heads=8, tie_word_embeddings=False), 32_763_876_352),
    "Qwen/Qwen2.5-72B": (dict(Q25, hidden_size=8192, intermediate_size=29568, num_hidden_layers=80,
                              num_attention_heads=64, num_key_value_heads=8, tie_word_embeddings=False), 72_706_203_648),
    "google/gemma-2-2b": (dict(G2, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                               num_attention_heads=8, num_key_value_heads=4, head_dim=256), 2_614_341_888),
    "google/gemma-2-9b": (dict(G2, hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                               num_attention_heads=16, num_key_value_heads=8, head_dim=256), 9_241_705_984),
    "google/gemma-2-27b": (dict(G2, hidden_size=4608, intermediate_size=36864, num_hidden_layers=46,
                                num_attention_heads=32, num_key_value_heads=16, head_dim=128,
                                query_pre_attn_scalar=144), 27_227_128_320),
    "microsoft/Phi-3-mini-4k-instruct": (dict(model_type="phi3", vocab_size=32064, hidden_size=3072,
                                              intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                                              num_key_value_heads=32, max_position_embeddings=4096,
                                              original_max_position_embeddings=4096, sliding_window=2047,
                                              pad_token_id=32000, tie_word_embeddings=False), 3_821_079_552),
    "deepseek-ai/deepseek-llm-7b-base": (dict(model_type="llama", vocab_size=102400, hidden_size=4096,
                                              intermediate_size=11008, num_hidden_layers=30, num_attention_heads=32,
                                              num_key_value_heads=32, rms_norm_eps=1e-6,
                                              max_position_embeddings=4096), 6_910_365_696),
    "tiiuae/falcon-7b": (dict(model_type="falcon", vocab_size=65024, hidden_size=4544, num_hidden_layers=32,
                              num_attention_heads=71, multi_query=True, new_decoder_architecture=False,
                              parallel_attn=True, bias=False, alibi=False), 6_921_720_704),
    "openai-community/gpt2": (dict(model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12,
                                   n_positions=1024), 124_439_808),
    "facebook/opt-125m": (dict(model_type="opt", vocab_size=50272, hidden_size=768, ffn_dim=3072,
                               num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=2048,
                               word_embed_proj_dim=768, do_layer_norm_before=True), 125_239_296),
    "facebook/opt-1.3b": (dict(model_type="opt", vocab_size=50272, hidden_size=2048, ffn_dim=8192,
                               num_hidden_layers=24, num_attention_heads=32, max_position_embeddings=2048,
                               word_embed_proj_dim=2048, do_layer_norm_before=True), 1_315_758_080),
    "bigscience/bloom-7b1": (dict(model_type="bloom", vocab_size=250880, hidden_size=4096, n_layer=30,
                                  n_head=32), 7_069_016_064),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": (dict(L2, vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                                                num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                                                max_position_embeddings=2048), 1_100_048_384),
    "google-bert/bert-base-uncased": (dict(model_type="bert", vocab_size=30522, hidden_size=768,
                                           num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                                           max_position_embeddings=512, type_vocab_size=2), 109_514_298),
    "google-bert/bert-large-uncased": (dict(model_type="bert", vocab_size=30522, hidden_size=1024,
                                            num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                                            max_position_embeddings=512, type_vocab_size=2), 335_174_458),
}

# Other names users type for the same architecture.
ALIASES: dict[str, str] = {
    "meta-llama/Llama-2-7b-chat-hf": "meta-llama/Llama-2-7b-hf",
    "meta-llama/Llama-2-13b-chat-hf": "meta-llama/Llama-2-13b-hf",
    "meta-llama/Llama-2-70b-chat-hf": "meta-llama/Llama-2-70b-hf",
    "meta-llama/Meta-Llama-3-8B-Instruct": "meta-llama/Meta-Llama-3-8B",
    "meta-llama/Meta-Llama-3-70B-Instruct": "meta-llama/Meta-Llama-3-70B",
    "meta-llama/Meta-Llama-3.1-8B": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-8B-Instruct": "meta-llama/Llama-3.1-8B",
    "meta-llama/Meta-Llama-3.1-70B": "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.1-70B-Instruct": "meta-llama/Llama-3.1-70B",
    "meta-llama/Llama-3.2-1B-Instruct": "meta-llama/Llama-3.2-1B",
    "meta-llama/Llama-3.2-3B-Instruct": "meta-llama/Llama-3.2-3B",
    "mistralai/Mistral-7B-Instruct-v0.1": "mistralai/Mistral-7B-v0.1",
    "mistralai/Mistral-7B-Instruct-v0.3": "mistralai/Mistral-7B-v0.3",
    "mistralai/Mixtral-8x7B-Instruct-v0.1": "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen2.5-0.5B-Instruct": "Qwen/Qwen2.5-0.5B",
    "Qwen/Qwen2.5-1.5B-Instruct": "Qwen/Qwen2.5-1.5B",
    "Qwen/Qwen2.5-7B-Instruct": "Qwen/Qwen2.5-7B",
    "Qwen/Qwen2.5-14B-Instruct": "Qwen/Qwen2.5-14B",
    "Qwen/Qwen2.5-32B-Instruct": "Qwen/Qwen2.5-32B",
    "Qwen/Qwen2.5-72B-Instruct": "Qwen/Qwen2.5-72B",
    "google/gemma-2-2b-it": "google/gemma-2-2b",
    "google/gemma-2-9b-it": "google/gemma-2-9b",
    "google/gemma-2-27b-it": "google/gemma-2-27b",
    "deepseek-ai/deepseek-llm-7b-chat": "deepseek-ai/deepseek-llm-7b-base",
    "tiiuae/falcon-7b-instruct": "tiiuae/falcon-7b",
    "gpt2": "openai-community/gpt2",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-large-uncased": "google-bert/bert-large-uncased",
}


def build_entry(fields: dict) -> dict:
    from transformers import AutoConfig

    fields = dict(fields)
    model_type = fields.pop("model_type")
    config = AutoConfig.for_model(model_type, **fields)
    model = build_meta_model(config)
    return arch_from_model(model, config).to_dict()


SOURCES = Path(__file__).resolve().parent / "catalog_sources"
NOT_ARCHITECTURE = frozenset({"_name_or_path", "auto_map", "torch_dtype", "dtype", "transformers_version",
                              "use_cache", "quantization_config", "_commit_hash"})


def multimodal_entries() -> tuple[dict, dict]:
    """Vision-language and speech models (issue #13) from scripts/catalog_sources/*.json (``"multimodal": true``):
    each file holds the published config.json, where it came from, and the published parameter count."""
    models, aliases = {}, {}
    for path in sorted(SOURCES.glob("*.json")):
        source = json.loads(path.read_text())
        if not source.get("multimodal"):
            continue
        fields = {k: v for k, v in source["config"].items() if k not in NOT_ARCHITECTURE}
        published = source["published_params"]
        models[source["id"]] = {"config": fields, "published_params": published["value"],
                                "published_params_rel_tol": published["rel_tol"], "arch": build_entry(fields)}
        aliases.update({alias: source["id"] for alias in source.get("aliases", [])})
    return models, aliases


def main() -> None:
    out = {"models": {}, "aliases": dict(ALIASES)}
    for model_id, (fields, published) in CATALOG.items():
        arch = build_entry(fields)
        out["models"][model_id] = {"config": fields, "published_params": published, "arch": arch}
        flag = "" if arch["total_params"] == published else f"   MISMATCH (published {published:,})"
        print(f"{model_id:45s} {arch['total_params']:>16,}{flag}")
    models, aliases = multimodal_entries()
    out["models"].update(models)
    out["aliases"].update(aliases)
    for model_id, entry in models.items():
        print(f"{model_id:45s} {entry['arch']['total_params']:>16,}   multimodal, published {entry['published_params']:,}")
    path = Path(__file__).resolve().parents[1] / "lora_doctor" / "data" / "catalog.json"
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
