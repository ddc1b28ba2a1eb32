"""Checks specific to vision-language models: the projector and new tokens (pure)."""

from __future__ import annotations

from ..findings import Finding
from .inventory import ModuleInventory
from .matching import TargetMatch
from .registry import finding
from .settings import LoraSettings
from .tokenizer import TokenizerFacts


def _projector_root(names: list[str]) -> str:
    """The projector's own module name (``multi_modal_projector``, ``connector``, ``merger``)."""
    first = names[0].split(".")
    for i, part in enumerate(first):
        if part in ("multi_modal_projector", "mm_projector", "connector", "merger"):
            return ".".join(first[: i + 1])
    return names[0]


def check_projector_new_tokens(t: TokenizerFacts, s: LoraSettings, inv: ModuleInventory,
                               m: TargetMatch) -> list[Finding]:
    """New tokens were added to a vision-language model while the projector stays frozen."""
    projector = [e.name for e in inv.modules if e.scope == "projector"]
    if not t.added_ids or not projector:
        return []
    adapted = any(n in m.matched for n in projector)
    saved = any(p == ms or p.endswith(f".{ms}") or f".{ms}." in f".{p}."
                for ms in s.modules_to_save for p in projector)
    if adapted or saved:
        return []
    root = _projector_root(projector)
    return [finding("projector-frozen-new-tokens",
                    f"{len(t.added_ids)} tokens were added to this vision-language model but the projector "
                    f"{root!r} is frozen: image features keep landing where the old vocabulary expects them, and the "
                    "new tokens' embeddings have to adapt to a projector that cannot move.",
                    f"Train the projector too: modules_to_save=[{root.rsplit('.', 1)[-1]!r}] (saved in full with the "
                    "adapter) or add its linear layers to target_modules.", projector=root,
                    added_ids=list(t.added_ids[:5]))]
