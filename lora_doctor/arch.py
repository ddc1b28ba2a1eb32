"""What the planner needs to know about a model, as plain data (no torch).

An :class:`ArchSpec` is derived from a real model built on the ``meta`` device
(:mod:`lora_doctor.introspect`) and cached in the offline catalog, so planning a catalog model
never imports torch. Every parameter of the model lands in exactly one bucket:
``linear`` (nn.Linear and its subclasses / GPT-2 Conv1D, the layers LoRA wraps; bitsandbytes quantizes
only those marked ``quantizable``),
``embedding`` (token and position embeddings, and an untied output head), ``expert`` (MoE expert
weights stored as 3-D parameters), or ``other`` (norms, biases of non-linear modules, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .towers import TowerSpec


@dataclass(frozen=True)
class LinearFamily:
    """Linear layers sharing a name suffix and shape, e.g. the 32 ``q_proj`` of a Llama."""

    name: str                 # last component of the module path, what target_modules matches
    in_features: int
    out_features: int
    count: int
    bias: bool
    kind: str = "linear"      # "linear" | "conv1d" (GPT-2, weight stored transposed)
    scope: str = "decoder"    # "decoder" | "encoder" | "head" | "vision" | "projector" | "audio" | "cross" | "other"
    example: str = ""         # one full module path, for messages
    # Whether transformers' bitsandbytes integration converts it to 4-bit: exact nn.Linear or Conv1D only
    # (``replace_with_bnb_linear``); a subclass such as Falcon's FalconLinear stays in the load dtype.
    # Written only when False, so a catalog entry without it means True: right for every exact nn.Linear.
    quantizable: bool = True
    module_class: str = ""    # the class that escapes quantization (FalconLinear), for messages; "" otherwise

    def to_dict(self) -> dict:
        """The fields, without ``quantizable`` / ``module_class`` at their defaults (the catalog predates them)."""
        d = asdict(self)
        for key in _OMITTED_AT_DEFAULT:
            if d[key] == _FAMILY_DEFAULTS[key]:
                del d[key]
        return d

    @property
    def weight_params(self) -> int:
        return self.in_features * self.out_features * self.count

    @property
    def params(self) -> int:
        return self.weight_params + (self.out_features * self.count if self.bias else 0)


_OMITTED_AT_DEFAULT = ("quantizable", "module_class")
_FAMILY_DEFAULTS = {f.name: f.default for f in fields(LinearFamily)}


@dataclass(frozen=True)
class ArchSpec:
    """Architecture summary: parameter buckets, linear families and the shape fields activations need."""

    model_type: str
    architecture: str
    total_params: int
    linear_families: tuple[LinearFamily, ...]
    embedding_params: int          # input token + position embeddings (not the head)
    head_params: int               # output head weight when untied; 0 when tied to the embeddings
    other_params: int
    expert_params: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tied_embeddings: bool
    block: str                     # activation recipe key, see lora_doctor.memory.activations
    default_targets: tuple[str, ...] = ()
    num_experts: int = 0
    experts_per_token: int = 0
    extra: dict = field(default_factory=dict)
    towers: tuple[TowerSpec, ...] = ()   # vision / audio encoders and the projector (lora_doctor.towers)
    buffer_bytes: int = field(default=0, compare=False)  # registered buffers (rope tables, causal-mask buffers), in their own dtypes
    # elements of the floating buffers the model makes in the default dtype (GPT-1's causal mask, MiniMax's decay
    # tables): counted in buffer_bytes at fp32, loaded in the load dtype like the parameters
    load_dtype_buffer_params: int = field(default=0, compare=False)
    # Trace-derived corrections to the activation recipes (lora_doctor.memory.layer_terms);
    # empty = recipes only. Not part of equality: a plan may fill it lazily.
    derived: dict = field(default_factory=dict, compare=False)

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the position embeddings cover (None when the config does not say)."""
        value = self.extra.get("max_position_embeddings") or self.extra.get("n_positions")
        return int(value) if value else None

    @property
    def linear_params(self) -> int:
        """Parameters in linear layers, excluding an output head that is tied to the embeddings."""
        return sum(f.params for f in self.linear_families if not (f.scope == "head" and self.tied_embeddings))

    def families(self, scope: str | None = None) -> list[LinearFamily]:
        return [f for f in self.linear_families if scope is None or f.scope == scope]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["linear_families"] = [f.to_dict() for f in self.linear_families]
        d["default_targets"] = list(self.default_targets)
        d["towers"] = [t.to_dict() for t in self.towers]
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "ArchSpec":
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["linear_families"] = tuple(LinearFamily(**f) for f in data["linear_families"])
        kwargs["default_targets"] = tuple(data.get("default_targets", ()))
        kwargs["towers"] = tuple(TowerSpec.from_dict(t) for t in data.get("towers", ()))
        return cls(**kwargs)
