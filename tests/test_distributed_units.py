"""Pure parts of multi-rank support, without launching ranks: the vote's rows and outcome, the device choice."""

from __future__ import annotations

import math

import pytest

from lora_doctor.callback.vote import ABSENT, ROW, RankReport, describe, settle
from lora_doctor.errors import GpuNotAvailableError, InvalidSettingError, LoraDoctorError
from lora_doctor.fallback.load import default_device


def row(rank: int, **kw) -> list[float]:
    return RankReport(rank, True, **kw).encode()


def test_rows_round_trip_with_nan_and_unknowns():
    report = RankReport(1, True, True, "grad-norm-non-finite", 7, math.nan, math.nan, None, "global", 2.5)
    encoded = report.encode()
    assert len(encoded) == ROW
    back = RankReport.decode(1, encoded)
    assert (back.stop, back.code, back.step, back.grad_sq, back.grad_kind, back.loss) == (
        True, "grad-norm-non-finite", 7, None, "global", 2.5)
    assert math.isnan(back.value) and math.isnan(back.local_value)
    assert RankReport.decode(0, ABSENT) == RankReport(0)   # an absent rank carries nothing
    nan_loss = RankReport.decode(0, RankReport(0, True, loss=math.nan).encode()).loss
    assert nan_loss is not None and math.isnan(nan_loss)   # a NaN loss is a value, not "unknown"


def test_the_rank_where_a_nan_started_is_the_cause():
    # DDP: after the all-reduce both ranks judge NaN; only rank 1's own gradients were NaN
    rows = [row(0, stop=True, code="grad-norm-non-finite", step=7, value=math.nan, local_value=0.4),
            row(1, stop=True, code="grad-norm-non-finite", step=7, value=math.nan, local_value=math.nan)]
    outcome = settle(rows)
    assert outcome.trigger.rank == 1 and outcome.nonfinite_at(7) and not outcome.nonfinite_at(8)
    assert describe(outcome.trigger) == "grad-norm-non-finite on rank 1 at step 7 (value nan)"


def test_a_spike_is_blamed_on_the_rank_that_pushed_it_and_urgency_wins():
    rows = [row(0, stop=True, code="grad-norm-spike", step=5, value=700.0, local_value=0.1),
            row(1, stop=True, code="grad-norm-spike", step=5, value=700.0, local_value=1400.0)]
    assert settle(rows).trigger.rank == 1
    rows.append(row(2, stop=True, code="loss-non-finite", step=5, value=math.inf, local_value=math.inf))
    assert settle(rows).trigger.code == "loss-non-finite"
    assert settle([row(0, code="loss-spike", step=3, value=9.0, local_value=9.0)]).trigger is None   # warn only


def test_global_gradient_norm_and_loss():
    replicated = [row(r, grad_sq=0.25, grad_kind="global", loss=loss) for r, loss in ((0, 4.0), (1, 5.0))]
    outcome = settle(replicated)
    assert outcome.grad_norm == pytest.approx(0.5) and outcome.loss == pytest.approx(4.5)
    shards = [row(0, grad_sq=9.0, grad_kind="shard"), row(1, grad_sq=16.0, grad_kind="shard")]
    assert settle(shards).grad_norm == pytest.approx(5.0)
    # a rank that failed to report leaves the global values unknown rather than wrong
    partial = settle([shards[0], ABSENT])
    assert partial.grad_norm is None and partial.loss is None and partial.trigger is None


@pytest.mark.parametrize("env, count, current, expected", [
    ({}, 0, 0, "cpu"),
    ({"LOCAL_RANK": "1", "WORLD_SIZE": "2"}, 0, 0, "cpu"),
    ({}, 4, 2, 2),                                            # one process: the current device
    ({"LOCAL_RANK": "0", "WORLD_SIZE": "1"}, 4, 3, 3),        # torchrun with one process
    ({"LOCAL_RANK": "3", "WORLD_SIZE": "8"}, 4, 0, 3),        # each rank on its own GPU, not cuda:0
])
def test_load_for_training_places_each_rank_on_its_local_gpu(env, count, current, expected):
    assert default_device(env, count, current) == expected


def test_a_local_rank_without_its_gpu_is_an_error_that_names_the_fix():
    with pytest.raises(GpuNotAvailableError, match="nproc_per_node 2"):
        default_device({"LOCAL_RANK": "2", "WORLD_SIZE": "4"}, 2, 0)
    with pytest.raises(InvalidSettingError) as info:
        default_device({"LOCAL_RANK": "x", "WORLD_SIZE": "2"}, 2, 0)
    assert isinstance(info.value, LoraDoctorError)


def test_each_rank_concludes_the_same_stop_and_drops_the_update():
    from lora_doctor.findings import Finding
    from lora_doctor.callback.vote import conclude

    rows = [row(0, stop=True, code="grad-norm-non-finite", step=3, value=math.nan, local_value=0.4),
            row(1, stop=True, code="grad-norm-non-finite", step=3, value=math.nan, local_value=math.nan)]
    outcome = settle(rows)
    own = Finding("grad-norm-non-finite", "error", "gradient norm is nan at step 3", "fix", {"step": 3})
    on_rank0 = conclude(outcome, 3, 0, 2, own, {("grad-norm-non-finite", 3)}, stopping=False)
    on_rank1 = conclude(outcome, 3, 1, 2, own, {("grad-norm-non-finite", 3)}, stopping=False)
    assert on_rank0.drop_update and on_rank1.drop_update
    assert on_rank0.stop.data["rank"] == on_rank1.stop.data["rank"] == 1
    assert on_rank0.findings == [on_rank0.stop] and "on rank 1 at step 3" in on_rank0.stop.message
    assert on_rank1.stop.message == own.message and on_rank1.findings == []   # its own finding, not a copy
    later = conclude(outcome, 3, 0, 2, None, set(), stopping=True)
    assert later.stop is None and later.drop_update   # already stopping: no new trigger, the update still dropped
