"""One forward and backward on a tiny synthetic batch: does every trainable parameter get a finite gradient?

A user's PeftModel is used as given (its gradients and train/eval mode are restored afterwards). From a
config, or a plain model plus a LoraConfig, a real copy with random weights is built and wrapped with
``get_peft_model``, but only below ``max_params`` parameters: the dry run is a CPU-sized proof, not a
benchmark. When training_args ask for gradient checkpointing, the built copy enables it after
``get_peft_model``, the order the Trainer uses, so the frozen-input trap shows up as missing gradients.
"""

from __future__ import annotations

import copy
from typing import Any

from ..findings import Finding
from ..models import ResolvedModel
from .registry import finding
from .settings import LoraSettings, TrainingSettings

DEFAULT_MAX_PARAMS = 100_000_000
BATCH, SEQ = 2, 8


def _enable_checkpointing(model: Any, t: TrainingSettings) -> None:
    kwargs = {"use_reentrant": t.use_reentrant} if t.use_reentrant is not None else None
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable(kwargs)


def build_trainable(resolved: ResolvedModel, s: LoraSettings, t: TrainingSettings,
                    max_params: int = DEFAULT_MAX_PARAMS) -> tuple[Any, str | None]:
    """The model to run (or None) and why not. Never downloads; random weights only."""
    module = resolved.module
    if module is not None and any(p.is_meta for p in module.parameters()):
        return None, "the model is on the meta device"
    if module is not None and hasattr(module, "peft_config"):
        return module, None
    if resolved.arch.total_params > max_params:
        return None, (f"{resolved.arch.total_params / 1e6:.0f}M parameters is above the dry run's CPU limit of "
                      f"{max_params / 1e6:.0f}M; pass a loaded PeftModel to run it on your hardware")
    from peft import get_peft_model

    if module is not None:
        base = copy.deepcopy(module)
    else:
        import transformers

        from ..introspect import auto_class_for

        config = resolved.config()
        base = getattr(transformers, auto_class_for(config)).from_config(config)
    model = get_peft_model(base, s.to_peft())
    if t.gradient_checkpointing:
        _enable_checkpointing(model.get_base_model(), t)
    return model, None


def probe_ids(model: Any, batch: int = BATCH, seq: int = SEQ) -> Any:
    """Random token ids (seeded) inside the input embedding's rows, on the model's device."""
    import torch
    import torch.nn as nn

    emb = model.get_input_embeddings()
    rows = next((m.num_embeddings for m in emb.modules() if isinstance(m, nn.Embedding)), None)
    rows = rows or int(getattr(emb, "weight").shape[0])
    ids = torch.randint(0, rows, (batch, seq), generator=torch.Generator().manual_seed(0))
    return ids.to(next(model.parameters()).device)


def _forward_loss(model: Any) -> Any:
    import torch

    ids = probe_ids(model)
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    loss = getattr(out, "loss", None)
    return loss if loss is not None else out.logits.float().mean()


def run_dry_run(model: Any) -> list[Finding]:
    """Forward + backward once; findings about the gradients. Restores grads and train/eval mode."""
    import torch

    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        return []   # no-trainable-params already says it
    saved = {n: p.grad for n, p in trainable.items()}
    was_training = model.training
    for p in trainable.values():
        p.grad = None
    called: set[str] = set()
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: called.add(name))
             for name, m in model.named_modules() if hasattr(m, "lora_A")]
    try:
        model.train()
        loss = _forward_loss(model)
        if not loss.requires_grad:
            return [finding("dry-run-no-grad", "the loss does not require grad: no trainable parameter is on its "
                            "path (often reentrant checkpointing with frozen inputs).",
                            "Call model.enable_input_require_grads() or use gradient_checkpointing_kwargs="
                            "{'use_reentrant': False}; check that the adapters are active.",
                            parameters=sorted(trainable))]
        loss.backward()
        grads = {n: p.grad for n, p in trainable.items()}
    except Exception as exc:  # the point of the dry run is to surface any failure as a finding
        return [finding("dry-run-failed", f"forward/backward on a {BATCH}x{SEQ} synthetic batch raised "
                        f"{type(exc).__name__}: {exc}", "Fix the error above before training; it will happen on "
                        "the first step.", exception=type(exc).__name__)]
    finally:
        for h in hooks:
            h.remove()
        for n, p in trainable.items():
            p.grad = saved[n]
        model.train(was_training)
    missing = sorted(n for n, g in grads.items() if g is None)
    bad = sorted(n for n, g in grads.items() if g is not None and not bool(torch.isfinite(g).all()))
    out = []
    if missing:
        out.append(_no_grad(missing, len(grads), called))
    if not bool(torch.isfinite(loss.detach()).all()) or bad:
        out.append(finding("dry-run-non-finite", f"non-finite loss ({float(loss.detach()):.4g}) or gradients "
                           f"({len(bad)} parameters, e.g. {bad[0] if bad else '-'}).", "Check the dtypes (fp16 "
                           "overflow), the scale (lora_alpha / r) and the inputs.", parameters=bad))
    if not out and all(g is not None and not bool(g.any()) for g in grads.values()):
        out.append(finding("dry-run-zero-grad", "every gradient is exactly zero: the adapters cannot move "
                           "(for example A and B both initialized to zero).", "Re-create the adapter with "
                           "init_lora_weights=True.", parameters=len(grads)))
    if not out:
        out.append(finding("dry-run-passed", f"one forward and backward on a {BATCH}x{SEQ} synthetic batch: all "
                           f"{len(grads)} trainable parameters got finite gradients (loss {float(loss.detach()):.3f}).",
                           "Nothing to fix.", parameters=len(grads), loss=float(loss.detach())))
    return out


def _no_grad(missing: list[str], total: int, called: set[str]) -> Finding:
    """Why parameters got no gradient: an adapted layer whose forward never ran (the model reads its weight
    directly, as Mamba's mixer reads ``dt_proj.weight``, or runs it only on longer inputs) never adds LoRA's
    delta; otherwise the output is cut off from the loss (an index, a detached path) or checkpointing froze it."""
    layers = {n.split(".lora_", 1)[0] for n in missing if ".lora_" in n}
    skipped = sorted(layers - called)
    message = f"{len(missing)} of {total} trainable parameters got no gradient (e.g. {missing[0]}): they never train."
    if not skipped:
        return finding("dry-run-no-grad", message, "Check gradient checkpointing (enable_input_require_grads) and "
                       "that these modules are on the forward path.", parameters=missing)
    short = sorted({n.rsplit(".", 1)[-1] for n in skipped})
    return finding("dry-run-no-grad", f"{message} The forward of {len(skipped)} adapted layers ({', '.join(short)}) "
                   f"never ran on a {BATCH}x{SEQ} batch: the model reads their weight directly (Mamba's mixer reads "
                   "dt_proj.weight) or calls them only for longer inputs, so LoRA's delta never reaches the loss.",
                   f"Add {short} to the LoraConfig's exclude_modules (or target other layers); if these layers "
                   "run only for longer inputs, check them on a real batch.", parameters=missing, layers=short)


def dry_run(resolved: ResolvedModel, s: LoraSettings, t: TrainingSettings,
            max_params: int = DEFAULT_MAX_PARAMS) -> list[Finding]:
    try:
        model, why = build_trainable(resolved, s, t, max_params)
    except Exception as exc:
        model, why = None, f"building the model failed: {type(exc).__name__}: {exc}"
    if model is None:
        return [finding("dry-run-skipped", f"dry run skipped: {why}.", "Pass a loaded model (PeftModel) to "
                        "diagnose(..., dry_run=True).", reason=why)]
    return run_dry_run(model)
