"""GRPOTrainer (TRL 1.16, ``trl/trainer/grpo_trainer.py``): generation, then training on the completions.

* Generation batch: ``generation_batch_size`` sequences (default ``batch_size x steps_per_generation``,
  and ``steps_per_generation`` defaults to ``gradient_accumulation_steps``), whole groups of
  ``num_generations`` completions per prompt. ``seq_len`` is the prompt length; completions run to
  ``max_completion_length``.
* Generation with ``transformers`` ``generate`` under no_grad: gradients are freed (the previous
  optimizer step zeroed them with ``set_to_none``) and the KV cache holds
  ``generation_batch_size x (prompt + completion) x layers x 2 x kv_heads x head_dim`` in the stream
  dtype, plus the prefill's scratch and the last position's fp32 logits. With ``use_vllm=True`` in
  ``vllm_mode="colocate"`` vLLM generates instead and reserves ``vllm_gpu_memory_utilization`` of the
  GPU for itself; ``"server"`` generates on other GPUs.
* Training: ``batch_size`` rows of prompt + completion, the fused head scoring the completion tokens.
* ``beta > 0`` (default 0.0 in TRL 1.16) adds a no-grad reference forward: adapters disabled with peft,
  a ``ref_model`` copy of the weights without.
"""

from __future__ import annotations

from dataclasses import replace

from ..arch import ArchSpec
from ..errors import InvalidSettingError
from ..memory.analytic import PhaseTotals
from ..plan_types import PlanSettings
from .common import compute_bytes, finish, persistent_only, resolve_workload, training_phases

GENERATION_LOGIT_COPIES = 3   # last-position logits in fp32, their softmax and the sampling scratch


def generation_batch(s: PlanSettings, num_generations: int, gen_batch: int | None,
                     steps: int | None) -> tuple[int, str]:
    """Sequences generated at once and why (TRL needs whole groups of ``num_generations``)."""
    if gen_batch is not None:
        if gen_batch % num_generations:
            raise InvalidSettingError(f"generation_batch_size ({gen_batch}) must be divisible by num_generations "
                                      f"({num_generations}), as GRPOConfig requires")
        return gen_batch, f"generation_batch_size={gen_batch}"
    if steps is None:
        steps = 1
        while (s.batch_size * steps) % num_generations:
            steps += 1
        why = (f"steps_per_generation={steps} assumed (TRL's default is gradient_accumulation_steps; it must make "
               f"batch_size x steps a multiple of num_generations={num_generations})")
    else:
        why = f"steps_per_generation={steps}"
    size = s.batch_size * steps
    if size % num_generations:   # GRPOConfig rejects this; plan the next whole group rather than fail a search
        size += num_generations - size % num_generations
        why += (f"; batch_size x steps_per_generation is not a multiple of num_generations={num_generations}, "
                f"which GRPOConfig rejects: planned {size}")
    return size, why


def kv_cache_bytes(arch: ArchSpec, sequences: int, tokens: int, dtype_bytes: int) -> int:
    return sequences * tokens * max(arch.num_layers, 1) * 2 * arch.num_kv_heads * arch.head_dim * dtype_bytes


def grpo_totals(arch: ArchSpec, s: PlanSettings, device: str) -> PhaseTotals:
    wl = resolve_workload(s)
    groups = wl.get("num_generations")
    gen, why = generation_batch(s, groups, wl.get("generation_batch_size"), wl.get("steps_per_generation"))
    if wl.get("disable_dropout") and s.lora_dropout:
        s = replace(s, lora_dropout=0.0)
    prompt, completion = s.seq_len, wl.get("max_completion_length")
    total = prompt + completion
    notes = [f"GRPO: generates {gen} sequences at once ({why}; {gen // groups} prompts x num_generations={groups}), "
             f"prompt {prompt} + max_completion_length={completion} tokens; trains on {s.batch_size} rows of {total}"]
    # Triton devices score only the completion (labels of the prompt are -100); elsewhere every position
    scored = s.batch_size * (completion if device == "cuda" else total - 1)
    base, phases, train_notes = training_phases(arch, s, device, wl, rows=s.batch_size, seq=total,
                                                scored_tokens=scored)
    stream, _ = compute_bytes(s)
    start = phases["backward_start"]
    generation = persistent_only(start)
    if wl.get("use_vllm"):
        mode = wl.get("vllm_mode")
        notes.append(f"use_vllm (vllm_mode={mode!r}): vLLM generates"
                     + (f" and reserves vllm_gpu_memory_utilization={wl.get('vllm_gpu_memory_utilization')} of the "
                        "GPU (counted on top of the device peak)" if mode == "colocate" else " on its own GPUs"))
    else:
        kv = kv_cache_bytes(arch, gen, total - 1, stream)   # the last generated token is never cached
        # the prefill's scratch comes while the cache holds only the prompts; the last decode step holds the
        # full cache while torch.cat grows one layer's keys or values (old and new coexist), plus the logits
        prefill = (kv_cache_bytes(arch, gen, prompt, stream)
                   + gen * prompt * (3 * arch.intermediate_size + 4 * arch.hidden_size) * stream)
        last_step = kv + kv // (2 * max(arch.num_layers, 1))   # torch.cat of one layer's keys (or values)
        logits = GENERATION_LOGIT_COPIES * gen * arch.vocab_size * 4
        generation["activations"] = max(prefill, last_step)
        generation["temporaries"] = logits
        notes.append(f"generation (transformers generate): KV cache {kv / 2**30:.2f} GiB for {gen} x {total} tokens")
    ref_copy = 0
    if wl.get("beta"):
        if s.mode == "full":
            ref_copy = start["weights"] + start["quantization_state"]
            notes.append(f"beta={wl.get('beta')}: a ref_model copy of the weights ({ref_copy / 2**30:.2f} GiB)")
        else:
            notes.append(f"beta={wl.get('beta')}: reference log-probs from the model with adapters disabled (no copy)")
        reference = persistent_only(start)
        reference["activations"] = 2 * s.batch_size * total * arch.hidden_size * stream
        reference["temporaries"] = phases["backward_end"]["temporaries"]
        phases["reference_forward"] = reference
    phases = {"generation": generation, **phases}
    for bd in phases.values():
        bd["weights"] += ref_copy
    return finish(base, phases, notes + train_notes, wl)


def vllm_reserve_fraction(s: PlanSettings) -> float:
    """Fraction of the GPU vLLM colocate reserves (0 when vLLM is not colocated)."""
    options = dict(s.workload.options)
    if s.workload.trainer != "grpo" or not options.get("use_vllm") or options.get("vllm_mode", "colocate") != "colocate":
        return 0.0
    return float(options.get("vllm_gpu_memory_utilization", 0.3))
