"""``check_merge``: do merged and unmerged adapters give the same outputs on a probe batch?

Merging adds ``s * B @ A`` into the base weight. In full or half precision that matches the unmerged
forward up to rounding; into a 4-bit / 8-bit base it is re-quantized, which rounds the update away
(and cannot be undone in place), so the check warns and gives the dequantize-first recipe instead.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidSettingError
from .adapters import gather_facts
from .dry_run import probe_ids
from .registry import finding
from .report import DoctorReport

DEQUANTIZE_RECIPE = ("Merge into a full-precision copy: reload the base model in bf16/fp16 without "
                     "quantization_config, PeftModel.from_pretrained(base, adapter_dir), then merge_and_unload() and "
                     "save_pretrained(); quantize the merged model afterwards if needed.")


def _probe(model: Any, batch: int = 2, seq: int = 8) -> dict:
    import torch

    ids = probe_ids(model, batch, seq)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if getattr(model.get_base_model().config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids
    return inputs


def check_merge(peft_model: Any, *, rtol: float = 1e-3) -> DoctorReport:
    """Compare logits before and after ``merge_adapter()`` (then ``unmerge_adapter()``) on a probe batch.

    ``rtol`` bounds the largest absolute difference relative to the largest absolute logit.
    The model is left as it was: unmerged, in its train/eval mode.
    """
    import torch

    if not hasattr(peft_model, "merge_adapter") or not hasattr(peft_model, "peft_config"):
        raise InvalidSettingError(f"check_merge needs a peft PeftModel, got {type(peft_model).__name__}")
    name = getattr(peft_model.get_base_model().config, "_name_or_path", "") or type(peft_model.get_base_model()).__name__
    facts = gather_facts(peft_model)
    if facts.quant_bits:
        return DoctorReport(name, [finding(
            "merge-quantized-base", f"the base model is {facts.quant_bits}-bit: merging re-quantizes W + s*B@A, "
            "rounding most of the low-rank update away, and the merged model no longer matches the trained adapter.",
            DEQUANTIZE_RECIPE, bits=facts.quant_bits)], {"merge": {"compared": False}})
    was_training = peft_model.training
    peft_model.eval()
    inputs = _probe(peft_model)
    try:
        with torch.no_grad():
            before = peft_model(**inputs).logits.float()
            peft_model.merge_adapter()
            try:
                after = peft_model(**inputs).logits.float()
            finally:
                peft_model.unmerge_adapter()
    finally:
        peft_model.train(was_training)
    diff = float((before - after).abs().max())
    scale = max(float(before.abs().max()), 1e-12)
    noop = all(f.b_zero for f in facts.adapters)
    summary = {"merge": {"compared": True, "max_abs_diff": diff, "relative_diff": diff / scale, "rtol": rtol,
                         "adapter_is_noop": noop}}
    if diff / scale > rtol:
        found = finding("merge-mismatch", f"merged and unmerged outputs differ: max |diff| {diff:.3g} "
                        f"({diff / scale:.2%} of the largest logit, tolerance {rtol:.2%}); the merged model is not "
                        "the model you trained.", "Merge in fp32 or bf16 (not fp16 / quantized), with the same "
                        "peft version that trained the adapter; check for non-mergeable variants.",
                        max_abs_diff=diff, relative_diff=diff / scale)
    else:
        found = finding("merge-ok", f"merged and unmerged outputs agree (max |diff| {diff:.3g}, "
                        f"{diff / scale:.2e} relative){'; note that the adapter is still a no-op (B = 0)' if noop else ''}.",
                        "Nothing to fix.", max_abs_diff=diff, relative_diff=diff / scale)
    return DoctorReport(name, [found], summary)
