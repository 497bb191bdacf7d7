"""``gptcli finetune instruct|classify|resume`` and ``gptcli classify``: the book's chapters 6
and 7 (and appendix E with ``--lora-rank``) as commands. Parsing lives in ``cli.py``; the
work in ``gptcli.finetune``; this module sets a run up, reports and prints (through console)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli import console, rundir
from gptcli.callbacks import Fanout
from gptcli.commands.common import StopFlag, check_loggers, set_threads
from gptcli.errors import CheckpointError, UsageError
from gptcli.paths import display_path, shell_path
from gptcli.tasks import KIND_INFO
from gptcli.tensorboard import LOG_DIR, TensorBoardWriter

CLASSIFIER = KIND_INFO["classify"].recorded  # what `gptcli classify` takes


class FinetuneReport(console.TrainProgress):
    """A finetuning run on the terminal, as a pretraining run shows (the same bar and lines),
    with what finetuning adds: the examples, the accuracies after each epoch (classify) and the
    sample of the first validation prompt (instruct), on stderr: stdout has the final numbers."""

    def __init__(self) -> None:
        super().__init__(print_samples=False)

    def start_lines(self, info: dict[str, Any]) -> list[str]:
        what = "resumed" if info["resumed"] else "finetuning"
        return [
            f"{what}: {info['train']} train / {info['val']} val / {info['test']} test examples, "
            f"{info['steps_per_epoch']} steps per epoch, {info['trainable']:,} trainable parameters"
        ]

    def on_record(self, record: dict[str, Any]) -> None:
        if record["type"] == "accuracy":
            self.info(
                f"ep {record['epoch']} step {record['step']:06d}: train accuracy {record['train_acc'] * 100:.2f}%, "
                f"val accuracy {record['val_acc'] * 100:.2f}%"
            )

    def on_sample(self, record: dict[str, Any]) -> None:
        self.info(record["text"].replace("\n", " "))


def _board(run_dir: Path, *, tensorboard: bool, resume_from: dict[str, Any] | None) -> TensorBoardWriter | None:
    """The TensorBoard writer of a run: for ``--tensorboard``, and for a resumed run that wrote
    events before (``<run>/tensorboard/``), whose events from the checkpoint's step on are purged."""
    if not (tensorboard or (Path(run_dir) / LOG_DIR).is_dir()):
        return None
    purge = int(resume_from.get("progress", {}).get("step", 0)) if resume_from is not None else None
    try:
        return TensorBoardWriter(run_dir, purge_step=purge)
    except UsageError:
        if tensorboard:
            raise
        console.warn(f"{run_dir}/{LOG_DIR} exists but tensorboard is not installed; not logging to it")
        return None


def _wandb(run_dir: Path, *, wandb: bool, project: str | None, cfg) -> Any:
    """The W&B logger of a run (``gptcli.wandb_log``, made and reported as train's): for
    ``--wandb``, and for a resumed run that logged to W&B before (``<run>/wandb-run.json``)."""
    if not (wandb or rundir.wandb_run_path(run_dir).exists()):
        return None
    from gptcli.commands.common import _wandb_logger

    return _wandb_logger(run_dir, explicit=wandb, project=project, config={"finetune": cfg.to_dict()})


_set_threads = set_threads


def _run(
    cfg,
    run_dir: Path,
    *,
    resume_from: dict[str, Any] | None = None,
    tensorboard: bool = False,
    wandb: bool = False,
    wandb_project: str | None = None,
) -> dict[str, Any]:
    """Build the trainer, write the run's config.yaml and train to the end or a clean stop, then
    the book's final numbers. Under torchrun every rank comes here and rank 0 alone reports and
    writes; the ranks leave the process group together, however the run ends."""
    from gptcli import distributed
    from gptcli.finetune.trainer import FinetuneTrainer

    main = distributed.is_main_process()
    if not main:
        console.set_quiet(True)
    board = logger = None
    try:
        if main:
            board = _board(run_dir, tensorboard=tensorboard, resume_from=resume_from)
            logger = _wandb(run_dir, wandb=wandb, project=wandb_project, cfg=cfg)
        receivers = [r for r in (FinetuneReport() if main else None, board, logger) if r is not None]
        trainer = FinetuneTrainer(cfg, run_dir, callbacks=Fanout(*receivers), resume_from=resume_from)
        return _fit(trainer, cfg, main=main)
    finally:
        for receiver in (board, logger):
            if receiver is not None:
                receiver.close()
        distributed.shutdown()


def _fit(trainer, cfg, *, main: bool = True) -> dict[str, Any]:
    stop = StopFlag().install()
    trainer.should_stop = stop
    try:
        trainer.fit()
    finally:
        stop.restore()
    result: dict[str, Any] = {"run_dir": str(trainer.run_dir), "step": trainer.progress.step}
    if trainer.progress.history:
        result.update({k: trainer.progress.history[-1][k] for k in ("train_loss", "val_loss")})
    numbers, text = trainer.task.final_result(trainer)
    result.update(numbers)
    if len(trainer.splits.test) == 0:  # the text says what there is without it
        text = f"{text} (no test split: --split {cfg.split})" if numbers else f"no test split: --split {cfg.split}"
    if main:
        console.print_result(text)
    return result


def finetune_settings(cfg_kwargs: dict[str, Any], config_file: Path | None = None):
    """The run's FinetuneConfig: the book's defaults, then ``--config``'s 'finetune' section,
    then the flags given, through the same validation layer as train's (an error names the file
    a bad value came from)."""
    from gptcli.config import build_config, load_yaml_config
    from gptcli.finetune.config import FinetuneConfig

    kind = cfg_kwargs["kind"]
    file_values: dict[str, Any] = {}
    where = str(config_file) if config_file is not None else None
    if config_file is not None:
        sections = load_yaml_config(config_file)
        if sections["model"] or sections["train"]:
            raise UsageError(
                f"{config_file}: holds 'model'/'train' settings, a pretraining run's; gptcli finetune {kind} takes a "
                "'finetune' section (as a finetune run's config.yaml has)"
            )
        file_values = dict(sections["finetune"])
        if file_values.get("kind", kind) != kind:
            raise UsageError(
                f"{config_file}: holds a {file_values['kind']} run's settings; use: gptcli finetune {file_values['kind']}"
            )
    for key in ("data", "init"):
        if key not in cfg_kwargs and key not in file_values:
            flag = "DATA" if key == "data" else "--init MODEL"
            raise UsageError(f"missing {flag}: give it on the command line or as '{key}' in --config")
    return build_config(FinetuneConfig, (where, file_values), (None, cfg_kwargs))


def finetune_command(
    cfg_kwargs: dict[str, Any],
    *,
    config_file: Path | None = None,
    out: Path | None,
    template_file: Path | None = None,
    quiet: bool = False,
    threads: int | None = None,
    tensorboard: bool = False,
    wandb: bool = False,
    wandb_project: str | None = None,
) -> dict[str, Any]:
    """Start a finetuning run in a new run directory."""
    from gptcli.finetune.instruct import Template

    console.set_quiet(quiet)
    if template_file is not None:
        cfg_kwargs["template"] = Template.from_file(template_file).text
    cfg = finetune_settings(cfg_kwargs, config_file)
    check_loggers(tensorboard=tensorboard, wandb=wandb, wandb_project=wandb_project)
    if cfg.fsdp:  # as train's: a new --fsdp run needs torchrun (a resumed one may go on in one process)
        from gptcli.distributed import require_torchrun

        require_torchrun("--fsdp")
    _set_threads(threads)
    run_dir = out or rundir.default_run_dir([cfg.data])
    lock = rundir.claim_new_run_dir(run_dir)
    failed = True
    try:
        result = _run(cfg, run_dir, tensorboard=tensorboard, wandb=wandb, wandb_project=wandb_project)
        failed = False
        return result
    finally:
        lock.release(failed=failed)


def continue_run(
    path: Path,
    obj: dict[str, Any],
    *,
    run_dir: Path,
    lock: rundir.RunLock,
    length: dict[str, Any],
    wandb: bool = False,
) -> dict[str, Any]:
    """Go on with the finetuning run whose checkpoint ``obj`` (at ``path``) is loaded and whose
    directory ``lock`` holds (released here); ``length``: the epochs and budgets given, None for
    the run's own. ``gptcli resume`` comes here too when it is given a finetuning run."""
    from gptcli.finetune.config import FinetuneConfig
    from gptcli.run import ended_early

    try:
        given = {k: v for k, v in length.items() if v is not None}
        cfg = FinetuneConfig.from_dict({**obj["train_config"], **given})
        progress = obj.get("progress", {})
        done, run = int(progress.get("epoch", 0)), shell_path(run_dir)
        if "epochs" in given and cfg.epochs < done:
            raise UsageError(f"invalid --epochs: {cfg.epochs} (the run has already completed {done} epochs)")
        if done >= cfg.epochs:
            raise UsageError(
                f"{display_path(run_dir)}: the run already finished its {cfg.epochs} epoch(s); extend it with: "
                f"gptcli finetune resume {run} --epochs N (N > {cfg.epochs})"
            )
        reached = ended_early(cfg, progress)  # a budget, or --patience (as train's resume)
        if reached is not None:
            raise UsageError(
                f"{display_path(run_dir)}: the run already reached {reached} (step {progress.get('step', 0)}); "
                f"extend it with: gptcli finetune resume {run} {reached.split()[0]} N (a larger N)"
            )
        return _run(cfg, run_dir, resume_from=obj, wandb=wandb)
    finally:
        lock.release()


def classify_command(
    checkpoint: Path | None, texts: list[str], *, file: Path | None, json_out: bool
) -> list[dict[str, Any]]:
    """Label each text with a classify run's model: the label and its probability."""
    from gptcli import checkpoint as ckpt
    from gptcli.finetune.classify import classify_texts
    from gptcli.finetune.files import read_file
    from gptcli.inference import latest_checkpoint
    from gptcli.tasks.finetune import model_from_finetune_checkpoint

    if file is not None:
        lines = [t for t in read_file(file, error=UsageError, prefix="invalid --file: ").splitlines() if t.strip()]
        if not lines:
            raise UsageError(f"invalid --file: {file}: has no texts to classify (every line is blank)")
        texts = texts + lines
    if not texts:
        raise UsageError("nothing to classify: give TEXT arguments or --file")
    if checkpoint is None:  # the newest classifier, not merely the newest run
        path, note = latest_checkpoint((CLASSIFIER,), warn=console.warn)
        console.info(note)
    else:
        path = ckpt.resolve_checkpoint(checkpoint, warn=console.warn)
    obj = ckpt.load_checkpoint(path)
    if obj.get("kind") != CLASSIFIER:
        raise CheckpointError(
            f"{path}: is a {obj.get('kind')!r} checkpoint, not a classifier (finetune classify makes one)"
        )
    model, _, info = model_from_finetune_checkpoint(obj, path)
    probs = classify_texts(model, texts, max_length=info["max_length"])
    out = []
    for t, p in zip(texts, probs, strict=True):
        k = int(p.argmax())
        out.append({"text": t, "label": info["labels"][k], "probability": float(p[k])})
    if json_out:
        console.print_result(json.dumps(out, indent=2))
    else:
        for r in out:
            console.print_result(f"{r['label']}\t{r['probability']:.3f}\t{r['text']}")
    return out
