"""The run directory: the one owner of its layout, naming, discovery, rotation and summary.

A training run lives in one directory::

    runs/<name>/
      config.yaml          the resolved settings (model and train)
      metrics.jsonl        one JSON object per evaluation, epoch sample and save
      checkpoints/
        step-00000090.pth  step checkpoints, newest kept (``--keep-last``)
        best.pth           a hard link to the one with the lowest validation loss
        .tmp-*             a save in progress (removed at the start of the next run)

Everything here is plain file-system work (no torch), so ``gptcli runs`` stays instant.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import yaml

from gptcli.metrics import read_metrics

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pth"
TMP_PREFIX = ".tmp-"
RUNS_ROOT = Path("runs")
_STEP_RE = re.compile(r"^step-(\d+)\.pth$")


def step_checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.pth"


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR


def step_checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / step_checkpoint_name(step)


def best_checkpoint_path(run_dir: Path) -> Path:
    return checkpoint_dir(run_dir) / BEST_NAME


def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def _step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name)))


def list_step_checkpoints(run_dir: Path) -> list[Path]:
    """A run's step checkpoints, oldest first."""
    return [p for _, p in _step_checkpoints(run_dir)]


def is_run_dir(path: Path) -> bool:
    """A directory that a training run wrote: it has a config, a metrics log or checkpoints."""
    path = Path(path)
    return path.is_dir() and (
        checkpoint_dir(path).is_dir() or metrics_path(path).exists() or config_path(path).exists()
    )


def last_touched(run_dir: Path) -> float:
    """When the run last logged or saved (the directory's own mtime if it did neither)."""
    files = [metrics_path(run_dir), *list_step_checkpoints(run_dir)]
    return max((f.stat().st_mtime for f in files if f.exists()), default=Path(run_dir).stat().st_mtime)


def list_runs(root: Path = RUNS_ROOT) -> list[Path]:
    """Every run directory directly under ``root``, least recently touched first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if is_run_dir(p)), key=last_touched)


def find_latest_run(root: Path = RUNS_ROOT) -> Path | None:
    """The most recently touched run directory under ``root``."""
    runs = list_runs(root)
    return runs[-1] if runs else None


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint belongs to, if it sits in one's ``checkpoints/``."""
    parent = Path(checkpoint).resolve().parent
    if parent.name == CHECKPOINT_DIR and config_path(parent.parent).exists():
        return parent.parent
    return None


def default_run_dir(data: list[str], root: Path = RUNS_ROOT) -> Path:
    """``runs/<first input's stem>-<date>-<time>``, with a suffix if that exists already."""
    stem = Path(data[0]).stem if data else "run"
    base = Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = Path(f"{base}-{n}")
    return out


def rotate(run_dir: Path, keep_last: int, *, protect: set[Path] = frozenset()) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints (never one in ``protect``)."""
    ckpts = list_step_checkpoints(run_dir)
    doomed = [p for p in ckpts[: max(0, len(ckpts) - keep_last)] if p.resolve() not in protect]
    for p in doomed:
        p.unlink(missing_ok=True)
    return doomed


def temporary_path(final: Path, pid: int) -> Path:
    """Where a save to ``final`` is written before it is renamed into place."""
    return final.with_name(f"{TMP_PREFIX}{pid}-{final.name}")


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary files that an interrupted save left behind."""
    removed = []
    if directory.is_dir():
        for p in directory.glob(f"{TMP_PREFIX}*"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def run_summary(run: Path) -> dict[str, Any]:
    """What ``gptcli runs`` shows for one run, read from config.yaml, metrics.jsonl and file names
    (no checkpoint is opened, so listing stays instant)."""
    run = Path(run)
    records = read_metrics(metrics_path(run)) if metrics_path(run).is_file() else []
    evals = [r for r in records if r.get("type") == "eval"]
    epochs_total = None
    if config_path(run).is_file():
        try:
            epochs_total = (
                (yaml.safe_load(config_path(run).read_text(encoding="utf-8")) or {}).get("train") or {}
            ).get("epochs")
        except (yaml.YAMLError, AttributeError):
            epochs_total = None
    steps = [s for s, _ in _step_checkpoints(run)]
    last = evals[-1] if evals else {}
    return {
        "run": str(run),
        "epochs_done": sum(1 for r in records if r.get("type") == "sample"),
        "epochs": epochs_total,
        "step": max(steps) if steps else (records[-1]["step"] + 1 if records else 0),
        "tokens_seen": records[-1].get("tokens_seen", 0) if records else 0,
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "best_val_loss": min((r["val_loss"] for r in evals if r.get("val_loss") == r.get("val_loss")), default=None),
        "checkpoints": len(steps),
        "updated": time.strftime("%Y-%m-%d %H:%M", time.localtime(last_touched(run))),
    }
