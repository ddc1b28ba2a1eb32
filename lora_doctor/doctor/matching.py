"""Match ``target_modules`` against module names exactly as peft does, and find near misses.

peft (``tuners_utils.check_target_module_exists``): a *string* is a regex that must match the whole
module name (``re.fullmatch``), except ``"all-linear"``, which means every nn.Linear / Conv1D but the
output head; a *list* matches a name equal to an entry or ending in ``"." + entry``. ``exclude_modules``
follows the same rules; modules inside ``modules_to_save`` are never targeted; ``layers_to_transform``
keeps only the listed layer indices. Pure: names in, names out.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from .inventory import LINEAR_KINDS, ModuleEntry
from .settings import LoraSettings

# The role of each common projection name across architectures, for "this architecture calls it ..." hints
# and for coverage. Fused layers carry several roles.
NAME_ROLES: dict[str, frozenset[str]] = {
    **{n: frozenset({"q"}) for n in ("q_proj", "q", "query", "q_lin", "wq")},
    **{n: frozenset({"k"}) for n in ("k_proj", "k", "key", "k_lin", "wk")},
    **{n: frozenset({"v"}) for n in ("v_proj", "v", "value", "v_lin", "wv")},
    **{n: frozenset({"o"}) for n in ("o_proj", "o", "out_proj", "dense", "out_lin", "wo_attn", "attn_out")},
    **{n: frozenset({"q", "k", "v"}) for n in ("c_attn", "query_key_value", "qkv_proj", "Wqkv", "qkv", "in_proj")},
    **{n: frozenset({"gate"}) for n in ("gate_proj", "w1", "wi_0")},
    **{n: frozenset({"up"}) for n in ("up_proj", "w3", "c_fc", "fc1", "dense_h_to_4h", "wi", "wi_1", "fc_in")},
    **{n: frozenset({"down"}) for n in ("down_proj", "w2", "fc2", "dense_4h_to_h", "wo", "fc_out")},
    "gate_up_proj": frozenset({"gate", "up"}),
    "c_proj": frozenset({"o", "down"}),   # GPT-2 uses it for both the attention output and the MLP output
}
ATTENTION_ROLES = frozenset({"q", "k", "v", "o"})
MLP_ROLES = frozenset({"gate", "up", "down"})
FUSED_NAMES = frozenset(n for n, roles in NAME_ROLES.items() if len(roles) > 1 and n != "c_proj")


@dataclass(frozen=True)
class TargetMatch:
    """Which modules each pattern reaches, and the final set peft would wrap."""

    per_pattern: dict[str, list[str]]     # pattern -> matched module names (before exclusions)
    matched: list[str]                    # names peft would wrap, in model order

    @property
    def unmatched(self) -> list[str]:
        return [p for p, names in self.per_pattern.items() if not names]


def _list_match(patterns: tuple[str, ...] | list[str], name: str) -> bool:
    return any(name == p or name.endswith(f".{p}") for p in patterns)


def _excluded(settings: LoraSettings, name: str) -> bool:
    ex = settings.exclude_modules
    if ex:
        if isinstance(ex, str) and re.fullmatch(ex, name):
            return True
        if not isinstance(ex, str) and _list_match(tuple(ex), name):
            return True
    return any(re.match(rf"(^|.*\.){m}($|\..*)", name) for m in settings.modules_to_save)


def _layer_ok(settings: LoraSettings, name: str) -> bool:
    layers = settings.layers_to_transform
    if layers is None or layers == []:
        return True
    wanted = {layers} if isinstance(layers, int) else set(layers)
    patterns = settings.layers_pattern
    if not patterns:
        match = re.match(r".*?\.[^.]*\.(?P<idx>\d+)\.", name)
    else:
        patterns = [patterns] if isinstance(patterns, str) else patterns
        match = next((m for p in patterns if (m := re.match(rf"(?:^|.*?\.){p}\.(?P<idx>\d+)\.", name))), None)
    return match is not None and int(match.group("idx")) in wanted


def match_targets(settings: LoraSettings, modules: list[ModuleEntry]) -> TargetMatch:
    targets = settings.target_modules
    names = [m.name for m in modules]
    if settings.is_all_linear:
        hits = [m.name for m in modules if m.kind in LINEAR_KINDS and m.scope != "head"]
        per = {targets: hits}
    elif isinstance(targets, str):
        per = {targets: [n for n in names if re.fullmatch(targets, n)]}
    else:
        per = {p: [n for n in names if n == p or n.endswith(f".{p}")] for p in targets or ()}
    reached = {n for hits in per.values() for n in hits}
    list_form = not isinstance(targets, str)
    exact = set(targets) if list_form and targets else set()   # peft: an exact key skips the layer filter
    matched = [n for n in names if n in reached and not _excluded(settings, n)
               and (not list_form or n in exact or _layer_ok(settings, n))]
    return TargetMatch(per, matched)


def nearest_names(pattern: str, modules: list[ModuleEntry], n: int = 3) -> list[str]:
    """Module name suffixes closest to a pattern that matched nothing (``qproj`` -> ``q_proj``)."""
    preferred = {m.name.rsplit(".", 1)[-1] for m in modules if m.kind in LINEAR_KINDS}
    everything = {m.name.rsplit(".", 1)[-1] for m in modules} | {".".join(m.name.split(".")[-2:]) for m in modules}
    hits = difflib.get_close_matches(pattern, sorted(preferred), n=n, cutoff=0.6)
    hits += [h for h in difflib.get_close_matches(pattern, sorted(everything - preferred), n=n, cutoff=0.75)
             if h not in hits]
    return hits[:n]


def family_names(modules: list[ModuleEntry], scopes: tuple[str, ...] = ("blocks", "encoder", "decoder")) -> list[str]:
    """Distinct last name components of the linear layers in the given scopes, in model order."""
    seen: dict[str, None] = {}
    for m in modules:
        if m.kind in LINEAR_KINDS and m.scope in scopes:
            seen.setdefault(m.name.rsplit(".", 1)[-1], None)
    return list(seen)


def equivalents(pattern: str, modules: list[ModuleEntry]) -> list[str]:
    """This model's names for the role a foreign name plays (``q_proj`` on GPT-2 -> ``c_attn``)."""
    roles = NAME_ROLES.get(pattern)
    if not roles:
        return []
    return [name for name in family_names(modules) if NAME_ROLES.get(name, frozenset()) & roles]


def roles_of(names: list[str]) -> frozenset[str]:
    return frozenset(r for n in names for r in NAME_ROLES.get(n.rsplit(".", 1)[-1], ()))
