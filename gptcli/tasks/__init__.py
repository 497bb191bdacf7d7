"""The task registry: every kind of training run, by the name its run directory and checkpoints
record. A new kind is one module here and one entry below; the engine, the checkpoint format,
budgets, precision, accumulation and every other shared setting reach it unchanged."""

from __future__ import annotations

import importlib
from typing import Any

# kind -> (module, class): imported when a run of that kind starts, so listing kinds costs nothing.
REGISTRY: dict[str, tuple[str, str]] = {
    "lm": ("gptcli.tasks.lm", "LMTask"),
    "instruct": ("gptcli.tasks.finetune", "InstructTask"),
    "classify": ("gptcli.tasks.finetune", "ClassifyTask"),
}
KINDS = tuple(REGISTRY)


def task_class(kind: str) -> type:
    if kind not in REGISTRY:
        raise KeyError(f"no task {kind!r} (known: {', '.join(KINDS)})")
    module, name = REGISTRY[kind]
    return getattr(importlib.import_module(module), name)


def make_task(kind: str, *args: Any, **kwargs: Any) -> Any:
    """The task of a run of ``kind``, built from its settings."""
    return task_class(kind)(*args, **kwargs)
