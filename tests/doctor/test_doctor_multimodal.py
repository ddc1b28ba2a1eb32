"""Doctor checks on a tiny LLaVA: adapters on the vision tower, a frozen projector with new tokens."""

from __future__ import annotations

from conftest import codes
from test_doctor_tokenizer_merge import make_tokenizer

from lora_doctor import diagnose
from lora_doctor.measure.multimodal import LM_ONLY, MM_CONFIGS

LLAVA = MM_CONFIGS["llava"]


def test_bare_names_reach_the_vision_tower():
    found = codes(diagnose(LLAVA, {"target_modules": ["q_proj", "v_proj"]}))
    assert "target-vision-tower" in found
    assert "target-vision-tower" not in codes(diagnose(LLAVA, {"target_modules": LM_ONLY}))
    meant = r".*(language_model|vision_tower).*\.(q_proj|v_proj)"   # the regex names the tower: meant
    assert "target-vision-tower" not in codes(diagnose(LLAVA, {"target_modules": meant}))


def test_new_tokens_with_a_frozen_projector():
    tok = make_tokenizer()
    tok.add_tokens(["<region>", "<box>"])
    lm_only = {"target_modules": LM_ONLY, "trainable_token_indices": [103, 104]}
    f = next(f for f in diagnose(LLAVA, lm_only, tokenizer=tok).findings if f.code == "projector-frozen-new-tokens")
    assert f.data["projector"] == "model.multi_modal_projector" and "multi_modal_projector" in f.fix
    for trained in ({**lm_only, "modules_to_save": ["multi_modal_projector"]},
                    {"target_modules": "all-linear", "trainable_token_indices": [103, 104]}):
        assert "projector-frozen-new-tokens" not in codes(diagnose(LLAVA, trained, tokenizer=tok))
    assert "projector-frozen-new-tokens" not in codes(diagnose(LLAVA, lm_only, tokenizer=make_tokenizer()))
