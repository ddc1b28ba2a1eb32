"""Trace-derived layer terms: the analytic engine agrees with the trace on modern blocks, layer
patterns and config dropouts, and the stored terms plan a model without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import lora_doctor
from lora_doctor.arch import ArchSpec
from lora_doctor.measure.tiny import tiny_config
from lora_doctor.memory.analytic import step_peak
from lora_doctor.memory.tables import CUBLAS_WORKSPACE_BYTES
from lora_doctor.models import resolve
from lora_doctor.plan_types import PlanSettings

LORA = PlanSettings(mode="lora", target_modules="all-linear", batch_size=2, seq_len=512)


@pytest.fixture(autouse=True)
def derive_on(monkeypatch):
    monkeypatch.setenv("LORA_DOCTOR_DERIVE", "1")  # tests/conftest.py turns it off for the other tests


def _error(model_type: str, s: PlanSettings, **overrides) -> float:
    from lora_doctor.trace import trace_step

    resolved = resolve(dict(tiny_config(model_type), **overrides))
    traced = trace_step(resolved, s).peak_bytes
    analytic = sum(step_peak(resolved.arch, s).breakdown.values()) - CUBLAS_WORKSPACE_BYTES
    return analytic / traced - 1


@pytest.mark.parametrize("model_type, overrides", [
    ("qwen3", {}),         # q/k norms
    ("gemma3_text", {}),   # four norms per layer, sliding window shorter than the sequence (explicit masks)
    # routed experts at top-k, router logits and aux loss, a dense layer among MoE layers, and peft's
    # LoRA on fused 3-D experts
    ("qwen3_moe", {"output_router_logits": True, "mlp_only_layers": [1]}),
    ("gpt2", {}),          # attention, residual and embedding dropout 0.1 from the config
])
def test_analytic_within_3_percent_of_trace(model_type, overrides):
    assert abs(_error(model_type, LORA, **overrides)) <= 0.03


def test_math_attention_backward_is_derived_falcon():
    """Falcon's multi-query attention (4 query heads, 1 key/value head, no enable_gqa) takes SDPA's math path
    on CUDA as on CPU: fp32 [b, heads, s, s] scores saved, and their gradients during each layer's backward.
    The derived backward moments carry them (the recipes alone were 5.6% under)."""
    s = PlanSettings(mode="full", batch_size=1, seq_len=512)
    assert abs(_error("falcon", s)) <= 0.02


def test_backward_moments_are_matched_by_op_and_checked_on_a_fifth_shape():
    from lora_doctor.memory.moments import _envelope, check_shape, solve

    S = 64
    shapes = [(1, S), (2, S), (1, 2 * S), (2, 2 * S), check_shape(0, S)]
    scratch = lambda b, s: 40 * b * s + 16 * b * s * s + 1000   # noqa: E731 - a [b, h, s, s] gradient
    incoming = lambda b, s: 900 * b * s   # noqa: E731 - per-token tensors
    curves = []
    for b, s in shapes:
        values, ops = [0.0, incoming(b, s), scratch(b, s)], ["", "mm", "bmm"]
        if b > 1:   # a reduction over the batch that batch 1 does not run
            values.insert(1, 5.0 * s)
            ops.insert(1, "sum")
        curves.append((values, tuple(ops)))
    kept = _envelope(curves, S, shapes[4])
    assert (40.0, 16.0, 0.0, 1000.0, 0.0) in kept and (900.0, 0.0, 0.0, 0.0, 0.0) in kept
    # a moment whose points at the four shapes belong to different ops is dropped by the check
    assert solve([scratch(*shapes[0]), incoming(*shapes[1]), scratch(*shapes[2]), incoming(*shapes[3])], S) not in kept


def test_a_per_sequence_state_is_fit_as_one_not_as_a_negative_quadratic():
    """A recurrent state per sequence (linear attention's [b, heads, dk, dv]) is p * batch. Read in the
    quadratic basis it fits the four shapes with q = -p / (2 S^2) and loses 2p per sequence at 4S; the fifth
    shape picks the per-sequence basis, which extrapolates exactly."""
    from lora_doctor.memory.moments import check_shape, fit, solve, value

    S = 128
    shapes = [(1, S), (2, S), (1, 2 * S), (2, 2 * S), check_shape(0, S)]
    state = lambda b, s: 400_000 * b * s + 2 * 2**20 * b + 8 * s + 3072   # noqa: E731
    term = fit([state(b, s) for b, s in shapes], S, shapes[4])
    assert term == pytest.approx((400_000, 0.0, 8, 3072, 2 * 2**20))
    assert value(term, 4, 16 * S) == pytest.approx(state(4, 16 * S))
    assert solve([state(b, s) for b, s in shapes[:4]], S)[1] < 0   # what the quadratic basis made of it
    scores = lambda b, s: 40 * b * s + 16 * b * s * s + 1000   # noqa: E731 - quadratic stays quadratic
    assert fit([scores(b, s) for b, s in shapes], S, shapes[4]) == pytest.approx((40, 16, 0, 1000, 0))
    both = lambda b, s: scores(b, s) + 2**20 * b   # noqa: E731 - Mamba-2: per-chunk pairs and a state
    assert fit([both(b, s) for b, s in shapes], S, shapes[4], exact=True) == pytest.approx((40, 16, 0, 1000, 2**20))


def test_a_layer_forward_that_peaks_inside_is_derived_qwen3_next():
    """Qwen3-Next's linear-attention layer (torch's chunked gated-delta rule, what transformers runs without
    flash-linear-attention) holds per-chunk transients during its forward beyond what it saves; the
    full-attention layer after it saves far less, so the step peaks inside the linear layer's forward. The
    derived forward moments give that phase (without them the analytic engine was 2.2% under on the sweep's
    tiny Qwen3-Next, and 3.2% under here with the state fit as a negative quadratic)."""
    from lora_doctor.trace import trace_step

    s = PlanSettings(mode="lora", target_modules="all-linear", batch_size=1, seq_len=384)
    resolved = resolve(dict(tiny_config("qwen3_next"), num_hidden_layers=2,
                            layer_types=["linear_attention", "full_attention"]))
    traced = trace_step(resolved, s)
    totals = step_peak(resolved.arch, s)
    assert (traced.peak_phase, totals.phase) == ("forward", "forward_layers")
    assert abs((sum(totals.breakdown.values()) - CUBLAS_WORKSPACE_BYTES) / traced.peak_bytes - 1) <= 0.02


def test_shapes_are_whole_chunks_of_a_state_space_mixer():
    """Mamba-2's torch path pads the sequence to whole chunks (Bamba: 256), so the derived shapes are whole
    chunks, at least two (at S = 128 both 128 and 256 pad to one chunk and the fit saw no growth, -51% at seq 512;
    one chunk at batch 1 skips ops)."""
    from lora_doctor.memory.derive import SEQ, _seq_for

    bamba = resolve(tiny_config("bamba")).arch
    assert bamba.extra["mamba_chunk_size"] == 256 and _seq_for(bamba, False) == 512
    assert _seq_for(resolve(tiny_config("nemotron_h")).arch, False) == 256
    assert _seq_for(resolve(tiny_config("qwen3")).arch, False) == SEQ
    qwen3_next = resolve(tiny_config("qwen3_next")).arch   # the delta rule's 64-token chunks, 4 per shape
    assert qwen3_next.extra["linear_attention_chunk"] == 64 and _seq_for(qwen3_next, False) == 256


def test_qlora_on_moe_is_traced_not_a_fallback():
    from lora_doctor.trace import trace_plan

    s = PlanSettings(mode="qlora", target_modules="all-linear", mixed_precision="bf16", batch_size=1, seq_len=128)
    p = trace_plan(resolve(tiny_config("qwen3_moe")), s)
    assert p.engine == "trace" and "trace_error" not in p.details


def test_trace_fallback_prints_nothing(capfd, monkeypatch):
    """Code the fake tensors cannot run (torch's fake grouped_mm on fp32 experts, without our routing)
    falls back to the analytic engine, and torch's fake-tensor error log does not reach the terminal."""
    from lora_doctor.trace import patches, trace_plan

    monkeypatch.setenv("LORA_DOCTOR_DERIVE", "0")
    monkeypatch.setattr(patches, "_moe_decision", lambda: None)
    s = PlanSettings(mode="qlora", target_modules="all-linear", batch_size=1, seq_len=64)
    p = trace_plan(resolve(tiny_config("qwen3_moe")), s)
    out, err = capfd.readouterr()
    assert p.engine == "analytic" and "BF16" in p.details["trace_error"]
    assert out == "" and err == ""


def test_window_covers_layer_patterns():
    from lora_doctor.memory.derive import _window_size, layer_kinds

    resolved = resolve(dict(tiny_config("gemma3_text"), num_hidden_layers=7))
    kinds = layer_kinds(resolved.meta_model(), 7)
    assert kinds == [0, 0, 0, 0, 0, 1, 0]      # five sliding layers, one global, as layer_types says
    assert _window_size(kinds) == 6
    assert _window_size([0, 0, 0, 0]) == 2 and _window_size([0, 1, 0, 1]) == 3


def test_the_window_cuts_an_alias_of_the_layer_count_too():
    """xLSTM's config copies num_hidden_layers into num_blocks when it is made, and the model reads num_blocks:
    a window that set only num_hidden_layers built every block, found no list of its 2 layers, and derived no
    moments (the loss recipe's 3 fp32 copies of the logits where the model makes 4: -6.3% against the trace)."""
    from lora_doctor.memory.derive import layer_kinds
    from lora_doctor.memory.window import _layer_list, _window_resolved

    resolved = resolve(tiny_config("xlstm"))
    kinds = layer_kinds(resolved.meta_model(), resolved.arch.num_layers)
    window = _window_resolved(resolved.config(), kinds)
    assert window.arch.num_layers == 2 and window.config().num_blocks == 2
    assert _layer_list(window.meta_model(), 2) is not None


def test_stored_terms_plan_without_torch(tmp_path):
    """What the catalog stores (derive_terms) round-trips through JSON and plans in a torch-free process."""
    from lora_doctor.memory.derive import derive_terms

    resolved = resolve(dict(tiny_config("qwen3"), num_hidden_layers=3))
    s = PlanSettings(mode="lora", target_modules="all-linear")
    derived = derive_terms(resolved, [s])
    assert set(derived["classes"]) == {"lora:bf16:-:sdpa:cuda"}
    data = dict(resolved.arch.to_dict(), derived=derived)
    stored = ArchSpec.from_dict(json.loads(json.dumps(data)))
    expected = sum(step_peak(stored, PlanSettings(mode="lora", target_modules=["q_proj"], seq_len=2048)).breakdown.values())
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(data))
    code = ("import sys, json; sys.modules['torch'] = None\n"
            "from lora_doctor.arch import ArchSpec\nfrom lora_doctor.memory.analytic import step_peak\n"
            "from lora_doctor.plan_types import PlanSettings\n"
            f"arch = ArchSpec.from_dict(json.load(open({str(path)!r})))\n"
            "s = PlanSettings(mode='lora', target_modules=['q_proj'], seq_len=2048)\n"
            "print(sum(step_peak(arch, s).breakdown.values()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == expected


def test_old_catalog_entries_without_derived_terms_still_load():
    data = resolve(tiny_config("llama")).arch.to_dict()
    data.pop("derived")
    arch = ArchSpec.from_dict(data)
    assert arch.derived == {} and step_peak(arch, PlanSettings(mode="lora", target_modules="all-linear")).breakdown


@pytest.mark.parametrize("mode", ["lora", "qlora"])
def test_a_catalog_class_borrowed_for_other_targets_never_lowers_the_recipe(mode):
    """The catalog derives all-linear and peft's default targets; other adapters borrow the all-linear class
    (planned with q,v that borrowing took -0.25 GiB from Llama-2-7B QLoRA). Borrowed, a class may only add."""
    from lora_doctor.catalog import lookup

    entry = lookup("meta-llama/Llama-2-7b-hf")
    assert entry.arch.derived["classes"]                 # the catalog holds derived terms
    targets = "q_proj,o_proj"                            # a placement the catalog does not derive
    recipe_only = lora_doctor.plan(dict(entry.config), mode=mode, target_modules=targets)  # conftest: DERIVE=0
    borrowed = lora_doctor.plan("meta-llama/Llama-2-7b-hf", mode=mode, target_modules=targets)
    assert borrowed.breakdown["activations"] >= recipe_only.breakdown["activations"]


def test_target_lists_that_adapt_the_same_layers_share_one_class():
    """Classes are keyed by which linears carry adapters, however the target list spells them."""
    from lora_doctor.memory.layer_terms import class_key, coarse_key

    arch = resolve(tiny_config("llama")).arch
    keys = {class_key(arch, PlanSettings(mode="qlora", target_modules=t)) for t in
            (None, "q_proj,v_proj", ("v_proj", "q_proj"), r".*\.(q|v)_proj")}
    assert keys == {"qlora:bf16:-:sdpa:cuda@self_attn.q_proj,self_attn.v_proj"}
    for s in (PlanSettings(mode="lora", target_modules="all-linear"), PlanSettings(mode="full")):
        assert class_key(arch, s) == coarse_key(s)        # the keys the catalog always stored
    # every linear family by name is not peft's all-linear, which also adapts fused MoE experts
    moe = resolve(tiny_config("qwen3_moe")).arch
    names = tuple(f.name for f in moe.linear_families if f.scope != "head")
    assert class_key(moe, PlanSettings(mode="lora", target_modules=names)) != coarse_key(PlanSettings(mode="lora"))
    phi3 = resolve(tiny_config("phi3")).arch           # peft has no default: plan adapts all-linear
    s = PlanSettings(mode="lora")
    assert class_key(phi3, s) == coarse_key(s)


def test_a_class_derived_for_the_adapters_used_agrees_with_the_trace():
    """QLoRA on the attention projections only (fp32 stream, no autocast): the catalog-style class derived for
    that placement plans within 2% of the trace, torch-free from the stored JSON; classes already derived
    (``keep``) are not traced again."""
    from lora_doctor.memory.derive import derive_terms
    from lora_doctor.memory.layer_terms import VERSION, lookup
    from lora_doctor.trace import trace_step

    resolved = resolve(tiny_config("llama"))
    targets = ("q_proj", "k_proj", "v_proj", "o_proj")
    kept = {"layers": [[0.0] * 4], "first": [0.0] * 4, "outside": [0.0] * 4, "logits": [0.0] * 4}
    derived = derive_terms(resolved, [PlanSettings(mode="qlora", target_modules="all-linear"),
                                      PlanSettings(mode="qlora", target_modules=targets)],
                           keep={"version": VERSION, "classes": {"qlora:bf16:-:sdpa:cuda": kept}})
    assert derived["classes"]["qlora:bf16:-:sdpa:cuda"] is kept
    stored = ArchSpec.from_dict(json.loads(json.dumps(dict(resolved.arch.to_dict(), derived=derived))))
    s = PlanSettings(mode="qlora", target_modules=",".join(targets), batch_size=2, seq_len=256)
    assert lookup(stored, s).key == "qlora:bf16:-:sdpa:cuda@self_attn.k_proj,self_attn.o_proj,self_attn.q_proj,self_attn.v_proj"
    traced = trace_step(resolved, PlanSettings(mode="qlora", target_modules=targets, batch_size=2, seq_len=256))
    planned = sum(step_peak(stored, s).breakdown.values()) - CUBLAS_WORKSPACE_BYTES
    assert abs(planned / traced.peak_bytes - 1) <= 0.02


def test_build_catalog_derive_missing_traces_only_the_classes_the_entry_lacks():
    """``scripts/build_catalog.py --derive-missing``: committed classes are kept as they are, the missing one
    (here peft's default placement of LoRA) is traced."""
    from pathlib import Path

    from lora_doctor.memory.derive import catalog_settings
    from lora_doctor.memory.layer_terms import VERSION, class_key

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    sys.path.insert(0, str(scripts))
    try:
        import build_catalog
    finally:
        sys.path.pop(0)
    source = json.loads((scripts / "catalog_sources" / "HuggingFaceTB__SmolLM2-135M-Instruct.json").read_text())
    arch = ArchSpec.from_dict(build_catalog.build_entry(source)["arch"])
    missing = class_key(arch, PlanSettings(mode="lora"))
    committed = {"layers": [[1.0, 0.0, 0.0, 0.0]], "first": [0.0] * 4, "outside": [0.0] * 4, "logits": [0.0] * 4}
    keys = {class_key(arch, s) for s in catalog_settings(arch)} - {missing}
    previous = {"models": {source["id"]: {"arch": {"derived": {"version": VERSION, "layer_kinds": [0],
                                                               "classes": {k: committed for k in keys}}}}}}
    built, _ = build_catalog.build([source], {source["id"]}, previous, missing_only=True)
    classes = built["models"][source["id"]]["arch"]["derived"]["classes"]
    assert missing == "lora:bf16:-:sdpa:cuda@self_attn.q_proj,self_attn.v_proj"
    assert set(classes) == keys | {missing}
    assert all(classes[k] == committed for k in keys) and classes[missing] != committed


def test_moe_expert_adapters_are_not_borrowed_for_attention_targets():
    """Qwen3-30B-A3B's all-linear class holds peft's LoRA on the fused experts (20M parameters a layer, and their
    merged deltas); LoRA on q,k (no class of its own) must not borrow it: that added +69 GiB, twice the trace."""
    from lora_doctor.catalog import lookup as catalog_lookup
    from lora_doctor.memory.layer_terms import coarse_key, lookup

    arch = catalog_lookup("Qwen/Qwen3-30B-A3B").arch
    s = PlanSettings(mode="lora", target_modules=("q_proj", "k_proj"), seq_len=1024)
    assert any(arch.derived["classes"][coarse_key(s)]["trainable"])   # the all-linear class adapts the experts
    borrowed = lookup(arch, s)
    assert borrowed is None or (borrowed.key != coarse_key(s) and borrowed.extra_trainable() == 0)
    with_experts = lora_doctor.plan("Qwen/Qwen3-30B-A3B", target_modules="all-linear", seq_len=1024)
    attention = lora_doctor.plan("Qwen/Qwen3-30B-A3B", target_modules="q_proj,k_proj", seq_len=1024)
    assert attention.trainable_params < with_experts.trainable_params / 10
