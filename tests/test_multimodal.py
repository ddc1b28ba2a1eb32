"""Vision-language and speech models: building, towers, image tokens, placement, bad input (no Trainer)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest

from lora_doctor import LoraDoctorError, plan
from lora_doctor.arch import ArchSpec
from lora_doctor.errors import InvalidSettingError, UnsupportedModelError
from lora_doctor.inputs import make_inputs, parse_image_size, plan_inputs, smart_resize
from lora_doctor.measure.multimodal import LM_ONLY, MM_CONFIGS, mm_config
from lora_doctor.models import resolve
from lora_doctor.placement import placement
from lora_doctor.plan_types import InputSettings

# transformers' default sub-configs (LLaVA-1.5's CLIP-L/336, Gemma-3's SigLIP) with a small text model
SMALL_TEXT = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                  num_attention_heads=4, vocab_size=1000)


def _arch(name: str) -> ArchSpec:
    return resolve(MM_CONFIGS[name]).arch


@pytest.mark.parametrize("name, cls", [("llava", "LlavaForConditionalGeneration"),
                                       ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
                                       ("whisper", "WhisperForConditionalGeneration")])
def test_towers_are_found_and_their_params_add_up(name, cls):
    from lora_doctor.introspect import build_meta_model

    arch = _arch(name)
    assert arch.architecture == cls
    model = build_meta_model(mm_config(name))
    for t in arch.towers:
        module = model.get_submodule(t.path)
        inside = sum(p.numel() for p in module.parameters())
        if t.role == "vision" and name == "qwen2_vl":   # the merger (projector) sits inside `visual`
            inside -= sum(p.numel() for p in module.merger.parameters())
        assert t.params == inside
    assert ArchSpec.from_dict(arch.to_dict()) == arch


def test_tower_shapes_come_from_the_built_modules():
    vision = next(t for t in _arch("qwen2_vl").towers if t.role == "vision")
    assert (vision.hidden_size, vision.num_layers, vision.intermediate_size, vision.merge_size) == (64, 2, 256, 2)
    audio = next(t for t in _arch("whisper").towers if t.role == "audio")
    assert (audio.hidden_size, audio.num_layers, audio.extra["max_source_positions"]) == (64, 2, 1500)
    whisper = _arch("whisper")
    assert (whisper.num_layers, whisper.hidden_size, whisper.max_positions) == (2, 64, 448)   # the decoder


def _reference_smart_resize():
    """transformers' own smart_resize, taken from the installed source (its module imports torchvision,
    which this environment lacks, so the function is compiled on its own)."""
    import ast
    import importlib.util
    import math
    from pathlib import Path

    spec = importlib.util.find_spec("transformers")
    path = Path(spec.origin).parent / "models" / "qwen2_vl" / "image_processing_qwen2_vl.py"
    tree = ast.parse(path.read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "smart_resize")
    namespace: dict = {"math": math}
    exec(compile(ast.Module([func], type_ignores=[]), str(path), "exec"), namespace)
    return namespace["smart_resize"]


@pytest.mark.parametrize("size", [(768, 1024), (100, 3000), (20, 20), (2048, 2048), (333, 517)])
def test_smart_resize_matches_transformers(size):
    reference = _reference_smart_resize()
    assert smart_resize(*size, factor=28) == reference(*size, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)


@pytest.mark.parametrize("size, low, high", [((768, 1024), None, 768 * 28 * 28), ((100, 3000), 256 * 28 * 28, None),
                                             ((2048, 2048), 128 * 28 * 28, 256 * 28 * 28), ((20, 20), 4 * 28 * 28, None)])
def test_processor_pixel_bounds_follow_transformers(size, low, high):
    """--min-pixels / --max-pixels: the planned resize is transformers' own smart_resize with those bounds."""
    reference = _reference_smart_resize()
    arch = _arch("qwen2_vl")
    ip = plan_inputs(arch, make_inputs(1, size, min_pixels=low, max_pixels=high))
    v = next(t for t in arch.towers if t.role == "vision")
    factor = v.patch_size * v.merge_size
    expected = reference(*size, factor=factor, min_pixels=low or 56 * 56, max_pixels=high or 28 * 28 * 1280)
    assert ip.planned_size == expected
    assert ip.lm_tokens_per_image == expected[0] * expected[1] // factor ** 2


def test_processor_pixel_bounds_worst_case_and_errors():
    arch = _arch("qwen2_vl")
    v = next(t for t in arch.towers if t.role == "vision")
    factor = v.patch_size * v.merge_size
    cells = 602112 // factor ** 2
    worst = plan_inputs(arch, make_inputs(1, max_pixels=602112))
    assert worst.lm_tokens_per_image == cells      # the grid with the most cells under max_pixels, not the square
    default = plan_inputs(arch, make_inputs(1))
    assert default.lm_tokens_per_image == 28 * 28 * 1280 // factor ** 2
    with pytest.raises(InvalidSettingError, match="Qwen2-VL-style"):
        plan_inputs(_arch("llava"), make_inputs(1, max_pixels=602112))
    with pytest.raises(InvalidSettingError, match="larger than max_pixels"):
        make_inputs(1, min_pixels=1000, max_pixels=10)
    with pytest.raises(InvalidSettingError, match="images_per_sample"):
        make_inputs(0, max_pixels=602112)


def test_image_token_counts():
    llava = resolve(dict(model_type="llava", text_config=SMALL_TEXT, vision_config={"model_type": "clip_vision_model",
                                                                                     "image_size": 336, "patch_size": 14})).arch
    ip = plan_inputs(llava, InputSettings(1, (480, 640)))
    assert (ip.lm_tokens_per_image, ip.vision_seq_per_image, ip.planned_size) == (576, 577, (336, 336))
    assert any("resized to 336x336" in n for n in ip.notes)
    # mllama: every image padded to max_num_tiles tiles; the tower pads each tile to a multiple of 8 patches
    vision = next(t for t in _arch("mllama").towers if t.role == "vision")
    tiles, patches = vision.extra["max_num_tiles"], (vision.image_size // vision.patch_size) ** 2 + 1
    for size in ((112, 112), (448, 448)):
        ml = plan_inputs(_arch("mllama"), InputSettings(1, size))
        assert ml.lm_tokens_per_image == 1 and ml.cross_tokens_per_image == tiles * patches
        assert ml.vision_seq_per_image == tiles * (-(-patches // 8) * 8)
    qwen = plan_inputs(_arch("qwen2_vl"), InputSettings(2, (768, 1024)))
    assert qwen.planned_size == (756, 1036) and qwen.lm_tokens_per_image == 27 * 37 and qwen.lm_image_tokens == 2 * 999
    whisper = plan_inputs(_arch("whisper"), InputSettings(audio_seconds=12.5))
    assert (whisper.audio_frames, whisper.mel_frames) == (1500, 3000)
    given = plan_inputs(_arch("llava"), InputSettings(1, None, 100))
    assert given.lm_tokens_per_image == 100


def test_bad_inputs_are_clear_errors():
    with pytest.raises(InvalidSettingError, match="has no vision tower"):
        plan({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
              "num_attention_heads": 4, "vocab_size": 1000}, images_per_sample=1)
    with pytest.raises(InvalidSettingError, match="30-second"):
        plan(MM_CONFIGS["whisper"], target_modules="all-linear", audio_seconds=45)
    with pytest.raises(InvalidSettingError, match="no audio encoder"):
        plan(MM_CONFIGS["llava"], target_modules="all-linear", audio_seconds=10)
    with pytest.raises(InvalidSettingError, match="images_per_sample >= 1"):
        make_inputs(0, (224, 224))
    with pytest.raises(UnsupportedModelError, match="'vision_config'"):
        resolve({"model_type": "qwen2_vl", "text_config": SMALL_TEXT})
    with pytest.raises(LoraDoctorError, match="WIDTHxHEIGHT"):
        parse_image_size("1024*768")
    assert parse_image_size("1024x768") == (768, 1024)


def test_all_linear_placement_matches_peft():
    """What placement() says all-linear reaches is what peft 0.21 wraps, tower by tower."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from lora_doctor.introspect_towers import tower_scope

    arch = _arch("llava")
    model = get_peft_model(AutoModelForImageTextToText.from_config(mm_config("llava")),
                           LoraConfig(r=2, target_modules="all-linear"))
    wrapped: dict[str, int] = {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A"):
            scope = tower_scope(name, arch.towers) or "blocks"
            wrapped[scope] = wrapped.get(scope, 0) + 1
    assert wrapped == placement(arch, "all-linear") == {"blocks": 14, "vision": 12, "projector": 2}
    assert placement(arch, ["q_proj", "v_proj"]) == {"blocks": 4, "vision": 4}   # CLIP's q/v too
    assert placement(_arch("qwen2_vl"), ["q_proj", "v_proj"]) == {"blocks": 4}    # Qwen's vision: qkv/proj


@pytest.mark.parametrize("name", ["llava", "whisper", "qwen2_vl"])
def test_the_suggested_regex_adapts_the_language_model_only(name):
    """The regex the all-linear note suggests, given to real peft, wraps language-model layers only."""
    import re

    from peft import LoraConfig, get_peft_model

    from lora_doctor.introspect_towers import tower_scope
    from lora_doctor.placement import placement_note

    arch = _arch(name)
    note = placement_note(arch, "all-linear")
    regex = re.search(r"regex such as r'([^']+)'", note).group(1)
    import transformers

    from lora_doctor.measure.multimodal import AUTO_CLASSES

    base = getattr(transformers, AUTO_CLASSES[name]).from_config(mm_config(name))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=regex))
    scopes = {tower_scope(n, arch.towers) or "blocks"
              for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_A")}
    assert scopes and scopes <= {"blocks", "cross"}, (regex, scopes)


def test_training_the_tower_costs_its_activations():
    frozen = plan(MM_CONFIGS["llava"], target_modules=LM_ONLY, images_per_sample=1, device="cpu")
    trained = plan(MM_CONFIGS["llava"], target_modules="all-linear", images_per_sample=1, device="cpu")
    assert frozen.details["inputs"]["towers_training"] == []
    assert set(trained.details["inputs"]["towers_training"]) == {"vision", "projector"}
    assert trained.breakdown["activations"] > frozen.breakdown["activations"]
    assert any("reaches: vision tower" in n for n in trained.notes)
    no_images = plan(MM_CONFIGS["llava"], target_modules=LM_ONLY, device="cpu")
    assert no_images.peak_bytes < frozen.peak_bytes and any("without images" in n for n in no_images.notes)


@pytest.mark.parametrize("name, inputs", [("llava", dict(images_per_sample=1)), ("whisper", dict(audio_seconds=10)),
                                          ("qwen2_vl", dict(images_per_sample=1, image_size=(224, 280))),
                                          ("gemma3", dict(images_per_sample=1)),
                                          ("idefics3", dict(images_per_sample=1, image_size=(112, 112))),
                                          ("mllama", dict(images_per_sample=1, image_size=(112, 112)))])
def test_trace_runs_every_family_and_agrees_with_analytic(name, inputs):
    """The traced step (real model code on fake tensors, images / audio fed) needs no fallback."""
    kw = dict(target_modules=["q_proj", "v_proj"], seq_len=64, batch_size=2, device="cpu", **inputs)
    traced = plan(MM_CONFIGS[name], engine="trace", **kw)
    analytic = plan(MM_CONFIGS[name], **kw)
    assert traced.engine == "trace" and "trace_error" not in traced.details
    assert not any("trace engine does not run" in n or "trace failed" in n for n in traced.notes)
    # Gemma-3: the analytic language model lacks its four norms per layer and q/k norms (docs/multimodal.md)
    assert traced.peak_bytes == pytest.approx(analytic.peak_bytes, rel=0.06 if name == "gemma3" else 0.04)
    # the images / audio are in the step: without them the traced peak is lower
    if name != "whisper":
        text_only = plan(MM_CONFIGS[name], engine="trace", **dict(kw, images_per_sample=0, image_size=None))
        assert text_only.peak_bytes < traced.peak_bytes


def test_trace_engine_falls_back_with_a_note_for_smolvlm():
    config = dict(model_type="smolvlm", image_token_id=999, scale_factor=2, text_config=SMALL_TEXT,
                  vision_config=dict(model_type="smolvlm_vision", hidden_size=64, intermediate_size=128,
                                     num_hidden_layers=1, num_attention_heads=4, image_size=112, patch_size=14))
    p = plan(config, target_modules="all-linear", engine="trace", images_per_sample=1, device="cpu")
    assert p.engine == "analytic" and "trace engine does not run smolvlm" in p.notes[0]
    assert all(name in p.notes[0] for name in ("gemma3", "idefics3", "mllama", "qwen2_5_vl"))   # what it traces


def test_cli_plan_with_images(capsys):
    from lora_doctor.cli import main

    code = main(["plan", "gpt2", "--images", "1"])
    assert code == 2 and "no vision tower" in capsys.readouterr().err


def test_first_batch_probe_reads_whisper_features():
    import torch

    from lora_doctor.callback.probes import batch_inputs

    kwargs = {"input_features": torch.zeros(2, 80, 3000), "labels": torch.zeros(2, 40, dtype=torch.long)}
    assert batch_inputs(torch.nn.Linear(1, 1), kwargs) == {"audio_seconds": 30.0, "seq_len": 40, "batch_size": 2}
    assert batch_inputs(torch.nn.Linear(1, 1), {"input_ids": torch.zeros(2, 8, dtype=torch.long)}) == {}
