"""Trace-derived corrections to the activation recipes, per layer kind and setting class (no torch).

The recipes in :mod:`lora_doctor.memory.activations` write down, op by op, what a Llama-style block
saves. Real blocks differ (q/k norms, four norms per layer, softcapping, MoE routers, dense/MoE
mixes, config dropouts, masks built for sliding windows), so :mod:`lora_doctor.memory.derive`
traces a few layers of the real model code at full width and stores, for each region, what the
trace saved minus what the recipe predicted, in the basis the engine extrapolates with::

    bytes(region) = a * tokens + q * tokens * seq_len + e * seq_len + c

``a`` per token, ``q`` per token per key position (eager scores, sliding-window masks), ``e`` per
sequence position independent of the batch (rope tables), ``c`` per step (weight-sized tensors,
e.g. the merged delta of peft's LoRA on fused MoE expert parameters). Regions: each *layer kind* (layers that
share a structure, e.g. dense and MoE layers of Qwen3-MoE), the first layer (whose input needs no
gradient under LoRA), everything outside the layers, and the logits.

Stored in :attr:`ArchSpec.derived` (the catalog ships them, so catalog plans stay torch-free)::

    {"version": 2, "layer_kinds": [0, 0, 1, ...],                # kind of each layer
     "classes": {"<class key>": {"layers": [[a, q, e, c], ...],  # residual per kind
                                 "first": [...], "outside": [...], "logits": [...],
                                 "trainable": [per kind, outside],    # parameters peft adds beyond
                                                                      # the linear families (MoE experts)
                                 "backward": {"layers": [[[a, q, e, c], ...], ...],  # per kind, absolute:
                                              "first": [[a, q, e, c], ...],  # what its backward adds at
                                              "params": [per kind],          # each moment; params per kind
                                              "loss": [[a, q, e, c], ...]}}}}  # the loss and head backward

``backward`` (optional; classes derived before it have none and plan without that phase) is what one
layer's backward adds on top of the saved activations of the layers not yet done and the gradients
already made: the incoming gradient, the layer's own gradients, the kernels' scratch. The engine's
``backward_layers`` phase walks the layers from the last with it.

A model with a sliding window has two regimes (sequences up to the window, and longer ones, where
transformers builds explicit masks), derived and stored separately (``:long`` class keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..arch import ArchSpec
from ..plan_types import PlanSettings
from .tables import DTYPE_BYTES

VERSION = 2
Term = tuple[float, float, float, float]   # (a, q, e, c), see the module docstring
ZERO: Term = (0.0, 0.0, 0.0, 0.0)


# Config fields after which longer sequences take another attention path: sliding windows, and
# Llama-4's chunked attention (attention within chunks of ``attention_chunk_size`` tokens).
WINDOW_FIELDS = ("sliding_window", "attention_chunk_size")


def window_of(arch: ArchSpec) -> int:
    """The shortest such length of ``arch`` (0: none)."""
    found = [w for w in (arch.extra.get(f) for f in WINDOW_FIELDS)
             if isinstance(w, int) and not isinstance(w, bool) and w > 0]
    return min(found, default=0)


def long_regime(arch: ArchSpec, seq_len: int) -> bool:
    """Sequences longer than the sliding window (or attention chunk) take another code path (explicit masks)."""
    window = window_of(arch)
    return 0 < window < seq_len


def coarse_key(s: PlanSettings, device: str = "cuda", long: bool = False) -> str:
    """Setting class of the catalog's derived terms: what changes the dtypes and the kernels."""
    return f"{s.mode}:{s.dtype}:{s.mixed_precision or '-'}:{s.attn_implementation}:{device}" + (":long" if long else "")


def fine_key(s: PlanSettings, device: str = "cuda", long: bool = False) -> str:
    """Exact setting class (adds the adapter choice), for terms derived for this very plan."""
    targets = s.target_modules if isinstance(s.target_modules, str) or s.target_modules is None \
        else ",".join(sorted(s.target_modules))
    return f"{coarse_key(s, device, long)}|{targets}|{s.r}|{s.lora_dropout}"


@dataclass(frozen=True)
class Residual:
    """Trace minus recipe for one setting class (bytes; see the module docstring)."""

    layers: tuple[Term, ...]        # per layer kind
    first: Term                     # layer 0, on top of its kind's residual
    outside: Term
    logits: Term
    layer_kinds: tuple[int, ...]    # kind of each layer
    trainable: tuple[float, ...] = ()   # extra trainable parameters per kind, then outside the layers
    scale: float = 1.0              # applied when borrowed from a class with other dtypes
    key: str = ""
    only_adds: bool = False         # borrowed across adapter choices: may raise the recipe, never lower it
    backward: tuple[tuple[Term, ...], ...] = ()  # per layer kind: what its backward adds at each of its
                                                  # undominated moments (absolute), see derive
    backward_first: tuple[Term, ...] = ()        # the same for layer 0
    layer_params: tuple[float, ...] = ()   # trainable parameters per layer kind (their gradients)
    backward_loss: tuple[Term, ...] = ()   # the loss and head backward: beyond the saved activations

    def term(self, t: Term, tokens: int, seq: int) -> float:
        a, q, e, c = t
        value = self.scale * (a * tokens + q * tokens * seq + e * seq + c)
        return max(value, 0.0) if self.only_adds else value

    def highest(self, terms: tuple[Term, ...], tokens: int, seq: int) -> float:
        """The highest of several moments' terms (0 when there are none)."""
        return max((self.term(t, tokens, seq) for t in terms), default=0.0)

    @property
    def autocast(self) -> bool:
        """Derived under autocast: its per-step terms already hold autocast's cast weight copies."""
        parts = self.key.split("|")[0].split(":")
        return len(parts) > 2 and parts[2] != "-"

    def extra_trainable(self) -> int:
        """Trainable parameters the linear families do not account for (whole model)."""
        if not self.trainable:
            return 0
        per_kind, outside = self.trainable[:-1], self.trainable[-1]
        return int(sum(per_kind[k] for k in self.layer_kinds if k < len(per_kind)) + outside)

    @classmethod
    def from_dict(cls, data: dict, kinds: list[int], scale: float = 1.0, key: str = "",
                  only_adds: bool = False) -> "Residual":
        def term(t: list) -> Term:
            return tuple((list(t) + [0.0] * 4)[:4])  # type: ignore[return-value]

        bw = data.get("backward") or {}
        return cls(tuple(term(t) for t in data["layers"]), term(data["first"]), term(data["outside"]),
                   term(data["logits"]), tuple(kinds), tuple(data.get("trainable", ())), scale, key, only_adds,
                   tuple(tuple(term(t) for t in kind) for kind in bw.get("layers", ())),
                   tuple(term(t) for t in bw.get("first", ())), tuple(bw.get("params", ())),
                   tuple(term(t) for t in bw.get("loss", ())))


# Derives terms for an arch built from a config (set by lora_doctor.introspect; imports torch).
Deriver = Callable[[ArchSpec, PlanSettings, str], "dict | None"]


def attach_deriver(arch: ArchSpec, deriver: Deriver) -> None:
    """Let the engine derive missing classes for this (non-catalog) arch on first use."""
    object.__setattr__(arch, "_deriver", deriver)


def lookup(arch: ArchSpec, s: PlanSettings, device: str = "cuda") -> Residual | None:
    """The residual for ``s``: exact class, derived now if possible, else the nearest stored class."""
    derived = arch.derived
    if not derived or derived.get("version") != VERSION:
        if getattr(arch, "_deriver", None) is None:
            return None
        derived.clear()
        derived.update({"version": VERSION, "layer_kinds": [], "classes": {}})
    classes: dict[str, Any] = derived["classes"]
    long = long_regime(arch, s.seq_len)
    fine, coarse = fine_key(s, device, long), coarse_key(s, device, long)
    if fine not in classes and getattr(arch, "_deriver", None) is not None:
        got = arch._deriver(arch, s, device)  # type: ignore[attr-defined]
        classes[fine] = got["classes"][fine] if got else None
        if got:
            derived["layer_kinds"] = got["layer_kinds"]
    kinds = derived.get("layer_kinds") or [0] * max(arch.num_layers, 1)
    if classes.get(fine):
        return Residual.from_dict(classes[fine], kinds, key=fine)
    if classes.get(coarse):
        return Residual.from_dict(classes[coarse], kinds, key=coarse, only_adds=_other_adapters(s))
    return _nearest(classes, s, device, kinds, long)


def _other_adapters(s: PlanSettings) -> bool:
    """A coarse (catalog) class was derived with all-linear adapters; with other targets its residual is
    borrowed, and a negative residual borrowed that way could under-predict (measured: Llama-2-7B QLoRA with
    q,v borrows -0.25 GiB from the all-linear class), so such a class may only add memory."""
    return s.mode != "full" and str(s.target_modules).lower() != "all-linear"


def _nearest(classes: dict[str, Any], s: PlanSettings, device: str, kinds: list[int],
             long: bool) -> Residual | None:
    """A stored class of the same mode and attention, rescaled by the ratio of compute-dtype bytes."""
    want = DTYPE_BYTES[s.mixed_precision or s.dtype]
    for key, data in classes.items():
        if not data:
            continue
        parts = key.split("|")[0].split(":")
        mode, dtype, mp, attn, dev = parts[:5]
        if mode == s.mode and dev == device and attn == s.attn_implementation and (len(parts) > 5) == long:
            have = DTYPE_BYTES[dtype if mp == "-" else mp]
            return Residual.from_dict(data, kinds, scale=want / have, key=key, only_adds=True)
    return None
