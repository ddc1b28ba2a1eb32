"""Every finding code the config doctor can emit, with its documented severities.

``docs/checks.md`` documents each code (a test keeps the two in step). Checks build findings
through :func:`finding`, so an undocumented code or an undocumented severity is a bug caught at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..findings import Finding


@dataclass(frozen=True)
class CheckCode:
    code: str
    severities: tuple[str, ...]   # the first one is the usual severity
    area: str
    summary: str


_E, _W, _I = "error", "warning", "info"

_CODES: tuple[CheckCode, ...] = (
    # targets.py
    CheckCode("target-no-match", (_E,), "targets", "no target pattern matches any module (peft raises)"),
    CheckCode("target-partial-match", (_W,), "targets", "some target patterns match nothing (peft ignores them)"),
    CheckCode("target-parameter-no-match", (_E,), "targets", "a target_parameters entry matches no parameter"),
    CheckCode("target-unsupported-type", (_E,), "targets", "a pattern matches a module type LoRA cannot wrap"),
    CheckCode("target-non-tensor-output", (_E,), "targets",
              "a targeted linear layer returns a tuple (MoE router); peft's LoRA layer fails on it"),
    CheckCode("target-reshaped-output", (_E,), "targets",
              "a targeted linear layer's output is not [..., out_features] (grouped projection); peft's LoRA fails on it"),
    CheckCode("target-peft-refused", (_E,), "targets",
              "peft refuses a targeted layer for this model type (Mamba's out_proj); get_peft_model raises"),
    CheckCode("target-output-head", (_W,), "targets", "the output head (lm_head) is adapted"),
    CheckCode("target-tied-head", (_W,), "targets", "the adapted output head shares its weight with the embeddings"),
    CheckCode("target-embedding", (_W,), "targets", "an embedding layer is adapted"),
    CheckCode("target-vision-tower", (_W,), "targets", "layers of a vision tower are adapted"),
    CheckCode("target-encoder-and-decoder", (_I,), "targets", "both encoder and decoder of a seq2seq model are adapted"),
    CheckCode("coverage-partial", (_I,), "targets", "some attention or MLP projections are not adapted"),
    CheckCode("fan-in-fan-out", (_W,), "targets", "fan_in_fan_out does not match the layer type (GPT-2 Conv1D)"),
    CheckCode("target-fused-projection", (_I,), "targets", "fused projections are adapted (adapter portability)"),
    CheckCode("moe-experts-not-targeted", (_W, _I), "targets", "MoE experts stored as 3-D parameters get no adapter"),
    # scaling.py
    CheckCode("scale-high", (_W,), "scaling", "effective scale above 4"),
    CheckCode("scale-extreme", (_E,), "scaling", "effective scale of 8 or more"),
    CheckCode("scale-low", (_I,), "scaling", "effective scale below 0.25: adapters learn slowly"),
    CheckCode("rank-one", (_W,), "scaling", "r = 1"),
    CheckCode("rank-high", (_I, _W), "scaling", "r of 64 or more"),
    CheckCode("dropout-high", (_I, _W), "scaling", "lora_dropout above 0.1"),
    CheckCode("bias-trainable", (_W, _I), "scaling", "bias other than 'none'"),
    # init.py
    CheckCode("init-both-zero", (_E,), "init", "lora_A and lora_B are both zero: nothing can ever move"),
    CheckCode("init-a-zero", (_W,), "init", "lora_A is zero while lora_B is not"),
    CheckCode("init-not-identity", (_W,), "init", "lora_B is non-zero with an init meant to start from the base model"),
    CheckCode("init-random", (_W,), "init", "init_lora_weights=False: random A and B, a debugging setting"),
    # training.py
    CheckCode("no-trainable-params", (_E,), "training", "nothing is trainable"),
    CheckCode("adapter-frozen", (_W,), "training", "some adapter weights do not require grad"),
    CheckCode("checkpointing-frozen-inputs", (_E, _W), "training",
              "reentrant gradient checkpointing with frozen embeddings and no enable_input_require_grads()"),
    # dtypes.py
    CheckCode("fp16-trainable-params", (_E,), "dtypes", "trainable parameters in fp16 under fp16 AMP"),
    CheckCode("adapter-quantized", (_E,), "dtypes", "adapter weights are quantized or integer"),
    CheckCode("qlora-fp4", (_W,), "dtypes", "4-bit quantization with fp4 instead of nf4"),
    CheckCode("qlora-compute-dtype", (_W, _I), "dtypes", "4-bit compute dtype fp32 or fp16 where bf16 is available"),
    # moe_quant.py
    CheckCode("qlora-moe-experts-unquantized", (_W,), "dtypes",
              "QLoRA leaves a large share of an MoE's weights (fused 3-D experts) unquantized"),
    CheckCode("qlora-weights-unquantized", (_W,), "dtypes",
              "QLoRA leaves a large share of the linear weights (nn.Linear subclasses) unquantized"),
    # tokenizer.py
    CheckCode("pad-is-eos", (_W,), "tokenizer", "pad token equals eos token"),
    CheckCode("pad-missing", (_W,), "tokenizer", "tokenizer has no pad token"),
    CheckCode("vocab-exceeds-embeddings", (_E,), "tokenizer", "more tokens than embedding rows"),
    CheckCode("new-tokens-not-trained", (_W,), "tokenizer", "added tokens without modules_to_save / trainable_token_indices"),
    # multimodal.py
    CheckCode("projector-frozen-new-tokens", (_W,), "multimodal", "tokens added to a vision-language model with its projector frozen"),
    # dry_run.py
    CheckCode("dry-run-passed", (_I,), "dry-run", "every trainable parameter got a finite gradient"),
    CheckCode("dry-run-no-grad", (_E,), "dry-run", "trainable parameters got no gradient"),
    CheckCode("dry-run-non-finite", (_E,), "dry-run", "non-finite loss or gradients"),
    CheckCode("dry-run-zero-grad", (_W,), "dry-run", "every gradient is exactly zero"),
    CheckCode("dry-run-failed", (_E,), "dry-run", "forward or backward raised"),
    CheckCode("dry-run-skipped", (_I,), "dry-run", "the dry run could not be done"),
    # merge.py
    CheckCode("merge-ok", (_I,), "merge", "merged and unmerged outputs agree"),
    CheckCode("merge-mismatch", (_E,), "merge", "merged and unmerged outputs differ"),
    CheckCode("merge-quantized-base", (_W,), "merge", "merging into a quantized base rounds the update"),
)

REGISTRY: dict[str, CheckCode] = {c.code: c for c in _CODES}


def finding(code: str, message: str, fix: str, *, severity: str | None = None, **data: Any) -> Finding:
    """Build a Finding for a registered ``code``; ``severity`` defaults to the code's usual one."""
    spec = REGISTRY.get(code)
    if spec is None:
        raise KeyError(f"unregistered finding code {code!r}; add it to REGISTRY and docs/checks.md")
    level = severity or spec.severities[0]
    if level not in spec.severities:
        raise ValueError(f"{code!r} is documented as {spec.severities}, not {level!r}")
    return Finding(code, level, message, fix, dict(data))
