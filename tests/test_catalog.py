"""The offline catalog: published parameter counts, sources, agreement with a fresh meta-device build."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest

from lora_doctor.catalog import catalog_ids, lookup, nearest_ids

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ROOT / "scripts" / "catalog_sources"
RAW = json.loads(resources.files("lora_doctor").joinpath("data/catalog.json").read_text())
SOURCE_FILES = {json.loads(path.read_text())["id"]: json.loads(path.read_text()) for path in SOURCES.glob("*.json")}

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
ADDED = [  # issue #12, "catalog for today"
    "Qwen/Qwen3-0.6B", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-4B", "Qwen/Qwen3-8B", "Qwen/Qwen3-14B", "Qwen/Qwen3-32B",
    "Qwen/Qwen3-30B-A3B", "Qwen/Qwen3-235B-A22B", "Qwen/Qwen2.5-3B",
    "google/gemma-3-270m", "google/gemma-3-1b-it", "google/gemma-3-4b-it:text", "google/gemma-3-12b-it:text",
    "google/gemma-3-27b-it:text", "meta-llama/Llama-3.3-70B-Instruct", "microsoft/phi-4",
    "microsoft/Phi-4-mini-instruct", "microsoft/Phi-3.5-mini-instruct", "mistralai/Mistral-Nemo-Base-2407",
    "openai/gpt-oss-20b", "HuggingFaceTB/SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-360M-Instruct",
    "HuggingFaceTB/SmolLM2-1.7B-Instruct", "HuggingFaceTB/SmolLM3-3B", "allenai/OLMo-2-1124-7B",
    "allenai/OLMo-2-1124-13B", "allenai/OLMo-2-0325-32B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B", "ibm-granite/granite-3.3-8b-instruct",
    "openai/gpt-oss-120b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "mistralai/Mistral-Small-24B-Instruct-2501",
    "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B", "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-8B", "Qwen/Qwen2.5-Coder-32B-Instruct", "meta-llama/Llama-4-Scout-17B-16E:text",
    "Qwen/Qwen2.5-Coder-7B-Instruct", "Qwen/Qwen2.5-Coder-14B-Instruct",
    "Qwen/Qwen2.5-Coder-1.5B-Instruct", "Qwen/Qwen2.5-Coder-3B-Instruct",
    "ibm-granite/granite-3.1-8b-instruct", "ibm-granite/granite-3.1-2b-instruct",
]
MULTIMODAL = ["google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it", "llava-hf/llava-1.5-7b-hf",
              "openai/whisper-small", "openai/whisper-large-v3", "Qwen/Qwen2.5-VL-3B-Instruct",
              "Qwen/Qwen2.5-VL-7B-Instruct", "openai/whisper-medium", "Qwen/Qwen2-VL-7B-Instruct",
              "HuggingFaceTB/SmolVLM-256M-Instruct"]
BUILT_MULTIMODAL = {  # stored for issue #13 with a config that builds, on the meta device, to its published count
    "openai/whisper-small": "AutoModelForSpeechSeq2Seq", "openai/whisper-large-v3": "AutoModelForSpeechSeq2Seq",
    "Qwen/Qwen2.5-VL-3B-Instruct": "AutoModelForImageTextToText",
    "Qwen/Qwen2.5-VL-7B-Instruct": "AutoModelForImageTextToText",
    "openai/whisper-medium": "AutoModelForSpeechSeq2Seq", "Qwen/Qwen2-VL-7B-Instruct": "AutoModelForImageTextToText",
    "HuggingFaceTB/SmolVLM-256M-Instruct": "AutoModelForImageTextToText",
}


def test_catalog_has_every_required_model_and_at_least_60():
    assert set(REQUIRED + ADDED) <= set(catalog_ids())
    assert len(catalog_ids()) >= 60


@pytest.mark.parametrize("model_id", sorted(RAW["models"]))
def test_parameter_count_matches_published(model_id):
    """Each count against its published one, within the precision that number was published with."""
    entry = lookup(model_id)
    off = abs(entry.arch.total_params - entry.published_params) / entry.published_params
    assert off <= entry.published_params_rel_tol, (model_id, entry.arch.total_params, entry.published_params)
    assert entry.published_params_rel_tol <= 1e-4  # every count here is exact or within a few vocabulary rows


def test_llama2_7b_count_is_the_published_number():
    assert lookup("meta-llama/Llama-2-7b-hf").arch.total_params == 6_738_415_616


def test_moe_counts_are_the_published_totals_with_fused_experts():
    """transformers 5 builds Qwen3-MoE and gpt-oss experts as fused 3-D parameters: totals must not move."""
    qwen = lookup("Qwen/Qwen3-30B-A3B").arch
    assert qwen.total_params == 30_532_122_624 and qwen.num_experts == 128 and qwen.experts_per_token == 8
    assert qwen.expert_params == 48 * 128 * 3 * 2048 * 768
    oss = lookup("openai/gpt-oss-20b").arch
    assert oss.total_params == 20_914_757_184 and oss.num_experts == 32 and oss.experts_per_token == 4
    big = lookup("openai/gpt-oss-120b").arch
    assert big.total_params == 116_829_156_672 and big.num_experts == 128 and big.experts_per_token == 4


@pytest.mark.parametrize("model_id", ["meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-0.5B", "openai-community/gpt2",
                                      "mistralai/Mixtral-8x7B-v0.1", "microsoft/Phi-3-mini-4k-instruct",
                                      "tiiuae/falcon-7b", "google/gemma-2-2b", "Qwen/Qwen3-30B-A3B",
                                      "openai/gpt-oss-20b", "google/gemma-3-4b-it:text", "HuggingFaceTB/SmolLM3-3B"])
def test_cached_arch_equals_a_fresh_meta_build(model_id):
    """The JSON is a cache of the meta-device introspection; it must not drift from transformers."""
    from lora_doctor.introspect import arch_from_model, build_meta_model
    from lora_doctor.models import config_from_dict

    entry = lookup(model_id)
    config = config_from_dict(entry.config)
    fresh = arch_from_model(build_meta_model(config), config)
    stored = entry.arch.to_dict()
    stored.pop("derived")   # trace-derived terms: only scripts/build_catalog.py --derive computes them
    assert {k: v for k, v in fresh.to_dict().items() if k != "derived"} == stored


@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-8B", "openai/gpt-oss-20b", "google/gemma-3-1b-it"])
def test_build_script_reproduces_the_committed_entry(model_id):
    """scripts/build_catalog.py, run on the stored source, gives exactly what catalog.json holds."""
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_catalog
    finally:
        sys.path.pop(0)
    built, stored = build_catalog.build_entry(SOURCE_FILES[model_id]), RAW["models"][model_id]
    built["arch"].pop("derived", None)
    assert built == dict(stored, arch={k: v for k, v in stored["arch"].items() if k != "derived"})


def test_every_source_names_where_its_config_and_count_come_from():
    for model_id, source in SOURCE_FILES.items():
        where = source["config_source"]
        assert where["mirrors"].startswith("https://huggingface.co/"), model_id
        assert (where["repo"] and where["path"] and len(where["commit"]) == 40) or where.get("note"), model_id
        assert source["published_params"]["value"] > 0 and source["published_params"]["source"], model_id
        assert source["family"] and source["config"]["model_type"], model_id
    for model_id, raw in RAW["models"].items():
        assert raw["sources"]["config"] and raw["sources"]["params"] and raw["family"], model_id


def test_catalog_matches_the_sources():
    """Every source, text or multimodal (issue #13), is in the catalog with its aliases."""
    assert set(SOURCE_FILES) == set(RAW["models"])
    for model_id in SOURCE_FILES:
        for alias in SOURCE_FILES[model_id]["aliases"]:
            assert RAW["aliases"][alias] == model_id


@pytest.mark.parametrize("model_id", MULTIMODAL)
def test_multimodal_entries_are_built_with_their_towers(model_id):
    source = SOURCE_FILES[model_id]
    assert source["multimodal"] is True
    assert "vision_config" in source["config"] or source["config"]["model_type"] == "whisper"
    assert source["published_params"]["value"] > 1e8
    assert lookup(model_id).arch.towers


@pytest.mark.parametrize("model_id", sorted(BUILT_MULTIMODAL))
def test_stored_multimodal_configs_build_to_the_published_count(model_id):
    """Speech and vision entries for issue #13: the stored config builds, on the meta device, to the published count."""
    import torch
    import transformers

    source = SOURCE_FILES[model_id]
    fields = {k: v for k, v in source["config"].items() if k not in ("_name_or_path", "torch_dtype", "transformers_version")}
    config = transformers.AutoConfig.for_model(**fields)
    with torch.device("meta"):
        model = getattr(transformers, BUILT_MULTIMODAL[model_id]).from_config(config)
    assert sum(p.numel() for p in model.parameters()) == source["published_params"]["value"]


def test_arch_buckets_add_up():
    for model_id in catalog_ids():
        a = lookup(model_id).arch
        assert a.linear_params + a.embedding_params + a.expert_params + a.other_params == a.total_params, model_id


def test_lookup_is_case_insensitive_and_knows_aliases():
    assert lookup("META-LLAMA/llama-2-7b-HF").model_id == "meta-llama/Llama-2-7b-hf"
    assert lookup("gpt2").model_id == "openai-community/gpt2"
    assert lookup("meta-llama/Llama-2-7b-chat-hf").model_id == "meta-llama/Llama-2-7b-hf"
    assert lookup("Qwen/Qwen3-8b").model_id == "Qwen/Qwen3-8B"
    assert lookup("Qwen/Qwen3-8B-Base").model_id == "Qwen/Qwen3-8B"
    assert lookup("mistralai/Mistral-Small-24B-Base-2501").model_id == "mistralai/Mistral-Small-24B-Instruct-2501"
    assert lookup("no/such-model") is None


def test_llama4_scout_hub_ids_plan_the_language_model():
    """AutoModelForCausalLM loads Llama4ForCausalLM (text only) from both Scout checkpoints: the plain ids plan it."""
    for hub_id in ("meta-llama/Llama-4-Scout-17B-16E", "meta-llama/Llama-4-Scout-17B-16E-Instruct"):
        entry = lookup(hub_id)
        assert entry.model_id == "meta-llama/Llama-4-Scout-17B-16E:text"
        assert entry.arch.num_experts == 16 and entry.arch.experts_per_token == 1 and not entry.arch.towers


@pytest.mark.parametrize("typed,expected", [
    ("meta-llama/Llama-2-7bb-hf", "meta-llama/Llama-2-7b-hf"),
    ("qwen3-8b", "Qwen/Qwen3-8B"),
    ("Qwen3 8B", "Qwen/Qwen3-8B"),
    ("Qwen/Qwen3_8b", "Qwen/Qwen3-8B"),
    ("qwen2.5-7b", "Qwen/Qwen2.5-7B"),
    ("gpt-oss-20b", "openai/gpt-oss-20b"),
    ("google/gemma-3-4b-text", "google/gemma-3-4b-it:text"), ("gemma3-4b-it", "google/gemma-3-4b-it"),
    ("llama-3.3-70b", "meta-llama/Llama-3.3-70B-Instruct"),
    ("phi4", "microsoft/phi-4"),
    ("smollm3", "HuggingFaceTB/SmolLM3-3B"),
    ("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B"),
    ("gpt-oss-120B", "openai/gpt-oss-120b"),
    ("DeepSeek-R1-Distill-Qwen-7b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
    ("mistral-small-24b", "mistralai/Mistral-Small-24B-Base-2501"),
    ("qwen2.5-coder-32b-instruct", "Qwen/Qwen2.5-Coder-32B-Instruct"),
    ("DeepSeek-R1-Distill-Qwen-14b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B"),
    ("llama-4-scout-17b-16e-instruct", "meta-llama/Llama-4-Scout-17B-16E-Instruct"),
    ("whisper-medium", "openai/whisper-medium"),
    ("qwen2-vl-7b-instruct", "Qwen/Qwen2-VL-7B-Instruct"),
    ("smolvlm-256m-instruct", "HuggingFaceTB/SmolVLM-256M-Instruct"),
    ("qwen2.5-coder-3b-instruct", "Qwen/Qwen2.5-Coder-3B-Instruct"),
    ("granite-3.1-2b-instruct", "ibm-granite/granite-3.1-2b-instruct"),
])
def test_nearest_ids_suggests_the_typo_fix(typed, expected):
    assert nearest_ids(typed)[0] == expected


def test_nearest_ids_suggests_nothing_for_nonsense():
    assert nearest_ids("no/such-model") == []


def test_tied_embeddings_and_moe_fields():
    qwen = lookup("Qwen/Qwen2.5-0.5B").arch
    assert qwen.tied_embeddings and qwen.head_params == 0
    llama = lookup("meta-llama/Llama-2-7b-hf").arch
    assert not llama.tied_embeddings and llama.head_params == 32000 * 4096
    mixtral = lookup("mistralai/Mixtral-8x7B-v0.1").arch
    assert mixtral.num_experts == 8 and mixtral.experts_per_token == 2
    assert mixtral.expert_params == 32 * 8 * 3 * 4096 * 14336


def test_catalog_command_groups_by_family(capsys):
    from lora_doctor.cli import main

    assert main(["catalog"]) == 0
    lines = capsys.readouterr().out.splitlines()
    headers = [line for line in lines if line and not line.startswith(" ")]
    assert headers == sorted(headers, key=str.lower) and len(headers) == len(set(headers))
    for family in ("Llama", "Qwen", "Gemma", "Mistral", "Phi", "gpt-oss", "SmolLM", "OLMo", "DeepSeek-R1-Distill",
                   "Granite"):
        assert family in headers
    qwen = lines.index("Qwen")
    assert any("Qwen/Qwen3-30B-A3B" in line and line.endswith("MoE") for line in lines[qwen:])


def test_catalog_command_filters_one_family(capsys):
    from lora_doctor.cli import main

    assert main(["catalog", "--json", "--family", "gpt-OSS"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["model"] for row in rows] == ["openai/gpt-oss-120b", "openai/gpt-oss-20b"]
    assert all(row["moe"] for row in rows)
    assert main(["catalog", "--family", "nope"]) == 2
    assert "pick one of" in capsys.readouterr().err


def test_new_entries_plan_offline_fast_without_torch():
    """A dense, two MoE and a Gemma-3 entry plan from the catalog alone: no torch, no network, well under 1 s."""
    code = (
        "import sys, time, io, contextlib\n"
        "from lora_doctor.cli import main\n"
        "runs = [['Qwen/Qwen3-8B', '--gpu', '24GB'],\n"
        "        ['Qwen/Qwen3-30B-A3B', '--gpu', '80GB', '--target-modules', 'all-linear'],\n"
        "        ['openai/gpt-oss-20b', '--gpu', '80GB', '--target-modules', 'all-linear'],\n"
        "        ['google/gemma-3-4b-it:text', '--gpu', '24GB']]\n"
        "for argv in runs:\n"
        "    start = time.perf_counter()\n"
        "    with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "        assert main(['plan', *argv]) == 0, argv\n"
        "    assert argv[0] in out.getvalue()\n"
        "    print(argv[0], time.perf_counter() - start)\n"
        "print('torch', 'torch' in sys.modules)\n"
    )
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    lines = out.stdout.strip().splitlines()
    assert lines[-1] == "torch False"
    seconds = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines[:-1]}
    assert len(seconds) == 4 and max(seconds.values()) < 1.0, seconds
