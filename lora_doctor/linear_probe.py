"""Which linear layers peft's LoRA selects but cannot run, or refuses, found by asking the layers and peft.

peft's ``"all-linear"`` picks every ``nn.Linear`` instance (but the output head) by class, and its
``lora.Linear.forward`` computes ``result = base_layer(x)`` and then ``result + lora_B(lora_A(x)) * scale``,
reading ``result.dtype`` first (peft 0.21, ``peft/tuners/lora/layer.py``). Two kinds of ``nn.Linear``
subclass with a ``forward`` of their own break that:

* **tuple**: the layer returns ``(scores, indices)`` (transformers 5.24: PhiMoE's ``PhimoeTopKRouter``,
  Llama-4's ``Llama4Router``); the first forward raises ``AttributeError: 'tuple' object has no
  attribute 'dtype'``.
* **reshaped**: the layer returns a tensor whose last dimension is not ``out_features`` over the input's
  leading dimensions (DeepSeek-V4's grouped output projection ``DeepseekV4GroupedLinear``, ``o_a_proj``:
  ``[..., groups, in/groups] -> [..., groups, out/groups]``), so adding LoRA's ``[..., out_features]``
  raises ``RuntimeError: The size of tensor a (...) must match the size of tensor b (...)``.

Each such class is called once, on its weight's device (the meta device for a config: no compute), with a
2-row input; a layer that needs more leading dimensions (a group axis) is tried again with each of its own
integer attributes (``n_groups``) as one more leading dimension. A layer no probe runs is *not known*.
"""

from __future__ import annotations

from typing import Any

TENSOR, TUPLE, RESHAPED = "tensor", "tuple", "reshaped"
# the ArchSpec.extra fields listing, by last path component, the linear layers peft's LoRA cannot run or refuses
UNWRAPPABLE_FIELDS = {TUPLE: "non_tensor_linears", RESHAPED: "reshaping_linears", "refused": "peft_refused_linears"}


def linear_output(module: Any) -> str | None:
    """``"tensor"`` (what peft's LoRA expects), ``"tuple"``, ``"reshaped"``, or None (no probe ran)."""
    import torch
    import torch.nn as nn

    if not isinstance(module, nn.Linear) or type(module).forward is nn.Linear.forward:
        return TENSOR
    weight = getattr(module, "weight", None)
    if weight is None or weight.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return None   # a quantized weight: its own kernels, not a router
    in_f, out_f = int(module.in_features), int(module.out_features)
    for lead in _leading_shapes(module):
        x = torch.zeros(*lead, in_f, device=weight.device, dtype=weight.dtype)
        try:
            with torch.no_grad():
                out = module(x)
        except Exception:  # model code that needs another input shape, or more than one input
            continue
        if not isinstance(out, torch.Tensor):
            return TUPLE
        return TENSOR if tuple(out.shape) == (*lead, out_f) else RESHAPED
    return None


def _leading_shapes(module: Any) -> list[tuple[int, ...]]:
    sizes = sorted({v for k, v in vars(module).items()
                    if type(v) is int and v > 1 and k not in ("in_features", "out_features")})
    return [(2,)] + [(2, v) for v in sizes]


def linears_by_output(model: Any) -> dict[str, list[str]]:
    """``{"tuple": names, "reshaped": names}``: the last path component of every linear layer of each kind
    (a kind with none is left out). Each class is probed once."""
    import torch.nn as nn

    verdict: dict[type, str | None] = {}
    names: dict[str, set[str]] = {}
    for path, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        if type(module) not in verdict:
            verdict[type(module)] = linear_output(module)
        if verdict[type(module)] in (TUPLE, RESHAPED):
            names.setdefault(verdict[type(module)], set()).add(path.rsplit(".", 1)[-1])
    return {k: sorted(v) for k, v in names.items()}


def peft_refused_linears(model: Any) -> list[str]:
    """Names (last path component) of linear layers peft's LoRA refuses for this model type, asked of peft
    itself: peft 0.21's ``get_peft_model`` raises "Module 'out_proj' is incompatible with Mamba-based models"
    for the Mamba mixers' ``out_proj`` of mamba, mamba2, falcon_mamba, falcon_h1 and nemotron_h, and
    ``"all-linear"`` selects it (no exclusion of its own)."""
    import torch.nn as nn

    try:
        from peft import LoraConfig
        from peft.tuners.tuners_utils import _check_lora_target_modules_mamba as refuses
    except ImportError:  # a peft without the check: nothing refused
        return []
    config = LoraConfig(target_modules="all-linear")
    names = {path.rsplit(".", 1)[-1] for path, m in model.named_modules() if isinstance(m, nn.Linear)}
    out = []
    for name in sorted(names):
        try:
            refuses(config, model, name)
        except ValueError:
            out.append(name)
    return out
