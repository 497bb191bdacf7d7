"""``gptcli finetune instruct|classify|resume`` and ``gptcli classify``: the book's chapters 6
and 7 (and appendix E with ``--lora-rank``) as commands. Parsing lives in ``cli.py``; the
work in ``gptcli.finetune``; this module sets a run up, reports and prints (through console)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli import console, rundir
from gptcli.commands.train import StopFlag
from gptcli.errors import CheckpointError, UsageError
from gptcli.paths import display_path


def _report(record: dict[str, Any]) -> None:
    t = record["type"]
    if t == "start":
        what = "resumed" if record["resumed"] else "finetuning"
        console.info(
            f"{what}: {record['train']} train / {record['val']} val / {record['test']} test examples, "
            f"{record['steps_per_epoch']} steps per epoch, {record['trainable']:,} trainable parameters"
        )
    elif t == "eval":
        console.info(
            f"Ep {record['epoch']} (Step {record['step']:06d}): "
            f"Train loss {record['train_loss']:.3f}, Val loss {record['val_loss']:.3f}"
        )
    elif t == "accuracy":
        console.info(
            f"Training accuracy: {record['train_acc'] * 100:.2f}% | Validation accuracy: {record['val_acc'] * 100:.2f}%"
        )
    elif t == "sample":
        console.info(record["text"].replace("\n", " "))
    elif t == "save":
        console.info(f"saved {display_path(Path(record['path']))}")


def _write_config(run_dir: Path, cfg) -> None:
    import yaml

    rundir.write_config(run_dir, yaml.safe_dump({"finetune": cfg.to_dict()}, sort_keys=False))


def _fit(trainer, cfg) -> dict[str, Any]:
    stop = StopFlag().install()
    trainer.should_stop = stop
    try:
        trainer.fit()
    finally:
        stop.restore()
    result: dict[str, Any] = {"run_dir": str(trainer.run_dir), "step": trainer.progress.step}
    if trainer.progress.history:
        result.update({k: trainer.progress.history[-1][k] for k in ("train_loss", "val_loss")})
    if cfg.kind == "classify":
        acc = trainer.final_accuracy()
        result.update({f"{k}_accuracy": v for k, v in acc.items()})
        console.print_result(" | ".join(f"{k.capitalize()} accuracy: {v * 100:.2f}%" for k, v in acc.items()))
    else:
        test = trainer.loader_loss(trainer.splits.test, shuffle=False, num_batches=None)
        result["test_loss"] = test
        console.print_result(f"test loss {test:.4f}")
    return result


def finetune_command(
    cfg_kwargs: dict[str, Any], *, out: Path | None, template_file: Path | None = None
) -> dict[str, Any]:
    """Start a finetuning run in a new run directory."""
    from gptcli.finetune.instruct import Template
    from gptcli.finetune.trainer import FinetuneConfig, FinetuneTrainer

    if template_file is not None:
        cfg_kwargs["template"] = Template.from_file(template_file).text
    cfg = FinetuneConfig(**cfg_kwargs)
    run_dir = out or rundir.default_run_dir([cfg.data])
    lock = rundir.claim_new_run_dir(run_dir)
    failed = True
    try:
        trainer = FinetuneTrainer(cfg, run_dir, on_event=_report)
        _write_config(run_dir, cfg)
        result = _fit(trainer, cfg)
        failed = False
        return result
    finally:
        lock.release(failed=failed)


def resume_command(target: Path | None) -> dict[str, Any]:
    """Continue a finetuning run from its newest checkpoint, exactly."""
    from gptcli import checkpoint as ckpt
    from gptcli.finetune.trainer import KINDS, FinetuneConfig, FinetuneTrainer

    path = ckpt.resolve_checkpoint(target, warn=console.warn)
    obj = ckpt.load_checkpoint(path)
    if obj.get("kind") not in KINDS:
        raise UsageError(f"{path}: not a finetuning checkpoint (kind {obj.get('kind')!r}); use: gptcli resume {path}")
    run_dir = rundir.run_dir_of(path) or path.parent
    lock = rundir.lock_run_dir(run_dir)
    try:
        cfg = FinetuneConfig.from_dict(obj["train_config"])
        trainer = FinetuneTrainer(cfg, run_dir, on_event=_report, resume_from=obj)
        return _fit(trainer, cfg)
    finally:
        lock.release()


def classify_command(
    checkpoint: Path | None, texts: list[str], *, file: Path | None, json_out: bool
) -> list[dict[str, Any]]:
    """Label each text with a classify run's model: the label and its probability."""
    from gptcli import checkpoint as ckpt
    from gptcli.finetune.classify import classify_texts
    from gptcli.finetune.trainer import model_from_finetune_checkpoint

    if file is not None:
        try:
            texts = texts + [t for t in file.read_text(encoding="utf-8").splitlines() if t.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"invalid --file: {file}: cannot read it ({e.__class__.__name__})") from None
    if not texts:
        raise UsageError("nothing to classify: give TEXT arguments or --file")
    path = ckpt.resolve_checkpoint(checkpoint, warn=console.warn)
    obj = ckpt.load_checkpoint(path)
    if obj.get("kind") != "classify":
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
