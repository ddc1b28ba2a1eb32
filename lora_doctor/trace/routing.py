"""MoE routing on fake activations: a balanced assignment where the model reads the routing's values.

Most MoE blocks in transformers route without reading values in Python: ``grouped_mm`` and the batched
experts run every token's top-k rows as one tensor whose size is ``tokens * top_k`` whatever the router
chose, so they trace on fake tensors as they are (Mixtral, Qwen3-MoE, DeepSeek-V3). A few models loop
over the experts and size each expert's batch from the router's output, which a fake tensor cannot give:

* JetMoE's ``JetMoeTopKGating`` turns the tokens per expert into a Python list (``.tolist()``) to split
  the sorted tokens;
* LongCat-Flash's experts find the experts hit (``nonzero``, ``.item()``) and each one's tokens
  (``torch.where``) from a one-hot of the router's top-k indices;
* any experts module with transformers' experts interface, ``forward(hidden_states, top_k_index,
  top_k_weights)``, whose own code calls ``nonzero`` (DBRX's ``DbrxExperts``; the same loop as LongCat-Flash's):
  found on the built model by that code pattern (:func:`looping_experts`), not by model type.

The trace answers all of them as a balanced router does: every expert gets ``tokens * top_k / experts`` of the
assignments (JetMoE: the list of counts; LongCat-Flash and the looping experts: *real* top-k indices, token ``t``'s ``j``-th choice
being expert ``(t * top_k + j) mod experts``, from which the mask, the experts hit and each expert's
tokens are computed for real by :class:`~lora_doctor.trace.metadata.RealMetadata`). What the experts keep
for backward adds up to ``tokens * top_k`` rows whichever experts get them, so the balance only matters
where experts differ: LongCat-Flash's zero-computation (identity) experts then get their share of the
assignments, ``zero_expert_num / (n_routed_experts + zero_expert_num)``, the share its router is trained for.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator

import torch

from .metadata import RealMetadata, real


def balanced_counts(total: int, experts: int) -> list[int]:
    """``total`` assignments over ``experts``, as even as integers allow (the first ones get the remainder)."""
    base, extra = divmod(total, experts)
    return [base + (1 if i < extra else 0) for i in range(experts)]


def balanced_topk(tokens: int, top_k: int, experts: int) -> torch.Tensor:
    """Real ``[tokens, top_k]`` int64 indices: token ``t``'s ``j``-th expert is ``(t * top_k + j) mod experts``
    (distinct per token while ``top_k <= experts``; every expert gets the same share)."""
    return real(lambda: (torch.arange(tokens * top_k, dtype=torch.long) % experts).view(tokens, top_k))


@contextmanager
def _fake_tolist_as(answer: Callable[[int], list[int]]) -> Iterator[None]:
    """``FakeTensor.tolist()`` of a 1-D tensor returns ``answer(numel)``; real tensors are untouched."""
    from torch._subclasses.fake_tensor import FakeTensor

    original = FakeTensor.tolist

    def tolist(self: torch.Tensor) -> Any:
        return answer(self.numel()) if self.dim() == 1 else original(self)

    FakeTensor.tolist = tolist  # type: ignore[method-assign]
    try:
        yield
    finally:
        FakeTensor.tolist = original  # type: ignore[method-assign]


def _jetmoe_gating(original: Callable[..., Any]) -> Callable[..., Any]:
    def forward(self: Any, hidden_states: torch.Tensor) -> Any:
        total = int(hidden_states.shape[0]) * int(self.top_k)
        with _fake_tolist_as(lambda experts: balanced_counts(total, experts)):
            return original(self, hidden_states)

    return forward


def _longcat_topk(original: Callable[..., Any]) -> Callable[..., Any]:
    def get_topk_indices(self: Any, scores: torch.Tensor) -> torch.Tensor:
        tokens = scores.numel() // int(self.n_routed_experts)   # n_routed_experts counts the zero experts too
        return balanced_topk(tokens, int(self.top_k), int(self.n_routed_experts))

    return get_topk_indices


# model_type -> (module, dotted attribute, replacement factory, whether the replacement makes real tensors)
ROUTERS: dict[str, tuple[str, str, Callable[[Callable[..., Any]], Callable[..., Any]], bool]] = {
    "jetmoe": ("transformers.models.jetmoe.modeling_jetmoe", "JetMoeTopKGating.forward", _jetmoe_gating, False),
    "longcat_flash": ("transformers.models.longcat_flash.modeling_longcat_flash",
                      "LongcatFlashTopkRouter.get_topk_indices", _longcat_topk, True),
}


# the parameters of transformers' experts interface, and the calls that make its loop read the routing's values
EXPERTS_PARAMETERS = ("hidden_states", "top_k_index", "top_k_weights")
VALUE_READS = frozenset({"nonzero", "tolist", "item"})


def looping_experts(model: torch.nn.Module | None) -> list[type]:
    """The experts classes in ``model`` that take ``(hidden_states, top_k_index, top_k_weights)`` and whose own
    ``forward`` reads values (``nonzero`` & co. in its code). Decorated classes (``use_experts_implementation``)
    are not matched: their wrapper's code reads nothing, and the grouped/batched kernels it picks trace as they are."""
    found: list[type] = []
    for module in (model.modules() if model is not None else ()):
        forward = vars(type(module)).get("forward")
        code = getattr(forward, "__code__", None)
        if code is None or type(module) in found:
            continue
        if code.co_varnames[1:4] == EXPERTS_PARAMETERS and VALUE_READS & set(code.co_names):
            found.append(type(module))
    return found


def _balanced_experts(original: Callable[..., Any]) -> Callable[..., Any]:
    def forward(self: Any, hidden_states: torch.Tensor, top_k_index: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        from torch._subclasses.fake_tensor import FakeTensor

        experts = getattr(self, "num_experts", None)
        if isinstance(top_k_index, FakeTensor) and isinstance(experts, int) and top_k_index.dim() == 2:
            tokens, top_k = (int(n) for n in top_k_index.shape)
            top_k_index = balanced_topk(tokens, top_k, experts)
        return original(self, hidden_states, top_k_index, *args, **kwargs)

    return forward


@contextmanager
def balanced_routing(model_type: str, fake: bool = True, model: torch.nn.Module | None = None) -> Iterator[None]:
    """Replace ``model_type``'s routing read (:data:`ROUTERS`) and the forward of ``model``'s looping experts
    (:func:`looping_experts`) for a fake trace; a no-op for every other model and for a real run
    (``fake=False``), which routes as the model does."""
    if not fake:
        yield
        return
    experts = looping_experts(model)
    with _experts_balanced(experts) if experts else nullcontext(), _router_balanced(model_type):
        yield


@contextmanager
def _experts_balanced(classes: list[type]) -> Iterator[None]:
    originals = [(cls, vars(cls)["forward"]) for cls in classes]
    for cls, original in originals:
        cls.forward = _balanced_experts(original)  # type: ignore[attr-defined]
    try:
        with _real_one_hot(), RealMetadata():
            yield
    finally:
        for cls, original in originals:
            cls.forward = original  # type: ignore[attr-defined]


@contextmanager
def _router_balanced(model_type: str) -> Iterator[None]:
    entry = ROUTERS.get(model_type)
    if entry is None or entry[0] not in sys.modules:   # loaded when the model was built; never imported here
        yield
        return
    module_name, dotted, make, real_indices = entry
    *path, attr = dotted.split(".")
    owner: Any = importlib.import_module(module_name)
    for name in path:
        owner = getattr(owner, name)
    original = vars(owner).get(attr)
    if original is None:   # another transformers version: nothing of that name to replace
        yield
        return
    setattr(owner, attr, make(original))
    try:
        with (_real_one_hot() if real_indices else nullcontext()), (RealMetadata() if real_indices else nullcontext()):
            yield
    finally:
        setattr(owner, attr, original)


@contextmanager
def _real_one_hot() -> Iterator[None]:
    """``F.one_hot`` of a real tensor is real: it fills a ``torch.zeros`` it makes itself, which the fake mode
    would make fake (an op with no tensor input is not one :class:`RealMetadata` can see is all real)."""
    import torch.nn.functional as F
    from torch._subclasses.fake_tensor import FakeTensor

    original = F.one_hot

    def one_hot(tensor: torch.Tensor, num_classes: int = -1) -> torch.Tensor:
        if isinstance(tensor, FakeTensor):
            return original(tensor, num_classes)
        return real(lambda: original(tensor, num_classes))

    F.one_hot = one_hot
    try:
        yield
    finally:
        F.one_hot = original
