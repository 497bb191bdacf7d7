"""Where a run stands: the progress every checkpoint carries, for every task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Progress:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps completed
    windows_done: int = 0  # training rows (windows or examples) consumed in the current epoch
    epoch_seed: int | None = None  # shuffling seed of the current epoch, once drawn
    tokens_seen: int = 0  # the training batches' tokens, padding included (what --max-tokens counts)
    examples_seen: int = 0  # the training rows: chapter 6's examples_seen (classify logs it)
    metrics_lines: int = 0
    best_val: float = float("inf")  # the lowest validation loss so far (best.pth holds its weights)
    nonfinite_steps: int = 0
    # The epoch just saved has not logged its end-of-epoch records (sample, accuracies) yet.
    sample_pending: bool = False
    planned_steps: int = 0  # the run's planned length, over which the LR schedule decays
    train_seconds: float = 0.0  # training time so far, over all resumes (for --max-time)
    evals_since_best: int = 0  # evaluations without a new best validation loss (for --patience)
    # CPU threads at the last save (torch.get_num_threads; 0: not recorded): a CPU run resumed with
    # another count sums in another order, off by about 1e-8 from one that never stopped.
    threads: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, legacy: dict[str, str] | None = None, batch_size: int = 1) -> Progress:
        """A checkpoint's progress, of this version or an earlier one; ``legacy``: the task's
        older names of its counts (``seen`` -> ``examples_seen``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        progress = cls(**{k: v for k, v in d.items() if k in known})
        # Finetune checkpoints of version 2 counted the epoch's position in batches of --batch-size.
        if "batches_done" in d and "windows_done" not in d:
            progress.windows_done = int(d["batches_done"]) * batch_size
        for old, new in (legacy or {}).items():
            if old in d and new not in d:
                setattr(progress, new, d[old])
        return progress
