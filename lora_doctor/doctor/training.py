"""Will anything train: trainable parameters, frozen adapters, checkpointing with frozen inputs (pure)."""

from __future__ import annotations

from ..findings import Finding
from .adapters import ModelFacts
from .registry import finding
from .settings import LoraSettings, TrainingSettings


def check_trainable(facts: ModelFacts, s: LoraSettings) -> list[Finding]:
    if not facts.trainable:
        fix = ("Load the adapter with PeftModel.from_pretrained(base, path, is_trainable=True), or create it with "
               "get_peft_model (inference_mode=False)." if facts.is_peft else
               "Wrap the model with get_peft_model(model, lora_config) before training.")
        return [finding("no-trainable-params", "no parameter requires grad: the optimizer has nothing to update and "
                        "the Trainer fails (or silently trains nothing).", fix)]
    frozen = sorted({f.module for f in facts.adapters if not f.a_trainable or not f.b_trainable})
    if frozen and s.init_lora_weights != "mica":   # MiCA freezes B by design
        return [finding("adapter-frozen", f"{len(frozen)} adapted layers have lora_A / lora_B that do not require grad "
                        f"(e.g. {frozen[0]}): they will not train.", "Make sure the adapter is active and trainable: "
                        "model.set_adapter(name) or load with is_trainable=True; do not freeze parameters after "
                        "get_peft_model.", modules=frozen)]
    return []


def check_checkpointing(t: TrainingSettings, facts: ModelFacts | None, auto_hook: bool) -> list[Finding]:
    """Reentrant checkpointing recomputes each block from inputs that must require grad, or nothing below it does.

    ``auto_hook``: enabling checkpointing on this model calls ``enable_input_require_grads()`` by itself (recent
    transformers do for models fed ``input_ids``), so only a model that already runs reentrant checkpointing
    without the hook, or a stack that does not add it, is at risk.
    """
    requested = t.gradient_checkpointing and t.use_reentrant is True
    fix = ("Call model.enable_input_require_grads() before training, or use non-reentrant checkpointing: "
           "gradient_checkpointing_kwargs={'use_reentrant': False}.")
    if facts is None:
        if not requested or auto_hook:
            return []
        return [finding("checkpointing-frozen-inputs", "gradient checkpointing with use_reentrant=True and frozen "
                        "embeddings: the checkpointed blocks' inputs do not require grad, so the adapters inside get "
                        "no gradient, unless enable_input_require_grads() is called (prepare_model_for_kbit_training "
                        "does it, get_peft_model only when checkpointing was enabled first).", fix,
                        severity="warning")]
    running = facts.checkpointing and facts.checkpointing_reentrant is True
    will_run = requested and not facts.checkpointing and not auto_hook
    if not (running or will_run) or facts.embeddings_trainable or facts.input_grads_hook:
        return []
    return [finding("checkpointing-frozen-inputs", "reentrant gradient checkpointing with frozen embeddings and no "
                    "enable_input_require_grads() hook: the checkpointed blocks' inputs do not require grad, so the "
                    "adapters inside them get no gradient.", fix)]
