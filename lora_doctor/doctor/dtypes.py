"""Dtype traps (pure): fp16 trainable parameters under fp16 AMP, quantized adapters, QLoRA fp4 and compute dtype."""

from __future__ import annotations

from ..findings import Finding
from .adapters import ModelFacts
from .registry import finding
from .settings import QuantSettings, TrainingSettings

_NOT_TRAINABLE_DTYPES = ("int", "uint", "bool", "float8")
_QUANT_PARAM_TYPES = ("Params4bit", "Int8Params")

# (compute dtype, bf16 available: True / None = unknown) -> severity; bfloat16 and "no bf16" never warn
COMPUTE_DTYPE_SEVERITY = {
    ("float32", True): "warning", ("float32", None): "info",
    ("float16", True): "warning", ("float16", None): "info",
}
COMPUTE_DTYPE_WHY = {
    "float32": "each 4-bit matmul dequantizes to fp32: slower, and more memory for the transient weights",
    "float16": "fp16 overflows at 65504, a common source of NaN losses in QLoRA",
}


def check_fp16_trainable(t: TrainingSettings, facts: ModelFacts) -> list[Finding]:
    if not t.fp16:
        return []
    half = sorted(n for n, d in facts.trainable.items() if d == "float16")
    if not half:
        return []
    return [finding("fp16-trainable-params", f"{len(half)} trainable parameters are stored in fp16 (e.g. {half[0]}) "
                    "while training with fp16=True: the GradScaler refuses them with 'ValueError: Attempting to "
                    "unscale FP16 gradients.'", "Keep trainable parameters in fp32 (get_peft_model does, with "
                    "autocast_adapter_dtype=True; or cast: for p in model.parameters(): if p.requires_grad: "
                    "p.data = p.data.float()), or train with bf16=True.", parameters=half)]


def check_adapter_dtypes(facts: ModelFacts) -> list[Finding]:
    bad = sorted({f.module for f in facts.adapters
                  for dtype, kind in ((f.a_dtype, f.a_type), (f.b_dtype, f.b_type))
                  if dtype.startswith(_NOT_TRAINABLE_DTYPES) or kind in _QUANT_PARAM_TYPES})
    if not bad:
        return []
    return [finding("adapter-quantized", f"adapter weights of {len(bad)} layers are quantized or integer (e.g. "
                    f"{bad[0]}): they cannot receive gradients.", "Quantize only the base model (BitsAndBytesConfig "
                    "at load time), then add the adapter with get_peft_model; never quantize after adding adapters.",
                    modules=bad)]


def check_quantization(q: QuantSettings, bf16_available: bool | None) -> list[Finding]:
    if q.bits != 4:
        return []
    out = []
    if q.quant_type == "fp4":
        out.append(finding("qlora-fp4", "4-bit quantization with bnb_4bit_quant_type='fp4' (bitsandbytes' default): "
                           "NF4 matches normally distributed weights better and is what QLoRA uses.",
                           "Set bnb_4bit_quant_type='nf4' (and bnb_4bit_use_double_quant=True).", quant_type=q.quant_type))
    severity = COMPUTE_DTYPE_SEVERITY.get((q.compute_dtype, bf16_available))
    if severity:
        out.append(finding("qlora-compute-dtype", f"bnb_4bit_compute_dtype={q.compute_dtype}: "
                           f"{COMPUTE_DTYPE_WHY[q.compute_dtype]}"
                           f"{'' if bf16_available else ' (if your GPU supports bf16: Ampere or newer)'}.",
                           "Set bnb_4bit_compute_dtype=torch.bfloat16 and train with bf16=True.", severity=severity,
                           compute_dtype=q.compute_dtype, bf16_available=bf16_available))
    return out
