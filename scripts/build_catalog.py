"""Regenerate lora_doctor/data/catalog.json from the published configs in scripts/catalog_sources/.

Run ``python scripts/build_catalog.py`` (offline, deterministic: same sources and transformers give the same
bytes). Each source file holds one model: its hub id, family, aliases, the config.json it was copied from
(repository, path, commit, the hub URL it mirrors), its published parameter count with the tolerance that
number's precision allows, and the config itself. Every text model is built on the meta device from its
config (no download) and summarized as an ArchSpec; ``"multimodal": true`` entries (vision-language and
speech models) are built the same way, with the auto class that builds them (their towers in the ArchSpec).
tests/test_catalog.py rebuilds entries and checks every count against the published one.

``python scripts/build_catalog.py --derive ID ...`` also traces the derived terms (``ArchSpec.derived``,
lora_doctor.memory.derive) of those entries, seconds to minutes each; ``--derive`` alone does every entry.
Entries not named keep the derived terms the committed catalog.json holds. ``--derive-missing [ID ...]`` traces
only the setting classes (lora_doctor.memory.derive.CATALOG_SETTINGS) an entry's committed terms lack, and keeps
the others: after a class is added, not after the derivation itself changed (then ``--derive``).

``python scripts/build_catalog.py --check`` builds everything and compares with the committed JSON instead
of writing it (exit 1 on drift).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

os.environ.setdefault("LORA_DOCTOR_DERIVE", "0")  # derived terms come from --derive only

from lora_doctor.introspect import arch_from_model, build_meta_model  # noqa: E402
from lora_doctor.models import config_from_dict  # noqa: E402

SOURCES = ROOT / "scripts" / "catalog_sources"
OUTPUT = ROOT / "lora_doctor" / "data" / "catalog.json"

# Fields of a published config.json that say nothing about the architecture. quantization_config goes too:
# the planner plans the weights as they are trained (gpt-oss's MXFP4 experts are dequantized to train).
NOT_ARCHITECTURE = frozenset({
    "_name_or_path", "auto_map", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "transformers.js_config", "quantization_config", "_commit_hash",
})


def load_sources(directory: Path = SOURCES) -> list[dict]:
    """Every source file, sorted by hub id (the order of the output does not depend on the file system)."""
    entries = [json.loads(path.read_text()) for path in directory.glob("*.json")]
    return sorted(entries, key=lambda entry: entry["id"])


def architecture_fields(config: dict) -> dict:
    return {key: value for key, value in config.items() if key not in NOT_ARCHITECTURE}


def source_line(source: dict) -> str:
    """One line naming where a config came from: repository:path@commit, or the note when no repository."""
    where = f"{source['repo']}:{source['path']}@{source['commit'][:12]}" if source.get("repo") else source.get("path")
    return " | ".join(part for part in (where, source.get("mirrors"), source.get("note")) if part)


def build_entry(entry: dict) -> dict:
    fields = architecture_fields(entry["config"])
    config = config_from_dict(fields)
    arch = arch_from_model(build_meta_model(config), config).to_dict()
    published = entry["published_params"]
    return {
        "family": entry["family"],
        "config": fields,
        "published_params": published["value"],
        "published_params_rel_tol": published["rel_tol"],
        "sources": {"config": source_line(entry["config_source"]), "params": published["source"]},
        "arch": arch,
    }


def derived_terms(model_id: str, fields: dict, keep: dict | None = None) -> dict:
    """``ArchSpec.derived`` of one entry: trace-derived corrections to the recipes (lora_doctor.memory.derive),
    a few seconds to minutes per model on fake tensors, so only the entries named with --derive are traced.
    Classes in ``keep`` (the committed terms, with --derive-missing) are not traced again."""
    from lora_doctor.memory.derive import derive_terms

    start = time.perf_counter()
    terms = derive_terms(dict(fields), keep=keep)
    kept = len(set(terms["classes"]) & set((keep or {}).get("classes", {})))
    print(f"derived {model_id}: {len(terms['classes']) - kept} setting classes traced, {kept} kept, in "
          f"{time.perf_counter() - start:.0f} s", file=sys.stderr)
    return terms


def build(entries: list[dict], derive: "set[str] | None" = None, previous: dict | None = None,
          missing_only: bool = False) -> tuple[dict, list[str]]:
    """The catalog JSON and one report line per source. Derived terms are traced for the ids in ``derive``
    (only the classes ``previous`` lacks with ``missing_only``) and kept from ``previous`` (the committed
    catalog) for the others."""
    out: dict = {"models": {}, "aliases": {}}
    report = []
    old_models = (previous or {}).get("models", {})
    for entry in entries:
        built = build_entry(entry)
        old = old_models.get(entry["id"], {}).get("arch", {}).get("derived")
        if derive and entry["id"] in derive:
            built["arch"]["derived"] = derived_terms(entry["id"], built["config"], old if missing_only else None)
        elif old:
            built["arch"]["derived"] = old
        out["models"][entry["id"]] = built
        for alias in entry.get("aliases", []):
            out["aliases"][alias] = entry["id"]
        total, published, tol = built["arch"]["total_params"], built["published_params"], built["published_params_rel_tol"]
        off = abs(total - published) / published
        verdict = "ok" if off <= tol else f"OFF BY {off:.2%} (tolerance {tol:.2%})"
        report.append(f"{entry['id']:52s} {total:>16,}  published {published:>16,}  {verdict}")
    return out, report


def render(catalog: dict) -> str:
    return json.dumps(catalog, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed catalog.json, write nothing")
    parser.add_argument("--derive", nargs="*", metavar="ID", default=None,
                        help="trace derived terms for these ids (all with no id); others keep their committed terms")
    parser.add_argument("--derive-missing", nargs="*", metavar="ID", default=None,
                        help="as --derive, but trace only the setting classes the committed terms lack")
    args = parser.parse_args(argv)
    sources = load_sources()
    named = args.derive if args.derive_missing is None else args.derive_missing
    derive = None if named is None else (set(named) or {entry["id"] for entry in sources})
    previous = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else None
    catalog, report = build(sources, derive, previous, missing_only=args.derive_missing is not None)
    print("\n".join(report))
    text = render(catalog)
    if args.check:
        same = OUTPUT.read_text() == text
        print(f"{OUTPUT} is {'up to date' if same else 'STALE: run scripts/build_catalog.py'}")
        return 0 if same else 1
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT}: {len(catalog['models'])} models, {len(catalog['aliases'])} aliases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
