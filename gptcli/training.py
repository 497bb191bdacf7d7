"""Pretraining, the book's chapter 5: the one training engine (``gptcli.engine.loop``) with the
``lm`` task (``gptcli.tasks.lm``). ``Trainer`` is that pairing under the name callers know; the
engine's pieces are re-exported from here for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gptcli.callbacks import Callbacks
from gptcli.config import ModelConfig, TrainConfig
from gptcli.engine.loop import Engine
from gptcli.engine.parts import Interrupted, NonFiniteGuard, make_optimizer, update_best
from gptcli.engine.progress import Progress
from gptcli.engine.schedule import Every, budget_reached, format_duration, lr_at, planned_steps, stopped_message
from gptcli.tasks import make_task
from gptcli.tasks.lm import batch_loss

TrainState = Progress

__all__ = [
    "Callbacks",
    "Every",
    "Interrupted",
    "NonFiniteGuard",
    "TrainState",
    "Trainer",
    "batch_loss",
    "budget_reached",
    "format_duration",
    "lr_at",
    "make_optimizer",
    "planned_steps",
    "stopped_message",
    "update_best",
]


class Trainer(Engine):
    """A pretraining run: ``init_state_dict`` are the ``--init`` weights, if any."""

    def __init__(
        self,
        model_cfg: ModelConfig,
        cfg: TrainConfig,
        run_dir: Path | str,
        *,
        callbacks: Callbacks | None = None,
        should_stop: Any = None,
        init_state_dict: dict[str, torch.Tensor] | None = None,
    ):
        task = make_task("lm", model_cfg, init_state_dict=init_state_dict)
        super().__init__(task, cfg, run_dir, callbacks=callbacks, should_stop=should_stop)

    @property
    def data(self) -> Any:
        return self.task.data
