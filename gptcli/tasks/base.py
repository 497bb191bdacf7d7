"""What a task gives the training engine (``gptcli.engine.loop.Engine``): its data, the prepared
model, the loss as a mean (the book's) and as a sum with its count, the records of an epoch's
end, and what its checkpoints remember beyond the shared state. The engine owns everything else."""

from __future__ import annotations

from typing import Any

import torch


class Task:
    kind: str = ""  # the registry's name for the kind: lm, instruct, classify
    batch_is_global = True  # --batch-size is the global batch (the finetunes'), not each process's
    reseed_before_optimizer = False  # the book's finetuning seeds again right before its optimizer
    partial_state = False  # checkpoints hold only some weights (LoRA adapters and a new head)
    epoch_end_types: tuple[str, ...] = ("sample",)  # the metrics records written at an epoch's end
    epoch_end_draws_rng = False  # making the epoch-end records draws from the RNG
    logs_throughput = True  # eval records in metrics.jsonl carry tokens/s (and MFU); the display always does
    legacy_counts: dict[str, str] = {}  # older checkpoints' names of progress counts -> today's
    train: Any = None  # datasets: len(d) rows, d.batch(rows) -> (x, y)
    val: Any = None

    # -- set-up -------------------------------------------------------------------------------

    def build(self, engine: Any, resume_from: dict[str, Any] | None) -> tuple[torch.nn.Module, Any]:
        """Read the data, then build the model as the task trains it: (model, model config)."""
        raise NotImplementedError

    def too_little_data(self, engine: Any) -> Exception:
        raise NotImplementedError

    def start_info(self, engine: Any) -> dict[str, Any]:
        return {}

    def write_config(self, engine: Any) -> None:
        """The run's config.yaml: the settings it goes on with."""
        raise NotImplementedError

    # -- batches and losses -------------------------------------------------------------------

    def micro_batches(self, data: Any, rows: list[int], accum: int, rank: int, world: int) -> list[tuple]:
        """This rank's micro-batches of a global batch of ``rows``: the whole batch padded as one
        process pads it, cut into ``accum`` micro-batches, each split between the ranks."""
        x, y = data.batch(rows)
        n = x.shape[0]
        size = -(-n // accum)
        parts = []
        for start in range(0, n, size):
            xs, ys = x[start : start + size], y[start : start + size]
            m = xs.shape[0]
            parts.append(
                (xs[m * rank // world : m * (rank + 1) // world], ys[m * rank // world : m * (rank + 1) // world])
            )
        return parts

    def loss_mean(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The book's ``calc_loss_batch``."""
        raise NotImplementedError

    def loss_sum(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The sum of the losses ``loss_mean`` averages (0, with a graph, where it averages none)."""
        n = self.count(y)
        if n == 0:
            return model(x).sum() * 0.0  # every weight takes part, as DDP and FSDP need
        return self.loss_mean(model, x, y) * n

    def count(self, y: torch.Tensor) -> int:
        """What ``loss_mean`` averages over."""
        raise NotImplementedError

    def split_counts(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
        """What ``eval --split`` adds up over a split besides the loss (divided by its size)."""
        return {}

    def final_result(self, engine: Any) -> tuple[dict[str, Any], str]:
        """The numbers a finished run prints (and returns): the book's test loss."""
        test = getattr(self, "splits", None) and self.splits.test
        if not test:
            return {}, "no test split"
        loss = engine.loader_loss(test, shuffle=False, num_batches=None)
        return {"test_loss": loss}, f"test loss {loss:.4f}"

    def step_tokens(self, engine: Any, rows: list[int]) -> int:
        """The tokens a training step on ``rows`` counts (padding included)."""
        return int(self.train.batch(rows)[0].numel())

    def max_step_tokens(self, engine: Any) -> int:
        raise NotImplementedError

    def seen(self, progress: Any) -> dict[str, int]:
        """What a metrics record says was trained on so far."""
        return {"tokens_seen": progress.tokens_seen}

    # -- epoch ends and checkpoints -----------------------------------------------------------

    def epoch_end(self, engine: Any) -> list[dict[str, Any]]:
        return []

    def saved_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return model.state_dict()

    def load_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
        raise NotImplementedError

    def checkpoint_extra(self, engine: Any) -> dict[str, Any]:
        return {}

    def check_resume(self, engine: Any, obj: dict[str, Any]) -> None:
        """Refuse a checkpoint that cannot continue exactly here (changed data or base)."""
