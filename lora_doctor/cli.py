"""The ``lora-doctor`` command line: small argparse subcommands, one module each.

Expected errors (:class:`LoraDoctorError`) and usage errors become one readable line on stderr and
exit code 2; a traceback only ever means a bug in lora-doctor. Third-party output goes to the debug
stream (:mod:`lora_doctor.debug_stream`), shown with ``-v``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

from .debug_stream import debug_stream
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

-v/--verbose (before or after the command) shows the debug stream on stderr: third-party warnings and
logs (transformers, peft, bitsandbytes, torch), which are silent otherwise.
Exit codes: 0 ok, 1 does not fit / the config has errors, 2 bad input (one line on stderr).
Security: lora-doctor reads config.json only and never runs code from a model (see docs/security.md).
"""
VERBOSE_HELP = "show third-party warnings and logs (the debug stream) on stderr"


def one_line(text: str) -> str:
    """``text`` on one printable line: newlines become spaces, other control characters their escapes."""
    text = " ".join(text.split("\n"))
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text).strip()


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (and exit 2), like every other bad input."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="lora-doctor",
        description="Pre-flight memory planning and config checks for LoRA / QLoRA / full fine-tuning.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"lora-doctor {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"lora_doctor.commands.{name}").register(sub)
    for command in sub.choices.values():  # also after the subcommand: lora-doctor plan gpt2 -v
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help / --version exit 0 as usual; a usage error is one line and 2
        if exc.code in (0, None):
            raise
        return 2
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    verbose = bool(getattr(args, "verbose", False))
    with debug_stream(verbose) as stderr:  # third-party warnings and logs: shown with -v only
        try:
            return int(args.run(args) or 0)
        except LoraDoctorError as exc:
            print(f"lora-doctor: error: {one_line(str(exc))}", file=stderr)
            return 2
        except KeyboardInterrupt:
            return 130
        except BrokenPipeError:
            return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
