"""The ``lora-doctor`` command line: small argparse subcommands, one module each.

Expected errors (:class:`LoraDoctorError`) become one readable line on stderr and exit code 2;
a traceback only ever means a bug in lora-doctor.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from .errors import LoraDoctorError

# Subcommand modules under lora_doctor/commands; each defines register(subparsers) and run(args) -> int.
COMMANDS = ("plan", "check", "modules", "catalog")

EPILOG = """\
examples:
  lora-doctor plan meta-llama/Llama-2-7b-hf --gpu 24GB
  lora-doctor plan Qwen/Qwen2.5-7B --mode qlora --seq-len 4096 --gradient-checkpointing
  lora-doctor plan ./my-model/config.json --gpu RTX3090 --json
  lora-doctor check meta-llama/Llama-3.1-8B --target-modules q_proj,v_proj --r 16 --alpha 32
  lora-doctor modules gpt2
  lora-doctor catalog
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lora-doctor",
        description="Pre-flight memory planning and config checks for LoRA / QLoRA / full fine-tuning.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"lora-doctor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lora_doctor.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return int(args.run(args) or 0)
    except LoraDoctorError as exc:
        print(f"lora-doctor: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
