"""``lora-doctor catalog``: list the models the offline catalog knows, grouped by family."""

from __future__ import annotations

import argparse

from ..strict_json import dumps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="list the models known offline",
                       description="List the models whose architecture ships with lora-doctor (no network needed), "
                                   "grouped by family. Any other hub id works too when its config.json is in the "
                                   "local Hugging Face cache or can be downloaded.")
    p.add_argument("--json", action="store_true", help="print JSON (one object per model, with its family)")
    p.add_argument("--family", help="only this family (case-insensitive), e.g. Qwen, Gemma, gpt-oss")
    p.set_defaults(run=run)


def rows(family: str | None = None) -> list[dict]:
    """One row per catalog model, sorted by family then id."""
    from ..catalog import catalog_ids, lookup

    out = []
    for model_id in catalog_ids():
        entry = lookup(model_id)
        if family and entry.family.lower() != family.lower():
            continue
        out.append({"model": model_id, "family": entry.family, "model_type": entry.arch.model_type,
                    "params": entry.arch.total_params, "moe": entry.arch.num_experts > 0})
    return sorted(out, key=lambda row: (row["family"].lower(), row["model"].lower()))


def render(table: list[dict]) -> str:
    lines: list[str] = []
    family = None
    for row in table:
        if row["family"] != family:
            family = row["family"]
            lines.append(("\n" if lines else "") + family)
        moe = "  MoE" if row["moe"] else ""
        lines.append(f"  {row['model']:46s} {row['model_type']:12s} {row['params'] / 1e9:8.2f} B params{moe}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    table = rows(args.family)
    if args.json:
        print(dumps(table))
        return 0
    if not table:
        from ..catalog import catalog_ids, lookup
        from ..errors import InvalidSettingError

        families = sorted({lookup(m).family for m in catalog_ids()}, key=str.lower)
        raise InvalidSettingError(f"no catalog family {args.family!r}; pick one of: {', '.join(families)}")
    print(render(table))
    return 0
