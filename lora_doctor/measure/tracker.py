"""Track every live tensor storage while PyTorch runs, and remember the peak.

A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees the outputs of every ATen op,
forward, backward and optimizer alike. Each new storage is counted with its size rounded up to
512 bytes (the CUDA caching allocator's granularity) and uncounted when its last reference dies
(a weak reference callback). The running total is the memory a CUDA device would hold in tensors;
its maximum is what ``torch.cuda.max_memory_allocated`` reports for the same step.

The same code works under ``FakeTensorMode``: fake tensors have storages with the true byte size
and no data, so a 70B model can be "run" on a laptop (see lora_doctor.trace).

Known blind spots: scratch memory that a kernel allocates internally without going through
ATen (cuBLAS workspaces, fused kernels' buffers) is not seen; tensors that were alive before
tracking started are only counted when passed to :meth:`StorageTracker.register`.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

ALIGN = 512


def rounded(nbytes: int, align: int = ALIGN) -> int:
    return (nbytes + align - 1) // align * align


@dataclass(frozen=True)
class TensorRecord:
    """A live storage: its size, the op that made it, a category and the shape/dtype of that tensor."""

    nbytes: int
    op: str
    category: str
    shape: tuple[int, ...]
    dtype: str


Categorizer = Callable[[Any, torch.Tensor], str]


class StorageTracker(TorchDispatchMode):
    """Measure the peak of live tensor storage bytes.

    Usage::

        tracker = StorageTracker()
        tracker.register(model.parameters(), category="weights")
        with tracker:
            loss = model(**batch).loss; loss.backward(); optimizer.step()
        tracker.peak_bytes

    ``phase`` may be set from outside (e.g. "forward", "backward", "optimizer_step"); the tracker
    keeps a peak per phase. ``categorize(func, tensor) -> str`` names the category of a new
    storage (default: the ``phase`` it was created in). ``keep_top`` > 0 records that many largest
    live storages each time a new peak is reached (costly on big graphs, so off by default).
    """

    def __init__(self, *, categorize: Categorizer | None = None, keep_top: int = 0) -> None:
        super().__init__()
        self.categorize = categorize
        self.keep_top = keep_top
        self.phase = "setup"
        self._live: dict[int, tuple[weakref.ref, TensorRecord]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_phase = "setup"
        self.phase_peaks: dict[str, int] = {}
        self.by_category: dict[str, int] = {}
        self.peak_by_category: dict[str, int] = {}
        self.peak_top: list[TensorRecord] = []
        self.ops_seen = 0

    # -- bookkeeping -------------------------------------------------------------------------
    def _add(self, tensor: torch.Tensor, op: str, category: str) -> None:
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse / opaque tensors
            return
        key = id(storage)
        entry = self._live.get(key)
        nbytes = rounded(storage.nbytes())
        if entry is not None and entry[0]() is storage:
            old = entry[1]
            if old.nbytes == nbytes:
                return
            delta = nbytes - old.nbytes  # resized in place (resize_, set_)
            self._live[key] = (entry[0], TensorRecord(nbytes, old.op, old.category, old.shape, old.dtype))
            self._bump(old.category, delta)
            return
        record = TensorRecord(nbytes, op, category, tuple(tensor.shape), str(tensor.dtype).replace("torch.", ""))
        ref = weakref.ref(storage, self._make_release(key))
        self._live[key] = (ref, record)
        self._bump(category, nbytes)

    def _make_release(self, key: int) -> Callable[[Any], None]:
        def release(ref: weakref.ref) -> None:
            entry = self._live.get(key)
            if entry is not None and entry[0] is ref:
                del self._live[key]
                self._bump(entry[1].category, -entry[1].nbytes, track_peak=False)

        return release

    def _bump(self, category: str, delta: int, track_peak: bool = True) -> None:
        self.current_bytes += delta
        self.by_category[category] = self.by_category.get(category, 0) + delta
        if not track_peak:
            return
        if self.current_bytes > self.phase_peaks.get(self.phase, 0):
            self.phase_peaks[self.phase] = self.current_bytes
        if self.current_bytes > self.peak_bytes:
            self.peak_bytes = self.current_bytes
            self.peak_phase = self.phase
            self.peak_by_category = {k: v for k, v in self.by_category.items() if v}
            if self.keep_top:
                self.peak_top = self.largest(self.keep_top)

    # -- public ------------------------------------------------------------------------------
    def register(self, tensors: Iterable[torch.Tensor], category: str = "weights") -> None:
        """Count tensors that already exist (parameters, buffers, optimizer states)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._add(t, "register", category)

    def largest(self, n: int) -> list[TensorRecord]:
        records = [rec for ref, rec in self._live.values() if ref() is not None]
        return sorted(records, key=lambda r: r.nbytes, reverse=True)[:n]

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes
        self.phase_peaks = {}
        self.peak_by_category = {k: v for k, v in self.by_category.items() if v}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.ops_seen += 1
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                category = self.categorize(func, t) if self.categorize else self.phase
                self._add(t, str(func.overloadpacket.__name__), category)
        return out
