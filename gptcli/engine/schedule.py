"""The run's length and timing, as pure functions: the LR schedule, budgets, intervals."""

from __future__ import annotations

import math
import time
from typing import Protocol

from gptcli.units import parse_interval


def lr_at(step: int, *, lr: float, warmup_steps: int, total_steps: int, min_lr: float | None) -> float:
    """Learning rate for optimizer step ``step`` (0-based).

    Constant ``lr`` (the book's chapter 5) unless a warm-up or ``min_lr`` is set; then linear
    warm-up from 0 over ``warmup_steps``, followed by cosine decay to ``min_lr`` (default lr/10) at
    ``total_steps``, as in the book's appendix D.
    """
    if warmup_steps == 0 and min_lr is None:
        return lr
    floor = lr * 0.1 if min_lr is None else min_lr
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return floor + 0.5 * (lr - floor) * (1.0 + math.cos(math.pi * progress))


class Budgets(Protocol):
    """The length settings of a run, as ``TrainConfig`` and ``gptcli.finetune``'s config hold them."""

    epochs: int
    max_steps: int | None
    max_tokens: int | None
    max_time: float | None


def planned_steps(cfg: Budgets, steps_per_epoch: int, tokens_per_step: int) -> int:
    """The run's planned length in optimizer steps, over which the LR schedule decays: its epochs,
    or a step or token budget that ends it sooner (a time budget cannot be planned in steps).
    ``tokens_per_step``: a step's tokens, or the most a step can hold where batches differ (the
    plan then ends no later than the budget does)."""
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
    if cfg.max_tokens is not None:
        total = min(total, -(-cfg.max_tokens // tokens_per_step))
    return total


def format_duration(seconds: float) -> str:
    """90 -> "90s", 5400 -> "1h30m", 0.5 -> "0.5s": as ``--max-time`` takes it."""
    if seconds < 60 or seconds != int(seconds):
        return f"{seconds:g}s"
    h, rest = divmod(int(seconds), 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{n}{u}" for n, u in ((h, "h"), (m, "m"), (s, "s")) if n) or "0s"


def budget_reached(cfg: Budgets, *, step: int, tokens_seen: int, seconds: float) -> str | None:
    """The budget flag that ends the run at this point (``--max-steps 12``), or None."""
    if cfg.max_steps is not None and step >= cfg.max_steps:
        return f"--max-steps {cfg.max_steps}"
    if cfg.max_tokens is not None and tokens_seen >= cfg.max_tokens:
        return f"--max-tokens {cfg.max_tokens:,}"
    if cfg.max_time is not None and seconds >= cfg.max_time:
        return f"--max-time {format_duration(cfg.max_time)}"
    return None


def stopped_message(reason: str, *, step: int, tokens_seen: int, seconds: float) -> str:
    """The line that says which budget ended a run, and where."""
    took = format_duration(round(seconds) if seconds >= 60 else round(seconds, 1))
    return f"stopped: {reason} at step {step} ({tokens_seen:,} tokens, {took} of training)"


class Every:
    """When an ``--eval-freq``/``--save-every`` interval falls due after a step: every N steps, every
    N tokens (when the tokens seen cross a multiple of N) or every S seconds of wall time. Steps
    and tokens follow the run's progress, so they fall on the same steps after a resume; time
    does not. ``first``: also due on the run's first step (the book evaluates at step 0)."""

    def __init__(self, value: int | str, *, first: bool):
        self.unit, self.every = parse_interval(value)
        self.first = first
        self._last = time.monotonic()

    def due(self, step: int, tokens_before: int, tokens_after: int) -> bool:
        if not self.every:
            return False
        if self.unit == "steps":
            return (step - 1) % self.every == 0 if self.first else step % self.every == 0
        if self.first and tokens_before == 0:
            self._last = time.monotonic()
            return True
        if self.unit == "tokens":
            return tokens_before // self.every != tokens_after // self.every
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            return True
        return False
