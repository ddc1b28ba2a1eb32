"""``lora-doctor modules MODEL``: the model's linear layer families, offline (the "print named_modules" step)."""

from __future__ import annotations

import argparse
import sys

from ..strict_json import dumps
from ..placement import PART_NAMES, language_model_regex, part_name, placement

EPILOG = """\
examples:
  lora-doctor modules meta-llama/Llama-3.1-8B
  lora-doctor modules gpt2 --json
  lora-doctor modules Qwen/Qwen2.5-VL-7B-Instruct      (towers listed separately)
"""

_SUGGESTED_SCOPES = ("blocks", "decoder", "encoder")
_SCOPE_ORDER = ("blocks", "decoder", "encoder", "cross", "vision", "projector", "audio", "head", "other")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("modules", help="list the linear layer families target_modules can name",
                       description="List the model's linear layer families (name, type, shape, count, scope) and a "
                                   "suggested target set, built on the meta device without downloading weights.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id, local directory or config.json")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def describe(model: object) -> dict:
    """Families, peft's default targets, a suggested target set and MoE expert parameters, as plain data."""
    from ..models import resolve

    resolved = resolve(model)
    arch = resolved.arch
    families = [{"name": f.name, "type": f.kind, "shape": [f.in_features, f.out_features], "count": f.count,
                 "scope": f.scope, "example": f.example} for f in arch.linear_families]
    suggested: list[str] | str = list(dict.fromkeys(f.name for f in arch.linear_families if f.scope in _SUGGESTED_SCOPES))
    anchored = language_model_regex(arch, suggested)   # bare names would also reach a vision tower
    if anchored is not None:
        suggested = anchored
    order = {scope: i for i, scope in enumerate(_SCOPE_ORDER)}
    families.sort(key=lambda f: order.get(f["scope"], len(order)))
    experts: list[str] = []
    if arch.expert_params:
        from ..doctor.inventory import gather

        inv = gather(resolved.module if resolved.module is not None else resolved.meta_model())
        experts = sorted({".".join(n.split(".")[-3:]) for n, _ in inv.expert_params})
    towers = [{"role": t.role, "path": t.path, "params": t.params, "layers": t.num_layers,
               "hidden_size": t.hidden_size, "patch_size": t.patch_size, "image_size": t.image_size,
               "tokens_per_image": t.tokens_per_image} for t in arch.towers]
    return {"model": resolved.name, "model_type": arch.model_type, "families": families, "towers": towers,
            "all_linear_reaches": {part_name(arch, k): n for k, n in placement(arch, "all-linear").items()}
            if arch.towers else {},
            "peft_default_targets": list(arch.default_targets), "suggested_target_modules": suggested,
            "suggested_target_parameters": experts}


def run(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        print(dumps(info))
        return 0
    rows = [(f["name"], f["type"], f"{f['shape'][0]} x {f['shape'][1]}", str(f["count"]), f["scope"])
            for f in info["families"]]
    header = ("name", "type", "in x out", "count", "scope")
    if sys.stdout.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{info['model']} ({info['model_type']}) linear layers")
        for h in header:
            table.add_column(h)
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    else:
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        print(f"{info['model']} ({info['model_type']})")
        for row in [header] + rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    for t in info["towers"]:
        shape = f", {t['layers']} layers, hidden {t['hidden_size']}" if t["layers"] else ""
        print(f"{PART_NAMES[t['role']]}: {t['path']} ({t['params'] / 1e6:,.1f}M params{shape})")
    if info["all_linear_reaches"]:
        reach = ", ".join(f"{k} {n}" for k, n in info["all_linear_reaches"].items())
        print(f"'all-linear' (peft) wraps: {reach} linear layers")
    print(f"suggested target_modules: {info['suggested_target_modules']}")
    print(f"peft default target_modules: {info['peft_default_targets'] or 'none (you must pass target_modules)'}")
    if info["suggested_target_parameters"]:
        print(f"MoE experts (3-D parameters, not reachable by target_modules): "
              f"target_parameters={info['suggested_target_parameters']}")
    return 0
