"""The task registry: every kind of training run, by the name its run directory and checkpoints
record. A new kind is one module here and one entry below; the engine, the checkpoint format,
budgets, precision, accumulation and every other shared setting reach it unchanged."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

# kind -> (module, class): imported when a run of that kind starts, so listing kinds costs nothing.
REGISTRY: dict[str, tuple[str, str]] = {
    "lm": ("gptcli.tasks.lm", "LMTask"),
    "instruct": ("gptcli.tasks.finetune", "InstructTask"),
    "classify": ("gptcli.tasks.finetune", "ClassifyTask"),
}
KINDS = tuple(REGISTRY)


@dataclass(frozen=True)
class Kind:
    """What every command may ask about a kind of run without building its task (no torch)."""

    name: str  # the registry's name
    recorded: str  # what its checkpoints' "kind" and its config.yaml say: training, instruct, classify
    title: str  # how a message names such a run
    section: str  # its config.yaml section
    generates_text: bool  # sample and eval continue text with its model
    make: str  # how to make one


KIND_INFO = {
    "lm": Kind("lm", "training", "a pretraining run", "train", True, "train one with: gptcli train FILE.txt"),
    "instruct": Kind(
        "instruct",
        "instruct",
        "an instruct finetune",
        "finetune",
        True,
        "make one with: gptcli finetune instruct DATA --init MODEL",
    ),  # fmt: skip
    "classify": Kind(
        "classify",
        "classify",
        "a classifier",
        "finetune",
        False,
        "make one with: gptcli finetune classify DATA --init MODEL",
    ),  # fmt: skip
}
FINETUNE_RECORDED = tuple(k.recorded for k in KIND_INFO.values() if k.section == "finetune")
TEXT_KINDS: tuple[str | None, ...] = (*(k.recorded for k in KIND_INFO.values() if k.generates_text), None)


def recorded_kind(recorded: str | None) -> Kind | None:
    """The kind a checkpoint or run directory records (``training``, ``instruct``, ``classify``)."""
    return next((k for k in KIND_INFO.values() if k.recorded == recorded), None)


def task_class(kind: str) -> type:
    if kind not in REGISTRY:
        raise KeyError(f"no task {kind!r} (known: {', '.join(KINDS)})")
    module, name = REGISTRY[kind]
    return getattr(importlib.import_module(module), name)


def model_from_checkpoint(obj: dict[str, Any], path: Any) -> tuple[Any, dict[str, Any] | None]:
    """The one way to rebuild a model from a loaded checkpoint of any kind, as it was trained:
    (the model, and a finetune's settings and records; None for other kinds). A finetune's model
    is its base, made ready as its task makes it (a new head, adapters), then its own tensors. A
    weights-only file of an instruct run is a plain model with its template (``config`` None)."""
    if obj.get("kind") in FINETUNE_RECORDED:
        from gptcli.tasks.finetune import model_from_finetune_checkpoint

        net, cfg, info = model_from_finetune_checkpoint(obj, path)
        return net, {**info, "config": cfg.to_dict()}
    from gptcli.checkpoint import model_from_checkpoint as plain

    origin = obj.get("finetuned_from")
    if obj.get("kind") == "weights" and isinstance(origin, dict) and origin.get("kind") == "instruct":
        # an instruct run's weights alone (convert --weights-only, --merge-lora): its template goes
        # with it, so sample formats an instruction as the run did; its data settings do not
        return plain(obj, path), {"kind": "instruct", "template": origin.get("template"), "config": None}
    return plain(obj, path), None


def make_task(kind: str, *args: Any, **kwargs: Any) -> Any:
    """The task of a run of ``kind``, built from its settings."""
    return task_class(kind)(*args, **kwargs)
