"""Make the model take, on fake tensors, the branches it takes on the traced batch for real.

``transformers`` reads tensor values in a few places to pick a faster path; on fake tensors it
cannot, and takes the general path instead (e.g. an explicit ``[b, 1, s, s]`` attention mask instead
of SDPA's ``is_causal``), which would change the memory we measure. The traced batch is known (full
length, unpadded, one sequence per row), so each such decision is answered as a real run answers it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

# (module, attribute, replacement): what a real run on an unpadded, unpacked batch computes.
_DECISIONS: tuple[tuple[str, str, Any], ...] = (
    ("transformers.masking_utils", "find_packed_sequence_indices", lambda position_ids: None),
)


@contextmanager
def real_batch_decisions() -> Iterator[None]:
    import importlib

    saved = []
    for module_name, attr, replacement in _DECISIONS:
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
