"""``gptcli train`` and ``gptcli resume``: settings resolved from defaults, a config file and
flags; the run set up with its callbacks (progress, TensorBoard, W&B) and signal handling; the
trainer driven to the end or to a clean stop.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

# torch loads inside the functions (checkpoint, device, distributed, training): a run directory is
# claimed and locked before that, so that a second writer is refused at once.
from gptcli import console, rundir, weights
from gptcli.callbacks import Callbacks, Fanout
from gptcli.commands.common import StopFlag, _wandb_logger, check_loggers, set_threads
from gptcli.config import (
    ModelConfig,
    TrainConfig,
    build_config,
    check_architecture,
    coerce_values,
    describe_interval,
    dump_yaml_config,
    load_yaml_config,
    parse_interval,
    preset_values,
)
from gptcli.errors import UsageError
from gptcli.paths import display_path, shell_path
from gptcli.tensorboard import LOG_DIR, TensorBoardWriter

# ---------------------------------------------------------------------------------------------
# Signals: the handler only sets a flag; the loop saves at the next step boundary.


# ---------------------------------------------------------------------------------------------
# Settings


def resolve_train_configs(
    *,
    config_file: Path | None,
    preset: str | None,
    model_flags: dict[str, Any],
    train_flags: dict[str, Any],
    check_paths: bool = True,
) -> tuple[ModelConfig | None, TrainConfig, dict[str, Any]]:
    """Defaults, then the config file, then flags given on the command line.

    Every value goes through the one validation layer of ``gptcli.config`` (types, then ranges),
    and an error names the config file when the bad value came from it. With ``--init`` the
    architecture comes from the initial weights, so the model is not built here (None): the model
    settings given are returned, checked and coerced, for comparison with the checkpoint's.
    """
    file_cfg = load_yaml_config(config_file) if config_file else {"model": {}, "train": {}, "finetune": {}}
    if file_cfg["finetune"]:
        kind = file_cfg["finetune"].get("kind", "KIND")
        raise UsageError(
            f"{config_file}: holds a 'finetune' section, a finetuning run's settings; use: gptcli finetune {kind} "
            f"--config {shell_path(config_file)}"
        )
    where = str(config_file) if config_file else None
    model_file = dict(file_cfg["model"])
    file_preset = model_file.pop("preset", None)
    preset_layer = []
    if preset is not None:
        preset_layer = [(None, preset_values(preset))]
    elif file_preset is not None:
        preset_layer = [(None, preset_values(file_preset, where))]
    model_given = {k: v for k, v in model_flags.items() if v is not None}
    train_given = {k: v for k, v in train_flags.items() if v is not None}
    if config_file and "data" not in train_given:
        _locate_config_paths(file_cfg["train"], Path(config_file), strict=check_paths)
    train_cfg = build_config(TrainConfig, (where, file_cfg["train"]), (None, train_given))
    # Absolute paths in the saved config, so that `resume` works from any directory.
    train_cfg.data = [_absolute_if_exists(p) for p in train_cfg.data]
    if train_cfg.val_file is not None:
        train_cfg.val_file = _absolute_if_exists(train_cfg.val_file)
    # A key a config file sets to its default was not asked for: every file gptcli writes (a run's
    # config.yaml, --print-config) holds every key, and must be a valid --config as it is.
    defaults = TrainConfig().to_dict()
    from_file = {k: where for k, v in file_cfg["train"].items() if k not in defaults or v != defaults[k]}
    _check_used(train_cfg, given={**from_file, **dict.fromkeys(train_given)})
    if train_cfg.init:
        given = {
            **coerce_values(ModelConfig, model_file, where),
            **coerce_values(ModelConfig, model_given, None),
        }
        if preset_layer:
            given = {**preset_layer[0][1], **given}
        return None, train_cfg, given
    model_cfg = build_config(ModelConfig, *preset_layer, (where, model_file), (None, model_given))
    return model_cfg, train_cfg, {**model_file, **model_given}


def _locate_config_paths(section: dict[str, Any], config_file: Path, *, strict: bool = True) -> None:
    """A config file's ``data`` and ``val_file``: a relative path is read from the current
    directory, as a flag's is, or else from the config file's own directory; one that is in
    neither is an error naming the file it came from and both places looked in."""
    for key in ("data", "val_file"):
        value = section.get(key)
        paths = [value] if isinstance(value, str) else value
        if (
            not isinstance(paths, list)
            or not all(isinstance(p, str) for p in paths)
            or (key == "val_file" and paths is value)
        ):
            continue  # the validation layer reports the type
        found = []
        for p in paths:
            if p == "-" or set("*?[") & set(p) or Path(p).is_absolute() or Path(p).exists():
                found.append(p)
            elif (config_file.parent / p).exists():
                found.append(str(config_file.parent / p))
            elif not strict:  # --print-config: the settings, whether or not the data is here yet
                found.append(p)
            else:
                raise UsageError(
                    f"{config_file}: {key} {p!r}: not found, neither from the current directory "
                    f"({Path.cwd()}) nor beside the config file ({display_path(config_file.parent)})"
                )
        section[key] = found if isinstance(value, list) else found[0]


def _check_used(train_cfg: TrainConfig, *, given: dict[str, str | None]) -> None:
    """Refuse a data setting given explicitly (``given``: each key and the config file it came
    from, None for a flag) that the run's data would silently ignore: ``--val-ratio`` beside
    ``--val-file`` or with token shards (whose val_*.bin are the validation set), ``--text-field``
    where no input holds records (``gptcli.formats.check_text_field``)."""
    if not train_cfg.data or not {"val_ratio", "text_field"} & set(given):
        _check_val_file(train_cfg)
        return
    from gptcli import formats, shards  # numpy, no torch: the run directory is not locked yet

    def label(key: str) -> str:
        flag = "--" + key.replace("_", "-")
        return flag if given[key] is None else f"{key} ({flag}) in {given[key]}"

    sharded = next((p for p in train_cfg.data if shards.is_shard_input(p)), None)
    if "val_ratio" in given:
        if sharded is not None:
            raise UsageError(
                f"invalid {label('val_ratio')}: {display_path(sharded)} holds token shards, whose val_*.bin shards "
                "are the validation set; drop it (to split differently: gptcli prepare ... --val-ratio R)"
            )
        if train_cfg.val_file is not None:
            raise UsageError(
                f"invalid {label('val_ratio')}: --val-file {display_path(train_cfg.val_file)} is the validation "
                "text; give one of them"
            )
    if "text_field" in given:
        if sharded is not None:
            raise UsageError(
                f"invalid {label('text_field')}: {display_path(sharded)} holds token shards, already tokenized "
                "(--text-field is for gptcli prepare)"
            )
        fmt = None if train_cfg.format == "auto" else train_cfg.format
        paths = [*train_cfg.data, *([train_cfg.val_file] if train_cfg.val_file else [])]
        inputs = [i for p in paths for i in formats.resolve_inputs([p], format=fmt)]
        formats.check_text_field(inputs, train_cfg.text_field, flag=label("text_field"))
    _check_val_file(train_cfg)


def _check_val_file(train_cfg: TrainConfig) -> None:
    """Refuse a --val-file that is one of the training files: its loss would not be a validation loss."""
    val = train_cfg.val_file
    if val is not None and val != "-" and any(_same_file(p, val) for p in train_cfg.data):
        raise UsageError(
            f"invalid --val-file: {display_path(val)} is also the training data; the validation loss needs text "
            "the model does not train on (drop --val-file: --val-ratio splits the training text)"
        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return a == b


def _absolute_if_exists(path: str) -> str:
    try:
        p = Path(path)
        if not p.exists() and path != "-" and set("*?[") & set(path):  # a glob: anchored to this directory
            return os.path.abspath(path)
        return str(p.resolve()) if p.exists() else path
    except (OSError, ValueError, RuntimeError):  # a name too long, a symlink loop: data.py reports it
        return path


def _init_weights(train_cfg: TrainConfig, given_model: dict[str, Any]):
    """Weights and architecture for ``--init``: the checkpoint's config wins; explicit
    architecture flags that disagree with it are an error listing each field."""
    from gptcli.checkpoint import check_state_fits, load_checkpoint, read_model_config

    path = weights.resolve_model(train_cfg.init, warn=console.warn)
    if Path(train_cfg.init).is_dir():  # a run directory: the run records the checkpoint it started from
        train_cfg.init = str(path.resolve())
    obj = load_checkpoint(path)
    saved = read_model_config(obj, path)
    check_state_fits(saved, obj["model_state_dict"], path)  # before the trainer allocates the model
    arch = {k: v for k, v in given_model.items() if k != "drop_rate"}
    check_architecture(saved, arch, f"--init {train_cfg.init}")
    if "drop_rate" in given_model:
        saved = dataclasses.replace(saved, drop_rate=given_model["drop_rate"])  # checked again
    return saved, obj["model_state_dict"]


# ---------------------------------------------------------------------------------------------
# The commands


def deprecated_config_flag(config: Path | None, short: Path | None) -> Path | None:
    """train's old ``-c FILE`` (``-c`` is ``--checkpoint`` in every other command): still taken,
    with a warning that names the flag to write."""
    if short is None:
        return config
    if config is not None:
        raise UsageError("give the config file once, as --config FILE")
    console.warn("-c is --checkpoint in every other gptcli command; for train's config file write --config FILE")
    return short


def train_command(
    *,
    config_file: Path | None = None,
    preset: str | None = None,
    model_flags: dict[str, Any] | None = None,
    train_flags: dict[str, Any] | None = None,
    out: Path | None = None,
    print_config: bool = False,
    quiet: bool = False,
    tensorboard: bool = False,
    wandb: bool = False,
    wandb_project: str | None = None,
    threads: int | None = None,
) -> Path:
    console.set_quiet(quiet)
    _set_threads(threads)
    model_cfg, train_cfg, given_model = resolve_train_configs(
        config_file=config_file,
        preset=preset,
        model_flags=model_flags or {},
        train_flags=train_flags or {},
        check_paths=not print_config,
    )
    init_state = None
    if train_cfg.init:
        model_cfg, init_state = _init_weights(train_cfg, given_model)
    if print_config:
        console.print_result(dump_yaml_config(model_cfg, train_cfg), end="")
        return Path()
    check_loggers(tensorboard=tensorboard, wandb=wandb, wandb_project=wandb_project)
    if not train_cfg.data:
        raise UsageError("no training text given: pass one or more files or directories (or 'data' in --config)")
    if "-" in (*train_cfg.data, train_cfg.val_file):  # before a run directory is claimed
        from gptcli.formats import refuse_terminal_stdin

        refuse_terminal_stdin()
    if train_cfg.fsdp:  # resume of an --fsdp run may go on in one process; a new one needs torchrun
        from gptcli.distributed import require_torchrun

        require_torchrun("--fsdp")
    run_dir = Path(out) if out else rundir.default_run_dir(train_cfg.data)
    lock = rundir.claim_new_run_dir(run_dir)  # a new or empty directory only, locked for the run
    return run_training(
        model_cfg,
        train_cfg,
        run_dir,
        lock=lock,
        init_state=init_state,
        tensorboard=tensorboard,
        wandb=wandb,
        wandb_project=wandb_project,
    )


_set_threads = set_threads


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def _report_config_file(
    run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, *, checkpoint: Path, given: tuple[str, ...] = ()
) -> None:
    """Say what happens to the run's config.yaml: resume continues with the checkpoint's settings
    and writes them back, so a lost file comes back and an edited one is overwritten."""
    config_file = rundir.config_path(run_dir)
    if not config_file.exists():
        console.warn(
            f"{display_path(config_file)} is missing: the run continues with the checkpoint's settings and writes it again"
        )
        return
    changes = rundir.config_changes(run_dir, dump_yaml_config(model_cfg, train_cfg), ignore=given)
    if changes:
        shown = "; ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
        console.warn(
            f"{display_path(config_file)} was edited ({shown}); resume continues with the checkpoint's settings "
            "and writes them back. To change the run's length pass --epochs N or a budget (--max-steps, "
            "--max-tokens, --max-time); other settings need a new run "
            f"started from this one: gptcli train FILE --init {shell_path(checkpoint)}"
        )


def run_training(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    *,
    lock: rundir.RunLock | None = None,
    init_state=None,
    restore_from: dict[str, Any] | None = None,
    tensorboard: bool = False,
    wandb: bool = False,
    wandb_project: str | None = None,
) -> Path:
    """Train (or continue) one run with the terminal's progress display and signal handling.

    The run directory's writer ``lock`` is held to the end (taken here if the caller has not): a
    new run claims an empty directory, a resumed one locks its own. A new run that fails before
    its first checkpoint leaves no directory behind.
    """
    from gptcli import distributed
    from gptcli.training import Interrupted, Trainer

    if lock is None:
        lock = rundir.claim_new_run_dir(run_dir) if restore_from is None else rundir.lock_run_dir(run_dir)
    failed = True
    try:
        main = distributed.is_main_process()  # under torchrun only rank 0 reports
        if not main:
            console.set_quiet(True)
        callbacks = _train_callbacks(
            console.TrainProgress(print_samples=main),
            run_dir,
            tensorboard=tensorboard and main,
            restore_from=restore_from,
            wandb=wandb and main,
            wandb_project=wandb_project,
            config={"model": model_cfg.to_dict(), "train": train_cfg.to_dict()},
        )
        callbacks = Fanout(callbacks, _IntervalsNote(train_cfg))
        stop = StopFlag().install()
        try:
            trainer = Trainer(
                model_cfg, train_cfg, run_dir, callbacks=callbacks, should_stop=stop, init_state_dict=init_state
            )
            if restore_from is not None:
                trainer.restore(restore_from)
            trainer.fit()
            failed = False
        except KeyboardInterrupt:
            # A second Ctrl-C. Said here: typer turns a KeyboardInterrupt into a silent exit 130.
            raise Interrupted(_aborted(run_dir), 130) from None
        finally:
            callbacks.close()
            stop.restore()
            distributed.shutdown()
    finally:
        lock.release(failed=failed)
    console.info(f"done: {display_path(run_dir)} (sample with: gptcli sample -c {shell_path(run_dir)})")
    return run_dir


class _IntervalsNote(Callbacks):
    """Says, after the run's start lines, the unit each interval was read in: ``--eval-freq 1k``
    is every 1,000 tokens, ``--eval-freq 1000`` every 1,000 steps."""

    def __init__(self, cfg: TrainConfig):
        self.text = f"evaluating every {describe_interval(cfg.eval_freq)}"
        if parse_interval(cfg.save_every)[1]:
            self.text += f"; saving every {describe_interval(cfg.save_every)} and at the end of each epoch"

    def on_start(self, info: dict[str, Any]) -> None:
        console.info(self.text)


def _aborted(run_dir: Path) -> str:
    saved = rundir.list_step_checkpoints(run_dir)
    if not saved:
        return "stopped at once, before any checkpoint of this run was saved"
    return (
        f"stopped at once, without saving; the last checkpoint is {saved[-1].name}: continue "
        f"with: gptcli resume {shell_path(run_dir)}"
    )


def _train_callbacks(
    progress: console.TrainProgress,
    run_dir: Path,
    *,
    tensorboard: bool,
    restore_from: dict[str, Any] | None,
    wandb: bool = False,
    wandb_project: str | None = None,
    config: dict[str, Any] | None = None,
) -> Callbacks:
    """The progress display, a TensorBoard writer for ``--tensorboard``, and a W&B logger for
    ``--wandb``; each also for a resumed run that logged to it before (the run directory
    remembers it: ``<run>/tensorboard/``, ``<run>/wandb-run.json``)."""
    from gptcli import distributed

    if not distributed.is_main_process():  # under torchrun, rank 0 reports for all; the others only warn
        return progress
    receivers: list[Callbacks] = [progress]
    try:
        if tensorboard or (Path(run_dir) / LOG_DIR).is_dir():
            purge = int(restore_from.get("progress", {}).get("step", 0)) if restore_from is not None else None
            try:
                receivers.append(TensorBoardWriter(run_dir, purge_step=purge))
            except UsageError:
                if tensorboard:
                    raise
                console.warn(f"{run_dir}/{LOG_DIR} exists but tensorboard is not installed; not logging to it")
        if wandb or rundir.wandb_run_path(run_dir).exists():
            logger = _wandb_logger(run_dir, explicit=wandb, project=wandb_project, config=config or {})
            if logger is not None:
                receivers.append(logger)
    except BaseException:
        for r in receivers[1:]:
            r.close()
        raise
    return Fanout(*receivers) if len(receivers) > 1 else progress
