"""Live view of a :class:`~lora_doctor.measure.timeline.StorageTimeline`: running totals and the peak.

Usage::

    tracker = StorageTracker()
    tracker.register(model.parameters(), category="weights")
    with tracker:
        loss = model(**batch).loss; loss.backward(); optimizer.step()
    tracker.peak_bytes

Same log as the timeline (see there for what is seen and what is not); as each allocation and
release is logged, the tracker also keeps the current total, the peak, the peak of each ``phase``
(set from outside, e.g. "forward", "backward", "optimizer_step") and the categories at the peak.
A new storage's category is ``classify(tensor, phase)`` when given, else the phase it was made in.
``keep_top`` > 0 records that many largest live storages each time a new peak is reached (costly on
big graphs, so off by default).
"""

from __future__ import annotations

from .timeline import ALIGN, Classifier, StorageRecord, StorageTimeline, rounded

TensorRecord = StorageRecord  # a live storage: size, op, module, phase, category, shape, dtype

__all__ = ["ALIGN", "StorageTracker", "TensorRecord", "rounded"]


class StorageTracker(StorageTimeline):
    """Measure the peak of live tensor storage bytes while the mode is active."""

    def __init__(self, *, classify: Classifier | None = None, keep_top: int = 0) -> None:
        super().__init__(classify=classify)
        self.keep_top = keep_top
        self.current_bytes = 0
        self.peak_bytes = 0
        self.peak_phase = "setup"
        self.phase_peaks: dict[str, int] = {}
        self.by_category: dict[str, int] = {}
        self.peak_by_category: dict[str, int] = {}
        self.peak_top: list[StorageRecord] = []

    def _append(self, record: StorageRecord) -> int:
        idx = super()._append(record)
        self._bump(record.category, record.nbytes)
        return idx

    def _log_release(self, idx: int) -> None:
        super()._log_release(idx)
        record = self.records[idx]
        self._bump(record.category, -record.nbytes, track_peak=False)

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

    def largest(self, n: int) -> list[StorageRecord]:
        """The ``n`` largest storages alive now."""
        records = [self.records[idx] for ref, idx in self._live.values() if ref() is not None]
        return sorted(records, key=lambda r: r.nbytes, reverse=True)[:n]

    def reset_peak(self) -> None:
        self.peak_bytes = self.current_bytes
        self.phase_peaks = {}
        self.peak_by_category = {k: v for k, v in self.by_category.items() if v}
