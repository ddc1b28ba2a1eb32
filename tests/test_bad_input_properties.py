"""Property-based tests (hypothesis) of the input edges: the GPU parser, the config loader, ``plan()``'s
arguments and the CLI never raise anything but LoraDoctorError (the CLI: exit 2, one line, no traceback);
the peak never decreases as batch or sequence grows; the max batch / sequence really fit when re-planned.
Sized to run in well under a minute (in-process CLI calls, catalog models, few examples each)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lora_doctor as ld
from lora_doctor.cli import main
from lora_doctor.config_loader import BOUNDS, parse_config, validate_config
from lora_doctor.errors import InvalidConfigError, LoraDoctorError
from lora_doctor.gpus import MIN_GPU_BYTES, known_gpu_names, parse_gpu
from lora_doctor.plan_types import MODES
from lora_doctor.strict_json import dumps

FAST = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])
MODELS = st.sampled_from(["gpt2", "meta-llama/Llama-2-7b-hf", "Qwen/Qwen2.5-0.5B", "microsoft/Phi-3-mini-4k-instruct",
                          "mistralai/Mixtral-8x7B-v0.1", "google/gemma-2-2b", "facebook/opt-125m"])
ANY = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(), st.text(max_size=12),
                st.lists(st.integers(), max_size=2), st.just({}))
TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 512}

GPU_TEXT = st.from_regex(r"\s?(\d{1,3}\s?[xX*]\s?)?(\d{0,6}(\.\d{0,3})?)\s?(GB|GiB|G|MB|MiB|B|TB|GBd|Q)?\s?",
                         fullmatch=True)


@FAST
@given(st.one_of(ANY, GPU_TEXT, st.sampled_from(known_gpu_names())))
def test_gpu_parser_returns_a_gpu_or_a_lora_doctor_error(spec):
    try:
        gpu = parse_gpu(spec)
    except LoraDoctorError:
        return
    assert gpu is None or (gpu.memory_bytes >= MIN_GPU_BYTES and gpu.count >= 1)


@FAST
@given(st.integers(1, 4096), st.sampled_from(known_gpu_names() + ["24GB", "80GiB", "4090"]), st.sampled_from(["x", " x ", "*"]))
def test_gpu_count_prefix(count, name, sep):
    gpu = parse_gpu(f"{count}{sep}{name}")
    assert gpu.count == count and gpu.memory_bytes == parse_gpu(name).memory_bytes


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)


@FAST
@given(st.one_of(st.binary(max_size=200), JSON.map(lambda v: json.dumps(v).encode())))
def test_config_loader_parses_or_says_why(data):
    try:
        fields = parse_config(data)
    except InvalidConfigError:
        return
    assert isinstance(fields, dict) and isinstance(fields["model_type"], str)


@FAST
@given(st.sampled_from(sorted(BOUNDS)), st.one_of(ANY, st.integers(-(10**15), 10**15)))
def test_config_sizes_are_bounded_fast_and_named(field, value):
    start = time.perf_counter()
    try:
        validate_config(dict(TINY, **{field: value}))
    except InvalidConfigError as exc:
        assert field in str(exc) or "parameters" in str(exc)
    else:
        low, high = BOUNDS[field]
        parts = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for v in parts:  # per-layer lists and per-part dicts hold sizes too
            assert v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and v == int(v)
                                 and low <= v <= high)
    assert time.perf_counter() - start < 1.0


@settings(deadline=None, max_examples=4)  # each example builds a meta model (torch): few examples
@given(st.dictionaries(st.sampled_from(["hidden_size", "num_attention_heads", "num_key_value_heads", "vocab_size",
                                        "intermediate_size", "num_hidden_layers", "max_position_embeddings",
                                        "head_dim"]),
                       st.one_of(st.integers(-2, 96), st.none(), st.floats(0, 10)), max_size=3))
def test_plan_of_any_config_dict_is_a_plan_or_a_lora_doctor_error(changes):
    try:
        plan = ld.plan(dict(TINY, **changes), gpu="24GB")
    except LoraDoctorError:
        return
    assert plan.device_peak_bytes > 0


PLAN_KW = st.fixed_dictionaries({}, optional={
    "mode": st.one_of(st.sampled_from(MODES), ANY), "gpu": st.one_of(GPU_TEXT, ANY, st.just("T4")),
    "batch_size": st.one_of(st.integers(1, 64), ANY), "seq_len": st.one_of(st.integers(1, 4096), ANY),
    "r": st.one_of(st.integers(1, 256), ANY), "lora_alpha": st.one_of(st.floats(0, 512), ANY),
    "lora_dropout": st.one_of(st.floats(0, 1), ANY), "target_modules": st.one_of(ANY, st.just("all-linear")),
    "dtype": st.one_of(st.sampled_from(["bf16", "fp16", "fp32"]), ANY), "mixed_precision": ANY,
    "optim": st.one_of(st.sampled_from(["adamw_torch", "adamw_bnb_8bit", "sgd"]), ANY),
    "gradient_checkpointing": ANY, "attn_implementation": st.one_of(st.just("eager"), ANY),
    "quant_type": ANY, "double_quant": ANY, "use_rslora": ANY, "device": ANY,
    "num_gpus": ANY, "strategy": ANY, "offload": ANY, "trainer": ANY,
})


@FAST
@given(MODELS, PLAN_KW)
def test_plan_arguments_give_a_plan_or_a_lora_doctor_error(model, kw):
    try:
        plan = ld.plan(model, **kw)
    except LoraDoctorError:
        return
    json.loads(dumps(plan.to_dict()), parse_constant=lambda c: pytest.fail(f"{c} in a plan"))
    assert plan.peak_bytes > 0


SETTINGS = st.fixed_dictionaries({"mode": st.sampled_from(MODES), "gradient_checkpointing": st.booleans(),
                                  "attn_implementation": st.sampled_from(["sdpa", "eager"]),
                                  "dtype": st.sampled_from(["bf16", "fp32"])})


@settings(deadline=None, max_examples=40)
@given(MODELS, SETTINGS, st.integers(1, 32), st.integers(0, 32), st.integers(1, 4096), st.integers(0, 4096))
def test_peak_never_decreases_with_batch_or_seq_len(model, kw, batch, more_batch, seq, more_seq):
    base = ld.plan(model, batch_size=batch, seq_len=seq, **kw)
    bigger_batch = ld.plan(model, batch_size=batch + more_batch, seq_len=seq, **kw)
    longer = ld.plan(model, batch_size=batch, seq_len=seq + more_seq, **kw)
    for other in (bigger_batch, longer):
        assert other.peak_bytes >= base.peak_bytes and other.device_peak_bytes >= base.device_peak_bytes


@settings(deadline=None, max_examples=20)
@given(MODELS, SETTINGS, st.sampled_from(["T4", "RTX4090", "A100-80GB", "H200"]), st.integers(1, 8),
       st.sampled_from([128, 512, 2048]))
def test_max_batch_and_seq_len_really_fit(model, kw, gpu, batch, seq):
    plan = ld.plan(model, gpu=gpu, batch_size=batch, seq_len=seq, **kw)
    cap = ld.plan(model, **kw)  # the model's position limit caps the sequence search
    limit = plan.max_seq_len if any("capped at the model's max_position_embeddings" in n for n in plan.notes) else None
    if plan.max_batch_size:
        assert ld.plan(model, gpu=gpu, batch_size=plan.max_batch_size, seq_len=seq, **kw).fits
        if plan.max_batch_size < 1 << 20:
            assert not ld.plan(model, gpu=gpu, batch_size=plan.max_batch_size + 1, seq_len=seq, **kw).fits
    else:
        assert not ld.plan(model, gpu=gpu, batch_size=1, seq_len=seq, **kw).fits
    if plan.max_seq_len:
        assert ld.plan(model, gpu=gpu, batch_size=batch, seq_len=plan.max_seq_len, **kw).fits
        if plan.max_seq_len != limit and plan.max_seq_len < 1 << 20:
            assert not ld.plan(model, gpu=gpu, batch_size=batch, seq_len=plan.max_seq_len + 1, **kw).fits
    assert cap.peak_bytes > 0


TOKENS = st.sampled_from(["plan", "check", "modules", "catalog", "--gpu", "--mode", "--batch-size", "--seq-len", "--r",
                          "--alpha", "--dropout", "--target-modules", "--json", "--dtype", "--optim", "-v", "gpt2",
                          "full", "lora", "qlora", "24GB", "nan", "-1", "0", "1.5", "x", ",", "all-linear", "/dev/null",
                          "8xH100", "--alpha=inf", "--gpu=.", "facebook/opt-125m", "--regex", "[", "~nouser/x"])


@settings(deadline=None, max_examples=50, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(st.one_of(TOKENS, st.text(max_size=10)), max_size=7))
def test_cli_bad_input_is_exit_2_and_one_line(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    assert code in (0, 1, 2)
    assert "Traceback" not in captured.err + captured.out
    if code == 2 and captured.err and "-v" not in argv:  # -v adds the third-party debug stream
        assert len(captured.err.strip().splitlines()) == 1, captured.err
