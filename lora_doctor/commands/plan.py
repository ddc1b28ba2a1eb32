"""``lora-doctor plan``: will this run fit, term by term, for Full / LoRA / QLoRA."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidSettingError
from ..plan_types import OFFLOADS, STRATEGIES, TRAINERS
from ..strict_json import dumps

# TRL options with a value: (flag, type, help); the name is the TRL field (--max-length -> max_length).
TRL_FLAGS = (
    ("--max-length", int, "sft/dpo: TRL max_length (rows are capped at it; default 1024)"),
    ("--max-completion-length", int, "grpo: completion tokens (default 512)"),
    ("--num-generations", int, "grpo: completions per prompt (default 8)"),
    ("--generation-batch-size", int, "grpo: sequences generated at once"),
    ("--steps-per-generation", int, "grpo: micro-steps per generation (TRL: gradient_accumulation_steps)"),
    ("--beta", float, "dpo/grpo: KL coefficient (grpo > 0 adds a reference forward)"),
    ("--vllm-mode", str, "grpo: colocate or server"),
    ("--vllm-gpu-memory-utilization", float, "grpo: GPU fraction vLLM colocate reserves (default 0.3)"),
)
TRL_SWITCHES = (
    ("--packing", "sft: pack examples into rows of max_length"),
    ("--padding-free", "sft/dpo: one flattened row per batch"),
    ("--activation-offloading", "sft/dpo: saved activations to CPU"),
    ("--precompute-ref-log-probs", "dpo: reference log-probs before training (no ref_model)"),
    ("--use-vllm", "grpo: generate with vLLM"),
)

EPILOG = """\
examples:
  lora-doctor plan meta-llama/Llama-2-7b-hf --gpu 24GB
  lora-doctor plan meta-llama/Meta-Llama-3-8B --mode qlora --seq-len 4096 --gradient-checkpointing --gpu RTX3090
  lora-doctor plan Qwen/Qwen2.5-7B --target-modules all-linear --r 64 --alpha 16 --gpu A100-80GB --json
  lora-doctor plan ./checkpoints/my-model --gpu auto          (a local directory or config.json)
  lora-doctor plan meta-llama/Llama-2-70b-hf --mode full --gpu 8xA100-80GB --strategy zero3 --offload optimizer
  lora-doctor plan meta-llama/Llama-2-7b-hf --mode full --gpu 2x24GB --strategy fsdp
  lora-doctor plan meta-llama/Llama-2-7b-hf --mode full --gpu H100 --deepspeed ds_config.json --num-gpus 4
  lora-doctor plan meta-llama/Llama-2-7b-hf --gpu A100-80GB --accelerate-config ~/.cache/huggingface/accelerate/default_config.yaml
  lora-doctor plan meta-llama/Llama-3.1-8B --trainer sft --mode lora --seq-len 1024 --packing --gpu 24GB
  lora-doctor plan Qwen/Qwen2.5-7B --trainer grpo --seq-len 256 --max-completion-length 1024 --num-generations 8
  lora-doctor plan --config sft.yaml --gpu 24GB     (the YAML `trl sft --config` takes; --trainer dpo|grpo)
  lora-doctor plan Qwen/Qwen2.5-VL-7B-Instruct --images 1 --image-size 1024x768 --gpu 24GB
  lora-doctor plan Qwen/Qwen2.5-VL-7B-Instruct --images 2 --max-pixels 602112 --gpu 24GB
  lora-doctor plan openai/whisper-large-v3 --mode lora --target-modules q_proj,v_proj --seq-len 448 --gpu 24GB

Several GPUs: memory is per GPU. --gpu 8xH100 / 2x24GB sets the count (or --num-gpus); --strategy is
ddp (default), fsdp (FULL_SHARD), fsdp_grad_op (SHARD_GRAD_OP), zero1, zero2 or zero3; --offload
optimizer or all adds the CPU RAM per node. --deepspeed / --accelerate-config read all of that from
the launch config (explicit flags win).

Trainers: hf (a plain transformers Trainer, default), sft, dpo, grpo (TRL, from the installed TRL
version's defaults). For grpo, --seq-len is the prompt length.

GPU: a size (24GB, 24GiB, 80G, bytes), a name (RTX3090, 4090, T4, L4, A10G, A100-40GB, A100-80GB,
H100, H200, ...) or 'auto' (the local GPU via NVML). GB means GiB, as on GPU spec sheets. A GPU has at
least 256 MiB, so a bare 24 (bytes) or 1B is an error that asks for a unit.
Exit codes: 0 ok (and fits, when --gpu is given), 1 does not fit, 2 bad input (one line on stderr).
-v/--verbose shows third-party warnings and logs on stderr.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="predict peak GPU memory of a training run",
                       description="Predict the peak GPU memory of one training step, offline, from the "
                                   "model config alone: weights, gradients, optimizer states, activations, "
                                   "logits, quantization, CUDA context and allocator reserve.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", help="hub id (offline catalog, HF cache), local directory or config.json "
                   "(optional with --config: its model_name_or_path)")
    p.add_argument("--config", help="a `trl sft|dpo|grpo --config` YAML file (model, batch, LoRA, TRL options)")
    p.add_argument("--trainer", choices=TRAINERS, help="trainer whose step is planned (default hf; sft with --config)")
    p.add_argument("--no-fused-lm-head", action="store_true", help="TRL trainers: plan the model's own logits")
    for flag, kind, text in TRL_FLAGS:
        p.add_argument(flag, type=kind, default=None, help=text)
    for flag, text in TRL_SWITCHES:
        p.add_argument(flag, action="store_true", default=None, help=text)
    p.add_argument("--gpu", help="GPU memory or name, or 'auto'")
    p.add_argument("--mode", choices=("full", "lora", "qlora"), help="plan one mode (default: all three)")
    p.add_argument("--batch-size", type=int, default=None, help="per-device micro-batch (default 1; the YAML's with --config)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per sequence (default 512; max_length with "
                   "--config; the prompt length for grpo)")
    p.add_argument("--r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--alpha", type=float, default=32, help="lora_alpha (default 32)")
    p.add_argument("--target-modules", help="comma-separated names, a regex, or all-linear (default: peft's)")
    p.add_argument("--use-rslora", action="store_true", help="rank-stabilized LoRA scaling alpha/sqrt(r)")
    p.add_argument("--dropout", type=float, default=0.0, help="lora_dropout (default 0.0, peft's default)")
    p.add_argument("--dtype", default="bf16", help="dtype the weights are loaded in: bf16 (default), fp16, fp32")
    p.add_argument("--mixed-precision", choices=("bf16", "fp16"), help="Trainer autocast (bf16=True / fp16=True)")
    p.add_argument("--optim", default="adamw_torch", help="Trainer optim name (default adamw_torch)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="enable gradient checkpointing")
    p.add_argument("--attn", default="sdpa", choices=("sdpa", "eager", "flash_attention_2"),
                   help="attention implementation (default sdpa)")
    p.add_argument("--quant-type", default="nf4", choices=("nf4", "fp4"), help="QLoRA 4-bit type")
    p.add_argument("--no-double-quant", action="store_true", help="QLoRA without double quantization")
    p.add_argument("--num-gpus", type=int, help="GPUs the run is spread over (default: the count in --gpu, else 1)")
    p.add_argument("--strategy", choices=STRATEGIES, help="how several GPUs split the run (default ddp)")
    p.add_argument("--offload", choices=OFFLOADS, help="ZeRO-Offload / FSDP CPU offload: optimizer or all")
    p.add_argument("--deepspeed", metavar="DS_CONFIG_JSON", help="read stage, offload and buckets from a DeepSpeed config")
    p.add_argument("--accelerate-config", metavar="CONFIG_YAML", help="read processes, FSDP / DeepSpeed from accelerate's config")
    p.add_argument("--images", type=int, default=0, help="images per sample (vision-language models)")
    p.add_argument("--image-size", help="image size WIDTHxHEIGHT before the processor resizes, e.g. 1024x768")
    p.add_argument("--image-tokens", type=int, help="language-model tokens per image, when you know the count")
    p.add_argument("--max-pixels", type=int, help="Qwen2-VL / Qwen2.5-VL processor's max_pixels, when not the "
                   "default 28*28*1280 (e.g. 602112 = 768*28*28)")
    p.add_argument("--min-pixels", type=int, help="Qwen2-VL / Qwen2.5-VL processor's min_pixels (default 56*56)")
    p.add_argument("--audio-seconds", type=float, help="audio per sample (Whisper: padded to 30 s windows)")
    p.add_argument("--trace", action="store_true", help="run the real model code on fake tensors (slower)")
    p.add_argument("--json", action="store_true", help="print every term in bytes as JSON")
    p.set_defaults(run=run)


def parallel_kwargs(args: argparse.Namespace) -> dict:
    """plan() kwargs of the parallel axis: the launch configs first, then explicit flags."""
    from ..parallel.launch import from_accelerate_config, from_deepspeed_config

    out: dict = {}
    if args.accelerate_config:
        out.update(from_accelerate_config(args.accelerate_config))
    if args.deepspeed:
        out.update(from_deepspeed_config(args.deepspeed))
    for key in ("num_gpus", "strategy", "offload", "mixed_precision"):
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def _trainer_options(args: argparse.Namespace) -> dict:
    names = [flag[2:].replace("-", "_") for flag, *_ in TRL_FLAGS] + [f[2:].replace("-", "_") for f, _ in TRL_SWITCHES]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def run(args: argparse.Namespace) -> int:
    from ..inputs import parse_image_size
    from ..planner import plan

    if args.config:
        return _run_config(args)
    if not args.model:
        raise InvalidSettingError("no model given: pass a MODEL (hub id, directory or config.json) or --config FILE")
    options = _trainer_options(args)
    if args.no_fused_lm_head:
        options["fused_lm_head"] = False
    size = parse_image_size(args.image_size) if args.image_size else None
    modes = [args.mode] if args.mode else ["full", "lora", "qlora"]
    parallel = parallel_kwargs(args)
    batch = 1 if args.batch_size is None else args.batch_size
    seq = 512 if args.seq_len is None else args.seq_len
    plans = [plan(args.model, mode=m, gpu=args.gpu, batch_size=batch, seq_len=seq, r=args.r,
                  lora_alpha=args.alpha, target_modules=args.target_modules, use_rslora=args.use_rslora,
                  lora_dropout=args.dropout, dtype=args.dtype, optim=args.optim,
                  gradient_checkpointing=args.gradient_checkpointing, attn_implementation=args.attn,
                  quant_type=args.quant_type, double_quant=not args.no_double_quant,
                  engine="trace" if args.trace else "analytic", trainer=args.trainer or "hf", **options,
                  images_per_sample=args.images, image_size=size, image_tokens=args.image_tokens,
                  audio_seconds=args.audio_seconds, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
                  **parallel)
             for m in modes]
    return _report(args, plans)


def _run_config(args: argparse.Namespace) -> int:
    """``--config trl.yaml``: the YAML's settings, with MODEL, --gpu, --seq-len and the TRL flags on top."""
    from ..planner import plan
    from ..workloads.trl_yaml import plan_kwargs, read_yaml, trl_field_names

    trainer = args.trainer or "sft"
    kw, notes = plan_kwargs(read_yaml(args.config), trainer, trl_field_names(trainer))
    if args.model:
        kw["model"] = args.model
    if args.seq_len is not None:
        kw["seq_len"] = args.seq_len
    elif trainer == "grpo":
        notes.append("grpo: the prompt length is not in the config: planned with 512-token prompts (--seq-len)")
    if args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    kw.update(_trainer_options(args))
    kw.update(parallel_kwargs(args))
    if args.no_fused_lm_head:
        kw["fused_lm_head"] = False
    result = plan(kw.pop("model"), gpu=args.gpu, engine="trace" if args.trace else "analytic", **kw)
    result.notes[:0] = [f"from {args.config} ({trainer})"] + notes
    return _report(args, [result], single=True)


def _report(args: argparse.Namespace, plans: list, single: bool = False) -> int:
    if args.json:
        print(dumps({"plans": [p.to_dict() for p in plans]}))
    else:
        _print(plans, args.gpu is None)
    if args.gpu is not None and (args.mode or single):
        return 0 if plans[0].fits else 1
    return 0


def _print(plans: list, ladder: bool) -> None:
    from rich.console import Console

    from ..render import gpu_ladder, plan_notes, plan_table, top_tensors_table

    tty = sys.stdout.isatty()
    console = Console(no_color=not tty, highlight=False, width=None if tty else 110)
    console.print(plan_table(plans, ascii_only=not tty))
    for p in plans:
        top = top_tensors_table(p, ascii_only=not tty)
        if top is not None:
            console.print(top)
    if ladder:
        console.print(gpu_ladder(plans, ascii_only=not tty))
    console.print(plan_notes(plans))
