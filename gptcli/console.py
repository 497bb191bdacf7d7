"""The one place that imports rich: progress bars, tables and messages, all on stderr.

Results (sampled text, eval numbers, --json output) go to stdout through ``print_result``;
everything else goes to stderr, so ``gptcli sample ... > out.txt`` gives clean text.
When stderr is not a terminal, progress becomes plain, tidy log lines.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from gptcli.training import Callbacks, TrainState

_err: Console | None = None
_quiet = False


def err_console() -> Console:
    global _err
    if _err is None:
        _err = Console(stderr=True, highlight=False, no_color="NO_COLOR" in os.environ or None)
    return _err


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def interactive() -> bool:
    """Progress bars only on a terminal; log lines otherwise."""
    return err_console().is_terminal and not _quiet


def info(message: str) -> None:
    if not _quiet:
        err_console().print(message, markup=False)


def warn(message: str) -> None:
    err_console().print(f"warning: {message}", style="yellow", markup=False)


def error(message: str) -> None:
    err_console().print(f"error: {message}", style="bold red", markup=False, soft_wrap=True)


def print_result(text: str = "", *, end: str = "\n") -> None:
    sys.stdout.write(text + end)
    sys.stdout.flush()


def fmt_loss(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


class TrainProgress(Callbacks):
    """Drives a rich progress bar (or log lines) from the training loop's callbacks."""

    def __init__(self, *, print_samples: bool = True):
        self.print_samples = print_samples
        self.progress: Progress | None = None
        self.task = None
        self.last_eval: dict[str, Any] | None = None
        self.tok_per_s = 0.0
        self._t0 = time.perf_counter()
        self._tokens0 = 0

    # rich's columns read these fields from the task
    def _fields(self, state: TrainState | None = None) -> dict[str, Any]:
        ev = self.last_eval or {}
        return {
            "epoch": (state.epoch + 1) if state else 1,
            "train": fmt_loss(ev.get("train_loss", float("nan"))),
            "val": fmt_loss(ev.get("val_loss", float("nan"))),
            "tps": f"{self.tok_per_s:,.0f}",
        }

    def on_start(self, info_: dict[str, Any]) -> None:
        self.epochs_total = info_["total_steps"] // max(1, info_["steps_per_epoch"])
        lines = [
            f"model: {info_['params']:,} parameters on {info_['device']}",
            f"data: {info_['train_tokens']:,} training tokens ({info_['train_windows']} windows), "
            f"{info_['val_tokens']:,} validation tokens ({info_['val_windows']} windows)",
            f"run: {info_['run_dir']} ({info_['steps_per_epoch']} steps per epoch, {info_['total_steps']} in all)"
            + (" [resumed]" if info_["resumed"] else ""),
        ]
        for line in lines:
            info(line)
        self._t0 = time.perf_counter()
        if interactive():
            self.progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/" + str(self.epochs_total)),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("train {task.fields[train]} val {task.fields[val]}"),
                TextColumn("{task.fields[tps]} tok/s"),
                TimeRemainingColumn(),
                console=err_console(),
                transient=False,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=info_["total_steps"], **self._fields())

    def on_step(self, state: TrainState, info_: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self._tokens0 == 0:
            self._tokens0, self._t0 = state.tokens_seen, now
        elif now > self._t0:
            self.tok_per_s = (state.tokens_seen - self._tokens0) / (now - self._t0)
        if self.progress is not None:
            self.progress.update(self.task, completed=state.step, **self._fields(state))

    def on_eval(self, record: dict[str, Any]) -> None:
        self.last_eval = record
        if self.progress is None:
            info(
                f"ep {record['epoch']} step {record['step']:06d}: train loss {fmt_loss(record['train_loss'])}, "
                f"val loss {fmt_loss(record['val_loss'])}, {record['tokens_seen']:,} tokens seen, "
                f"{record['tokens_per_sec']:,.0f} tok/s"
            )

    def on_sample(self, record: dict[str, Any]) -> None:
        if self.print_samples:
            text = record["text"].replace("\n", " ")
            if self.progress is not None:
                self.progress.console.print(f"[epoch {record['epoch']}] {text}", markup=False, highlight=False)
            else:
                print_result(text)

    def on_save(self, path: Path, reason: str) -> None:
        if self.progress is None and reason != "save-every":
            info(f"saved {path}")

    def warn(self, message: str) -> None:
        warn(message)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def byte_progress(total_files: int) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console(),
        disable=not interactive(),
    )


def step_progress(description: str, total: int | None) -> Progress:
    return Progress(
        TextColumn(description),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        disable=not interactive(),
    )
