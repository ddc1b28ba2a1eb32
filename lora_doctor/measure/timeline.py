"""Record every storage allocation and release while PyTorch runs, then replay the log for the peak.

A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees the outputs of every ATen op,
forward, backward and optimizer alike. Each new storage is logged with its size rounded up to
512 bytes (the CUDA caching allocator's granularity) and its release when its last reference dies
(a weak reference callback). The running total is the memory a CUDA device would hold in tensors;
its maximum is what ``torch.cuda.max_memory_allocated`` reports for the same step. Works on real
tensors and on fake ones (``FakeTensorMode``: true sizes, no data).

:class:`StorageTimeline` only appends events, so categories can be decided *after* the step (which
storages became ``.grad``, which are optimizer states) and :func:`replay` walks the log once to find
the peak and what was alive at it; appending is cheap, which keeps a 70B step on fake tensors fast.
:class:`lora_doctor.measure.StorageTracker` is the same log with running totals kept as it grows.

Known blind spots: scratch memory a kernel allocates without going through ATen (cuBLAS
workspaces, fused kernels' buffers) is not seen; tensors alive before tracking started count only
when passed to ``register``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

ALIGN = 512


def rounded(nbytes: int, align: int = ALIGN) -> int:
    return (nbytes + align - 1) // align * align


class StorageRecord:
    """One storage's life: its rounded size and where it came from. ``category`` may be relabelled."""

    __slots__ = ("nbytes", "op", "module", "phase", "category", "shape", "dtype")

    def __init__(self, nbytes: int, op: str, module: str, phase: str, category: str,
                 shape: tuple[int, ...], dtype: str) -> None:
        self.nbytes, self.op, self.module, self.phase = nbytes, op, module, phase
        self.category, self.shape, self.dtype = category, shape, dtype


Classifier = Callable[[torch.Tensor, str], "str | None"]


class StorageTimeline(TorchDispatchMode):
    """Log allocations (record index ``i``) and releases (``~i``) of every storage ops create.

    ``phase`` is set from outside; ``module`` names the module currently running (see
    :mod:`lora_doctor.trace.modules`). ``classify(tensor, phase)`` may return a category for a new
    storage (e.g. logits); otherwise its category is its phase.
    """

    def __init__(self, classify: Classifier | None = None) -> None:
        super().__init__()
        self.classify = classify
        self._phase = "setup"
        self.module = ""
        self.records: list[StorageRecord] = []
        self.events: list[int] = []
        self.phase_marks: list[tuple[int, str]] = [(0, "setup")]
        self._live: dict[int, tuple[weakref.ref, int]] = {}
        self.ops_seen = 0

    @property
    def phase(self) -> str:
        return self._phase

    @phase.setter
    def phase(self, phase: str) -> None:
        self._phase = phase
        self.phase_marks.append((len(self.events), phase))

    def set_phase(self, phase: str) -> None:
        self.phase = phase

    def _add(self, tensor: torch.Tensor, op: str, category: str | None = None) -> None:
        if is_traceable_wrapper_subclass(tensor):  # DTensor (FSDP2): count the local shard it wraps
            names, _ = tensor.__tensor_flatten__()
            for name in names:
                inner = getattr(tensor, name)
                if isinstance(inner, torch.Tensor):
                    self._add(inner, op, category)
            return
        try:
            storage = tensor.untyped_storage()
        except (RuntimeError, NotImplementedError):
            return
        key = id(storage)
        nbytes = rounded(storage.nbytes())
        entry = self._live.get(key)
        if entry is not None and entry[0]() is storage:
            old = self.records[entry[1]]
            if old.nbytes == nbytes:
                return
            self._log_release(entry[1])  # resized in place: release the old size, allocate the new
            idx = self._append(StorageRecord(nbytes, old.op, old.module, old.phase, old.category,
                                             old.shape, old.dtype))
            self._live[key] = (entry[0], idx)
            return
        if category is None:
            category = (self.classify(tensor, self.phase) if self.classify else None) or self.phase
        shape = tuple(int(s) for s in tensor.shape)
        idx = self._append(StorageRecord(nbytes, op, self.module, self.phase, category, shape,
                                         str(tensor.dtype).replace("torch.", "")))
        self._live[key] = (weakref.ref(storage, self._release_for(key)), idx)

    def _append(self, record: StorageRecord) -> int:
        idx = len(self.records)
        self.records.append(record)
        self.events.append(idx)
        return idx

    def _log_release(self, idx: int) -> None:
        self.events.append(~idx)

    def _release_for(self, key: int) -> Callable[[Any], None]:
        def release(ref: weakref.ref) -> None:
            entry = self._live.get(key)
            if entry is not None and entry[0] is ref:
                del self._live[key]
                self._log_release(entry[1])

        return release

    # -- public ------------------------------------------------------------------------------
    def register(self, tensors: Iterable[torch.Tensor], category: str = "weights") -> None:
        """Count tensors that exist before the step (parameters, buffers, quantization state)."""
        for t in tensors:
            if isinstance(t, torch.Tensor):
                self._add(t, "register", category)

    def relabel(self, tensors: Iterable[torch.Tensor], category: str) -> None:
        """Give live storages a category after the fact (gradients, optimizer states)."""
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            if is_traceable_wrapper_subclass(t):
                self.relabel([getattr(t, n) for n in t.__tensor_flatten__()[0]], category)  # non-tensors skipped
                continue
            entry = self._live.get(id(t.untyped_storage()))
            if entry is not None:
                self.records[entry[1]].category = category
            else:
                self._add(t, "register", category)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        self.ops_seen += 1
        flat, _ = tree_flatten(out)
        for t in flat:
            if isinstance(t, torch.Tensor):
                self._add(t, func.overloadpacket.__name__)
        return out


@dataclass
class Replay:
    """What :func:`replay` found: the peak, per-phase peaks, and what was alive at the peak."""

    peak_bytes: int
    peak_phase: str
    phase_peaks: dict[str, int]
    by_category: dict[str, int]
    alive_at_peak: list[StorageRecord]
    final_bytes: int


def replay(timeline: StorageTimeline, *, skip_phases: tuple[str, ...] = ("setup",)) -> Replay:
    """Walk the event log: running total, its maximum, and the live set at that maximum."""
    records, events = timeline.records, timeline.events
    marks = timeline.phase_marks + [(len(events) + 1, "")]
    current = peak = 0
    peak_at = -1
    peak_phase = "setup"
    phase_peaks: dict[str, int] = {}
    mark_i = 0
    phase = marks[0][1]
    for i, ev in enumerate(events):
        while marks[mark_i + 1][0] <= i:
            mark_i += 1
            phase = marks[mark_i][1]
        current += records[ev].nbytes if ev >= 0 else -records[~ev].nbytes
        if phase in skip_phases:
            continue
        if current > phase_peaks.get(phase, -1):
            phase_peaks[phase] = current
        if current > peak:
            peak, peak_at, peak_phase = current, i, phase
    alive: dict[int, StorageRecord] = {}
    for ev in events[: peak_at + 1]:
        if ev >= 0:
            alive[ev] = records[ev]
        else:
            alive.pop(~ev, None)
    by_category: dict[str, int] = {}
    for rec in alive.values():
        by_category[rec.category] = by_category.get(rec.category, 0) + rec.nbytes
    return Replay(peak, peak_phase, phase_peaks, by_category,
                  sorted(alive.values(), key=lambda r: r.nbytes, reverse=True), current)
