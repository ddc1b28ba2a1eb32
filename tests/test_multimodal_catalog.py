"""Multimodal catalog entries: published parameter counts, towers, and offline plans with images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lora_doctor import plan
from lora_doctor.catalog import lookup

SOURCES = Path(__file__).resolve().parents[1] / "scripts" / "catalog_sources"
MULTIMODAL = sorted(s["id"] for s in (json.loads(p.read_text()) for p in SOURCES.glob("*.json")) if s.get("multimodal"))


def _source(model_id: str) -> dict:
    return next(s for s in (json.loads(p.read_text()) for p in SOURCES.glob("*.json")) if s["id"] == model_id)


@pytest.mark.parametrize("model_id", MULTIMODAL)
def test_count_matches_published_and_towers_are_known(model_id):
    entry, published = lookup(model_id), _source(model_id)["published_params"]
    assert abs(entry.arch.total_params - published["value"]) <= published["rel_tol"] * published["value"]
    expected = {"audio"} if entry.arch.model_type == "whisper" else {"vision", "projector"}
    assert {t.role for t in entry.arch.towers} == expected


def test_catalog_entry_matches_a_fresh_build():
    from lora_doctor.models import resolve

    entry = lookup("llava-hf/llava-1.5-7b-hf")
    assert resolve(entry.config).arch == entry.arch


def test_llava_plan_offline_with_an_image():
    p = plan("llava-hf/llava-1.5-7b-hf", target_modules=r".*language_model.*\.(q_proj|v_proj)", images_per_sample=1,
             image_size=(768, 1024), gpu="24GB")
    assert p.details["inputs"]["lm_seq_len"] == 512 + 576 and p.details["inputs"]["towers_training"] == []
    assert any("resized to 336x336" in n for n in p.notes)


def test_gemma3_uses_its_fixed_256_tokens():
    p = plan("google/gemma-3-4b-it", target_modules="all-linear", images_per_sample=2)
    assert p.details["inputs"]["lm_tokens_per_image"] == 256
    assert set(p.details["inputs"]["towers_training"]) == {"vision"}   # Gemma-3's projector has no nn.Linear


def test_max_seq_len_leaves_room_for_the_image_tokens():
    p = plan("llava-hf/llava-1.5-7b-hf", mode="qlora", target_modules="all-linear", images_per_sample=1, gpu="80GB")
    assert p.max_seq_len == 4096 - 576 and any("minus 576 image tokens" in n for n in p.notes)
