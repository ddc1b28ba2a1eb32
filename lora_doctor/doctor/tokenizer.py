"""Tokenizer checks: pad token, vocabulary vs embedding rows, added tokens that nothing trains (pure)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidSettingError
from ..findings import Finding
from .registry import finding
from .settings import LoraSettings


@dataclass(frozen=True)
class TokenizerFacts:
    length: int                    # len(tokenizer), added tokens included
    base_vocab: int                # tokenizer.vocab_size, without added tokens
    pad_id: int | None
    eos_id: int | None
    pad_token: str | None = None
    added_ids: tuple[int, ...] = field(default_factory=tuple)   # added tokens beyond the base vocabulary

    @classmethod
    def from_tokenizer(cls, tok: Any) -> "TokenizerFacts":
        """Read the facts; anything that is not a tokenizer (no ``len``, odd ids) is InvalidSettingError."""
        if not hasattr(tok, "vocab_size") and hasattr(getattr(tok, "tokenizer", None), "vocab_size"):
            tok = tok.tokenizer  # a processor (vision / speech models) wraps the tokenizer
        try:
            if isinstance(tok, (str, bytes)) or not hasattr(tok, "vocab_size"):
                raise TypeError("no vocab_size; pass the tokenizer object, not its name")
            base = int(getattr(tok, "vocab_size", 0) or 0)
            added = getattr(tok, "added_tokens_decoder", None) or {}
            pad, eos = getattr(tok, "pad_token_id", None), getattr(tok, "eos_token_id", None)
            if not all(i is None or (isinstance(i, int) and not isinstance(i, bool)) for i in (pad, eos)):
                raise TypeError("pad_token_id / eos_token_id are not integers")
            return cls(int(len(tok)), base, pad, eos, getattr(tok, "pad_token", None),
                       tuple(sorted(int(i) for i in added if i >= base)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise InvalidSettingError(f"tokenizer must be a transformers tokenizer, got {type(tok).__name__} "
                                      f"({exc})") from None


# Collators that mask padding by position (the padded tail of each row), never by token id, so a pad
# token equal to eos leaves every real eos label in place: (top-level package, class name). TRL 1.16's
# SFT/DPO/KTO/reward collators build labels from the unpadded lists and pad labels with -100;
# transformers' DataCollatorForSeq2Seq pads labels with label_pad_token_id. GRPO/RLOO take no collator
# (``identity``) and keep each completion up to and including its first eos.
LENGTH_MASKING_COLLATORS = {
    ("trl", "DataCollatorForLanguageModeling"), ("trl", "DataCollatorForVisionLanguageModeling"),
    ("trl", "DataCollatorForPreference"), ("trl", "DataCollatorForVisionPreference"),
    ("trl", "DataCollatorForUnpairedPreference"), ("trl", "DataCollatorForVisionUnpairedPreference"),
    ("trl", "identity"), ("transformers", "DataCollatorForSeq2Seq"),
}


def masks_padding_by_length(data_collator: Any) -> str | None:
    """The collator's name when it keeps eos labels with pad == eos (see LENGTH_MASKING_COLLATORS), else None."""
    if data_collator is None:
        return None
    kind = data_collator if inspect.isfunction(data_collator) else type(data_collator)   # GRPO's is a function
    root = (getattr(kind, "__module__", "") or "").split(".")[0]
    name = getattr(kind, "__name__", "")
    return f"{root}.{name}" if (root, name) in LENGTH_MASKING_COLLATORS else None


def trains_new_tokens(s: LoraSettings, embedding_names: list[str]) -> bool:
    """True when the config makes embedding rows trainable and saved (modules_to_save or trainable tokens)."""
    if s.trainable_token_indices:
        return True
    return any(name == m or name.endswith(f".{m}") for m in s.modules_to_save for name in embedding_names)


def check_tokenizer(t: TokenizerFacts, s: LoraSettings, embedding_rows: int, embedding_names: list[str],
                    length_masking_collator: str | None = None) -> list[Finding]:
    """``length_masking_collator``: the name of a collator that masks padding by position (no pad-is-eos)."""
    out = []
    if t.pad_id is None:
        out.append(finding("pad-missing", "the tokenizer has no pad token: batching fails with 'Asking to pad but the "
                           "tokenizer does not have a padding token'.", "Add a dedicated pad token "
                           "(tokenizer.add_special_tokens({'pad_token': '<pad>'}) and resize the embeddings) or reuse "
                           "an unused token such as unk; avoid eos (see pad-is-eos)."))
    elif t.eos_id is not None and t.pad_id == t.eos_id and length_masking_collator is None:
        out.append(finding("pad-is-eos", f"pad token {t.pad_token!r} is the eos token: collators mask padding out of "
                           "the labels, and with it every eos, so the model never learns to stop generating.",
                           "Use a distinct pad token (unk or a reserved token), or a collator that keeps the eos label "
                           "(mask padding by attention_mask, not by token id).", pad_id=t.pad_id))
    if t.length > embedding_rows:
        out.append(finding("vocab-exceeds-embeddings", f"the tokenizer has {t.length} tokens but the embedding matrix "
                           f"has {embedding_rows} rows: ids above {embedding_rows - 1} index out of range (on GPU a "
                           "'device-side assert').", "Call model.resize_token_embeddings(len(tokenizer)) before "
                           "get_peft_model, and train the new rows (modules_to_save or trainable_token_indices).",
                           tokens=t.length, rows=embedding_rows))
    if t.added_ids and not trains_new_tokens(s, embedding_names):
        shown = list(t.added_ids[:5])
        out.append(finding("new-tokens-not-trained", f"{len(t.added_ids)} tokens were added beyond the base vocabulary "
                           f"(ids {shown}{'...' if len(t.added_ids) > 5 else ''}) but no embedding rows are trainable: "
                           "their embeddings stay untrained and are not saved with the adapter, so they are lost after "
                           "reload.", f"Set trainable_token_indices={shown if len(shown) == len(t.added_ids) else '[...]'} "
                           f"(peft trains and saves just those rows) or modules_to_save={embedding_names[:2]}.",
                           added_ids=list(t.added_ids)))
    return out
