"""``lora-doctor plan``: will this run fit, term by term, for Full / LoRA / QLoRA."""

from __future__ import annotations

import argparse
import json
import sys

EPILOG = """\
examples:
  lora-doctor plan meta-llama/Llama-2-7b-hf --gpu 24GB
  lora-doctor plan meta-llama/Meta-Llama-3-8B --mode qlora --seq-len 4096 --gradient-checkpointing --gpu RTX3090
  lora-doctor plan Qwen/Qwen2.5-7B --target-modules all-linear --r 64 --alpha 16 --gpu A100-80GB --json
  lora-doctor plan ./checkpoints/my-model --gpu auto          (a local directory or config.json)
  lora-doctor plan Qwen/Qwen2.5-VL-7B-Instruct --images 1 --image-size 1024x768 --gpu 24GB
  lora-doctor plan openai/whisper-large-v3 --mode lora --target-modules q_proj,v_proj --seq-len 448 --gpu 24GB

GPU: a size (24GB, 24GiB, 80G, bytes), a name (RTX3090, 4090, T4, L4, A10G, A100-40GB, A100-80GB,
H100, H200, ...) or 'auto' (the local GPU via NVML). GB means GiB, as on GPU spec sheets.
Exit codes: 0 ok (and fits, when --gpu is given), 1 does not fit, 2 bad input.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plan", help="predict peak GPU memory of a training run",
                       description="Predict the peak GPU memory of one training step, offline, from the "
                                   "model config alone: weights, gradients, optimizer states, activations, "
                                   "logits, quantization, CUDA context and allocator reserve.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id (offline catalog, HF cache), local directory or config.json")
    p.add_argument("--gpu", help="GPU memory or name, or 'auto'")
    p.add_argument("--mode", choices=("full", "lora", "qlora"), help="plan one mode (default: all three)")
    p.add_argument("--batch-size", type=int, default=1, help="per-device micro-batch (default 1)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per sequence (default 512)")
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
    p.add_argument("--images", type=int, default=0, help="images per sample (vision-language models)")
    p.add_argument("--image-size", help="image size WIDTHxHEIGHT before the processor resizes, e.g. 1024x768")
    p.add_argument("--image-tokens", type=int, help="language-model tokens per image, when you know the count")
    p.add_argument("--audio-seconds", type=float, help="audio per sample (Whisper: padded to 30 s windows)")
    p.add_argument("--trace", action="store_true", help="run the real model code on fake tensors (slower)")
    p.add_argument("--json", action="store_true", help="print every term in bytes as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..inputs import parse_image_size
    from ..planner import plan

    size = parse_image_size(args.image_size) if args.image_size else None
    modes = [args.mode] if args.mode else ["full", "lora", "qlora"]
    plans = [plan(args.model, mode=m, gpu=args.gpu, batch_size=args.batch_size, seq_len=args.seq_len, r=args.r,
                  lora_alpha=args.alpha, target_modules=args.target_modules, use_rslora=args.use_rslora,
                  lora_dropout=args.dropout, dtype=args.dtype, mixed_precision=args.mixed_precision, optim=args.optim,
                  gradient_checkpointing=args.gradient_checkpointing, attn_implementation=args.attn,
                  quant_type=args.quant_type, double_quant=not args.no_double_quant,
                  engine="trace" if args.trace else "analytic", images_per_sample=args.images, image_size=size,
                  image_tokens=args.image_tokens, audio_seconds=args.audio_seconds)
             for m in modes]
    if args.json:
        print(json.dumps({"plans": [p.to_dict() for p in plans]}, indent=2))
    else:
        _print(plans, args.gpu is None)
    if args.gpu is not None and args.mode:
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
