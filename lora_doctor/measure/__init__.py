"""Exact tensor-memory measurement without a GPU (live storages of real or fake tensors)."""

from .timeline import StorageRecord, StorageTimeline, replay
from .tracker import StorageTracker, TensorRecord

__all__ = ["StorageRecord", "StorageTimeline", "StorageTracker", "TensorRecord", "replay"]
