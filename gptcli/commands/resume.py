"""``gptcli resume`` and ``gptcli finetune resume``: one flow for every kind of run. The run is
locked before its checkpoint is chosen; the checkpoint's kind then decides whose settings it
continues with (``gptcli.commands.train`` for pretraining, ``gptcli.commands.finetune`` for the
finetunes), and the one training engine goes on from it exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli import console, rundir, wandb_log
from gptcli.commands.finetune import continue_run
from gptcli.commands.train import _epochs, _report_config_file, _set_threads, run_training
from gptcli.config import ModelConfig, TrainConfig, build_config
from gptcli.errors import CheckpointError, UsageError
from gptcli.paths import display_path, shell_path
from gptcli.run import Run, ended_early
from gptcli.tasks import FINETUNE_RECORDED, KIND_INFO

# The flags that change a run's length on resume, as `gptcli resume` spells them.
LENGTH_FLAGS = ("epochs", "max_steps", "max_tokens", "max_time", "patience")


def _latest_unfinished_run(epochs: int | None, length: dict[str, Any] | None = None) -> Path:
    """The run a bare ``gptcli resume`` continues: the most recent one with epochs left (up to
    ``--epochs`` when given), said on stderr, so that a finished run is never picked by surprise."""
    run = Run.latest_unfinished(rundir.RUNS_ROOT, epochs=epochs, length=length)
    if run is not None:
        console.info(f"resuming {display_path(run.path)} (the most recent unfinished run)")
        return run.path
    latest = Run.latest(rundir.RUNS_ROOT)
    if latest is None:
        raise CheckpointError(f"no training run found under {rundir.RUNS_ROOT}/; start one with: gptcli train FILE.txt")
    progress = latest.epochs()
    if progress is None:
        raise CheckpointError(f"no run under {rundir.RUNS_ROOT}/ has a checkpoint to resume from")
    done = progress[0]
    raise UsageError(
        f"every run under {rundir.RUNS_ROOT}/ has finished; the most recent, {display_path(latest.path)}, did its "
        f"{_epochs(done)}: extend it with: gptcli resume {shell_path(latest.path)} --epochs N (N > {done})"
    )


def resume_command(
    target: Path | None,
    *,
    epochs: int | None = None,
    max_steps: int | str | None = None,
    max_tokens: int | str | None = None,
    max_time: float | str | None = None,
    patience: int | None = None,
    quiet: bool = False,
    threads: int | None = None,
    wandb: bool = False,
    out: Path | None = None,
    finetune_only: bool = False,
) -> Path:
    """Continue a run; ``epochs``, the budgets and ``patience`` given replace the run's own (to
    extend it: with a larger budget it continues exactly as if it had been set from the start).
    ``wandb`` starts W&B logging; a run that logged to W&B before continues its W&B run anyway."""
    console.set_quiet(quiet)
    if epochs is not None and epochs < 1:  # before any run is looked for; above 1, the run's own epochs decide
        raise UsageError(f"invalid --epochs: {epochs} (must be an integer >= 1)")
    if wandb:
        wandb_log.check_available()
    _set_threads(threads)
    length = {
        k: v
        for k, v in zip(LENGTH_FLAGS, (epochs, max_steps, max_tokens, max_time, patience), strict=True)
        if v is not None
    }
    if target is None and not finetune_only:  # `gptcli finetune resume` alone: the latest run
        target = _latest_unfinished_run(epochs, length)
    # The run is locked before its checkpoint is even chosen: a second resume is refused at once,
    # and never reads a checkpoint that the first is rotating away.
    run_dir = rundir.resume_target_run(target)
    lock = rundir.lock_run_dir(run_dir) if run_dir is not None else None
    try:
        path, obj, model_cfg, train_cfg = _resume_from(target, length, finetune_only=finetune_only)
        if train_cfg is None:  # a finetuning run: its settings are the finetune command's to read
            return _resume_finetune(path, obj, run_dir=run_dir, lock=lock, length=length, wandb=wandb)
        if run_dir is None:  # a checkpoint outside any run directory starts a new one
            run_dir = Path(out) if out is not None else rundir.default_run_dir(train_cfg.data)
            lock = rundir.claim_new_run_dir(run_dir)
            console.info(
                f"{display_path(path)} is not in a run's checkpoints/: continuing it as a new run in "
                f"{display_path(run_dir)}" + ("" if out is not None else " (choose the directory with --out DIR)")
            )
        elif out is not None:
            raise UsageError(
                f"invalid --out: {display_path(path)} belongs to the run {display_path(run_dir)}, which goes on in "
                "place (--out is for a checkpoint outside any run)"
            )
        else:
            _report_config_file(run_dir, model_cfg, train_cfg, checkpoint=path, given=tuple(length))
        _check_stdin(train_cfg, run_dir)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run_training(model_cfg, train_cfg, run_dir, lock=lock, restore_from=obj, wandb=wandb)


def _resume_from(
    target: Path | None, length: dict[str, Any], *, finetune_only: bool = False
) -> tuple[Path, dict[str, Any], ModelConfig | None, TrainConfig | None]:
    """The checkpoint ``resume`` continues from, loaded, and the settings it continues with (None
    for a finetuning checkpoint, whose settings ``gptcli.commands.finetune`` reads)."""
    from gptcli.checkpoint import check_state_fits, load_checkpoint, read_model_config, resolve_checkpoint

    path = resolve_checkpoint(target, warn=console.warn)
    obj = load_checkpoint(path)
    if obj.get("kind") in FINETUNE_RECORDED:
        return path, obj, None, None
    if finetune_only:
        raise UsageError(
            f"{display_path(path)}: not a finetuning checkpoint (kind {obj.get('kind')!r}); use: "
            f"gptcli resume {shell_path(path)}"
        )
    if obj.get("kind") != KIND_INFO["lm"].recorded or "optimizer_state_dict" not in obj or "train_config" not in obj:
        raise CheckpointError(
            f"{display_path(path)}: holds weights only (no optimizer state or progress); start a run from it "
            f"with: gptcli train FILE --init {shell_path(path)}"
        )
    model_cfg = read_model_config(obj, path)
    check_state_fits(model_cfg, obj["model_state_dict"], path)  # before the model is built
    progress = obj.get("progress", {})
    epochs = length.get("epochs")
    if epochs is not None:
        if epochs < progress.get("epoch", 0):
            raise UsageError(
                f"invalid --epochs: {epochs} (the run has already completed {_epochs(progress.get('epoch'))})"
            )
    # The stored settings pass the same validation layer as a config file; --epochs and the budget
    # flags go on top.
    train_cfg = build_config(TrainConfig, (f"{path}: train_config", obj["train_config"]), (None, length))
    if progress.get("epoch", 0) >= train_cfg.epochs:
        n = train_cfg.epochs
        raise UsageError(
            f"{display_path(target)}: the run already finished its {_epochs(n)}; extend it with: "
            f"gptcli resume {shell_path(target)} --epochs N (N > {n})"
        )
    reached = ended_early(train_cfg, progress)
    if reached is not None:
        flag = reached.split()[0]
        raise UsageError(
            f"{display_path(target)}: the run already reached {reached} (step {progress.get('step', 0)}, "
            f"{int(progress.get('tokens_seen', 0)):,} tokens); extend it with: gptcli resume {shell_path(target)} "
            f"{flag} N (a larger N)"
        )
    return path, obj, model_cfg, train_cfg


def _check_stdin(train_cfg: TrainConfig, run_dir: Path) -> None:
    """A run trained on ``-`` resumes only with the same text piped in again (the checkpoint's
    data fingerprint must match): on a terminal it would wait silently for typed text."""
    from gptcli.formats import stdin_is_terminal

    if "-" in (*train_cfg.data, train_cfg.val_file) and stdin_is_terminal():
        raise UsageError(
            f"{display_path(run_dir)}: was trained on standard input ('-'), which is a terminal here, so it cannot "
            "be resumed from it: its data fingerprint needs the same text piped in again, e.g. "
            f"cat FILE | gptcli resume {shell_path(run_dir)}"
        )


def _resume_finetune(
    path: Path,
    obj: dict[str, Any],
    *,
    run_dir: Path | None,
    lock: rundir.RunLock | None,
    length: dict[str, Any],
    wandb: bool,
) -> Path:
    """``gptcli resume`` on a finetuning run: what ``gptcli finetune resume`` does, with the epochs
    and budgets given."""
    if run_dir is None or lock is None:  # a checkpoint outside a run's checkpoints/: the run goes on beside it
        run_dir = path.parent
        lock = rundir.lock_run_dir(run_dir)
    continue_run(path, obj, run_dir=run_dir, lock=lock, length=length, wandb=wandb)
    return run_dir
