"""A run, as one object: what it is, its settings, its newest readable checkpoint, its progress,
and whether it finished and what stopped it. ``resume``, ``runs``, ``info``, ``sample``,
``eval``, ``plot`` and ``classify`` ask it; ``gptcli.rundir`` owns the files' layout below it.

Its settings come from config.yaml, read once; its progress from its newest checkpoint that
loads (memory-mapped and unverified: no tensor is read), opened only when asked.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from gptcli import rundir
from gptcli.engine.schedule import budget_reached
from gptcli.errors import CheckpointError, UsageError
from gptcli.tasks import FINETUNE_RECORDED, KIND_INFO

LENGTH_KEYS = ("epochs", "max_steps", "max_tokens", "max_time", "patience")  # what resume may change


def ended_early(cfg: Any, progress: dict[str, Any]) -> str | None:
    """The budget flag (``--max-steps 12``) or ``--patience K`` that a run's ``progress`` has
    already reached under the settings ``cfg``."""
    reason = budget_reached(
        cfg,
        step=int(progress.get("step", 0)),
        tokens_seen=int(progress.get("tokens_seen", 0)),
        seconds=float(progress.get("train_seconds", 0.0)),
    )
    patience = getattr(cfg, "patience", 0)
    if reason is None and patience and int(progress.get("evals_since_best", 0)) >= patience:
        reason = f"--patience {patience}"
    return reason


def settings_of(obj: dict[str, Any], length: dict[str, Any] | None = None) -> Any:
    """A checkpoint's run settings (``TrainConfig`` or ``FinetuneConfig``), with the ``length``
    flags given to resume on top."""
    from gptcli.config import TrainConfig
    from gptcli.finetune.config import FinetuneConfig

    saved = {**obj["train_config"], **(length or {})}
    return FinetuneConfig.from_dict(saved) if obj.get("kind") in FINETUNE_RECORDED else TrainConfig.from_dict(saved)


def stopped_by(obj: dict[str, Any], length: dict[str, Any] | None = None) -> str | None:
    """The budget or ``--patience`` (``--max-steps 12``) that ended a training or finetuning
    checkpoint's run before its epochs did (with the ``length`` flags given to resume); None when
    none has, or the checkpoint holds no run's settings."""
    try:
        return ended_early(settings_of(obj, length), obj["progress"])
    except (UsageError, KeyError, TypeError, ValueError, AttributeError):  # resume reports a bad stored setting
        return None


class Run:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    # -- what it is, from config.yaml ---------------------------------------------------------

    @functools.cached_property
    def settings(self) -> dict[str, Any] | None:
        """config.yaml as written (None when missing or unreadable: its checkpoints still say)."""
        try:
            data = yaml.safe_load(rundir.config_path(self.path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def kind(self) -> str | None:
        """What the run made, as its checkpoints record it: "training", "instruct" or "classify";
        None when config.yaml cannot say."""
        s = self.settings
        if s is None:
            return None
        finetune = s.get("finetune")
        if isinstance(finetune, dict):
            return finetune.get("kind") if finetune.get("kind") in FINETUNE_RECORDED else None
        return KIND_INFO["lm"].recorded

    @property
    def run_settings(self) -> dict[str, Any]:
        """The run's own settings (its ``train`` or ``finetune`` section), {} when unknown."""
        s = self.settings or {}
        section = s.get("train") or s.get("finetune") or {}
        return section if isinstance(section, dict) else {}

    @property
    def planned_epochs(self) -> int | None:
        n = self.run_settings.get("epochs")
        return n if isinstance(n, int) and not isinstance(n, bool) else None

    # -- where it stands, from its newest checkpoint ------------------------------------------

    def checkpoints(self) -> list[Path]:
        return rundir.list_step_checkpoints(self.path)

    @functools.cached_property
    def newest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest step checkpoint that loads, with what it holds; None when none does."""
        from gptcli.checkpoint import load_checkpoint

        for path in reversed(self.checkpoints()):
            try:
                obj = load_checkpoint(path, verify=False)
                int(obj["progress"]["epoch"]), int(obj["train_config"]["epochs"])
            except (CheckpointError, KeyError, TypeError, ValueError):
                continue
            return path, obj
        return None

    def epochs(self) -> tuple[int, int] | None:
        """(epochs done, epochs planned) at the newest checkpoint."""
        if self.newest is None:
            return None
        obj = self.newest[1]
        return int(obj["progress"]["epoch"]), int(obj["train_config"]["epochs"])

    def stopped_by(self, length: dict[str, Any] | None = None) -> str | None:
        """The budget or --patience that ended the run before its epochs did (None if none did)."""
        if self.newest is None:
            return None
        return stopped_by(self.newest[1], length)

    def finished(self, epochs: int | None = None, length: dict[str, Any] | None = None) -> bool:
        """Whether nothing is left to train: its epochs done (up to ``epochs`` when given), or a
        budget or --patience reached; a run without a checkpoint has nothing to resume either."""
        done = self.epochs()
        if done is None:
            return True
        return done[0] >= (epochs if epochs is not None else done[1]) or bool(self.stopped_by(length))

    def ended_by_a_budget(self) -> str | None:
        """``stopped_by`` for a listing: only a run whose settings set a budget or --patience has
        its checkpoint opened, so the listing stays instant for the others."""
        if not any(self.run_settings.get(k) for k in ("max_steps", "max_tokens", "max_time", "patience")):
            return None
        done = self.epochs()
        return self.stopped_by() if done is not None and done[0] < done[1] else None

    # -- finding runs -------------------------------------------------------------------------

    @staticmethod
    def all(root: Path = rundir.RUNS_ROOT) -> list[Run]:
        """Every run under ``root``, least recently touched first."""
        return [Run(p) for p in rundir.list_runs(root)]

    @staticmethod
    def latest(root: Path = rundir.RUNS_ROOT, *, kinds: tuple[str | None, ...] | None = None) -> Run | None:
        """The most recently touched run under ``root`` (of one of ``kinds``, None among them: a
        run whose config.yaml cannot say)."""
        for run in reversed(Run.all(root)):
            if kinds is None or run.kind in kinds:
                return run
        return None

    @staticmethod
    def latest_unfinished(
        root: Path = rundir.RUNS_ROOT, *, epochs: int | None = None, length: dict[str, Any] | None = None
    ) -> Run | None:
        """The most recent run with something left to train. Runs are asked newest first, so
        usually only one checkpoint is opened."""
        for run in reversed(Run.all(root)):
            if not run.finished(epochs, length):
                return run
        return None
