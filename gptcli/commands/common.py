"""What the commands that run training share: the signal flag the loop polls, the budget a
run has already reached, and the W&B logger as the terminal reports it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from gptcli import console, rundir, wandb_log
from gptcli.errors import UsageError
from gptcli.paths import display_path, shell_path


def set_threads(threads: int | None) -> None:
    """``--threads``: torch loads only when it is given (the run directory is not locked yet);
    not given, a count an earlier command of this process asked for is forgotten, so that a
    resumed run takes its own (``Engine._check_threads``)."""
    import sys

    if threads is not None or "gptcli.device" in sys.modules:
        from gptcli.device import set_threads as set_torch_threads

        set_torch_threads(threads)


# ---------------------------------------------------------------------------------------------
# Signals: the handler only sets a flag; the loop saves at the next step boundary.


class StopFlag:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __call__(self) -> int | None:
        return self.signum

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            # A second Ctrl-C: abort now. A save in progress removes its temporary file and the
            # CLI exits 130; every checkpoint already under its final name is complete.
            raise KeyboardInterrupt
        first, self.signum = self.signum is None, signum
        if not first:
            return
        if signum == signal.SIGINT:
            console.warn("Ctrl-C: saving a checkpoint at the end of this step (Ctrl-C again to abort)")
        else:  # sent by a scheduler or kill, not typed: no Ctrl-C to offer
            console.warn(f"{signal.Signals(signum).name}: saving a checkpoint at the end of this step, then stopping")

    def install(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def _wandb_logger(
    run_dir: Path, *, explicit: bool, project: str | None, config: dict[str, Any]
) -> wandb_log.WandbLogger | None:
    """The W&B logger of a run, said on stderr; None (with a warning) for a resumed run that
    logged to W&B before when wandb is no longer installed."""
    try:
        wandb_log.check_available()
    except UsageError:
        if explicit:
            raise
        console.warn(
            f"{display_path(rundir.wandb_run_path(run_dir))} exists but wandb is not installed; not logging to W&B"
        )
        return None
    logger = wandb_log.WandbLogger(run_dir, config=config, project=project, warn=console.warn)
    if logger.mode == "disabled":
        console.info("W&B logging is off (WANDB_MODE=disabled)")
    elif logger.offline:
        local = Path(run_dir) / wandb_log.LOG_DIR
        console.info(
            f"W&B run {logger.run_id} logged offline to {display_path(local)}; upload with: "
            f"wandb sync {shell_path(local)}/offline-run-*"
        )
    else:
        console.info(f"W&B run {logger.project}/{logger.run_id}" + (f": {logger.url}" if logger.url else ""))
    return logger


def check_loggers(*, tensorboard: bool, wandb: bool, wandb_project: str | None) -> None:
    """Before a run directory is claimed: the loggers asked for are installed, and the W&B
    project is one W&B takes (a usage error otherwise)."""
    from gptcli.tensorboard import check_available

    if tensorboard:
        check_available()
    if wandb_project is not None and not wandb:
        raise UsageError("--wandb-project is the W&B project for --wandb: pass --wandb too")
    wandb_log.check_project(wandb_project)
    if wandb:
        wandb_log.check_available()
