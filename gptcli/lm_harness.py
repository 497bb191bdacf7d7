"""``gptcli eval --task lm-eval:TASKS``: any task of EleutherAI's lm-evaluation-harness on a gptcli
model, through ``gptcli.lm_harness_bridge.GptcliLM`` (why a bridge, and not the Hugging Face
export wrapped in the harness's ``HFLM``, is said there).

Tasks come from the harness's registry (``lm-eval ls tasks``); their datasets come from the
Hugging Face Hub, or from the datasets cache, on the user's machine. ``include_path`` adds folders
of task YAMLs, which may read local files (``dataset_path: json`` with ``data_files``). The results
are the harness's own (``simple_evaluate``, its seeds and its metrics), shown with its
``make_table`` and written beside the run, in ``<run>/eval/``, with the task versions and the
harness's version. Never prints.
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcli import fsutil
from gptcli.errors import DataError, GptCliError, SaveError, UsageError, os_error_reason

EVAL_EXTRA = "pip install 'gptcli[eval]'"
# What the JSON output keeps of the harness's results: the figures and what makes them reproducible
# (the per-task configs, the environment dump and the samples stay out).
_KEPT = ("results", "groups", "group_subtasks", "versions", "n-shot", "higher_is_better", "n-samples", "config")


def require_harness() -> str:
    """The installed harness's version, or a UsageError naming the extra that installs it."""
    try:
        import lm_eval
    except ImportError:
        raise UsageError(f"--task lm-eval:... needs EleutherAI's lm-evaluation-harness: {EVAL_EXTRA}") from None
    return str(lm_eval.__version__)


def task_manager(include_path: Path | None, *, include_defaults: bool = True) -> Any:
    """The harness's task registry, with the task YAMLs under ``include_path`` added."""
    from lm_eval.tasks import TaskManager

    if include_path is not None and not include_path.is_dir():
        raise UsageError(f"invalid --include-path: {include_path} (not a directory of task YAMLs)")
    return TaskManager(include_path=str(include_path) if include_path else None, include_defaults=include_defaults)


def check_tasks(names: list[str], manager: Any) -> None:
    """Every name is a task, group or tag the registry knows; otherwise a UsageError with the
    nearest names."""
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            near = difflib.get_close_matches(name, manager.all_tasks, n=3)
            also = f"; did you mean {', '.join(near)}?" if near else ""
            raise UsageError(
                f"invalid --task: unknown lm-eval task {name!r}{also} (lm-eval ls tasks lists them; "
                "--include-path DIR adds local task YAMLs)"
            )


@dataclass
class HarnessRun:
    """What ``run_tasks`` returns: the harness's results and the summary written out."""

    raw: dict[str, Any]  # simple_evaluate's whole answer (samples included when asked for)
    summary: dict[str, Any]  # the JSON output: the figures, task versions and the settings
    table: str  # the harness's results table (and its groups table), as make_table writes it


def run_tasks(
    lm: Any,
    names: list[str],
    manager: Any,
    *,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 100_000,
    extra: dict[str, Any] | None = None,
) -> HarnessRun:
    """The harness's ``simple_evaluate`` of ``lm`` on ``names``, with its default seeds; a
    dataset that cannot be had becomes a DataError naming the tasks."""
    import lm_eval
    from lm_eval.utils import make_table

    try:
        raw = lm_eval.simple_evaluate(
            model=lm,
            tasks=names,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            batch_size=getattr(lm, "batch_size", None),  # recorded in the results' config only
            device=str(getattr(lm, "device", "")) or None,
            log_samples=log_samples,
            bootstrap_iters=bootstrap_iters,
        )
    except (OSError, ConnectionError) as e:  # the Hub unreachable, offline mode, a missing data file
        raise DataError(
            f"lm-eval {','.join(names)}: could not load the task data ({type(e).__name__}: {e})",
            hint="the harness downloads its datasets from the Hugging Face Hub; run once where the Hub "
            "can be reached (the datasets cache keeps them), or point --include-path at task YAMLs over local files",
        ) from None
    except ImportError as e:  # a task's own dependency (langdetect for ifeval, ...)
        raise UsageError(
            f"lm-eval {','.join(names)}: a task needs a package that is not installed ({e})",
            hint="the harness's task extras install them: pip install 'lm-eval[TASK-EXTRA]'",
        ) from e
    except (ValueError, KeyError, AssertionError) as e:  # the harness refusing a task or a setting
        if "marked as unsafe" in str(e):
            raise UsageError(
                f"lm-eval {','.join(names)}: a task runs code the model writes, which gptcli does not run "
                "(the harness's own lm_eval command does, with --confirm_run_unsafe_code)"
            ) from None
        raise GptCliError(
            f"lm-eval {','.join(names)}: the harness stopped ({type(e).__name__}: {e})",
            hint="GPTCLI_DEBUG=1 shows its traceback",
        ) from e
    summary = {
        "lm_eval_version": str(lm_eval.__version__),
        "tasks": names,
        "num_fewshot": num_fewshot,
        "limit": limit,
        **(extra or {}),
        **{k: raw[k] for k in _KEPT if k in raw},
    }
    table = make_table(raw)
    if raw.get("groups"):
        table += "\n" + make_table(raw, "groups")
    return HarnessRun(raw, summary, table)


def to_json(obj: Any) -> str:
    """JSON of the harness's results (numpy numbers and the like as the harness writes them)."""
    from lm_eval.utils import handle_non_serializable

    return json.dumps(obj, indent=2, default=handle_non_serializable, ensure_ascii=False)


def results_dir(checkpoint: Path) -> Path:
    """``<run>/eval/`` for a checkpoint of a run; beside the file (``<folder>/eval/``) otherwise."""
    from gptcli.rundir import run_dir_of

    return (run_dir_of(checkpoint) or Path(checkpoint).resolve().parent) / "eval"


def write_results(run: HarnessRun, out_dir: Path, *, stamp: str | None = None) -> tuple[Path, Path]:
    """``lm-eval-<time>.json`` (the summary) and ``lm-eval-<time>.md`` (the table) in
    ``out_dir``, each written whole or not at all."""
    stamp = stamp or time.strftime("%Y%m%d-%H%M%S")
    name, n = f"lm-eval-{stamp}", 1
    while (out_dir / f"{name}.json").exists() or (out_dir / f"{name}.md").exists():  # two runs in one second
        n += 1
        name = f"lm-eval-{stamp}-{n}"
    json_path, table_path = out_dir / f"{name}.json", out_dir / f"{name}.md"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fsutil.atomic_write(json_path, to_json(run.summary) + "\n")
        header = f"lm-evaluation-harness {run.summary['lm_eval_version']}: {run.summary.get('checkpoint', '')}\n\n"
        fsutil.atomic_write(table_path, header + run.table)
    except OSError as e:
        raise SaveError(f"{out_dir}: could not write the results ({os_error_reason(e)})") from None
    return json_path, table_path
