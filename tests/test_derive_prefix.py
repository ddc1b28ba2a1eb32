"""Models whose layers run longer than their input: CPM-Ant prepends ``prompt_length`` (32) prompt tokens inside
the model, so its layers run at ``seq + 32`` while the inputs, logits and labels stay at ``seq``. Tensors at
``seq + P`` need all five coefficients of the basis; the derive traces a sixth shape to check them, only where
four coefficients miss the fifth shape."""

from __future__ import annotations

import pytest

from lora_doctor.measure.tiny import tiny_config
from lora_doctor.memory.analytic import step_peak
from lora_doctor.memory.moments import _envelope, check_shape, four_terms_miss, sixth_shape, value
from lora_doctor.memory.tables import CUBLAS_WORKSPACE_BYTES
from lora_doctor.models import resolve
from lora_doctor.plan_types import PlanSettings

S, P = 128, 32
CHECK = check_shape(0, S)
SHAPES = [(1, S), (2, S), (1, 2 * S), (2, 2 * S), CHECK, sixth_shape(CHECK)]


@pytest.fixture(autouse=True)
def derive_on(monkeypatch):
    monkeypatch.setenv("LORA_DOCTOR_DERIVE", "1")  # tests/conftest.py turns it off for the other tests


# scores(b, s) in the (a, q, e, c, p) basis of the input's length
FIVE = (40 + 2 * 1024 * P, 1024, 8, 8 * P + 1000, 40 * P + 1024 * P * P)


def scores(b: int, s: int) -> float:
    """A ``[b, heads, s + P, s + P]`` score tensor and per-token tensors at ``s + P``, a table per position."""
    return 1024 * b * (s + P) ** 2 + 40 * b * (s + P) + 8 * (s + P) + 1000


def test_a_moment_at_seq_plus_a_prefix_is_five_coefficients_checked_on_a_sixth_shape():
    assert sixth_shape(CHECK) == (2, 4 * S) and sixth_shape((3, 2 * S)) is None
    assert four_terms_miss([[scores(b, s) for b, s in SHAPES[:5]]], S, CHECK)
    assert not four_terms_miss([[900 * b * s for b, s in SHAPES[:5]]], S, CHECK)
    curves = [([0.0, 900 * b * s, scores(b, s)], ("", "mm", "bmm")) for b, s in SHAPES]
    five = _envelope(curves, S, CHECK)   # the per-token moment is below it in every coefficient
    assert len(five) == 1 and five[0] == pytest.approx(FIVE)
    for b, s in ((1, 3 * S), (4, 16 * S), (3, 100)):   # exact away from the traced shapes
        assert value(five[0], b, s) == pytest.approx(scores(b, s))


def test_five_coefficients_that_miss_the_sixth_shape_are_not_kept():
    """Five coefficients fit any five numbers: a moment matched to another op at one of the five shapes (here a
    per-token moment off by 0.7 MB at (1, 2S)) is kept only if it predicts the sixth, and it does not."""
    def other(b: int, s: int, off: float = 0.0) -> float:
        return 90_000 * b * (s + P) + (off if (b, s) == (1, 2 * S) else 0.0)

    def kept(off: float) -> list:
        curves = [([0.0, other(b, s, off), scores(b, s)], ("", "mul", "bmm")) for b, s in SHAPES]
        return [tuple(round(x) for x in t) for t in _envelope(curves, S, CHECK)]

    assert kept(0.0) == [(90_000, 0, 0, 0, 90_000 * P), FIVE]   # undominated, highest ``a`` first
    assert kept(7e5) == [FIVE]


def test_cpmant_prompt_tokens_plan_within_1_percent_of_the_trace():
    """Tiny CPM-Ant, full fine-tune: the step peaks after the last layer, while the model's forward still holds
    its ``[b, heads, s + 32, s + 32]`` position bias; CrossEntropyLoss on the bf16 logits keeps 6 bytes per logit
    (the recipe's 12 made the sweep +5.3%; without the tail -1.6%)."""
    from lora_doctor.trace import trace_step

    s = PlanSettings(mode="full", batch_size=1, seq_len=512)
    resolved = resolve(tiny_config("cpmant"))
    traced = trace_step(resolved, s)
    totals = step_peak(resolved.arch, s)
    assert (traced.peak_phase, totals.phase) == ("forward", "forward_end")
    assert totals.loss_bytes == 6 * s.batch_size * s.seq_len * resolved.arch.vocab_size
    assert abs((sum(totals.breakdown.values()) - CUBLAS_WORKSPACE_BYTES) / traced.peak_bytes - 1) <= 0.01
