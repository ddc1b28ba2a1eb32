"""Know which module is running while ops execute, so each tensor can name where it was made."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch.nn as nn
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook


@contextmanager
def module_scope(model: nn.Module, set_module: Callable[[str], None]) -> Iterator[None]:
    """Call ``set_module(path)`` with the innermost running module's path (``""`` outside any).

    Global forward hooks, so recomputation under gradient checkpointing is seen too. A module shared
    by several parents (GPT-1's one activation module in every MLP) is named by the path under the
    running parent, so what it makes in layer 3 is layer 3's, not that of the first layer holding it.
    """
    names = {id(m): n for n, m in model.named_modules()}
    names[id(model)] = type(model).__name__
    shared: dict[int, list[str]] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        shared.setdefault(id(m), []).append(n)
    shared = {k: paths for k, paths in shared.items() if len(paths) > 1}
    stack: list[str] = []

    def pre(module: nn.Module, args: Any) -> None:
        name = names.get(id(module))
        if id(module) in shared and stack:
            name = next((p for p in shared[id(module)] if p.startswith(stack[-1] + ".")), name)
        if name is None:  # a module made on the fly (peft's _LoraFactorsProxy): inside its caller
            name = f"{stack[-1]}.{type(module).__name__}" if stack else type(module).__name__
        stack.append(name)
        set_module(stack[-1])

    def post(module: nn.Module, args: Any, output: Any) -> None:
        if stack:
            stack.pop()
        set_module(stack[-1] if stack else "")

    handles = [register_module_forward_pre_hook(pre), register_module_forward_hook(post, always_call=True)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        set_module("")
