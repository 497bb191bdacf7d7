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
from typing import TYPE_CHECKING, Any

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
from rich.table import Table

from gptcli.callbacks import Callbacks
from gptcli.paths import display_path

if TYPE_CHECKING:
    from gptcli.training import TrainState

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
        err_console().print(message, markup=False, soft_wrap=True)  # a log line is never wrapped


def warn(message: str) -> None:
    err_console().print(f"warning: {message}", style="yellow", markup=False, soft_wrap=True)


def error(message: str, *, label: str = "error") -> None:
    """The one line a failure ends with ("error: ..."), or a deliberate stop ("interrupted: ...")."""
    style = "bold red" if label == "error" else "bold"
    err_console().print(f"{label}: {message}", style=style, markup=False, soft_wrap=True)


def hint(message: str) -> None:
    """What to try next, on the line under an error."""
    err_console().print(f"hint: {message}", markup=False, soft_wrap=True)


def print_result(text: str = "", *, end: str = "\n") -> None:
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except OSError as e:
        raise stdout_failed(e) from None


def stdout_failed(e: OSError) -> Exception:
    """What a failed write to stdout (``> /dev/full``, a closed pipe) becomes: a SaveError that
    says so in one line, or the BrokenPipeError itself (the reader left: the CLI exits quietly).
    stdout is pointed at the null device first, so that the interpreter's last flush of what is
    still buffered cannot fail again and print a second error."""
    from gptcli.errors import SaveError, os_error_reason

    silence_stdout()
    if isinstance(e, BrokenPipeError):
        return e
    return SaveError(f"stdout: could not write the results ({os_error_reason(e)})")


def silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout (a test's capture): nothing buffered
        pass


# The width of a table written to a pipe or a file: no cell is ever cut to fit (rich would cut a
# long checkpoint path to 80 columns with an ellipsis), the table is as wide as its content.
_UNLIMITED = 1_000_000


def print_table(columns: list[str], rows: list[list[str]], *, left: set[int] = frozenset()) -> None:
    """A boxed table on stdout (a result), fitted to the terminal's width on a terminal; elsewhere
    without colour and never cut, so that a script or a file gets every cell whole. The columns in
    ``left`` are left-aligned, the others right-aligned."""
    table = Table(title=None, show_header=True)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i in left else "right", overflow="fold")
    for row in rows:
        table.add_row(*row)
    if sys.stdout.isatty():
        Console(highlight=False).print(table)
    else:
        Console(highlight=False, no_color=True, width=_UNLIMITED, soft_wrap=True).print(table)


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
        self._tok_bar: Progress | None = None  # the token cache's build, before training starts
        self._tok_task = None
        self._tok_finished = False

    # rich's columns read these fields from the task
    def _fields(self, state: TrainState | None = None) -> dict[str, Any]:
        # Before the first evaluation there is no loss to show (a resumed run shows its
        # checkpoint's last), and no rate before the second step: a dash, never a "nan".
        ev = self.last_eval or {}
        return {
            "epoch": (state.epoch + 1) if state else 1,
            "train": fmt_loss(ev["train_loss"]) if "train_loss" in ev else "–",
            "val": fmt_loss(ev["val_loss"]) if "val_loss" in ev else "–",
            "tps": f"{self.tok_per_s:,.0f}" if self.tok_per_s else "–",
        }

    def on_tokenize(self, done: int, total: int) -> None:
        if self._tok_finished:
            return
        if self._tok_bar is None:
            self._tok_bar = byte_progress(1)
            self._tok_bar.start()
            self._tok_task = self._tok_bar.add_task("tokenizing into the token cache", total=total)
        self._tok_bar.update(self._tok_task, completed=done, total=total)
        if done >= total:
            self._tok_bar.stop()
            self._tok_bar, self._tok_finished = None, True

    def on_start(self, info_: dict[str, Any]) -> None:
        self.last_eval = info_.get("last_eval")
        self.epochs_total = info_.get("epochs") or info_["total_steps"] // max(1, info_["steps_per_epoch"])
        for line in self.start_lines(info_):
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

    def start_lines(self, info_: dict[str, Any]) -> list[str]:
        """What the run is, said once before its first step."""
        return [
            f"model: {info_['params']:,} parameters on {info_['device']}",
            f"data: {info_['train_tokens']:,} training tokens ({info_['train_windows']:,} windows), "
            f"{info_['val_tokens']:,} validation tokens ({info_['val_windows']:,} windows)",
            f"run: {display_path(info_['run_dir'])} ({info_['steps_per_epoch']} steps per epoch, {info_['total_steps']} in all)"
            + (" [resumed]" if info_["resumed"] else ""),
        ]

    def on_step(self, state: TrainState, info_: dict[str, Any]) -> None:
        now = time.perf_counter()
        if self._tokens0 == 0:
            self._tokens0, self._t0 = state.tokens_seen, now
        elif now > self._t0:
            self.tok_per_s = (state.tokens_seen - self._tokens0) / (now - self._t0)
        if self.progress is not None:
            self.progress.update(self.task, completed=state.step, **self._fields(state))

    def on_eval(self, record: dict[str, Any]) -> None:
        """One line per evaluation: piped, as a log line; in a terminal, above the bar (as
        nanoGPT's and litgpt's scroll by), so that the run's history stays on the screen."""
        self.last_eval = record
        self.info(
            f"ep {record['epoch']} step {record['step']:06d}: train loss {fmt_loss(record['train_loss'])}, "
            f"val loss {fmt_loss(record['val_loss'])}, {record['tokens_seen']:,} tokens seen, "
            f"{record['tokens_per_sec']:,.0f} tok/s"
        )

    def on_sample(self, record: dict[str, Any]) -> None:
        if self.print_samples:
            text = record["text"].replace("\n", " ").rstrip()  # the book's one line, without its trailing blanks
            if self.progress is not None:
                self.progress.console.print(f"[epoch {record['epoch']}] {text}", markup=False, highlight=False)
            else:
                print_result(text)

    def on_save(self, path: Path, reason: str) -> None:
        if reason != "save-every":
            self.info(f"saved {display_path(path)}")

    def warn(self, message: str) -> None:
        warn(message)

    def info(self, message: str) -> None:
        if self.progress is not None:
            self.progress.console.print(message, markup=False, highlight=False, soft_wrap=True)
        else:
            info(message)

    def close(self) -> None:
        if self._tok_bar is not None:  # stopped while tokenizing
            self._tok_bar.stop()
            self._tok_bar = None
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


class _LogLines(Progress):
    """A Progress that draws nothing: when stderr is not a terminal (a log file, CI), each task
    logs a tidy line when it passes a tenth of its total, at most one every ``interval`` seconds,
    and a last line when it completes. A job of a second logs one line, a long one one per tenth."""

    interval = 5.0  # seconds between two lines of one task (the last line always comes)
    clock = staticmethod(time.monotonic)

    def __init__(self, label: str, *, as_bytes: bool = False, **kwargs: Any):
        super().__init__(disable=True, **kwargs)
        self._label, self._as_bytes = label, as_bytes
        self._logged: dict[Any, int] = {}
        self._logged_at: dict[Any, float] = {}

    def update(self, task_id, **kwargs: Any) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def reset(self, task_id, **kwargs: Any) -> None:  # type: ignore[override]
        self._logged.pop(task_id, None)  # a restarted task logs its tenths again
        self._logged_at.pop(task_id, None)
        super().reset(task_id, **kwargs)

    def _log(self, task_id) -> None:
        task = self._tasks[task_id]
        if _quiet or not task.total:
            return
        now = self.clock()
        since = now - self._logged_at.setdefault(task_id, now)  # the first update starts the clock
        tenth = min(10, int(10 * task.completed / task.total))
        if tenth <= self._logged.get(task_id, 0) or (tenth < 10 and since < self.interval):
            return
        self._logged[task_id], self._logged_at[task_id] = tenth, now
        label = self._label.format(task=task) if "{" in self._label else self._label
        if self._as_bytes:
            done = f"{human_bytes(task.completed)} of {human_bytes(task.total)}"
        else:
            done = f"{int(task.completed):,}/{int(task.total):,}"
        info(f"{label}: {10 * tenth:3d}% ({done}, {task.elapsed or 0:.1f} s)")


def human_bytes(n: float, *, digits: int = 1) -> str:
    """``n`` bytes in decimal units: "512 B", "1.5 kB", "497.76 MB" (``digits`` after the point)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.{digits}f} {unit}"
        n /= 1000
    return f"{n:.{digits}f} TB"


def byte_progress(total_files: int) -> Progress:
    """Progress for downloads and conversions, in bytes; log lines when not on a terminal."""
    if not interactive():
        return _LogLines("{task.description}", as_bytes=True, console=err_console())
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console(),
    )


def step_progress(description: str, total: int | None) -> Progress:
    """Progress over counted steps (evaluation windows, tokenizing); log lines when not on a terminal."""
    if not interactive():
        return _LogLines(description, console=err_console())
    return Progress(
        TextColumn(description),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=err_console(),
    )
