"""The offline catalog: published parameter counts, and agreement with a fresh meta-device build."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from lora_doctor.catalog import catalog_ids, lookup, nearest_ids

RAW = json.loads(resources.files("lora_doctor").joinpath("data/catalog.json").read_text())

REQUIRED = [
    "meta-llama/Llama-2-7b-hf", "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf",
    "meta-llama/Meta-Llama-3-8B", "meta-llama/Meta-Llama-3-70B", "meta-llama/Llama-3.1-8B",
    "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B",
    "mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-v0.3", "mistralai/Mixtral-8x7B-v0.1",
    "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-14B", "Qwen/Qwen2.5-32B",
    "Qwen/Qwen2.5-72B", "google/gemma-2-2b", "google/gemma-2-9b", "google/gemma-2-27b",
    "microsoft/Phi-3-mini-4k-instruct", "deepseek-ai/deepseek-llm-7b-base", "tiiuae/falcon-7b",
    "openai-community/gpt2", "facebook/opt-125m", "facebook/opt-1.3b", "bigscience/bloom-7b1",
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0", "google-bert/bert-base-uncased", "google-bert/bert-large-uncased",
]


def test_catalog_has_every_required_model():
    assert set(REQUIRED) <= set(catalog_ids())


@pytest.mark.parametrize("model_id", REQUIRED)
def test_parameter_count_matches_published(model_id):
    entry = lookup(model_id)
    assert entry.arch.total_params == entry.published_params


def test_llama2_7b_count_is_the_published_number():
    assert lookup("meta-llama/Llama-2-7b-hf").arch.total_params == 6_738_415_616


@pytest.mark.parametrize("model_id", ["meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-0.5B", "openai-community/gpt2",
                                      "mistralai/Mixtral-8x7B-v0.1", "microsoft/Phi-3-mini-4k-instruct",
                                      "tiiuae/falcon-7b", "google/gemma-2-2b"])
def test_cached_arch_equals_a_fresh_meta_build(model_id):
    """The JSON is a cache of the meta-device introspection; it must not drift from transformers."""
    from lora_doctor.introspect import arch_from_model, build_meta_model
    from lora_doctor.models import config_from_dict

    entry = lookup(model_id)
    config = config_from_dict(entry.config)
    fresh = arch_from_model(build_meta_model(config), config)
    assert fresh.to_dict() == entry.arch.to_dict()


def test_arch_buckets_add_up():
    for model_id in catalog_ids():
        a = lookup(model_id).arch
        assert a.linear_params + a.embedding_params + a.expert_params + a.other_params == a.total_params, model_id


def test_lookup_is_case_insensitive_and_knows_aliases():
    assert lookup("META-LLAMA/llama-2-7b-HF").model_id == "meta-llama/Llama-2-7b-hf"
    assert lookup("gpt2").model_id == "openai-community/gpt2"
    assert lookup("meta-llama/Llama-2-7b-chat-hf").model_id == "meta-llama/Llama-2-7b-hf"
    assert lookup("no/such-model") is None


def test_nearest_ids_suggests_the_typo_fix():
    assert nearest_ids("meta-llama/Llama-2-7bb-hf")[0] == "meta-llama/Llama-2-7b-hf"
    assert "Qwen/Qwen2.5-7B" in nearest_ids("qwen2.5-7b")


def test_tied_embeddings_and_moe_fields():
    qwen = lookup("Qwen/Qwen2.5-0.5B").arch
    assert qwen.tied_embeddings and qwen.head_params == 0
    llama = lookup("meta-llama/Llama-2-7b-hf").arch
    assert not llama.tied_embeddings and llama.head_params == 32000 * 4096
    mixtral = lookup("mistralai/Mixtral-8x7B-v0.1").arch
    assert mixtral.num_experts == 8 and mixtral.experts_per_token == 2
    assert mixtral.expert_params == 32 * 8 * 3 * 4096 * 14336
