"""Target checks on tiny models of several architectures, and peft-exact matching."""

from __future__ import annotations

import pytest
from conftest import codes, problems, tiny_config, tiny_model

from lora_doctor import diagnose
from lora_doctor.doctor.inventory import ModuleEntry, ModuleInventory, gather
from lora_doctor.doctor.matching import match_targets
from lora_doctor.doctor.settings import LoraSettings
from lora_doctor.doctor.targets import check_unusual
from lora_doctor.introspect import build_meta_model


def only(report, code):
    found = [f for f in report.findings if f.code == code]
    assert len(found) == 1, codes(report)
    return found[0]


@pytest.mark.parametrize("model_type, wrong, expected", [
    ("gpt2", ["q_proj", "v_proj"], "c_attn"),
    ("falcon", ["q_proj", "v_proj"], "query_key_value"),
    ("bloom", ["q_proj"], "query_key_value"),
    ("phi3", ["q_proj", "v_proj"], "qkv_proj"),
    ("t5", ["q_proj", "v_proj"], "q"),
])
def test_no_match_names_the_architecture_names(configs, model_type, wrong, expected):
    report = diagnose(configs[model_type], {"target_modules": wrong})
    f = only(report, "target-no-match")
    assert f.severity == "error" and not report.ok
    assert expected in f.fix and expected in f.data["suggestions"][wrong[0]]


def test_typo_among_matches_is_a_partial_match_with_nearest_name(configs):
    report = diagnose(configs["llama"], {"target_modules": ["qproj", "v_proj"]})
    f = only(report, "target-partial-match")
    assert f.severity == "warning" and f.data["suggestions"][0] == "q_proj" and "'q_proj'" in f.fix
    assert report.summary["matched_per_pattern"] == {"qproj": 0, "v_proj": 2}


def test_all_typos_is_an_error_with_nearest_names(configs):
    f = only(diagnose(configs["llama"], {"target_modules": ["qproj", "vproj"]}), "target-no-match")
    assert f.data["suggestions"]["qproj"][0] == "q_proj" and f.data["suggestions"]["vproj"][0] == "v_proj"


def test_regex_string_must_match_the_whole_name(configs):
    f = only(diagnose(configs["llama"], {"target_modules": "q_proj"}), "target-no-match")
    assert "re.fullmatch" in f.fix
    assert "target-no-match" not in codes(diagnose(configs["llama"], {"target_modules": r".*\.(q_proj|v_proj)"}))


def test_no_peft_default_for_architecture(configs):
    f = only(diagnose(configs["phi3"]), "target-no-match")
    assert "qkv_proj" in f.fix


def test_output_head_and_tied_head(configs):
    untied = diagnose(configs["llama"], {"target_modules": ["q_proj", "lm_head"]})
    assert "target-output-head" in codes(untied) and "target-tied-head" not in codes(untied)
    tied = diagnose(configs["gpt2"], {"target_modules": ["c_attn", "lm_head"], "fan_in_fan_out": True})
    assert {"target-output-head", "target-tied-head"} <= set(codes(tied))
    fixed = diagnose(configs["gpt2"], {"target_modules": ["c_attn", "lm_head"], "fan_in_fan_out": True,
                                       "ensure_weight_tying": True})
    assert "target-tied-head" not in codes(fixed)


def test_embedding_target(configs):
    assert "target-embedding" in codes(diagnose(configs["llama"], {"target_modules": ["q_proj", "embed_tokens"]}))


def test_vision_tower_match_is_flagged():
    modules = [ModuleEntry("model.vision_tower.layers.0.self_attn.q_proj", "linear", "Linear", 8, 8, "vision"),
               ModuleEntry("model.language_model.layers.0.self_attn.q_proj", "linear", "Linear", 8, 8, "blocks")]
    inv = ModuleInventory("llava", modules)
    s = LoraSettings(target_modules=("q_proj",))
    found = check_unusual(s, inv, match_targets(s, modules))
    assert [f.code for f in found] == ["target-vision-tower"]


def test_encoder_and_decoder_is_info_only(configs):
    report = diagnose(configs["t5"])
    assert "target-encoder-and-decoder" in codes(report) and not problems(report)
    assert "target-encoder-and-decoder" not in codes(diagnose(configs["t5"], {"target_modules": r"decoder\..*\.(q|v)"}))


def test_unsupported_module_type(configs):
    f = only(diagnose(configs["llama"], {"target_modules": ["mlp"]}), "target-unsupported-type")
    assert "gate_proj" in f.fix
    f = only(diagnose(configs["mixtral"], {"target_modules": ["q_proj", "experts"]}), "target-unsupported-type")
    assert "target_parameters" in f.fix


def test_coverage_q_v_only_suggests_all_projections(configs):
    f = only(diagnose(configs["llama"], {"target_modules": ["q_proj", "v_proj"]}), "coverage-partial")
    assert f.severity == "info"
    assert set(f.data["uncovered"]) == {"k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    full = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert "coverage-partial" not in codes(diagnose(configs["llama"], {"target_modules": full}))
    assert "coverage-partial" not in codes(diagnose(configs["llama"], {"target_modules": "all-linear"}))


def test_gpt2_conv1d_needs_fan_in_fan_out(configs):
    assert "fan-in-fan-out" in codes(diagnose(configs["gpt2"], {"target_modules": ["c_attn"]}))
    assert "fan-in-fan-out" not in codes(diagnose(configs["gpt2"], {"target_modules": ["c_attn"], "fan_in_fan_out": True}))
    assert "fan-in-fan-out" in codes(diagnose(configs["llama"], {"target_modules": ["q_proj"], "fan_in_fan_out": True}))


@pytest.mark.parametrize("model_type, target", [("gpt2", "c_attn"), ("phi3", "qkv_proj"), ("phi3", "gate_up_proj"),
                                                ("falcon", "query_key_value")])
def test_fused_projection_noted(configs, model_type, target):
    f = only(diagnose(configs[model_type], {"target_modules": [target], "fan_in_fan_out": model_type == "gpt2"}),
             "target-fused-projection")
    assert f.severity == "info" and target in f.data["fused"]


def test_moe_experts_not_reached(configs):
    assert only(diagnose(configs["mixtral"], {"target_modules": ["q_proj", "v_proj"]}),
                "moe-experts-not-targeted").severity == "info"
    ok = diagnose(configs["mixtral"], {"target_modules": ["q_proj"], "target_parameters": ["mlp.experts.down_proj"]})
    assert "moe-experts-not-targeted" not in codes(ok)


def test_moe_targets_follow_peft_conversion_for_fused_experts(configs):
    """peft (transformers 5) maps "all-linear" and Mixtral's old w1/w2/w3 names onto the fused 3-D experts."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    for targets in ("all-linear", ["w1", "w2", "w3"]):
        peft_model = get_peft_model(AutoModelForCausalLM.from_config(configs["mixtral"]),
                                    LoraConfig(r=4, target_modules=targets))
        assert peft_model.peft_config["default"].target_parameters  # real peft reaches the experts
        report = diagnose(configs["mixtral"], {"target_modules": targets})
        assert not {"moe-experts-not-targeted", "target-no-match", "target-unsupported-type"} & set(codes(report))


def test_target_parameter_without_match(configs):
    report = diagnose(configs["mixtral"], {"target_modules": ["q_proj"], "target_parameters": ["mlp.experts.w9"]})
    assert only(report, "target-parameter-no-match").severity == "error"


def _peft_wrapped(model) -> list[str]:
    return [n for n, m in model.named_modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]


@pytest.mark.parametrize("model_type, lora", [
    ("llama", {"target_modules": ["q_proj", "v_proj", "nothere"]}),
    ("llama", {"target_modules": r".*layers\.1\..*_proj"}),
    ("llama", {"target_modules": "all-linear"}),
    ("llama", {"target_modules": ["q_proj", "up_proj"], "exclude_modules": ["model.layers.0.self_attn.q_proj"]}),
    ("llama", {"target_modules": ["q_proj", "k_proj"], "layers_to_transform": [1]}),
    ("gpt2", {"target_modules": ["c_attn", "c_proj"], "fan_in_fan_out": True}),
    ("gpt2", {"target_modules": "all-linear"}),
    ("t5", {"target_modules": ["q", "v", "wo"]}),
    ("bloom", {"target_modules": ["query_key_value", "dense_4h_to_h"]}),
    ("phi3", {"target_modules": ["self_attn.qkv_proj", "gate_up_proj"]}),
])
def test_matching_is_exactly_peft(model_type, lora):
    from peft import LoraConfig, get_peft_model

    s = LoraSettings.from_any(LoraConfig(**lora))
    report = diagnose(tiny_config(model_type), lora)
    peft_model = get_peft_model(tiny_model(model_type), LoraConfig(**lora))
    ours = match_targets(s, gather(build_meta_model(tiny_config(model_type))).modules).matched
    assert sorted(ours) == sorted(n.removeprefix("base_model.model.") for n in _peft_wrapped(peft_model))
    assert report.summary["matched_modules"] == len(ours)



def test_layers_to_transform_edge_cases_agree_with_peft(configs):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lora_doctor import InvalidSettingError

    kw = dict(target_modules=["model.layers.0.self_attn.q_proj", "v_proj"], layers_to_transform=[1])
    peft_model = get_peft_model(AutoModelForCausalLM.from_config(configs["llama"]), LoraConfig(**kw))
    real = sorted(n for n, m in peft_model.get_base_model().named_modules() if hasattr(m, "lora_A") and len(m.lora_A))
    assert real == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    from lora_doctor.doctor.inventory import gather
    from lora_doctor.doctor.matching import match_targets
    from lora_doctor.doctor.settings import LoraSettings

    ours = match_targets(LoraSettings.from_any(kw), gather(AutoModelForCausalLM.from_config(configs["llama"])).modules)
    assert sorted(ours.matched) == real  # an exact key skips the layer filter, as in peft
    assert diagnose(configs["llama"], kw).summary["matched_modules"] == len(real)
    with pytest.raises(InvalidSettingError):  # peft raises ValueError for a string target with layers_to_transform
        diagnose(configs["llama"], dict(target_modules="all-linear", layers_to_transform=[1]))
