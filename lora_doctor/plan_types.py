"""The result type every planning engine returns. Pure data: no torch, no rich."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .gpus import GpuSpec

MODES = ("full", "lora", "qlora")

# Breakdown terms, in display order. Tensor terms add up to ``peak_bytes``; the device terms are
# added on top for ``device_peak_bytes``.
TENSOR_TERMS = (
    "weights",             # base model weights as stored (4-bit packed linears + unquantized rest for QLoRA)
    "quantization_state",  # NF4 absmax (+ double-quantization constants)
    "adapters",            # LoRA A/B matrices
    "gradients",           # gradients of trainable parameters alive at the peak
    "optimizer_states",    # e.g. AdamW exp_avg + exp_avg_sq
    "activations",         # tensors saved for backward, alive at the peak
    "logits_and_loss",     # [batch, seq, vocab] logits, fp32 upcast, log-softmax and their gradients
    "temporaries",         # the largest transient set at the peak (4-bit dequantization, optimizer scratch, ...)
    "parallel_buffers",    # several GPUs: DDP gradient buckets, FSDP/ZeRO gathered parameters and reduce buffers
)
DEVICE_TERMS = ("cuda_context", "allocator_reserve", "vllm_reserve")   # vllm_reserve: GRPO vLLM colocate


TRAINERS = ("hf", "sft", "dpo", "grpo")
STRATEGIES = ("ddp", "fsdp", "fsdp_grad_op", "zero1", "zero2", "zero3")
OFFLOADS = ("optimizer", "all")


@dataclass(frozen=True)
class WorkloadSettings:
    """What one optimizer step of the trainer does (the trainer axis; lora_doctor.workloads).

    ``trainer="hf"`` is a plain ``transformers.Trainer`` step. TRL trainers (``"sft"``, ``"dpo"``,
    ``"grpo"``) change the forward (fused LM head, chosen+rejected pairs, a reference forward, a
    generation phase) and are modelled from the installed TRL version's defaults.
    """

    trainer: str = "hf"
    fused_lm_head: bool | None = None     # None = the trainer's default in the installed TRL
    options: tuple[tuple[str, Any], ...] = ()   # trainer-specific settings, sorted (name, value) pairs

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


@dataclass(frozen=True)
class ParallelSettings:
    """How many GPUs hold one copy of the run and how the model states are split (lora_doctor.parallel)."""

    num_gpus: int = 1
    strategy: str | None = None           # None on one GPU; "ddp" is the default when num_gpus > 1
    offload: str | None = None            # None, "optimizer" or "all" (ZeRO-Offload / FSDP CPU offload)
    options: tuple[tuple[str, Any], ...] = ()   # strategy-specific settings (bucket sizes, ...), sorted pairs

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


@dataclass(frozen=True)
class InputSettings:
    """Non-text inputs per sample (lora_doctor.inputs): images for vision-language models, audio for speech."""

    images_per_sample: int = 0
    image_size: tuple[int, int] | None = None    # (height, width) in pixels, before the processor resizes
    image_tokens: int | None = None              # tokens per image when the user knows the count
    audio_seconds: float | None = None
    min_pixels: int | None = None                # Qwen2-VL-style processors' resize bounds (None: their defaults)
    max_pixels: int | None = None


@dataclass(frozen=True)
class PlanSettings:
    """Every input of a plan, normalized (what ``lora_doctor.plan`` was called with)."""

    mode: str = "lora"
    batch_size: int = 1
    seq_len: int = 512
    r: int = 16
    lora_alpha: float = 32
    target_modules: Any = None           # None (peft's default), "all-linear", or a list of names
    use_rslora: bool = False
    lora_dropout: float = 0.0            # peft's default; > 0 keeps a mask and a dropped copy per adapter
    dtype: str = "bf16"                  # dtype the base weights are loaded in
    mixed_precision: str | None = None   # Trainer bf16/fp16 autocast, None = off
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    attn_implementation: str = "sdpa"
    quant_type: str = "nf4"
    double_quant: bool = True
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    parallel: ParallelSettings = field(default_factory=ParallelSettings)
    inputs: InputSettings = field(default_factory=InputSettings)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MemoryPlan:
    """Predicted peak memory of one training step, term by term, and how it relates to a GPU."""

    model: str
    settings: PlanSettings
    breakdown: dict[str, int]              # TENSOR_TERMS + DEVICE_TERMS, bytes
    peak_bytes: int                        # tensor peak: what torch.cuda.max_memory_allocated reports
    device_peak_bytes: int                 # + CUDA context + allocator reserve: what nvidia-smi shows
    total_params: int
    trainable_params: int
    engine: str = "analytic"
    peak_phase: str = "backward_start"     # the analytic phase that won: details["phases"] has them all
    gpu: GpuSpec | None = None
    fits: bool | None = None
    headroom_bytes: int | None = None      # gpu memory - device peak (negative: short by that much)
    max_batch_size: int | None = None      # largest micro-batch that fits at this seq_len
    max_seq_len: int | None = None         # largest sequence length that fits at this batch size
    lora_scale: float | None = None        # alpha / r (alpha / sqrt(r) with rsLoRA)
    targets: list[str] = field(default_factory=list)   # resolved target family names
    notes: list[str] = field(default_factory=list)     # assumptions and caveats, human-readable
    recommendation: str | None = None
    host_peak_bytes: int | None = None     # CPU RAM per node the run needs (offload), None when not modelled
    details: dict[str, Any] = field(default_factory=dict)  # engine-specific (phases, top tensors, ...)

    @property
    def mode(self) -> str:
        return self.settings.mode

    @property
    def largest_term(self) -> str:
        return max(TENSOR_TERMS, key=lambda t: self.breakdown.get(t, 0))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["settings"] = self.settings.to_dict()
        d["gpu"] = self.gpu.to_dict() if self.gpu else None
        d["mode"] = self.mode
        return d
