"""Initialization checks on the real adapter tensors of a PeftModel (pure: runs on AdapterFacts).

With ``y = W x + s * B A x`` the gradients are ``dL/dB = s * g (A x)^T`` and ``dL/dA = s * B^T g x^T``:
if both A and B are zero both gradients are zero forever; peft's default (``init_lora_weights=True``,
also ``"gaussian"``) sets B = 0 and A random, so the adapter starts as a no-op and A's gradient is zero
only until B moves.
"""

from __future__ import annotations

from typing import Any

from ..findings import Finding
from .adapters import AdapterFacts
from .registry import finding

# init_lora_weights -> what the initial tensors should look like
EXPECTED_START = {True: "b_zero", "gaussian": "b_zero", False: "random", "mica": "a_zero"}


def _expected(init: Any) -> str:
    return EXPECTED_START.get(init, "any") if isinstance(init, (bool, str)) else "any"


def _names(facts: list[AdapterFacts]) -> list[str]:
    return [f.module for f in facts]


def check_init_setting(init: Any) -> list[Finding]:
    if init is False:
        return [finding("init-random", "init_lora_weights=False initializes A and B randomly: the model no longer "
                        "matches the base model before training (a setting meant for debugging).",
                        "Use init_lora_weights=True (the default) or 'gaussian'.", init=init)]
    return []


def check_init_tensors(adapters: list[AdapterFacts], init: Any) -> list[Finding]:
    expect = _expected(init)
    both = [f for f in adapters if f.a_zero and f.b_zero]
    a_only = [f for f in adapters if f.a_zero and not f.b_zero]
    b_nonzero = [f for f in adapters if not f.b_zero and not f.a_zero]
    out = []
    if both:
        out.append(finding("init-both-zero", f"lora_A and lora_B are both all zeros in {len(both)} of {len(adapters)} "
                           f"adapted layers (e.g. {both[0].module}): A's gradient is a product with B and B's with A, so "
                           "nothing ever moves.", "Re-create the adapter with init_lora_weights=True (A random, B zero), "
                           "or re-initialize A, e.g. torch.nn.init.kaiming_uniform_(lora_A.weight, a=5**0.5).",
                           modules=_names(both)))
    if a_only and expect != "a_zero":
        out.append(finding("init-a-zero", f"lora_A is all zeros while lora_B is not in {len(a_only)} layers (e.g. "
                           f"{a_only[0].module}): B gets no gradient until A moves, the reverse of LoRA's usual start.",
                           "Initialize A randomly and B to zero (init_lora_weights=True).", modules=_names(a_only)))
    if b_nonzero and expect == "b_zero":
        out.append(finding("init-not-identity", f"lora_B is non-zero in {len(b_nonzero)} of {len(adapters)} layers "
                           f"(e.g. {b_nonzero[0].module}) although init_lora_weights={init!r} starts from B = 0: the "
                           "model already differs from the base model.",
                           "If this adapter is freshly created, re-create it with get_peft_model; if you meant to "
                           "continue a trained adapter, ignore this.", modules=_names(b_nonzero)))
    return out
