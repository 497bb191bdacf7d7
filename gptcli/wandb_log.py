"""``gptcli train --wandb``: the records of ``metrics.jsonl`` logged to Weights & Biases.

The same scalars as ``--tensorboard`` at each evaluation's step, and the epoch samples as a table.
The W&B run's id and project are kept in ``<run>/wandb-run.json`` (``rundir.wandb_run_path``), so
that ``gptcli resume`` continues the same W&B run; wandb's own files go to ``<run>/wandb/``. With
``WANDB_MODE=offline`` nothing leaves the machine: upload later with
``wandb sync <run>/wandb/offline-run-*`` (the sessions of a resumed run share one id and are
uploaded as one run).

Needs the ``wandb`` package (``pip install wandb``, or the ``[wandb]`` extra), imported only when
a run logs to W&B, so ``gptcli --help`` never pays for it. wandb is made silent: its messages go
to its log files under ``<run>/wandb/``, never to the terminal.
"""

from __future__ import annotations

import json
import os
import secrets
import string
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptcli import rundir
from gptcli.callbacks import Callbacks
from gptcli.errors import GptCliError, RunDirError, UsageError, os_error_reason
from gptcli.metrics import eval_scalars, read_metrics

# gptcli is installed from a clone or a wheel, not from an index, so the hint names the package
# itself (what the [wandb] extra installs), which works wherever pip does.
INSTALL_HINT = "pip install wandb"
DEFAULT_PROJECT = "gptcli"
LOG_DIR = "wandb"  # wandb.init(dir=<run>) keeps its files in <run>/wandb/
# The characters of the ids wandb generates itself: valid in run URLs and directory names.
_ID_ALPHABET = string.ascii_lowercase + string.digits


def check_available() -> None:
    """Raise a one-line UsageError unless the wandb package can be imported."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise UsageError(f"--wandb needs the wandb package, which is not installed; run: {INSTALL_HINT}") from None
    except Exception as e:  # a broken install (a protobuf mismatch, say): still one line, no traceback
        raise UsageError(f"--wandb: the wandb package cannot be imported ({type(e).__name__}: {e})") from None


def default_project() -> str:
    """The project of a new W&B run without ``--wandb-project``: ``$WANDB_PROJECT``, else gptcli."""
    return os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


# What wandb refuses in a project name (wandb.sdk.lib.project name check), and its length limit.
_PROJECT_FORBIDDEN = "/\\#?%:"
_PROJECT_MAX = 128


def check_project(project: str | None) -> None:
    """A ``--wandb-project`` W&B would refuse, found before any run starts: a UsageError that
    names the flag (exit 2), not a failed start after the run directory is made."""
    if project is None:
        return
    bad = sorted({c for c in project if c in _PROJECT_FORBIDDEN})
    if not project.strip() or bad or len(project) > _PROJECT_MAX:
        why = (
            f"must not contain {', '.join(repr(c) for c in bad)}"
            if bad
            else f"must be 1 to {_PROJECT_MAX} characters, not blank"
        )
        raise UsageError(
            f"invalid --wandb-project: {project!r} ({why}; W&B project names cannot contain "
            f"{' '.join(_PROJECT_FORBIDDEN)})"
        )


def new_run_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


def read_run_record(run_dir: Path) -> dict[str, str] | None:
    """The W&B run a run directory logs to (``{"id", "project"}``), None when it has none."""
    path = rundir.wandb_run_path(run_dir)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise RunDirError(f"{path}: cannot be read ({os_error_reason(e)})") from None
    try:
        record = json.loads(text)
    except (ValueError, UnicodeDecodeError):
        record = None
    if not (
        isinstance(record, dict)
        and all(isinstance(record.get(k), str) and record[k] for k in ("id", "project"))
        and set(record["id"]) <= set(_ID_ALPHABET + "-_")
    ):
        raise RunDirError(
            f'{path}: is not a W&B run record ({{"id": ..., "project": ...}}); restore it, or remove it '
            "to start a new W&B run"
        )
    return {"id": record["id"], "project": record["project"]}


def write_run_record(run_dir: Path, record: dict[str, str]) -> None:
    """Write ``wandb-run.json`` whole or not at all."""
    path = rundir.wandb_run_path(run_dir)
    try:
        rundir.write_text_atomic(path, json.dumps(record) + "\n")
    except OSError as e:
        raise RunDirError(f"{path}: could not write the W&B run id ({os_error_reason(e)})") from None


class WandbLogger(Callbacks):
    """Training callbacks that log each eval and sample record to one W&B run.

    A new run directory gets a new W&B run; one with ``wandb-run.json`` continues its W&B run
    (``resume="allow"`` online; offline, a new local session under the same id). Values go in at
    the training step, so a resumed run that repeats the steps after its checkpoint logs them at
    the same steps: online, wandb keeps the first (identical: resume is exact) and drops the repeats.
    Logging failures after the start never stop training: ``warn`` is told once and logging stops.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        config: dict[str, Any],
        project: str | None = None,
        warn: Callable[[str], None] | None = None,
    ):
        check_available()
        import wandb

        self.run_dir = Path(run_dir)
        self._warn = warn
        self._failed = False
        stored = read_run_record(self.run_dir)  # a resumed run keeps its id and its project
        record = stored or {"id": new_run_id(), "project": project or default_project()}
        # silent: no banner, summary or warning on our terminal (they go to wandb's debug logs);
        # console="off": our own stdout/stderr are not captured. wandb.setup() configures the
        # messages printed outside a run (like init's), so it gets the same settings first.
        quiet = {"silent": True, "console": "off", "show_info": False, "show_warnings": False}
        try:
            setup = wandb.setup(settings=wandb.Settings(**quiet))
            self.mode = setup.settings.mode
            self.offline = self.mode in ("offline", "dryrun")
            if self.mode not in ("offline", "dryrun", "disabled") and not _logged_in(wandb):
                raise UsageError(
                    "--wandb: not logged in to Weights & Biases; run: wandb login (or set WANDB_MODE=offline "
                    "to log offline and upload later with wandb sync)"
                )
            self.run = wandb.init(
                project=record["project"],
                id=record["id"],
                name=self.run_dir.resolve().name,  # `--out .` too
                dir=str(self.run_dir),
                config=config,
                allow_val_change=True,  # a resumed run may extend its epochs or budget
                # offline, wandb cannot resume (it says so, and starts a session with the same id)
                resume=None if self.offline else "allow",
                settings=wandb.Settings(**quiet),
            )
        except GptCliError:
            raise
        except Exception as e:  # wandb.errors.Error (authentication, network), a timeout
            raise GptCliError(f"--wandb: could not start the W&B run ({_reason(e)})") from None
        self.run_id = record["id"]
        self.project = record["project"]
        self.url = getattr(self.run, "url", None)
        if stored is None and self.mode != "disabled":  # disabled: no W&B run to continue
            try:
                write_run_record(self.run_dir, record)
            except BaseException:
                self.close()
                raise

    # -- the training loop's callbacks (see gptcli.callbacks) ----------------------------------

    def on_eval(self, record: dict[str, Any]) -> None:
        self._log(eval_scalars(record), int(record["step"]))

    def on_sample(self, record: dict[str, Any]) -> None:
        import wandb

        # The table holds every sample of the run so far, read back from metrics.jsonl (which the
        # trainer has just written this one to): a resumed run's table starts at epoch 1 too.
        try:
            records = read_metrics(rundir.metrics_path(self.run_dir))
        except OSError:
            records = []
        rows = [[r.get("epoch"), r.get("step"), r.get("text")] for r in records if r.get("type") == "sample"]
        if [record.get("epoch"), record.get("step"), record.get("text")] not in rows:
            rows.append([record.get("epoch"), record.get("step"), record.get("text")])
        self._log({"samples": wandb.Table(columns=["epoch", "step", "text"], data=rows)}, int(record["step"]))

    def on_record(self, record: dict[str, Any]) -> None:
        """A finetuning run's accuracies (classify)."""
        if record.get("type") == "accuracy":
            self._log({f"accuracy/{s}": float(record[f"{s}_acc"]) for s in ("train", "val")}, int(record["step"]))

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Other scalars at a training step (a finetuning run's accuracies)."""
        self._log(values, step)

    def _log(self, values: dict[str, Any], step: int) -> None:
        if self._failed or self.run is None or not values:
            return
        try:
            self.run.log(values, step=step)
        except Exception as e:
            self._failed = True
            if self._warn is not None:
                self._warn(f"W&B logging stopped ({_reason(e)}); metrics.jsonl still has every record")

    def close(self) -> None:
        run, self.run = getattr(self, "run", None), None
        if run is None:
            return
        try:
            run.finish()
        except Exception as e:
            if self._warn is not None:
                self._warn(f"W&B run did not finish cleanly ({_reason(e)})")


def _logged_in(wandb: Any) -> bool:
    """Whether wandb has credentials, without prompting or going online (``wandb.login``'s
    ``prompt`` argument is from wandb 0.19; older versions are not asked, and wandb.init prompts)."""
    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:
        return True


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
