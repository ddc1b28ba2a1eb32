"""Make the model take, on fake tensors, the branches it takes on the traced batch for real.

``transformers`` reads tensor values in a few places to pick a faster path; on fake tensors it
cannot, and takes the general path instead (e.g. an explicit ``[b, 1, s, s]`` attention mask instead
of SDPA's ``is_causal``), which would change the memory we measure. The traced batch is known (full
length, unpadded, one sequence per row), so each such decision is answered as a real run answers it.

Multimodal models also check that the image tokens in ``input_ids`` match the image features
(``get_placeholder_mask`` counts them into a tensor and checks it with ``torch_compilable_check``);
a fake tensor has no count to compare. The traced batch places exactly as many image tokens as the
features (:mod:`lora_doctor.trace.inputs`), so that check alone is skipped, in those models' modules.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

def _grouped_mm_for_fake(original: Any) -> Any:
    """MoE experts in fp32 (QLoRA: ``prepare_model_for_kbit_training`` upcasts the unquantized 3-D expert
    weights) take transformers' own fallback kernel: torch's fake ``grouped_mm`` accepts only bf16,
    while CUDA's kernel runs fp32 too. Same output and saved tensors (input, weight), so same memory."""
    import torch

    def can_use(input: Any, weight: Any, offs: Any) -> bool:
        return weight.dtype == torch.bfloat16 and input.dtype == torch.bfloat16 and original(input, weight, offs)

    return can_use


def _moe_decision() -> tuple[str, str, Any] | None:
    try:
        from transformers.integrations import moe
    except ImportError:  # older transformers: no grouped experts
        return None
    original = getattr(moe, "_can_use_grouped_mm", None)
    return ("transformers.integrations.moe", "_can_use_grouped_mm", _grouped_mm_for_fake(original)) if original else None


# (module, attribute, replacement): what a real run on an unpadded, unpacked batch computes.
_DECISIONS: tuple[tuple[str, str, Any], ...] = (
    ("transformers.masking_utils", "find_packed_sequence_indices", lambda position_ids: None),
)

# modules whose ``torch_compilable_check`` only validates the traced batch's image-token count
_PLACEHOLDER_CHECKS: tuple[str, ...] = ("transformers.models.llava.modeling_llava",)


def _skip_check(cond: Any, msg: Any, error_type: type = ValueError) -> None:
    return None


def _sdpa_as_on_cuda(original: Any) -> Any:
    """SDPA as CUDA's flash / memory-efficient kernels use memory: dropout costs an RNG seed, not a mask.

    On CPU, SDPA with ``dropout_p > 0`` falls back to the math kernel, which materializes fp32
    ``[b, heads, s, s]`` probabilities and a dropout mask; a GPU run never does. Memory does not
    depend on the dropout values, so the trace runs SDPA without dropout.
    """

    def sdpa(*args: Any, dropout_p: float = 0.0, **kwargs: Any) -> Any:
        if len(args) > 4:  # (query, key, value, attn_mask, dropout_p, ...)
            args = args[:4] + (0.0,) + args[5:]
        return original(*args, **kwargs)

    return sdpa


def _dropout_as_on_cuda(original: Any) -> Any:
    """Dropout as CUDA runs it: ``native_dropout`` keeps a 1-byte bool mask for backward.

    On CPU, ``F.dropout`` multiplies by a noise tensor of the input's dtype instead; the trace models
    a GPU run, so the masks it saves must be CUDA's (config dropouts, peft's ``lora_dropout``).
    """
    import torch

    def dropout(input: Any, p: float = 0.5, training: bool = True, inplace: bool = False) -> Any:
        if not training or p == 0 or inplace:
            return original(input, p, training, inplace)
        return torch.native_dropout(input, p, True)[0]

    return dropout


# Third-party loggers a trace can trigger (torch's fake-tensor error log before a fallback,
# transformers' and peft's advice about a model built for a trace): none may reach the terminal.
_QUIET_LOGGERS = ("torch._subclasses.fake_tensor", "torch._subclasses", "torch.utils._python_dispatch",
                  "transformers", "peft", "bitsandbytes", "accelerate")


@contextmanager
def quiet_third_party() -> Iterator[None]:
    """Silence third-party logging and warnings while the real model code runs for a trace."""
    import logging
    import warnings

    saved = []
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level))
        logger.setLevel(logging.CRITICAL + 1)  # children at NOTSET inherit it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


@contextmanager
def real_batch_decisions(cuda_kernels: bool = True) -> Iterator[None]:
    """Patch the value-dependent decisions; with ``cuda_kernels`` also SDPA's kernel choice."""
    import importlib
    import sys

    saved = []
    decisions = list(_DECISIONS)
    moe = _moe_decision()
    if moe is not None:
        decisions.append(moe)
    if cuda_kernels:
        import torch.nn.functional as F

        decisions.append(("torch.nn.functional", "scaled_dot_product_attention",
                          _sdpa_as_on_cuda(F.scaled_dot_product_attention)))
        decisions.append(("torch.nn.functional", "dropout", _dropout_as_on_cuda(F.dropout)))
    decisions += [(name, "torch_compilable_check", _skip_check) for name in _PLACEHOLDER_CHECKS
                  if name in sys.modules]   # loaded when the model was built; never imported here
    for module_name, attr, replacement in decisions:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # older transformers: nothing to patch
            continue
        if hasattr(module, attr):
            saved.append((module, attr, getattr(module, attr)))
            setattr(module, attr, replacement)
    try:
        yield
    finally:
        for module, attr, original in saved:
            setattr(module, attr, original)
