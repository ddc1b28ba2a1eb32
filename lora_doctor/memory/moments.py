"""What each decoder layer's backward (and forward) adds on top of the saved activations, as moments (no torch).

A layer's backward is a sequence of ops; after each allocation the bytes alive, minus the saved
activations of the layers not yet done and the gradients already made, is one *moment*. Traced at
several (batch, seq) shapes (:mod:`lora_doctor.memory.derive`), each moment is solved in the basis of
:mod:`.layer_terms` (``a * tokens + q * tokens * seq + e * seq + c``, or ``p * batch`` in place of ``q``:
:func:`fit`); the peak at a planned shape is
the highest moment there, because which moment peaks depends on the shape (per-token tensors at short
sequences, ``[b, heads, s, s]`` ones at long).
"""

from __future__ import annotations

import difflib
from typing import Any

Term = tuple[float, float, float, float, float]
# A moment: a Term, or a Term and the smallest batch size it applies from (a sixth number, see _batched).
Moment = tuple[float, ...]


def min_batch(moment: Moment) -> int:
    """The smallest batch size at which ``moment`` happens (1: every batch)."""
    return int(moment[5]) if len(moment) > 5 else 1


def solve(v: list[float], seq: int) -> Term:
    """(a, q, e, c, 0) from bytes at (1, S), (2, S), (1, 2S), (2, 2S) for a*b*s + q*b*s^2 + e*s + c."""
    A, B, C, D = v
    S = float(seq)
    q = ((D - C) - 2 * (B - A)) / (2 * S * S)
    a = (B - A) / S - q * S
    e = (C - A) / S - a - 3 * q * S
    c = A - a * S - q * S * S - e * S
    return (a, q, e, c, 0.0)


def solve_per_sequence(v: list[float], seq: int) -> Term:
    """(a, 0, e, c, p) from the same four shapes for a*b*s + e*s + c + p*b: a per-sequence term instead of
    the quadratic one (a recurrent state per sequence, e.g. linear attention's ``[b, heads, dk, dv]``)."""
    A, B, C, D = v
    S = float(seq)
    aS = (D - C) - (B - A)
    p = (B - A) - aS
    eS = (C - A) - aS
    return (aS / S, 0.0, eS / S, A - aS - eS - p, p)


def solve_all(v: list[float], seq: int, check: tuple[int, int]) -> Term | None:
    """(a, q, e, c, p) from the four shapes and the check shape together (None where they do not fix all
    five: a check shape of batch > 1 within the sequences of the four). Exact at the five, unchecked."""
    import numpy as np

    S = float(seq)
    shapes = [(1, S), (2, S), (1, 2 * S), (2, 2 * S), (float(check[0]), float(check[1]))]
    m = np.array([[b * s, b * s * s, s, 1.0, b] for b, s in shapes])
    if abs(np.linalg.det(m)) < 1e-9 * np.abs(m).max() ** 2:
        return None
    return tuple(float(x) for x in np.linalg.solve(m, np.array(v[:5], dtype=float)))  # type: ignore[return-value]


def coefficients(term: Any) -> Term:
    """``(a, q, e, c, p)`` of a term or moment: a stored 4-number term has no ``p``; a moment's sixth number
    (the batch it applies from) is not a coefficient."""
    return tuple((tuple(term) + (0.0,) * 5)[:5])  # type: ignore[return-value]


def value(term: Term, batch: int, seq: int) -> float:
    """Bytes of ``term`` at (batch, seq)."""
    a, q, e, c, p = coefficients(term)
    return a * batch * seq + q * batch * seq * seq + e * seq + c + p * batch


def fit(v: list[float], seq: int, check: tuple[int, int], exact: bool = False) -> Term:
    """A term from the four shapes (``v[:4]``), quadratic in the sequence (attention scores, masks) or with
    a per-sequence term instead (recurrent states): the one nearer the check shape's bytes (``v[4]``),
    the quadratic one on a tie or without a check value. (A per-sequence state read as quadratic has
    ``q = -p / (2 S^2)``: exact at the four shapes, -2p per sequence at 4S, and worse beyond.) With
    ``exact``, when neither predicts the check shape, all five coefficients from the five shapes."""
    quadratic = solve(v[:4], seq)
    if len(v) < 5:
        return quadratic
    per_seq = solve_per_sequence(v[:4], seq)
    miss = abs(value(per_seq, *check) - v[4]) - abs(value(quadratic, *check) - v[4])
    # bytes alive per sequence are never negative: a negative p is a batch-1 check shape failing to tell a
    # per-sequence state from a peak only batches of 2 reach (moments._batched)
    best = per_seq if miss < -_ROUNDING and per_seq[4] >= -_ROUNDING else quadratic
    if exact and not _predicts(best, v[4], seq, check):
        return solve_all(v, seq, check) or best
    return best


_ROUNDING = 512.0   # the allocator's granularity: a closer fit by less is no evidence


Curve = tuple[list[float], tuple[str, ...]]   # bytes at each moment, and the op behind each


def backward_terms(excess: list[dict[int, Curve]], trainable: dict[str, int], seq: int, check: tuple[int, int],
                   n: int, kinds: list[int], wkinds: list[int], to_model: dict[int, int]) -> dict | None:
    """What one layer's backward adds on top of the saved activations of the layers not yet done and
    the gradients already made, per layer kind (absolute, not a residual: the recipes have no such
    term): the incoming gradient, the layer's own parameter gradients, the kernels' scratch (e.g. the
    math SDPA path's ``[b, heads, s, s]`` gradients). Also the trainable parameters of each kind, and
    the same moments for the loss and head backward before the last layer's (``loss``: logits and loss
    tensors in whatever dtypes the model computes them, e.g. Beam's fp32 logit softcapping).

    The peak of a backward is a maximum over its moments, and which moment wins depends on the shape
    (per-token tensors at short sequences, ``[b, heads, s, s]`` ones at long): each moment is solved
    in the (a, q, e, c) basis on its own (the op sequence is the same at every shape) and the moments
    no other one dominates are kept; the engine takes the highest at the planned shape."""
    out = _per_kind(excess, seq, check, n, kinds, wkinds, to_model)
    if out is None:
        return None
    params: dict[int, list] = {}
    for i in range(n):
        params.setdefault(to_model[wkinds[i]], []).append(trainable.get(f"layer{i}", 0))
    loss = _envelope([e[n] for e in excess], seq, check) if all(n in e for e in excess) else []
    return dict(out, loss=[list(t) for t in loss],
                params=[sum(params[k]) / len(params[k]) if params.get(k) else 0.0 for k in range(max(kinds) + 1)])


def forward_terms(excess: list[dict[int, Curve]], seq: int, check: tuple[int, int], n: int, kinds: list[int],
                  wkinds: list[int], to_model: dict[int, int]) -> dict | None:
    """What one layer's forward holds on top of the saved activations of the layers before it (and of
    the outside region), per layer kind, as undominated moments like :func:`backward_terms`: its own
    saved tensors so far plus what it frees before it returns. Most layers peak at their end (then the
    moment is just their saved bytes); a layer whose forward makes large transients does not (the torch
    chunked gated-delta rule of Qwen3-Next's linear attention builds per-chunk tensors it frees; HY-V4's
    indexer a ``[b, s, d, s]`` fp32 product under no_grad; eager attention the fp32 scores and the mask sum
    before the softmax), and where the layers after it save less, the forward of the last such layer is the
    step's peak.

    ``tail``: the same for the rest of the forward, from the last layer's end to the start of backward, on
    top of everything the layers and the outside region save: the final norm's temporaries, the logits and
    the loss as the model computes them, and what the model's forward holds until it returns (CPM-Ant's
    ``[b, heads, s + 32, s + 32]`` position bias: with a loss in the logits' dtype, the step's peak)."""
    out = _per_kind(excess, seq, check, n, kinds, wkinds, to_model)
    if out is None or not all(n in e for e in excess):
        return out
    return dict(out, tail=[list(t) for t in _envelope([e[n] for e in excess], seq, check)])


def _per_kind(excess: list[dict[int, Curve]], seq: int, check: tuple[int, int], n: int, kinds: list[int],
              wkinds: list[int], to_model: dict[int, int]) -> dict | None:
    """Each window layer's undominated moments, grouped by the model's layer kinds (layers ``>= 1``;
    layer 0's kind from layer 0 when it appears nowhere else), and layer 0's own."""
    if not excess or any(any(i not in e for i in range(n)) for e in excess):  # a layer not seen: recipe only
        return None
    solved = {i: _envelope([e[i] for e in excess], seq, check) for i in range(n)}
    per_kind: dict[int, list] = {}
    for i in range(1, n):
        per_kind.setdefault(to_model[wkinds[i]], []).extend(solved[i])
    if kinds[0] not in per_kind:
        per_kind[kinds[0]] = list(solved[0])
    return {"layers": [[list(t) for t in _undominated(per_kind.get(k, []))] for k in range(max(kinds) + 1)],
            "first": [list(t) for t in solved[0]]}


def check_shape(w: int, seq: int) -> tuple[int, int]:
    """A fifth (batch, seq) shape that each backward moment's fit must predict: longer than the four (so
    an extrapolation error shows), in the same sliding-window regime. Batch 1, because a batch of 1
    skips some reductions over the batch (a broadcast mask's gradient), which no term of the basis
    can switch off, and batch 1 is a plan that must be exact."""
    if not w or seq > w or 4 * seq <= w:
        return (1, 4 * seq)
    return (1, w) if w > 2 * seq else (3, 2 * seq)   # no longer sequence within the window: a larger batch


def sixth_shape(check: tuple[int, int]) -> tuple[int, int] | None:
    """The shape that checks five-coefficient fits (:func:`solve_all`), traced only where four coefficients
    miss the check shape (:func:`four_terms_miss`): the check shape's length at batch 2, in the same regime.
    None where the five shapes do not fix five coefficients (a check shape of batch > 1)."""
    return (2, check[1]) if check[0] == 1 else None


def four_terms_miss(values: list[list[float]], seq: int, check: tuple[int, int]) -> bool:
    """Whether some byte counts at the five shapes fit no four-coefficient term (:func:`fit`): a region or
    a pass that needs all five coefficients, e.g. tensors at ``seq + P`` for a prefix of ``P`` tokens the
    model adds inside (CPM-Ant's prompt: ``q*b*(s+P)^2`` is ``q*b*s^2 + 2qP*b*s + qP^2*b``)."""
    return any(len(v) > 4 and not _predicts(fit(v, seq, check), v[4], seq, check) for v in values)


def _checked_all(v: list[float], seq: int, check: tuple[int, int]) -> Term | None:
    """All five coefficients from the five shapes, when they predict the sixth (``v[5]``); else None."""
    sixth = sixth_shape(check)
    term = solve_all(v, seq, check) if sixth and len(v) > 5 else None
    return term if term is not None and _predicts(term, v[5], seq, sixth) else None  # type: ignore[arg-type]


def _matched(ref_ops: tuple[str, ...], curve: Curve) -> dict[int, float]:
    """The values of ``curve`` at the moments of the reference op sequence it matches."""
    values, ops = curve
    pairs = {}
    for block in difflib.SequenceMatcher(None, ref_ops, ops, autojunk=False).get_matching_blocks():
        for j in range(block.size):
            pairs[block.a + j] = values[block.b + j]
    return pairs


def _envelope(curves: list[Curve], seq: int,
              check: tuple[int, int]) -> list[Moment]:
    """The undominated moments of one layer's backward, from its curve at the five shapes (six when
    four coefficients missed somewhere: :func:`sixth_shape`).

    Moments are matched across shapes by their op sequence (a batch of 2 may add a reduction over the
    batch), solved from the first four shapes, and kept only when they predict the fifth (a moment
    matched to another op at some shape does not); with a sixth shape, a moment that four coefficients
    miss is kept with all five when they predict the sixth. When the kept moments miss a shape's peak (the
    peak moment did not match), the peaks, fitted the same way, are kept too if they pass the check, or
    else, when only the batches of 2 reach them, as a moment from batch 2 on (:func:`_batched`)."""
    good = _checked(curves, seq, check)
    kept: list[Moment] = [term for term, _ in good]
    peaks = [max(values) for values, _ in curves]
    if _missed(good, peaks):
        term = fit(peaks, seq, check)
        if not _predicts(term, peaks[4], seq, check) and (five := _checked_all(peaks, seq, check)) is not None:
            return _undominated(kept + [five])
        batched = [] if _predicts(term, peaks[4], seq, check) or not kept else _batched(peaks, seq, check)
        if batched:   # only the batches of 2 reach it (checked before solve_all, which fits any five values)
            return _undominated(kept + batched + _batch_one(peaks, seq, check))
        if not _predicts(term, peaks[4], seq, check):   # a per-sequence state and per-chunk pairs together
            term = solve_all(peaks, seq, check) or term   # (Mamba-2's chunked scan): all five coefficients
        if _predicts(term, peaks[4], seq, check) or not kept:
            kept.append(term)
    return _undominated(kept)


def unchecked_peak(curves: list[Curve], seq: int, check: tuple[int, int]) -> bool:
    """Whether :func:`_envelope` at the five shapes would keep a fit of the peaks that four coefficients miss:
    the checked moments do not reach some shape's peak, and the peaks fit no four-coefficient term."""
    peaks = [max(values) for values, _ in curves[:5]]
    return _missed(_checked(curves[:5], seq, check), peaks) and four_terms_miss([peaks], seq, check)


def _checked(curves: list[Curve], seq: int, check: tuple[int, int]) -> list[tuple[Moment, list[float]]]:
    """The moments matched across the shapes whose fit passes its check, with their bytes at the five shapes."""
    ref_ops = curves[0][1]
    matched = {i: [v] for i, v in enumerate(curves[0][0])}
    for curve in curves[1:5]:
        pairs = _matched(ref_ops, curve)
        matched = {i: vs + [pairs[i]] for i, vs in matched.items() if i in pairs}
    sixth = _matched(ref_ops, curves[5]) if len(curves) > 5 else {}
    good = []
    for i, vs in matched.items():
        term: Moment | None = fit(vs, seq, check)
        if not _predicts(term, vs[4], seq, check):  # type: ignore[arg-type]
            term = _checked_all(vs + [sixth[i]], seq, check) if i in sixth else None
        if term is not None:
            good.append((term, vs))
    return good


def _missed(good: list[tuple[Moment, list[float]]], peaks: list[float]) -> bool:
    """Whether the kept moments leave some shape's peak (of the five) uncovered, or there are none."""
    covered = [max((vs[k] for _, vs in good), default=0.0) for k in range(5)]
    return not good or any(c < p - _tolerance(p) for c, p in zip(covered, peaks))


def _batched(peaks: list[float], seq: int, check: tuple[int, int]) -> list[Moment]:
    """A peak that only batches of 2 or more reach: ``torch.matmul`` folds a broadcast operand of batch 1 into
    one ``mm``, and at batch 2 expands and copies it (HY-V4's indexer: ``[b, 1, d, s]`` keys against
    ``[b, s, h, d]`` queries make a ``[b, s, d, s]`` fp32 copy). Fitted as ``a * tokens + q * tokens * seq``
    from the peaks at (2, S) and (2, 2S), applied from batch 2 on, checked on the fifth shape when it has one."""
    S = float(seq)
    q = (peaks[3] - 2 * peaks[1]) / (4 * S * S)
    a = (peaks[1] - 2 * q * S * S) / (2 * S)
    term = (a, q, 0.0, 0.0, 0.0, 2.0)
    if peaks[1] <= peaks[0] * 2 or (check[0] >= 2 and not _predicts(term, peaks[4], seq, check)):
        return []   # not a batch-only peak, or one the fit does not predict
    return [term]


def _batch_one(peaks: list[float], seq: int, check: tuple[int, int]) -> list[Moment]:
    """The batch-1 peaks' own curve, beside a :func:`_batched` moment: where batch 2 copies a broadcast operand,
    the four shapes mix two curves and neither fit holds, and the batch-1 peak would be left to the lower
    moments (DeepSeek-V4's indexer scorer: ``[1, s, heads, s/4]`` fp32 products at batch 1, plus a ``[b, s, d,
    s/4]`` copy from batch 2 on; full bf16 at batch 1, seq 512 came out -23% without it). Solved as
    ``a * s + q * s^2 + c`` from (1, S), (1, 2S) and a batch-1 check shape (exact at the three); applied to
    every batch as ``a * tokens + q * tokens * seq + c``, which at batch 2 stays below the measured peaks
    the batched moment covers. None without a batch-1 check shape."""
    if check[0] != 1 or check[1] <= 2 * seq:
        return []
    import numpy as np

    xs = [float(seq), 2.0 * seq, float(check[1])]
    m = np.array([[x, x * x, 1.0] for x in xs])
    a, q, c = (float(v) for v in np.linalg.solve(m, np.array([peaks[0], peaks[2], peaks[4]])))
    return [(a, q, 0.0, c, 0.0)]


def _tolerance(measured: float) -> float:
    """The allocator's 512-byte rounding of the tensors alive: 0.5%, at least 64 KiB."""
    return max(0.005 * abs(measured), 65536.0)


def _predicts(term: Moment, measured: float, seq: int, check: tuple[int, int]) -> bool:
    """Whether ``term`` gives the bytes measured at the check shape."""
    return abs(value(term, *check) - measured) <= _tolerance(measured)


def _undominated(terms: list) -> list[Moment]:
    """Terms not below another in every coefficient (the basis' features are all >= 0), among the terms that
    apply at the same batch sizes or more."""
    def key(t: Any) -> Moment:
        coeffs = tuple(round(x, 6) for x in coefficients(t))
        return coeffs + ((float(t[5]),) if len(t) > 5 and t[5] > 1 else ())

    terms = sorted({key(t) for t in terms}, reverse=True)
    kept: list[Moment] = []
    for t in terms:
        if not any(all(k[j] >= t[j] for j in range(5)) and min_batch(k) <= min_batch(t) for k in kept):
            kept.append(t)  # type: ignore[arg-type]
    return kept


