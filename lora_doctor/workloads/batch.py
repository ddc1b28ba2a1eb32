"""The worst batch a constructed Trainer will see: the longest row its collator can build.

* SFT: ``max_length`` exactly with packing (rows are packed to it); else the longest tokenized
  example (TRL has already truncated the dataset to ``max_length``).
* DPO: the longest ``prompt + chosen`` or ``prompt + rejected``, capped at ``max_length``.
* GRPO: the longest tokenized prompt (the planner adds ``max_completion_length``).
* plain Trainer: the longest ``input_ids`` in the dataset.

Arrow-backed ``datasets.Dataset`` columns are measured without reading rows into Python; other
map-style datasets are read when small; otherwise the length is unknown (None) and the caller says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

READ_LIMIT = 20000   # rows read one by one (non-Arrow datasets, GRPO prompts) before giving up


@dataclass(frozen=True)
class WorstBatch:
    seq_len: int | None      # tokens per row the planner should use (GRPO: the prompt)
    why: str


def _arrow_max_length(dataset: Any, column: str) -> int | None:
    table = getattr(dataset, "data", None)
    if table is None or column not in getattr(dataset, "column_names", ()):
        return None
    import pyarrow.compute as pc

    lengths = pc.list_value_length(table.column(column))
    value = pc.max(lengths).as_py()
    return int(value) if value is not None else None


def _summed_max(dataset: Any, columns: tuple[str, ...]) -> int | None:
    """max over rows of the summed lengths of ``columns`` (DPO's prompt + completion)."""
    table = getattr(dataset, "data", None)
    if table is None or not all(c in getattr(dataset, "column_names", ()) for c in columns):
        return None
    import pyarrow.compute as pc

    total = None
    for c in columns:
        length = pc.list_value_length(table.column(c))
        total = length if total is None else pc.add(total, length)
    value = pc.max(total).as_py()
    return int(value) if value is not None else None


def _rows_max(dataset: Any, column: str) -> int | None:
    try:
        n = len(dataset)
    except TypeError:
        return None
    if n > READ_LIMIT:
        return None
    best = 0
    for i in range(n):
        row = dataset[i]
        ids = row.get(column) if isinstance(row, dict) else None
        if ids is None:
            return None
        best = max(best, len(ids))
    return best or None


def longest_input_ids(dataset: Any) -> int | None:
    return _arrow_max_length(dataset, "input_ids") or _rows_max(dataset, "input_ids")


def _longest_prompt(trainer: Any, dataset: Any) -> int | None:
    tokenizer = getattr(trainer, "processing_class", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    if tokenizer is None or "prompt" not in getattr(dataset, "column_names", ()) or len(dataset) > READ_LIMIT:
        return None
    prompts = dataset["prompt"]
    if prompts and not isinstance(prompts[0], str):   # conversational: apply the chat template
        prompts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    return max((len(ids) for ids in tokenizer(list(prompts), add_special_tokens=False)["input_ids"]), default=None)


def worst_batch(trainer: Any, kind: str) -> WorstBatch:
    """The longest row ``trainer`` will build, and why."""
    args, dataset = trainer.args, getattr(trainer, "train_dataset", None)
    max_length = getattr(args, "max_length", None)
    if kind == "sft" and getattr(args, "packing", False) and max_length:
        return WorstBatch(max_length, f"packing=True: every row is packed to max_length={max_length}")
    if kind == "grpo":
        longest = _longest_prompt(trainer, dataset) if dataset is not None else None
        if longest is None:
            return WorstBatch(None, "the prompt length is unknown (streaming or very large dataset)")
        return WorstBatch(longest, f"longest tokenized prompt in the dataset: {longest} tokens")
    longest = None
    if dataset is not None:
        longest = (_summed_max(dataset, ("prompt_ids", "chosen_ids")) if kind == "dpo" else longest_input_ids(dataset))
        if kind == "dpo":
            rejected = _summed_max(dataset, ("prompt_ids", "rejected_ids"))
            longest = max(filter(None, (longest, rejected)), default=None)
    if longest is None:
        if max_length:
            return WorstBatch(max_length, f"dataset lengths unknown: planned at max_length={max_length}")
        return WorstBatch(None, "dataset lengths unknown and no max_length")
    if max_length and longest > max_length:
        return WorstBatch(max_length, f"longest example ({longest} tokens) is truncated to max_length={max_length}")
    cap = f" (max_length={max_length} allows more)" if max_length and longest < max_length else ""
    return WorstBatch(longest, f"longest tokenized example in the dataset: {longest} tokens{cap}")
