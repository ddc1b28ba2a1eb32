"""``lora-doctor catalog``: list the models the offline catalog knows."""

from __future__ import annotations

import argparse

from ..strict_json import dumps


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalog", help="list the models known offline",
                       description="List the models whose architecture ships with lora-doctor (no network needed).")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..catalog import catalog_ids, lookup

    rows = []
    for model_id in catalog_ids():
        arch = lookup(model_id).arch
        rows.append({"model": model_id, "model_type": arch.model_type, "params": arch.total_params})
    if args.json:
        print(dumps(rows))
        return 0
    for row in rows:
        print(f"{row['model']:45s} {row['model_type']:8s} {row['params'] / 1e9:8.2f} B params")
    return 0
