"""Trace-derived corrections to the activation recipes, per layer kind and setting class (no torch).

The recipes in :mod:`lora_doctor.memory.activations` write down, op by op, what a Llama-style block
saves. Real blocks differ (q/k norms, four norms per layer, softcapping, MoE routers, dense/MoE
mixes, config dropouts, masks built for sliding windows), so :mod:`lora_doctor.memory.derive`
traces a few layers of the real model code at full width and stores, for each region, what the
trace saved minus what the recipe predicted, in the basis the engine extrapolates with::

    bytes(region) = a * tokens + q * tokens * seq_len + e * seq_len + c + p * batch

``a`` per token, ``q`` per token per key position (eager scores, sliding-window masks), ``e`` per
sequence position independent of the batch (rope tables), ``c`` per step (weight-sized tensors,
e.g. the merged delta of peft's LoRA on fused MoE expert parameters), ``p`` per sequence independent
of its length (the recurrent state of linear attention and state-space layers). Four traced shapes
fix four coefficients: a region has ``q`` or ``p``, whichever predicts a fifth shape
(:func:`.moments.fit`); terms stored with four coefficients have no ``p``. Regions: each *layer kind* (layers that
share a structure, e.g. dense and MoE layers of Qwen3-MoE), the first layer (whose input needs no
gradient under LoRA), everything outside the layers, and the logits.

Stored in :attr:`ArchSpec.derived` (the catalog ships them, so catalog plans stay torch-free)::

    {"version": 2, "layer_kinds": [0, 0, 1, ...],                # kind of each layer
     "classes": {"<class key>": {"layers": [[a, q, e, c], ...],  # residual per kind
                                 "first": [...], "outside": [...], "logits": [...],
                                 "trainable": [per kind, outside],    # parameters peft adds beyond
                                                                      # the linear families (MoE experts)
                                 "backward": {"layers": [[[a, q, e, c, p], ...], ...],  # per kind, absolute:
                                              "first": [[a, q, e, c], ...],  # what its backward adds at
                                              "params": [per kind],          # each moment; params per kind
                                              "loss": [[a, q, e, c], ...]},  # the loss and head backward
                                 # (a moment may carry a sixth number: the batch size it applies from)
                                 "forward": {"layers": [[[a, q, e, c], ...], ...],   # per kind, absolute:
                                             "first": [[a, q, e, c], ...],           # what its forward holds
                                             "tail": [[a, q, e, c], ...]}}}}         # after the last layer

``backward`` (optional; classes derived before it have none and plan without that phase) is what one
layer's backward adds on top of the saved activations of the layers not yet done and the gradients
already made: the incoming gradient, the layer's own gradients, the kernels' scratch. The engine's
``backward_layers`` phase walks the layers from the last with it. ``forward`` (optional too) is what one
layer's forward holds on top of the saved activations of the layers before it: its own as they are made, and
transients freed before it ends (HY-V4's indexer scores, eager attention's fp32 scores before the softmax);
the engine's ``forward_layers`` phase walks the layers from the first with it; ``tail`` (optional) is what the
rest of the forward holds beyond every saved byte (the final norm, the logits and loss, tensors the model's
forward keeps until it returns), the engine's ``forward_end`` phase.

A model with a sliding window has two regimes (sequences up to the window, and longer ones, where
transformers builds explicit masks), derived and stored separately (``:long`` class keys).

What a LoRA block saves depends on which linears carry adapters (each adapted one keeps its input cast to the
adapter dtype and the r-wide ``lora_A`` output; peft's all-linear also adapts fused MoE experts), so a class is
derived for one *placement* of the adapters (:func:`placement`). The catalog stores all-linear (the plain coarse
key, e.g. ``qlora:bf16:bf16:sdpa:cuda``), peft's default targets
(``qlora:bf16:bf16:sdpa:cuda@self_attn.q_proj,self_attn.v_proj``) and the attention projections. A plan whose
adapters sit elsewhere borrows the class of the nearest placement (:func:`_borrow`), which may then only add.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from ..arch import ArchSpec, LinearFamily
from ..plan_types import PlanSettings
from .moments import coefficients
from .tables import DTYPE_BYTES
from .targets import FALLBACK_TARGETS, normalize_targets, targeted_families

VERSION = 2
Term = tuple[float, float, float, float, float]   # (a, q, e, c, p), see the module docstring
ZERO: Term = (0.0, 0.0, 0.0, 0.0, 0.0)


# Config fields after which longer sequences take another attention path: sliding windows,
# Llama-4's chunked attention (attention within chunks of ``attention_chunk_size`` tokens), and
# MiniMax's lightning attention, quadratic within blocks of ``block_size`` tokens and linear across them
# (``linear_attention_block``: lora_doctor.introspect.LINEAR_ATTENTION_BLOCK).
WINDOW_FIELDS = ("sliding_window", "attention_chunk_size", "linear_attention_block")


def window_of(arch: ArchSpec) -> int:
    """The shortest such length of ``arch`` (0: none)."""
    found = [w for w in (arch.extra.get(f) for f in WINDOW_FIELDS)
             if isinstance(w, int) and not isinstance(w, bool) and w > 0]
    return min(found, default=0)


# Config fields of the chunk length state-space mixers pad the sequence to (Mamba-2's torch path in Bamba,
# GraniteMoE-hybrid, Falcon-H1, Nemotron-H): their memory is a step function of the sequence length.
# ``linear_attention_chunk`` is set by introspection for configs with "linear_attention" layer types: the
# torch chunked gated-delta / KDA rules transformers runs without flash-linear-attention (Qwen3-Next,
# Qwen3.5, OLMo hybrid, Kimi-Linear, Bailing-hybrid) pad to 64-token chunks, a default no config names.
CHUNK_FIELDS = ("mamba_chunk_size", "chunk_size", "linear_attention_chunk")
LINEAR_ATTENTION_CHUNK = 64


def chunk_of(arch: ArchSpec) -> int:
    """The chunk length of ``arch``'s state-space mixers (0: none)."""
    found = [c for c in (arch.extra.get(f) for f in CHUNK_FIELDS)
             if isinstance(c, int) and not isinstance(c, bool) and c > 0]
    return max(found, default=0)


def long_regime(arch: ArchSpec, seq_len: int) -> bool:
    """Sequences longer than the sliding window (or attention chunk) take another code path (explicit masks)."""
    window = window_of(arch)
    return 0 < window < seq_len


def coarse_key(s: PlanSettings, device: str = "cuda", long: bool = False) -> str:
    """Setting class of the catalog's derived terms: what changes the dtypes and the kernels."""
    return f"{s.mode}:{s.dtype}:{s.mixed_precision or '-'}:{s.attn_implementation}:{device}" + (":long" if long else "")


def family_id(fam: LinearFamily) -> str:
    """A family's path inside its layer ("self_attn.q_proj", "mlp.c_proj"): unique where names are not (GPT-2
    has two ``c_proj``), and a target name that matches just that family (peft matches names by suffix)."""
    return _IN_LAYER.sub("", fam.example, count=1) if fam.example else fam.name


_IN_LAYER = re.compile(r"^.*?\.\d+\.")


def adapted(arch: ArchSpec, s: PlanSettings) -> frozenset[str]:
    """The families (:func:`family_id`) that carry adapters. peft's "all-linear" also adapts what is no linear
    family (fused 3-D MoE experts), so it holds one more name, ``"all-linear"``; so does a full fine-tune."""
    target = normalize_targets(s.target_modules)
    if s.mode == "full" or target == FALLBACK_TARGETS or (target is None and not arch.default_targets):
        return _all_linear(arch)
    return frozenset(family_id(f) for f in targeted_families(arch, target))


def _all_linear(arch: ArchSpec) -> frozenset[str]:
    return frozenset(family_id(f) for f in arch.linear_families if f.scope != "head") | {FALLBACK_TARGETS}


def placement(arch: ArchSpec, s: PlanSettings) -> str:
    """Which linear families carry adapters, as the class keys spell it: "" for a full fine-tune and for
    all-linear (the catalog's first classes), else the sorted family ids ("self_attn.q_proj,self_attn.v_proj").
    Target lists that adapt the same layers (None = peft's default, ["q_proj", "v_proj"], a regex) share one."""
    names = adapted(arch, s)
    return "" if FALLBACK_TARGETS in names else ",".join(sorted(names))


def class_key(arch: ArchSpec, s: PlanSettings, device: str = "cuda", long: bool = False) -> str:
    """Setting class of the catalog's derived terms: the coarse key, plus ``@placement`` unless all-linear."""
    where = placement(arch, s)
    return coarse_key(s, device, long) + (f"@{where}" if where else "")


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
    forward: tuple[tuple[Term, ...], ...] = ()   # per layer kind: what its forward holds at each of its
                                                  # undominated moments (absolute), see derive
    forward_first: tuple[Term, ...] = ()         # the same for layer 0
    forward_tail: tuple[Term, ...] = ()          # the forward after the last layer, beyond every saved byte

    def term(self, t: Term, tokens: int, seq: int) -> float:
        a, q, e, c, p = coefficients(t)
        value = self.scale * (a * tokens + q * tokens * seq + e * seq + c + p * tokens / max(seq, 1))
        return max(value, 0.0) if self.only_adds else value

    def highest(self, terms: tuple[Term, ...], tokens: int, seq: int) -> float:
        """The highest of several moments' terms (0 when there are none); a moment may apply only from some
        batch size on (a sixth number, :func:`.moments.min_batch`)."""
        batch = tokens // max(seq, 1)
        return max((self.term(t, tokens, seq) for t in terms if len(t) < 6 or batch >= t[5]), default=0.0)

    @property
    def autocast(self) -> bool:
        """Derived under autocast: its per-step terms already hold autocast's cast weight copies."""
        parts, _ = parse_key(self.key)
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
        term = coefficients

        def moment(t: list) -> Term:   # a term, and the batch size it applies from when it has one
            return tuple(list(term(t)) + list(t[5:6]))  # type: ignore[return-value]

        bw, fw = data.get("backward") or {}, data.get("forward") or {}
        return cls(tuple(term(t) for t in data["layers"]), term(data["first"]), term(data["outside"]),
                   term(data["logits"]), tuple(kinds), tuple(data.get("trainable", ())), scale, key, only_adds,
                   tuple(tuple(moment(t) for t in kind) for kind in bw.get("layers", ())),
                   tuple(moment(t) for t in bw.get("first", ())), tuple(bw.get("params", ())),
                   tuple(moment(t) for t in bw.get("loss", ())),
                   tuple(tuple(moment(t) for t in kind) for kind in fw.get("layers", ())),
                   tuple(moment(t) for t in fw.get("first", ())), tuple(moment(t) for t in fw.get("tail", ())))


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
    fine, exact = fine_key(s, device, long), class_key(arch, s, device, long)
    if fine not in classes and getattr(arch, "_deriver", None) is not None:
        got = arch._deriver(arch, s, device)  # type: ignore[attr-defined]
        classes[fine] = got["classes"][fine] if got else None
        if got:
            derived["layer_kinds"] = got["layer_kinds"]
    kinds = derived.get("layer_kinds") or [0] * max(arch.num_layers, 1)
    for key in (fine, exact):   # derived for this very plan, or for these adapters (the catalog's classes)
        if classes.get(key):
            return Residual.from_dict(classes[key], kinds, key=key)
    return _borrow(arch, classes, s, device, kinds, long)


def parse_key(key: str) -> tuple[list[str], str]:
    """(mode, dtype, mixed precision, attention, device[, "long"]) and the placement of a class key."""
    head = key.split("|")[0]
    coarse, _, where = head.partition("@")
    return coarse.split(":"), where


def _borrow(arch: ArchSpec, classes: dict[str, Any], s: PlanSettings, device: str, kinds: list[int],
            long: bool) -> Residual | None:
    """A stored class derived for other adapters or dtypes, of the same mode, attention and regime: the same
    dtypes first, then the adapters nearest to these (fewest families adapted in one and not the other),
    rescaled by the ratio of compute-dtype bytes. Borrowed, it may only add memory (measured: Llama-2-7B QLoRA
    with q,v borrowed -0.25 GiB from the all-linear class). A class with adapters beyond the linear families
    (peft's LoRA on fused MoE experts: parameters and weight-sized merged deltas) is never borrowed for other
    adapters (measured: Qwen3-30B-A3B LoRA on q,k,v,o borrowed +69 GiB from the all-linear class)."""
    want, every = adapted(arch, s), _all_linear(arch)
    found = []
    for key, data in classes.items():
        parts, placed = parse_key(key)
        if not data or len(parts) < 5:
            continue
        mode, dtype, mp, attn, dev = parts[:5]
        if mode != s.mode or dev != device or attn != s.attn_implementation or (len(parts) > 5) != long:
            continue
        if "|" in key and mode != "full":   # derived for one plan: its fine key names the target list
            other = _placed(arch, s, key.split("|")[1])
        else:
            other = frozenset(placed.split(",")) if placed else every
        if other != want and any(data.get("trainable", ())):
            continue
        same_dtypes = (dtype, mp) == (s.dtype, s.mixed_precision or "-")
        found.append((not same_dtypes, len(other ^ want), key, DTYPE_BYTES[dtype if mp == "-" else mp]))
    if not found:
        return None
    *_, key, have = min(found)
    return Residual.from_dict(classes[key], kinds, scale=DTYPE_BYTES[s.mixed_precision or s.dtype] / have,
                              key=key, only_adds=True)


def _placed(arch: ArchSpec, s: PlanSettings, targets: str) -> frozenset[str]:
    """The adapted families of a class derived for one plan, from the target list its fine key names."""
    try:
        return adapted(arch, replace(s, target_modules=None if targets == "None" else targets))
    except Exception:  # a target list this arch does not match: nothing in common
        return frozenset()
