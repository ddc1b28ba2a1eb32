"""StorageTracker: exact live-storage accounting, cross-checked with torch.profiler's memory timeline."""

from __future__ import annotations

import numpy as np
import torch

from lora_doctor.measure import StorageTracker
from lora_doctor.measure.tracker import rounded


def test_counts_new_storages_rounded_and_releases_them():
    tracker = StorageTracker()
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)      # 4000 B -> 4096
        b = a.view(10, 100)                              # a view: no new storage
        c = torch.ones(10, dtype=torch.bfloat16)         # 20 B -> 512
        assert tracker.current_bytes == 4096 + 512
        del a, b
        assert tracker.current_bytes == 512
        del c
    assert tracker.current_bytes == 0
    assert tracker.peak_bytes == 4096 + 512


def test_register_counts_existing_tensors_once():
    w = torch.zeros(256, 256)
    tracker = StorageTracker()
    tracker.register([w, w, w[0]], "weights")
    assert tracker.current_bytes == rounded(256 * 256 * 4)
    assert tracker.by_category == {"weights": 256 * 256 * 4}


def test_phase_peaks_and_top_tensors():
    tracker = StorageTracker(keep_top=2)
    with tracker:
        tracker.phase = "forward"
        big = torch.zeros(1024, 1024)
        small = torch.zeros(16)
        tracker.phase = "backward"
        del big
        other = torch.zeros(10, 10)
    assert tracker.phase_peaks["forward"] == rounded(1024 * 1024 * 4) + 512
    assert tracker.peak_phase == "forward"
    assert tracker.peak_top[0].shape == (1024, 1024) and tracker.peak_top[0].op == "zeros"
    del small, other


def _step(model, opt, x):
    loss = model(x).pow(2).mean()
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def test_agrees_with_torch_profiler_memory_timeline():
    """The same training step measured two ways: our tracker and PyTorch's own memory profiler."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import MemoryProfileTimeline

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.GELU(), torch.nn.Linear(1024, 256))
    opt = torch.optim.AdamW(model.parameters(), foreach=False)
    x = torch.randn(64, 256)
    _step(model, opt, x)  # create optimizer states first

    tracker = StorageTracker()
    tracker.register(model.parameters())
    for state in opt.state.values():
        tracker.register([v for v in state.values() if torch.is_tensor(v)], "optimizer_states")
    tracker.register([x], "inputs")
    baseline = tracker.current_bytes
    with tracker:
        _step(model, opt, x)
    ours = tracker.peak_bytes - baseline

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        _step(model, opt, x)
    _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    totals = np.array(sizes).sum(axis=1)
    theirs = int(totals.max() - totals[0])
    assert ours > 1_000_000
    assert abs(ours - theirs) / theirs < 0.01
