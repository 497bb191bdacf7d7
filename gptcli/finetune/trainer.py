"""Finetuning, the book's chapters 7 (instruct) and 6 (classify), with LoRA (appendix E): the one
training engine (``gptcli.engine.loop``) with a finetuning task (``gptcli.tasks.finetune``).
``FinetuneTrainer`` is that pairing under the name callers know, reporting through callbacks or
an ``on_event(record)`` function; the evaluation of a finished run's split lives here too."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli.callbacks import Callbacks
from gptcli.data import batches_of
from gptcli.engine.loop import Engine
from gptcli.errors import UsageError
from gptcli.finetune.config import FinetuneConfig, no_split_error
from gptcli.tasks import make_task
from gptcli.tasks.finetune import (
    ClassifyTask,
    Splits,
    check_data,
    file_sha256,
    load_partial,
    model_from_finetune_checkpoint,
    prepare_splits,
)

__all__ = [
    "FinetuneConfig",
    "FinetuneTrainer",
    "Splits",
    "evaluate_checkpoint_split",
    "evaluate_split",
    "file_sha256",
    "load_partial",
    "model_from_finetune_checkpoint",
]


class EventCallbacks(Callbacks):
    """The engine's reports as one ``on_event(record)`` call each: the metrics records as they
    are written, and ``start``, ``save``, ``warning`` and ``info`` records."""

    def __init__(self, on_event: Callable[[dict[str, Any]], None]):
        self.on_event = on_event

    def on_start(self, info: dict[str, Any]) -> None:
        self.on_event({"type": "start", **info})

    def on_eval(self, record: dict[str, Any]) -> None:
        self.on_event(record)

    def on_sample(self, record: dict[str, Any]) -> None:
        self.on_event(record)

    def on_record(self, record: dict[str, Any]) -> None:
        self.on_event(record)

    def on_save(self, path: Path, reason: str) -> None:
        self.on_event({"type": "save", "path": str(path), "reason": reason})

    def warn(self, message: str) -> None:
        self.on_event({"type": "warning", "text": message})

    def info(self, message: str) -> None:
        self.on_event({"type": "info", "text": message})


class FinetuneTrainer(Engine):
    def __init__(
        self,
        cfg: FinetuneConfig,
        run_dir: Path | str,
        *,
        on_event: Callable[[dict[str, Any]], None] | None = None,
        callbacks: Callbacks | None = None,
        should_stop: Callable[[], int | None] | None = None,
        resume_from: dict[str, Any] | None = None,
    ):
        from gptcli import distributed

        if callbacks is None and on_event is not None and distributed.is_main_process():  # rank 0 reports for all
            callbacks = EventCallbacks(on_event)
        task = make_task(cfg.kind, cfg)
        super().__init__(task, cfg, run_dir, callbacks=callbacks, should_stop=should_stop, resume_from=resume_from)

    @property
    def progress(self) -> Any:
        return self.state

    @property
    def splits(self) -> Splits:
        return self.task.splits

    def final_accuracy(self) -> dict[str, float]:
        """The book's accuracies after training: every batch of each split (a test split of 0 has none)."""
        numbers, _ = ClassifyTask.final_result(self.task, self)
        return {k.removesuffix("_accuracy"): v for k, v in numbers.items()}


@torch.no_grad()
def evaluate_split(
    model: torch.nn.Module, task: Any, data: Any, *, batch_size: int, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """The book's ``calc_loss_loader`` over every batch of a split in order (its test loader:
    no shuffle, last batch kept), and what else the task measures (a classifier's accuracy)."""
    model.eval()
    batches = batches_of(list(range(len(data))), batch_size, drop_last=False)
    losses, counts = [], {}
    for rows in batches:
        x, y = (t.to(device) for t in data.batch(rows))
        losses.append(task.loss_mean(model, x, y).item())
        for k, v in task.split_counts(model, x, y).items():
            counts[k] = counts.get(k, 0) + v
    result: dict[str, Any] = {"examples": len(data), "batches": len(batches), "loss": sum(losses) / len(losses)}
    return {**result, **{k: v / len(data) for k, v in counts.items()}}


def evaluate_checkpoint_split(
    obj: dict[str, Any], path: Path | str, split: str, *, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Loss (and a classifier's accuracy) of a finetune checkpoint on one split of its run's data,
    split again exactly as the run split it."""
    if split not in ("train", "val", "test"):
        raise UsageError(f"invalid --split: {split!r} (choose from train, val, test)")
    model, cfg, info = model_from_finetune_checkpoint(obj, path)
    check_data(cfg, info.get("data_fingerprint"), doing="eval --split")
    splits = prepare_splits(cfg, model.cfg, labels=info.get("labels"))
    data = getattr(splits, split)
    if len(data) == 0:
        raise no_split_error("--split", split, data=cfg.data, split=cfg.split)
    model.to(device)
    return {
        "kind": cfg.kind,
        "split": split,
        **evaluate_split(model, make_task(cfg.kind, cfg), data, batch_size=cfg.batch_size, device=device),
    }
