"""Real integer metadata inside a fake trace: image grids, token types, position ids, sequence boundaries.

Qwen2-VL and Qwen2.5-VL turn small integer tensors of the batch into Python numbers while they run:
``image_grid_thw`` (``[t, h, w]`` patches per image) becomes the vision tower's rotary position ids,
its per-image attention boundaries ``cu_seqlens`` (``repeat_interleave`` / ``cumsum``, then
``.tolist()`` to split the attention per image), the split of the merged image features per image
(``.tolist()``), and, with ``mm_token_type_ids``, the language model's 3-D M-RoPE position ids
(``get_rope_index`` walks the token types in Python). A fake tensor has no values, so none of this
can run on one. All of it depends only on shapes the plan knows (image size, tokens per image,
sequence length), so the trace gives the model those tensors as *real* CPU tensors and computes
everything derived from them for real:

* :class:`RealMetadata`, a dispatch mode between the ``FakeTensorMode`` and the storage timeline:
  an op whose tensor inputs are all real (none fake) runs for real, so its output can be read;
  ops that touch a fake tensor (every weight, activation and the pixel values) stay fake;
* :data:`METADATA_FUNCTIONS`: the model's helpers that build metadata from the grids also create
  tensors from nothing (``torch.arange``, ``torch.zeros``), which the fake mode would make fake;
  they run with the fake mode switched off, on the real grids.

The timeline sits above both, so the real metadata tensors are counted like any other storage
(they are small: ``[3, batch, seq]`` int64 position ids, a few ``[patches, 2]`` index tensors).
Both patches are scoped to the trace and restored afterwards.
"""

from __future__ import annotations

import importlib
import sys
from contextlib import contextmanager
from functools import wraps
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# model_type -> (module, dotted attribute) of the helpers that compute metadata from the grids
METADATA_FUNCTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "qwen2_vl": (
        ("transformers.models.qwen2_vl.modeling_qwen2_vl", "get_vision_position_ids"),
        ("transformers.models.qwen2_vl.modeling_qwen2_vl", "get_vision_attention_seqlens"),
        ("transformers.models.qwen2_vl.modeling_qwen2_vl", "Qwen2VLModel.get_rope_index"),
    ),
    "qwen2_5_vl": (
        ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "get_vision_position_ids"),
        ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "get_vision_attention_seqlens"),
        ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "get_vision_window_index"),
        ("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl", "Qwen2_5_VLModel.get_rope_index"),
    ),
    # the QSA indexer reads the causal mask's values (``nonzero`` of each query's visible keys)
    "qwen4_exp_text": (("transformers.models.qwen4_exp.modeling_qwen4_exp", "create_causal_mask"),),
}


# text models whose layers read the causal mask's values (Qwen4-Exp's QSA indexer): the mask depends on shapes
# only, so the derivation's traces (trace/profile.py, fake ids) build it for real too
MASK_READERS: frozenset[str] = frozenset({"qwen4_exp_text"})

# families whose batch carries real integer tensors the model reads (ids, token types, grids, masks)
REAL_METADATA: frozenset[str] = frozenset({*METADATA_FUNCTIONS, "gemma3", "idefics3"})


def needs_real_metadata(model_type: str) -> bool:
    return model_type in REAL_METADATA


def real(build: Callable[[], Any]) -> Any:
    """Call ``build`` with the fake mode off: the tensors it makes are real (a no-op outside a fake trace)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    with unset_fake_temporarily():
        return build()


def _all_real(args: tuple, kwargs: dict) -> bool:
    """Whether the op has tensor inputs and none is fake (ops take tensors, or lists of them, at the top level);
    returns at the first fake tensor, which is where almost every op of a trace stops."""
    from torch._subclasses.fake_tensor import FakeTensor

    seen = False
    for arg in (*args, *kwargs.values()):
        for t in arg if isinstance(arg, (list, tuple)) else (arg,):
            if isinstance(t, FakeTensor):
                return False
            seen = seen or isinstance(t, torch.Tensor)
    return seen


class RealMetadata(TorchDispatchMode):
    """Run an op for real when none of its tensor inputs is fake (see the module docstring)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        from torch._subclasses.fake_tensor import unset_fake_temporarily

        kwargs = kwargs or {}
        if _all_real(args, kwargs):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


def _run_real(original: Callable[..., Any]) -> Callable[..., Any]:
    @wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return real(lambda: original(*args, **kwargs))

    return wrapper


def _owner(module: Any, dotted: str) -> tuple[Any, str]:
    *path, attr = dotted.split(".")
    owner = module
    for name in path:
        owner = getattr(owner, name)
    return owner, attr


@contextmanager
def real_metadata(model_type: str) -> Iterator[None]:
    """Enter :class:`RealMetadata` and wrap ``model_type``'s metadata helpers; restore both on exit.

    A no-op for the families that read no metadata values (text models, LLaVA, Whisper).
    """
    if not needs_real_metadata(model_type):
        yield
        return
    saved = []
    for module_name, dotted in METADATA_FUNCTIONS.get(model_type, ()):
        if module_name not in sys.modules:   # loaded when the model was built; never imported here
            continue
        owner, attr = _owner(importlib.import_module(module_name), dotted)
        original = vars(owner).get(attr)
        if original is None:   # another transformers version: nothing of that name to wrap
            continue
        saved.append((owner, attr, original))
        setattr(owner, attr, _run_real(original))
    try:
        with RealMetadata():
            yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
