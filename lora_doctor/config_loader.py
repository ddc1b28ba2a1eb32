"""The one validated loader of model configs: every config.json, dict or ``PretrainedConfig`` passes here
before anything is built from it.

It reads a file as bytes (a regular file, at most 64 MiB), decodes UTF-8, parses JSON (no NaN,
nesting at most 64 deep), requires an object with a ``model_type``, and checks every size
field (layers, hidden, vocabulary, heads, intermediate, experts, positions, ...) against generous
bounds, in every nested sub-config, so an absurd config is one clear error in milliseconds instead of
minutes of building millions of modules. Configs that name custom code (``auto_map``) are planned from
their architecture fields when transformers knows the ``model_type``; otherwise they are an error.
Nothing here runs code from a config, and nothing imports torch.
"""

from __future__ import annotations

import json
import math
import stat
from pathlib import Path
from typing import Any, Iterator

from .errors import InvalidConfigError, ModelNotFoundError

MAX_CONFIG_BYTES = 64 * 1024**2     # real config.json files are KBs; the largest (label maps) ~ a few MB
MAX_DEPTH = 64                      # real configs nest 2-3 levels (text_config.rope_scaling)
MAX_PARAMS = 10**13                 # 10 trillion; the largest published models have ~2e12
MAX_EXPERT_BLOCKS = 1 << 21         # layers x experts; DeepSeek-V3 61 x 256, Doge 32 x 16384

# field name -> (minimum, maximum), for every nested config. The bounds are far beyond real models:
# the deepest public LLMs have ~130 layers, the widest hidden size is 18432 (PaLM), the largest
# vocabularies ~262k (Gemma 3), the most experts 16384 (Doge's tiny ones), the longest contexts 10M (Llama 4).
# tests/test_bad_input.py checks every transformers config class's defaults against them.
_LAYERS = (0, 1024)
_WIDTH = (1, 131072)
_HEADS = (1, 4096)
_FFN = (1, 1 << 20)
_EXPERTS = (0, 1 << 16)              # Doge: 16384 tiny experts per layer
_POSITIONS = (1, 1 << 26)
BOUNDS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(("num_hidden_layers", "n_layer", "n_layers", "num_layers", "encoder_layers", "decoder_layers",
                     "num_decoder_layers", "num_encoder_layers"), _LAYERS),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "word_embed_proj_dim", "embed_dim"), _WIDTH),
    **dict.fromkeys(("head_dim", "kv_channels", "d_kv"), (0, 65536)),  # 0: derived (GLM)
    **dict.fromkeys(("vocab_size", "n_vocab"), (1, 1 << 22)),
    **dict.fromkeys(("num_attention_heads", "n_head", "num_heads", "encoder_attention_heads",
                     "decoder_attention_heads", "num_key_value_heads", "n_head_kv", "num_kv_heads",
                     "multi_query_group_num"), _HEADS),
    **dict.fromkeys(("intermediate_size", "n_inner", "ffn_dim", "d_ff", "encoder_ffn_dim", "decoder_ffn_dim",
                     "moe_intermediate_size", "shared_expert_intermediate_size", "ffn_hidden_size"), _FFN),
    **dict.fromkeys(("num_local_experts", "num_experts", "n_routed_experts", "n_shared_experts",
                     "num_experts_per_tok", "moe_num_experts"), _EXPERTS),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"), _POSITIONS),
    **dict.fromkeys(("image_size", "patch_size"), (1, 65536)),
}
# Non-size fields lora-doctor itself reads before transformers validates anything: field -> (accepts, what).
_SHAPES: dict[str, tuple[Any, str]] = {
    "architectures": (lambda v: isinstance(v, list) and all(isinstance(a, str) for a in v), "a list of class names"),
    "auto_map": (lambda v: isinstance(v, dict), "an object {auto class: module.Class}"),
    "is_encoder_decoder": (lambda v: isinstance(v, bool), "true or false"),
    "tie_word_embeddings": (lambda v: isinstance(v, bool), "true or false"),
}
_FIRST = {  # canonical size -> the field names that spell it, first found wins (for the parameter bound)
    "layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "ffn": ("intermediate_size", "n_inner", "ffn_dim", "d_ff"),
    "vocab": ("vocab_size", "n_vocab"),
    "experts": ("num_local_experts", "num_experts", "n_routed_experts"),
}


def read_config_file(path: Path) -> dict:
    """Read and validate one config.json. Raises ModelNotFoundError / InvalidConfigError with one line."""
    try:
        info = path.stat()
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read {_short(path)}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise ModelNotFoundError(f"{_short(path)} is not a regular file ({_file_kind(info.st_mode)}); "
                                 "pass a model directory or its config.json")
    if info.st_size == 0:
        raise InvalidConfigError(f"{_short(path)} is empty; pass the model's config.json")
    if info.st_size > MAX_CONFIG_BYTES:
        raise InvalidConfigError(f"{_short(path)} is {info.st_size:,} bytes, too large for a config.json "
                                 "(is it a weights file?); pass the model's config.json")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelNotFoundError(f"cannot read {_short(path)}: {exc.strerror or exc}") from None
    return parse_config(data, _short(path))


def parse_config(data: bytes | str, where: str = "config") -> dict:
    """Decode and parse config text (strict JSON), then :func:`validate_config`."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise InvalidConfigError(f"{where} is not a text config (not UTF-8 at byte {exc.start}; a weights "
                                     "file?); pass the model's config.json") from None
    try:
        fields = json.loads(data, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise InvalidConfigError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"
                                 ) from None
    except RecursionError:
        raise InvalidConfigError(f"{where} nests deeper than Python's JSON parser allows; not a model config"
                                 ) from None
    except ValueError as exc:  # _reject_constant
        raise InvalidConfigError(f"{where}: {exc}") from None
    return validate_config(fields, where)


def validate_config(fields: Any, where: str = "config") -> dict:
    """Check a config's shape and sizes before anything is built from it; returns ``fields`` unchanged."""
    if not isinstance(fields, dict):
        raise InvalidConfigError(f"{where} holds a JSON {_json_kind(fields)}, not an object of config fields; "
                                 "pass the model's config.json")
    model_type = fields.get("model_type")
    if not isinstance(model_type, str) or not model_type.strip() or len(model_type) > 100:
        shown = "no 'model_type'" if model_type is None else f"model_type {str(model_type)[:40]!r}"
        raise InvalidConfigError(f"{where} has {shown}; is it a transformers config.json?")
    problems = list(_check_tree(fields, "", 0))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise InvalidConfigError(f"{where}: {'; '.join(problems[:3])}{more}")
    return fields


def _check_tree(node: Any, prefix: str, depth: int) -> Iterator[str]:
    if depth > MAX_DEPTH:
        yield f"{prefix or 'config'} nests deeper than {MAX_DEPTH} levels"
        return
    if isinstance(node, dict):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if key in BOUNDS and value is not None:
                yield from _check_size(name, value, BOUNDS[key])
            elif key in _SHAPES and value is not None and not _SHAPES[key][0](value):
                yield f"{name} must be {_SHAPES[key][1]}, got {str(value)[:40]!r}"
            else:
                yield from _check_tree(value, name + ".", depth + 1)
        params, blocks = _size_estimate(node)
        if params > MAX_PARAMS:
            yield (f"{prefix or ''}sizes describe ~{params:.1e} parameters (over {MAX_PARAMS:.0e}); "
                   "not a real model")
        if blocks > MAX_EXPERT_BLOCKS:
            yield (f"{prefix or ''}layers x experts = {blocks:,.0f} expert blocks (over {MAX_EXPERT_BLOCKS:,}); "
                   "not a real model")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _check_tree(value, f"{prefix.rstrip('.')}[{i}].", depth + 1)
    elif isinstance(node, float) and math.isnan(node):  # +-Infinity is legitimate (Mamba-2's time_step_limit)
        yield f"{prefix.rstrip('.')} is NaN, not a number"


def _check_size(name: str, value: Any, bounds: tuple[int, int]) -> Iterator[str]:
    low, high = bounds
    if isinstance(value, dict) and len(value) <= 64:  # per-part sizes (LXMERT: {"vision": 5, ...})
        values = list(value.values())
    else:
        values = value if isinstance(value, list) and len(value) <= 4096 else [value]  # per-layer lists
    for v in values:
        if isinstance(v, float) and v.is_integer():  # 1200.0 (transformers writes some sizes as floats)
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            yield f"{name} must be an integer, got {str(v)[:40]!r}"
            return
        if not low <= v <= high:
            yield f"{name}={v:,} is outside [{low:,}, {high:,}]"
            return


def _size_estimate(node: dict) -> tuple[float, float]:
    """Rough parameters and expert blocks (modules to build) these fields describe (floats: never overflow)."""
    def first(kind: str) -> float:
        for key in _FIRST[kind]:
            v = node.get(key)
            if isinstance(v, int) and not isinstance(v, bool):
                return float(v)
        return 0.0

    layers, hidden, vocab = first("layers"), first("hidden"), first("vocab")
    ffn = first("ffn") or 4 * hidden
    experts = max(first("experts"), 1.0)
    return layers * (4 * hidden * hidden + 3 * hidden * ffn * experts) + 2 * vocab * hidden, layers * experts


def remote_code_note(fields: dict) -> str | None:
    """For a config that names custom code (``auto_map``): a note when its ``model_type`` is one transformers
    implements itself (the caller plans without the custom code), else InvalidConfigError."""
    auto_map = fields.get("auto_map")
    if not auto_map:
        return None
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    model_type = fields["model_type"]
    if model_type not in CONFIG_MAPPING_NAMES:
        raise InvalidConfigError(
            f"model_type {model_type!r} is defined only by custom code (auto_map) and lora-doctor never runs "
            "code from a config (trust_remote_code=False); plan a config whose model_type transformers knows")
    return (f"the config names custom code (auto_map); it was not run: planned as transformers' own "
            f"{model_type!r} architecture from the config fields, so custom layers may differ")


def without_remote_code(fields: dict) -> dict:
    """A copy of ``fields`` without ``auto_map``, so transformers never considers custom code."""
    return {k: v for k, v in fields.items() if k != "auto_map"}


def _reject_constant(name: str) -> Any:
    """Python's json accepts NaN / Infinity, which JSON does not. transformers writes ``Infinity`` for
    real defaults (Mamba-2's ``time_step_limit``), so only NaN is refused; sizes must be integers anyway."""
    if name == "NaN":
        raise ValueError("contains NaN, which is not a number (and not valid JSON)")
    return float(name)


def _json_kind(value: Any) -> str:
    kinds = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array"}
    return kinds.get(type(value), type(value).__name__)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a file"


def _short(path: Path | str) -> str:
    text = str(path)
    return text if len(text) <= 120 else text[:60] + "..." + text[-40:]
