"""The run directory: the one owner of its layout, naming, discovery, rotation and summary.

A training run lives in one directory::

    runs/<name>/
      config.yaml          the resolved settings (model and train)
      metrics.jsonl        one JSON object per evaluation, epoch sample and save
      checkpoints/
        step-00000090.pth  step checkpoints, newest kept (``--keep-last``)
        best.pth           a hard link to the one with the lowest validation loss
        .tmp-*             a save in progress (removed at the start of the next run)
      .lock                the writer lock: who is training this run (see ``RunLock``)
      wandb-run.json       with ``--wandb``: the W&B run's id and project, so a resume continues it
      wandb/               wandb's own files (offline runs to upload with ``wandb sync``)

Everything here is plain file-system work (no torch), so ``gptcli runs`` stays instant, and
``train`` and ``resume`` take the lock before torch is even imported.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gptcli import fsutil
from gptcli.errors import RunDirError, SaveError, UsageError, os_error_reason
from gptcli.metrics import read_metrics
from gptcli.paths import display_path, shell_path

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
BEST_NAME = "best.pth"
TMP_PREFIX = fsutil.TMP_PREFIX  # a save in progress: fsutil.temporary_path names it
LOCK_FILE = ".lock"
WANDB_RUN_FILE = "wandb-run.json"
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


def link_best(run_dir: Path, checkpoint: Path) -> None:
    """Point best.pth at ``checkpoint`` (a hard link, else a copy), replaced whole or not at all;
    raises OSError (the old best.pth stays)."""
    with fsutil.atomic_path(best_checkpoint_path(run_dir)) as tmp:
        try:
            os.link(checkpoint, tmp)
        except OSError:
            shutil.copyfile(checkpoint, tmp)


def config_path(run_dir: Path) -> Path:
    return Path(run_dir) / CONFIG_FILE


def metrics_path(run_dir: Path) -> Path:
    return Path(run_dir) / METRICS_FILE


def wandb_run_path(run_dir: Path) -> Path:
    """Where ``--wandb`` keeps the run's W&B id and project (see ``gptcli.wandb_log``)."""
    return Path(run_dir) / WANDB_RUN_FILE


def _step_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    d = checkpoint_dir(run_dir)
    if not d.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _STEP_RE.match(p.name)))


def list_step_checkpoints(run_dir: Path) -> list[Path]:
    """A run's step checkpoints, oldest first."""
    return [p for _, p in _step_checkpoints(run_dir)]


def saved_step(run_dir: Path) -> int:
    """Steps done at the run's newest step checkpoint, from its file name (0 if there is none)."""
    return max((s for s, _ in _step_checkpoints(run_dir)), default=0)


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
    """The run directory a checkpoint belongs to, if it sits in one's ``checkpoints/``.

    The layout alone decides: a run whose config.yaml was lost is still that run (the checkpoint
    carries the config, and ``resume`` writes config.yaml again).
    """
    parent = Path(checkpoint).resolve().parent
    if parent.name == CHECKPOINT_DIR:
        return parent.parent
    return None


def default_run_dir(data: list[str], root: Path = RUNS_ROOT) -> Path:
    """``runs/<first input's stem>-<date>-<time>``, with a suffix if that exists already."""
    stem = Path(data[0]).stem if data else "run"
    stem = "stdin" if data and data[0] == "-" else stem.translate(str.maketrans("", "", "*?[]")) or "run"  # globs
    base = Path(root) / f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = Path(f"{base}-{n}")
    return out


def rotate(
    run_dir: Path,
    keep_last: int,
    *,
    protect: set[Path] = frozenset(),
    warn: Callable[[str], object] | None = None,
) -> list[Path]:
    """Delete all but the newest ``keep_last`` step checkpoints (never one in ``protect``, nor
    one that another run stands on: see ``pin_checkpoint``; ``warn`` is told once of each)."""
    ckpts = list_step_checkpoints(run_dir)
    doomed = [p for p in ckpts[: max(0, len(ckpts) - keep_last)] if p.resolve() not in protect]
    pins = pinned(run_dir)
    for p in doomed:
        if p.name in pins:
            if warn is not None and p.resolve() not in _PIN_WARNED:
                _PIN_WARNED.add(p.resolve())
                warn(f"keeping {display_path(p)} past --keep-last: run {display_path(pins[p.name])} starts from it")
            continue
        p.unlink(missing_ok=True)
    return [p for p in doomed if p.name not in pins]


# A finetune run that starts from another run's step checkpoint needs that file for as long as it
# lives (a LoRA checkpoint holds only the adapters; resume reloads the base): the dependent run
# leaves a pin, <run>/checkpoints/.pins/<checkpoint name>.<key>, holding its own path, and rotate
# keeps every pinned checkpoint whose dependent still exists.
PINS_DIR = ".pins"
_PIN_WARNED: set[Path] = set()


def pin_checkpoint(checkpoint: Path, dependent: Path) -> Path | None:
    """Keep ``checkpoint`` from rotation while run ``dependent`` exists, if it is a step
    checkpoint of a run (other files are never rotated); the pin's path, or None. Best effort:
    a base run that cannot be written cannot rotate either."""
    import hashlib

    run = run_dir_of(checkpoint)
    if run is None or not _STEP_RE.match(Path(checkpoint).name):
        return None
    who = str(Path(dependent).resolve())
    pin = checkpoint_dir(run) / PINS_DIR / f"{Path(checkpoint).name}.{hashlib.sha256(who.encode()).hexdigest()[:16]}"
    try:
        if not pin.is_file():
            pin.parent.mkdir(exist_ok=True)
            fsutil.atomic_write(pin, who + "\n")
    except OSError:
        return None
    return pin


def pinned(run_dir: Path) -> dict[str, Path]:
    """The run's pinned step checkpoints (by file name), each with a run that stands on it."""
    d = checkpoint_dir(run_dir) / PINS_DIR
    out: dict[str, Path] = {}
    try:
        pins = list(d.iterdir()) if d.is_dir() else []
    except OSError:
        return out
    for pin in pins:
        name, _, _ = pin.name.rpartition(".")
        try:
            who = Path(pin.read_text(encoding="utf-8").strip())
        except (OSError, UnicodeDecodeError):
            continue
        if _STEP_RE.match(name) and who.is_dir():  # a dependent since deleted holds nothing
            out.setdefault(name, who)
    return out


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete temporary files that an interrupted save left behind."""
    removed = []
    if directory.is_dir():
        for p in directory.glob(f"{TMP_PREFIX}*"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def split_saved(records: list[dict[str, Any]], saved_step: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Metrics records that a checkpoint of ``saved_step`` steps covers, and those logged after it.

    A record's ``step`` is the 0-based optimizer step it follows, and ``step-N.pth`` holds steps
    0..N-1, so records with step >= N are not saved yet (``resume`` cuts them away)."""
    return [r for r in records if r["step"] < saved_step], [r for r in records if r["step"] >= saved_step]


# ---------------------------------------------------------------------------------------------
# One writer per run: claiming a directory for a new run, and the writer lock


def _is_writer() -> bool:
    """Under torchrun only rank 0 writes the run directory, so only it claims and locks it. The
    rule of ``distributed.is_main_process``, read here without importing torch: the lock is taken
    before torch loads, so that a second writer is refused at once."""
    return os.environ.get("RANK", "0") == "0"


def _has_checkpoints(run_dir: Path) -> bool:
    d = checkpoint_dir(run_dir)
    return d.is_dir() and any(p.suffix == ".pth" and not p.name.startswith(TMP_PREFIX) for p in d.iterdir())


class RunLock:
    """The exclusive writer lock of a run directory: an OS lock (``fsutil.FileLock``) on ``<run>/.lock``,
    held for the whole run by the one ``train`` or ``resume`` that writes it.

    The file names its holder (PID, host, start time) so that a refused writer can say who holds
    it. The kernel drops the lock when the holder exits, however it exits (``kill -9`` too), so a
    lock file left behind never blocks a later run. Readers (sample, eval, info, runs, plot) never
    take it and never wait for it.
    """

    def __init__(
        self, run_dir: Path, lock: fsutil.FileLock | None, *, new_run: bool = False, created: Path | None = None
    ):
        self.run_dir = Path(run_dir)
        self._lock = lock
        self._new_run = new_run  # claimed empty by this process for a new run
        self._created = created  # the top-most directory this process created for it, absolute

    def release(self, *, failed: bool = False) -> None:
        """Give the lock up. A new run that ``failed`` before it saved any checkpoint first
        removes what it created, so that a run refused at the start leaves no run directory."""
        try:
            if failed and self._new_run and not _has_checkpoints(self.run_dir):
                self._discard()
        except OSError:
            pass  # what cannot be removed stays: the run's own error is the one to report
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                if lock.held:
                    lock.write_note("")  # name no holder once released
                lock.release()

    def _discard(self) -> None:
        """Remove everything in the run directory: it was empty (but for the lock file) when this
        process claimed it, and no other writer can have written since. The directory itself goes
        too if this process created it (with any parents it created that are empty now)."""
        run = self.run_dir.absolute()
        try:
            for p in run.iterdir():
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                elif p.name != LOCK_FILE:
                    p.unlink(missing_ok=True)
            (run / LOCK_FILE).unlink(missing_ok=True)
        except OSError:
            return
        if self._created is None:
            return
        d = run
        while d.is_relative_to(self._created):
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent


def claim_new_run_dir(path: Path) -> RunLock:
    """Take ``path`` for a new run: create it (or take it if it is empty) and lock it.

    ``train`` writes only into a directory that does not exist or is empty, so it can never
    overwrite another run's files. Anything else is a UsageError that says what is there and what
    to do. Release the lock with ``release(failed=True)`` if the run fails: what it created goes.
    """
    path = Path(path)
    if not _is_writer():
        return RunLock(path, None)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {display_path(path)}: is an existing file, not a directory; choose another --out")
    try:
        created = _make_dirs(path)
    except OSError as e:
        raise UsageError(f"--out {display_path(path)}: cannot create the run directory ({_reason(e)})") from None
    lock = _acquire(path, new_run=True, created=created)
    try:
        problem = _occupied(path)
    except OSError as e:
        problem = f"--out {display_path(path)}: cannot be listed ({_reason(e)})"
    if problem:
        lock.release()
        raise UsageError(problem)
    return lock


def lock_run_dir(run_dir: Path) -> RunLock:
    """Take the writer lock of an existing run directory (``resume``); a RunDirError naming the
    holder if another process writes it, or naming the reason if the directory is not writable."""
    run_dir = Path(run_dir)
    if not _is_writer():
        return RunLock(run_dir, None)
    return _acquire(run_dir)


def resume_target_run(target: Path | None, root: Path = RUNS_ROOT) -> Path | None:
    """The run directory ``resume target`` continues, found before anything is loaded so that it
    can be locked first: the run itself, the run a checkpoint file sits in, or the latest run.
    None when there is none (a loose checkpoint file starts a new run directory)."""
    if target is None:
        return find_latest_run(root)
    p = Path(target)
    if p.is_dir():
        return p if is_run_dir(p) else None
    if p.is_file():
        return run_dir_of(p)
    return None


def _make_dirs(path: Path) -> Path | None:
    """``mkdir -p`` that returns the top-most directory it created (None if all existed)."""
    missing = []
    p = path.absolute()
    while not p.is_dir() and p != p.parent:
        missing.append(p)
        p = p.parent
    created = None
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # another process made it a moment ago: not ours to remove
        created = created or d
    return created


def _occupied(path: Path) -> str | None:
    """Why ``path`` cannot take a new run (what is in it, and what to do), or None if it is empty."""
    names = sorted(p.name for p in path.iterdir() if p.name != LOCK_FILE)
    if not names:
        return None
    listed = []
    for name in names:
        sub = path / name
        if name == CHECKPOINT_DIR and sub.is_dir():
            listed += [f"{name}/{p.name}" for p in sorted(sub.iterdir())] or [f"{name}/"]
        else:
            listed.append(name + ("/" if sub.is_dir() else ""))
    shown = ", ".join(listed[:5]) + (f" and {len(listed) - 5} more" if len(listed) > 5 else "")
    only_new = "train writes only into a new or empty directory"
    out = f"--out {display_path(path)}"
    steps = _step_checkpoints(path)
    if steps:
        return (
            f"{out} already holds a run (checkpoints up to step {steps[-1][0]}); continue it with: "
            f"gptcli resume {shell_path(path)} (or choose another --out: {only_new})"
        )
    if best_checkpoint_path(path).is_file():
        return (
            f"{out} already holds a run ({shown}); continue it with: gptcli resume "
            f"{shell_path(best_checkpoint_path(path))} (or choose another --out: {only_new})"
        )
    if is_run_dir(path):
        return f"{out} holds a run that saved no checkpoint ({shown}); delete it or choose another --out"
    return f"{out} is not empty (it holds {shown}); {only_new}: choose another --out"


def being_written(run_dir: Path) -> bool | None:
    """Whether a train or resume holds the run's writer lock now (None: cannot tell here)."""
    return fsutil.lock_held(Path(run_dir) / LOCK_FILE)


def _acquire(run_dir: Path, *, new_run: bool = False, created: Path | None = None) -> RunLock:
    lock = fsutil.FileLock(run_dir / LOCK_FILE)
    deadline = time.monotonic() + 1.0
    while True:
        try:
            if lock.acquire(blocking=False):
                break
        except OSError as e:
            raise RunDirError(
                f"{display_path(run_dir)}: cannot write to the run directory ({_reason(e)}); training needs "
                "to write its checkpoints there"
            ) from None
        holder = lock.read_note()
        if not holder and time.monotonic() < deadline:
            time.sleep(0.05)  # the holder has locked the file but not yet written its name
            continue
        raise RunDirError(
            f"{display_path(run_dir)} is being written by another gptcli ({holder or 'holder unknown'}); a run takes "
            "one writer at a time: wait for it to finish or stop it (sample, eval, info and plot can "
            "read the run meanwhile)"
        ) from None
    if lock.enforced:  # a file system without locks: run unlocked, not not at all
        lock.write_note(
            f"pid {os.getpid()} on host {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
        )
    return RunLock(run_dir, lock, new_run=new_run, created=created)


def _reason(e: OSError) -> str:
    return os_error_reason(e) + (f": {e.filename}" if e.filename else "")


# ---------------------------------------------------------------------------------------------
# Writing the run's small files


def write_text_atomic(path: Path, text: str) -> None:
    """Write a run's small text file whole or not at all: a temporary file beside it, fsynced, then
    renamed over it. On an OSError (a full disk) the temporary file is removed, the old file is as
    it was, and the error is raised for the caller to name the file."""
    fsutil.atomic_write(path, text)


def write_config(run_dir: Path, text: str) -> None:
    """Write config.yaml whole or not at all: a full disk leaves the old file as it was."""
    path = config_path(run_dir)
    try:
        write_text_atomic(path, text)
    except OSError as e:
        kept = "the old one is unchanged" if path.exists() else "nothing was written"
        raise SaveError(f"{path}: could not write the run's config ({os_error_reason(e)}); {kept}") from None


def config_changes(run_dir: Path, resolved: str, *, ignore: tuple[str, ...] = ()) -> list[str]:
    """How the run's config.yaml differs from the ``resolved`` settings (YAML text as
    ``dump_yaml_config`` writes it): one ``key: file value, resolved value`` line per key that
    differs, keys in ``ignore`` aside. Empty when they agree or there is no config.yaml."""
    path = config_path(run_dir)
    if not path.is_file():
        return []
    try:
        on_disk = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return ["the file is not readable YAML"]
    ours = yaml.safe_load(resolved)
    if not isinstance(on_disk, dict):
        return ["the file is not a mapping with 'model' and 'train' sections"]
    changes = []
    for section in ("model", "train"):
        a = on_disk.get(section) if isinstance(on_disk.get(section), dict) else {}
        b = ours.get(section) or {}
        for key in [*b, *(k for k in a if k not in b)]:
            if key not in ignore and a.get(key) != b.get(key):
                changes.append(f"{key}: {a.get(key)!r} in the file, {b.get(key)!r} in the checkpoint")
    return changes


def run_summary(run: Path, *, warnings: list[str] | None = None) -> dict[str, Any]:
    """What ``gptcli runs`` shows for one run, read from config.yaml, metrics.jsonl and file names
    (no checkpoint is opened, so listing stays instant).

    A file that cannot be read leaves its fields None (shown as '-') and, with ``warnings``, adds
    a message to it; malformed metrics lines are skipped the same way. It never raises OSError.
    """
    run = Path(run)
    warnings = warnings if warnings is not None else []
    records: list[dict[str, Any]] | None = []
    try:
        if metrics_path(run).is_file():
            records = read_metrics(metrics_path(run), warnings=warnings)
    except OSError as e:
        warnings.append(f"{metrics_path(run)}: cannot be read ({e.strerror or e})")
        records = None
    evals = [r for r in records or [] if r.get("type") == "eval"]
    epochs_total = None
    try:
        if config_path(run).is_file():
            settings = yaml.safe_load(config_path(run).read_text(encoding="utf-8")) or {}
            train = settings.get("train") or settings.get("finetune") or {}  # a finetune run's config.yaml
            epochs_total = train.get("epochs")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as e:
        warnings.append(f"{config_path(run)}: cannot be read ({getattr(e, 'strerror', None) or type(e).__name__})")
    if not isinstance(epochs_total, int) or isinstance(epochs_total, bool):
        epochs_total = None
    try:
        steps = [s for s, _ in _step_checkpoints(run)]
    except OSError as e:
        warnings.append(f"{checkpoint_dir(run)}: cannot be listed ({e.strerror or e})")
        steps = []
    try:
        updated = time.strftime("%Y-%m-%d %H:%M", time.localtime(last_touched(run)))
    except OSError:
        updated = None
    # The run's state is its newest checkpoint's, as `info` and `resume` see it; metrics lines
    # logged after that save (a second Ctrl-C, a crash, or a run still training) are counted apart.
    unsaved: int | None = None
    if records is not None:
        records, later = split_saved(records, max(steps) if steps else 0)
        evals = [r for r in records if r.get("type") == "eval"]
        unsaved = sum(1 for r in later if r.get("type") == "eval")
    last = evals[-1] if evals else {}
    if records is None:  # metrics unreadable: only what the file names say
        progress: dict[str, Any] = {"epochs_done": None, "step": max(steps) if steps else None, "tokens_seen": None}
    else:
        progress = {
            # one sample per epoch (a classify finetune run logs its accuracy instead)
            "epochs_done": sum(1 for r in records if r.get("type") in ("sample", "accuracy")),
            "step": max(steps) if steps else 0,
            "tokens_seen": records[-1]["tokens_seen"] if records else 0,
        }
    return {
        "run": str(run),
        "epochs_done": progress["epochs_done"],
        "epochs": epochs_total,
        "step": progress["step"],
        "tokens_seen": progress["tokens_seen"],
        "train_loss": last.get("train_loss"),
        "val_loss": last.get("val_loss"),
        "best_val_loss": min((r["val_loss"] for r in evals if r["val_loss"] == r["val_loss"]), default=None),
        "checkpoints": len(steps),
        "unsaved_evals": unsaved,
        "updated": updated,
    }
