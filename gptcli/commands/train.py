"""``gptcli train`` and ``gptcli resume``: settings resolved from defaults, a config file and
flags; the run set up with its callbacks (progress, TensorBoard) and signal handling; the
trainer driven to the end or to a clean stop.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from gptcli import console, distributed, rundir, weights
from gptcli.callbacks import Callbacks, Fanout
from gptcli.checkpoint import load_checkpoint, read_model_config, resolve_checkpoint
from gptcli.config import ModelConfig, TrainConfig, check_architecture, dump_yaml_config, load_yaml_config
from gptcli.errors import CheckpointError, UsageError
from gptcli.tensorboard import LOG_DIR, TensorBoardWriter, check_available
from gptcli.training import Trainer

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
            raise KeyboardInterrupt  # second Ctrl-C: abort now; atomic saves keep the last checkpoint
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        console.warn(f"{name}: saving a checkpoint at the end of this step (Ctrl-C again to abort)")

    def install(self) -> StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------------
# Settings


def resolve_train_configs(
    *,
    config_file: Path | None,
    preset: str | None,
    model_flags: dict[str, Any],
    train_flags: dict[str, Any],
) -> tuple[ModelConfig | None, TrainConfig, dict[str, Any]]:
    """Defaults, then the config file, then flags given on the command line.

    With ``--init`` the architecture comes from the initial weights, so the model is not built
    here (None): the model settings given are returned for comparison with the checkpoint's.
    """
    file_cfg = load_yaml_config(config_file) if config_file else {"model": {}, "train": {}}
    where = str(config_file) if config_file else "flags"
    model_dict = dict(file_cfg["model"])
    chosen_preset = preset or model_dict.pop("preset", None)
    model_dict.update({k: v for k, v in model_flags.items() if v is not None})
    train_dict = dict(file_cfg["train"])
    train_dict.update({k: v for k, v in train_flags.items() if v is not None})
    train_dict["data"] = [str(Path(p).resolve()) if Path(p).exists() else str(p) for p in train_dict.get("data") or []]
    if train_dict.get("val_file") and Path(train_dict["val_file"]).exists():
        train_dict["val_file"] = str(Path(train_dict["val_file"]).resolve())
    train_cfg = TrainConfig.from_dict(train_dict, where=where)
    if train_cfg.init:
        if chosen_preset:
            model_dict = {**ModelConfig.from_preset(chosen_preset).to_dict(), **model_dict}
        return None, train_cfg, model_dict
    if chosen_preset:
        model_cfg = ModelConfig.from_preset(chosen_preset, **model_dict)
    else:
        model_cfg = ModelConfig.from_dict(model_dict, where=where)
    return model_cfg, train_cfg, model_dict


def _init_weights(train_cfg: TrainConfig, given_model: dict[str, Any]):
    """Weights and architecture for ``--init``: the checkpoint's config wins; explicit
    architecture flags that disagree with it are an error listing each field."""
    path = weights.resolve_model(train_cfg.init)
    obj = load_checkpoint(path)
    saved = read_model_config(obj, path)
    arch = {k: v for k, v in given_model.items() if k != "drop_rate"}
    check_architecture(saved, arch, f"--init {train_cfg.init}")
    if "drop_rate" in given_model:
        saved.drop_rate = given_model["drop_rate"]
    return saved, obj["model_state_dict"]


# ---------------------------------------------------------------------------------------------
# The commands


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
) -> Path:
    console.set_quiet(quiet)
    model_cfg, train_cfg, given_model = resolve_train_configs(
        config_file=config_file, preset=preset, model_flags=model_flags or {}, train_flags=train_flags or {}
    )
    init_state = None
    if train_cfg.init:
        model_cfg, init_state = _init_weights(train_cfg, given_model)
    if print_config:
        console.print_result(dump_yaml_config(model_cfg, train_cfg), end="")
        return Path()
    if tensorboard:
        check_available()
    if not train_cfg.data:
        raise UsageError("no training text given: pass one or more files or directories (or 'data' in --config)")
    run_dir = Path(out) if out else rundir.default_run_dir(train_cfg.data)
    if rundir.list_step_checkpoints(run_dir):
        raise UsageError(
            f"--out {run_dir} already holds checkpoints; continue it with 'gptcli resume {run_dir}' "
            "or choose another --out"
        )
    return run_training(model_cfg, train_cfg, run_dir, init_state=init_state, tensorboard=tensorboard)


def resume_command(target: Path | None, *, epochs: int | None = None, quiet: bool = False) -> Path:
    console.set_quiet(quiet)
    path = resolve_checkpoint(target, warn=console.warn)
    obj = load_checkpoint(path)
    if obj.get("kind") != "training" or "optimizer_state_dict" not in obj or "train_config" not in obj:
        raise CheckpointError(
            f"{path}: holds weights only (no optimizer state or progress); start a run from it with: gptcli train FILE --init {path}"
        )
    model_cfg = read_model_config(obj, path)
    train_dict = dict(obj["train_config"])
    progress = obj.get("progress", {})
    if epochs is not None:
        if epochs < max(1, progress.get("epoch", 0)):
            raise UsageError(
                f"invalid --epochs: {epochs} (the run has already completed {progress.get('epoch')} epochs)"
            )
        train_dict["epochs"] = epochs
    train_cfg = TrainConfig.from_dict(train_dict, where=f"{path}: train_config")
    if progress.get("epoch", 0) >= train_cfg.epochs:
        raise UsageError(
            f"{path}: the run already finished its {train_cfg.epochs} epochs; pass --epochs N to extend it"
        )
    run_dir = rundir.run_dir_of(path) or rundir.default_run_dir(train_cfg.data)
    return run_training(model_cfg, train_cfg, run_dir, restore_from=obj)


def run_training(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    run_dir: Path,
    *,
    init_state=None,
    restore_from: dict[str, Any] | None = None,
    tensorboard: bool = False,
) -> Path:
    """Train (or continue) one run with the terminal's progress display and signal handling."""
    main = distributed.is_main_process()  # under torchrun only rank 0 reports
    if not main:
        console.set_quiet(True)
    callbacks = _train_callbacks(
        console.TrainProgress(print_samples=main),
        run_dir,
        tensorboard=tensorboard and main,
        restore_from=restore_from,
    )
    stop = StopFlag().install()
    try:
        trainer = Trainer(
            model_cfg, train_cfg, run_dir, callbacks=callbacks, should_stop=stop, init_state_dict=init_state
        )
        if restore_from is not None:
            trainer.restore(restore_from)
        trainer.fit()
    finally:
        callbacks.close()
        stop.restore()
        distributed.shutdown()
    console.info(f"done: {run_dir} (sample with: gptcli sample -c {run_dir})")
    return run_dir


def _train_callbacks(
    progress: console.TrainProgress, run_dir: Path, *, tensorboard: bool, restore_from: dict[str, Any] | None
) -> Callbacks:
    """The progress display, and a TensorBoard writer for ``--tensorboard`` or for a resumed run
    that wrote TensorBoard events before (the run directory remembers it; resume takes no flag)."""
    if not distributed.is_main_process():  # under torchrun, rank 0 reports for all; the others only warn
        return progress
    if not (tensorboard or (Path(run_dir) / LOG_DIR).is_dir()):
        return progress
    purge = int(restore_from.get("progress", {}).get("step", 0)) if restore_from is not None else None
    try:
        writer = TensorBoardWriter(run_dir, purge_step=purge)
    except UsageError:
        if tensorboard:
            raise
        console.warn(f"{run_dir}/{LOG_DIR} exists but tensorboard is not installed; not logging to it")
        return progress
    return Fanout(progress, writer)
