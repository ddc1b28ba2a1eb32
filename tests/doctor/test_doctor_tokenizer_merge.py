"""Tokenizer checks, the dry run and check_merge on tiny real models."""

from __future__ import annotations

import pytest
import torch
from conftest import codes, problems, tiny_peft

from lora_doctor import InvalidSettingError, check_merge, diagnose


def make_tokenizer(n: int = 100, pad: str | None = "<pad>"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(n)}
    vocab.update({"<unk>": n, "<eos>": n + 1, "<pad>": n + 2})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    extra = {"pad_token": pad} if pad else {}
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>", **extra)


LORA = {"target_modules": "all-linear", "r": 16, "lora_alpha": 32}


def test_healthy_tokenizer(configs):
    assert not problems(diagnose(configs["llama"], LORA, tokenizer=make_tokenizer()))


def test_pad_missing_and_pad_is_eos(configs):
    assert "pad-missing" in codes(diagnose(configs["llama"], LORA, tokenizer=make_tokenizer(pad=None)))
    tok = make_tokenizer()
    tok.pad_token = tok.eos_token
    assert "pad-is-eos" in codes(diagnose(configs["llama"], LORA, tokenizer=tok))


def test_vocab_larger_than_embeddings(configs):
    f = next(f for f in diagnose(configs["llama"], LORA, tokenizer=make_tokenizer(200)).findings
             if f.code == "vocab-exceeds-embeddings")
    assert f.severity == "error" and f.data == {"tokens": 203, "rows": 128}


def test_added_tokens_need_trainable_rows(configs):
    tok = make_tokenizer()
    tok.add_tokens(["<tool>", "<call>"])
    f = next(f for f in diagnose(configs["llama"], LORA, tokenizer=tok).findings if f.code == "new-tokens-not-trained")
    assert f.data["added_ids"] == [103, 104] and "trainable_token_indices=[103, 104]" in f.fix
    for extra in ({"trainable_token_indices": [103, 104]}, {"modules_to_save": ["embed_tokens", "lm_head"]}):
        assert "new-tokens-not-trained" not in codes(diagnose(configs["llama"], {**LORA, **extra}, tokenizer=tok))


@pytest.mark.parametrize("model_type, lora", [
    ("llama", {"target_modules": "all-linear"}),
    ("gpt2", {"target_modules": ["c_attn", "c_fc"], "fan_in_fan_out": True}),
    ("t5", None),
    ("mixtral", {"target_modules": ["q_proj"], "target_parameters": ["mlp.experts.down_proj"]}),
])
def test_dry_run_passes_on_healthy_configs(configs, model_type, lora):
    f = next(f for f in diagnose(configs[model_type], lora, dry_run=True).findings if f.code.startswith("dry-run"))
    assert f.code == "dry-run-passed", f.message


def test_dry_run_skips_large_models():
    f = next(f for f in diagnose("meta-llama/Llama-3.1-8B", LORA, dry_run=True).findings if f.code.startswith("dry-run"))
    assert f.code == "dry-run-skipped" and f.severity == "info"


def test_dry_run_non_finite_and_failure_and_restores_state():
    model = tiny_peft()
    layer = next(m for m in model.modules() if hasattr(m, "lora_B") and hasattr(m, "base_layer"))
    layer.lora_B["default"].weight.data.fill_(float("inf"))
    model.eval()
    assert "dry-run-non-finite" in codes(diagnose(model, dry_run=True))
    assert not model.training and all(p.grad is None for p in model.parameters())

    def boom(*_):
        raise RuntimeError("kaboom")

    handle = layer.register_forward_hook(boom)
    f = next(f for f in diagnose(model, dry_run=True).findings if f.code == "dry-run-failed")
    assert "kaboom" in f.message
    handle.remove()


def test_check_merge_ok_and_restores_unmerged():
    model = tiny_peft(init_lora_weights=False)
    report = check_merge(model)
    assert report.codes == ["merge-ok"] and report.summary["merge"]["compared"]
    assert not any(getattr(m, "merged", False) for m in model.modules())


def test_check_merge_mismatch_reports_difference():
    model = tiny_peft(init_lora_weights=False).to(torch.bfloat16)   # merging into bf16 weights rounds
    report = check_merge(model, rtol=0.0)
    assert report.codes == ["merge-mismatch"] and report.summary["merge"]["max_abs_diff"] > 0


def test_check_merge_quantized_base_warns_without_merging(tmp_path):
    """A real bitsandbytes NF4 base (bitsandbytes' 4-bit runs on CPU), loaded as users load it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from conftest import tiny_model

    tiny_model("llama").save_pretrained(tmp_path)
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=bnb, device_map={"": "cpu"})
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    report = check_merge(model)
    assert report.codes == ["merge-quantized-base"] and "bf16" in report.findings[0].fix
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing was merged into the 4-bit base


def test_check_merge_needs_a_peft_model():
    from conftest import tiny_model

    with pytest.raises(InvalidSettingError):
        check_merge(tiny_model("llama"))

