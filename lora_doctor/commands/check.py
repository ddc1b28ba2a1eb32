"""``lora-doctor check MODEL``: pre-flight checks of a LoRA config, offline, before the first step."""

from __future__ import annotations

import argparse
import sys

from ..errors import InvalidSettingError
from ..memory.targets import normalize_targets

EPILOG = """\
examples:
  lora-doctor check meta-llama/Llama-3.1-8B --target-modules q_proj,v_proj --r 16 --alpha 32
  lora-doctor check gpt2 --target-modules c_attn --r 8 --alpha 16 --json
  lora-doctor check ./my-model/config.json --target-modules all-linear --quant 4bit --bf16

exit status: 0 no errors, 1 the config has errors, 2 the command could not run.
"""

_INIT_CHOICES = ("true", "false", "gaussian", "pissa", "olora", "orthogonal", "loftq", "eva", "corda", "mica")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check a LoRA config before training",
                       description="Check target_modules, scaling, initialization and dtypes of a LoRA setup "
                                   "without downloading weights. Each finding says the cause and the fix.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id, local directory or config.json")
    p.add_argument("--target-modules", help="comma-separated names, 'all-linear', or (with --regex) one regex")
    p.add_argument("--regex", action="store_true", help="treat --target-modules as one regex (re.fullmatch)")
    p.add_argument("--target-parameters", help="comma-separated parameter names (MoE experts)")
    p.add_argument("--modules-to-save", help="comma-separated modules trained fully and saved")
    p.add_argument("--r", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=float, default=None, help="lora_alpha (default: peft's 8)")
    p.add_argument("--dropout", type=float, default=0.0, help="lora_dropout")
    p.add_argument("--use-rslora", action="store_true", help="scale by alpha / sqrt(r)")
    p.add_argument("--init", default="true", choices=_INIT_CHOICES, help="init_lora_weights")
    p.add_argument("--bias", default="none", choices=("none", "all", "lora_only"))
    p.add_argument("--fan-in-fan-out", action="store_true", help="set fan_in_fan_out=True (GPT-2 Conv1D)")
    p.add_argument("--quant", choices=("4bit", "8bit"), help="load the base quantized with bitsandbytes")
    p.add_argument("--quant-type", default="nf4", choices=("nf4", "fp4"), help="4-bit type (default nf4)")
    p.add_argument("--compute-dtype", default="bf16", choices=("bf16", "fp16", "fp32"),
                   help="4-bit compute dtype (default bf16)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="fp16 mixed precision")
    precision.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--reentrant", action="store_true", help="gradient checkpointing with use_reentrant=True")
    p.add_argument("--dry-run", action="store_true", help="one forward/backward on a tiny random copy (small models)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=run)


def _split(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def lora_fields(args: argparse.Namespace) -> dict:
    """The LoraConfig fields the flags describe (a dict: no peft import needed)."""
    if args.r <= 0:
        raise InvalidSettingError(f"--r must be positive, got {args.r}")
    fields: dict = {"r": args.r, "lora_dropout": args.dropout, "use_rslora": args.use_rslora, "bias": args.bias,
                    "fan_in_fan_out": args.fan_in_fan_out,
                    "init_lora_weights": {"true": True, "false": False}.get(args.init, args.init)}
    if args.alpha is not None:
        fields["lora_alpha"] = args.alpha
    if args.target_modules is not None:  # "" or "," is an error, as in plan (normalize_targets' one rule)
        text = args.target_modules.strip()
        if args.regex and text:
            fields["target_modules"] = text
        elif text.lower() == "all-linear":
            fields["target_modules"] = "all-linear"
        else:
            fields["target_modules"] = list(normalize_targets(_split(text)))
    if args.target_parameters:
        fields["target_parameters"] = _split(args.target_parameters)
    if args.modules_to_save:
        fields["modules_to_save"] = _split(args.modules_to_save)
    return fields


def run(args: argparse.Namespace) -> int:
    from ..doctor import diagnose

    training = {"fp16": args.fp16, "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing,
                "gradient_checkpointing_kwargs": {"use_reentrant": True} if args.reentrant else None}
    quant = None
    if args.quant:
        quant = {"load_in_4bit": args.quant == "4bit", "load_in_8bit": args.quant == "8bit",
                 "bnb_4bit_quant_type": args.quant_type, "bnb_4bit_compute_dtype": args.compute_dtype}
    report = diagnose(args.model, lora_fields(args), training_args=training, quantization_config=quant,
                      dry_run=args.dry_run)
    if args.json:
        print(report.to_json())
    elif sys.stdout.isatty():
        from rich.console import Console

        Console().print(report)
    else:
        print(str(report))
    return 1 if report.errors else 0
