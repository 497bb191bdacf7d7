"""The pieces of a training step that every task shares: the optimizer, the non-finite guard,
best.pth, and the exception a clean stop raises."""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.errors import SaveError, TrainingError, os_error_reason


def update_best(
    run_dir: Path,
    path: Path,
    history: list[dict[str, Any]],
    best_val: float,
    best_saved: float,
    warn: Callable[[str], None],
) -> float:
    """Link best.pth to the checkpoint just saved at ``path`` when its latest validation loss is the
    run's best and lower than the one best.pth holds; returns the loss best.pth now holds. A failed
    link is a warning: the step checkpoint is saved, only the best.pth shortcut is stale."""
    if not history or math.isnan(history[-1]["val_loss"]) or history[-1]["val_loss"] > best_val:
        return best_saved
    if history[-1]["val_loss"] >= best_saved:
        return best_saved
    try:
        rundir.link_best(run_dir, path)
    except OSError as e:
        best = rundir.best_checkpoint_path(run_dir)
        warn(f"could not update {best} ({os_error_reason(e)}); it still points to an earlier checkpoint")
        return best_saved
    return history[-1]["val_loss"]


def make_optimizer(model: torch.nn.Module, cfg: Any, device: torch.device) -> torch.optim.AdamW:
    # The book decays every parameter (embeddings and LayerNorms too); kept so its run reproduces.
    # The fused kernel computes the same update in one pass: 10x faster than the loop on CPU.
    # ``--decay matrices`` is nanoGPT's split: no decay for biases and LayerNorm weights (one group
    # each, so the default keeps the book's single group and its checkpoints' optimizer state).
    fused = device.type in ("cpu", "cuda")
    betas = (0.9, cfg.adam_beta2)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay == "matrices":
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=betas, weight_decay=cfg.weight_decay, fused=fused)


class Interrupted(TrainingError):
    """Raised after a clean stop on SIGINT/SIGTERM; the exit code is 128 + the signal. A
    deliberate stop is no error: the CLI's line says ``interrupted: ...``."""

    label = "interrupted"

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class NonFiniteGuard:
    """Counts optimizer steps whose loss was NaN or inf; more than ``allowed`` is an error.

    With the fused AdamW the check stays on the device: the kernel skips the update when
    ``found_inf`` is set, and the counters are read back only at eval and save points, so there is
    no per-step host sync on CUDA. CPU takes the same path, so CI tests the code GPUs run. Other
    optimizers (fp16 with a GradScaler) check on the host and skip the step there.
    """

    def __init__(self, *, allowed: int, device: torch.device, on_device: bool, warn: Callable[[str], None]):
        self.allowed, self.on_device, self.warn = allowed, on_device, warn
        self.count = 0  # non-finite steps known on the host
        self._bad = torch.zeros((), dtype=torch.int64, device=device)
        self._first = torch.full((), -1, dtype=torch.int64, device=device)
        self._last = torch.full((), -1, dtype=torch.int64, device=device)

    def restore(self, count: int) -> None:
        self.count = count
        self._bad.fill_(count)

    def record(self, nonfinite: torch.Tensor, step: int, optimizer: torch.optim.Optimizer) -> bool:
        """Note whether step ``step`` was non-finite; True when the caller must skip its update
        (host path only: on the device path the optimizer skips it itself)."""
        if self.on_device:
            self._bad += nonfinite.to(torch.int64)
            self._first = torch.where(nonfinite & (self._first < 0), step, self._first)
            self._last = torch.where(nonfinite, step, self._last)
            optimizer.found_inf = nonfinite.to(torch.float32)  # 0-dim, like the step counters
            return False
        if bool(nonfinite):
            self.count += 1
            self._report(step)
            return True
        return False

    def check(self) -> None:
        """Raise if more non-finite steps happened than allowed (reads the device counters)."""
        if self.on_device:
            bad = int(self._bad.item())
            if bad > self.count:
                self.count = bad
                self._report(int(self._last.item()), first=int(self._first.item()))

    def _report(self, step: int, first: int | None = None) -> None:
        """``step`` is the latest non-finite step, ``first`` the earliest (when known)."""
        n = self.count
        first = step if first is None or first < 0 else first
        where = f"step {first}" if first == step else f"step {first} (and {n - 1} more, up to step {step})"
        if n > self.allowed:
            hint = (
                f" ({n} such steps: more than --skip-nonfinite {self.allowed})"
                if self.allowed
                else "; --skip-nonfinite N tolerates N such steps"
            )
            raise TrainingError(f"non-finite loss at {where}; no checkpoint written for it{hint}")
        self.warn(f"skipped non-finite loss at {where}")


def check_disk_space(engine: Any) -> None:
    """Refuse to start when the disk cannot take one checkpoint, before any epoch's work is at
    risk (the size is known from the model and optimizer); warn when it cannot take all the
    checkpoints the run keeps."""
    if engine.fsdp:  # shards have no storage of the whole tensor to measure: weights + 2 moments
        size = ckpt.with_margin(3 * sum(p.numel() * p.element_size() for p in engine.model.parameters()))
    else:
        size = ckpt.estimate_training_checkpoint(engine.model, engine.optimizer)
    where = engine.run_dir
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        ckpt.check_free_space(where, size, "one checkpoint of this model")
    except SaveError as e:
        raise SaveError(f"{e}; nothing was trained: free some space first") from None
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return
    have = len(rundir.list_step_checkpoints(engine.run_dir))
    # The newest --keep-last, the one being written before the oldest goes, and best.pth,
    # which can keep a rotated-out checkpoint alive.
    peak = max(1, engine.cfg.keep_last + 2 - have)
    if free < peak * size:
        engine.cb.warn(
            f"{ckpt.format_bytes(free)} free in {where} holds {free // size} checkpoint(s) of "
            f"{ckpt.format_bytes(size)}; this run may need {peak} more (--keep-last {engine.cfg.keep_last}, "
            "the save in progress and best.pth): a later save may fail for lack of space"
        )
