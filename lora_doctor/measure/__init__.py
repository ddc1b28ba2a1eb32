"""Exact tensor-memory measurement without a GPU (live storages of real or fake tensors)."""

from .tracker import StorageTracker, TensorRecord

__all__ = ["StorageTracker", "TensorRecord"]
