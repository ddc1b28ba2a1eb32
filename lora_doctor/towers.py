"""The non-language towers of a multimodal model, as plain data (no torch).

A vision-language model is a vision encoder (a ViT over image patches), a projector that maps its
output into the language model's embedding space, and the language model; a speech model such as
Whisper is an audio encoder (a conv front-end and a transformer over mel frames) and a text decoder
that cross-attends to it. :class:`TowerSpec` records what the planner needs about each tower; the
language model stays described by the :class:`~lora_doctor.arch.ArchSpec` fields.

Where the towers sit in each supported architecture (module attribute names in transformers 5) is
the table :data:`TOWER_LAYOUTS`; :mod:`lora_doctor.introspect_towers` reads it on a meta model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

ROLES = ("vision", "projector", "audio")


@dataclass(frozen=True)
class TowerSpec:
    """One tower: where it is, how big, and the shape fields its activations need."""

    role: str                   # "vision" | "projector" | "audio"
    path: str                   # module path prefix, e.g. "model.vision_tower"
    params: int
    linear_params: int = 0      # in nn.Linear layers (what bitsandbytes quantizes and LoRA wraps)
    hidden_size: int = 0
    num_layers: int = 0
    num_heads: int = 0
    intermediate_size: int = 0
    norm: str = "layer"         # "layer" | "rms"
    mlp: str = "plain"          # "plain" | "gated"
    hidden_act: str = "gelu"
    patch_size: int = 0
    image_size: int = 0         # the side the processor resizes to (fixed-size towers); 0 = dynamic
    merge_size: int = 1         # Qwen2-VL: 2x2 patches merged into one language-model token
    tokens_per_image: int = 0   # language-model tokens per image when fixed; 0 = from the image size
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TowerSpec":
        return cls(**data)


@dataclass(frozen=True)
class TowerLayout:
    """Attribute names of the towers inside ``model.model`` (or ``model``) for one model_type."""

    vision: str | None = None      # vision encoder attribute
    projector: str | None = None   # projector attribute (None: inside the vision tower, e.g. Qwen's merger)
    audio: str | None = None       # audio encoder attribute
    vision_config: str = "vision_config"   # config field holding the vision tower's settings
    inner_projector: str | None = None     # projector path relative to the vision tower (Qwen: "merger")
    tokens: str = "llava"          # how images become tokens: a key of lora_doctor.inputs.IMAGE_TOKEN_RULES
    auto_class: str = "AutoModelForImageTextToText"


TOWER_LAYOUTS: dict[str, TowerLayout] = {
    "llava": TowerLayout(vision="vision_tower", projector="multi_modal_projector", tokens="llava"),
    "gemma3": TowerLayout(vision="vision_tower", projector="multi_modal_projector", tokens="gemma3"),
    "qwen2_vl": TowerLayout(vision="visual", inner_projector="merger", tokens="qwen2_vl"),
    "qwen2_5_vl": TowerLayout(vision="visual", inner_projector="merger", tokens="qwen2_vl"),
    "mllama": TowerLayout(vision="vision_model", projector="multi_modal_projector", tokens="mllama"),
    "idefics3": TowerLayout(vision="vision_model", projector="connector", tokens="idefics3"),
    "smolvlm": TowerLayout(vision="vision_model", projector="connector", tokens="idefics3"),
    "whisper": TowerLayout(audio="encoder", vision_config="", tokens="audio",
                           auto_class="AutoModelForSpeechSeq2Seq"),
}


def tower(towers: "tuple[TowerSpec, ...]", role: str) -> TowerSpec | None:
    """The tower with ``role``, or None."""
    return next((t for t in towers if t.role == role), None)
