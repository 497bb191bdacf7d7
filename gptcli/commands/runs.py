"""``gptcli info``, ``gptcli runs`` and ``gptcli plot``: looking at checkpoints and runs.

``runs`` and ``plot`` read only ``metrics.jsonl``, ``config.yaml`` and file names, so they stay
instant; ``info`` opens one checkpoint, memory-mapped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from gptcli import console, rundir, weights
from gptcli.errors import SaveError, UsageError, os_error_reason
from gptcli.metrics import read_metrics
from gptcli.paths import display_path, shell_path
from gptcli.plot import check_output, default_plot_path, plot_runs, terminal_plot
from gptcli.settings.runs import InfoSettings
from gptcli.tasks import FINETUNE_RECORDED


def _resolve_info_target(target: str | None) -> Path:
    from gptcli.checkpoint import resolve_checkpoint  # imports torch: only info opens a checkpoint

    if target is not None and not Path(target).exists() and weights.model_name_to_size(target):
        return weights.resolve_model(target)  # gpt2-124M etc.: the converted download
    if target is not None and (weights.is_hf_folder(Path(target)) or _downloaded_repo(target)):
        return weights.resolve_model(target)  # a Hugging Face folder, or a Hub repository downloaded
    return resolve_checkpoint(Path(target) if target is not None else None, warn=console.warn)


def _downloaded_repo(target: str) -> bool:
    """``gptcli download REPO`` fetched this name (and no file or folder here has it)."""
    return not Path(target).exists() and (weights.hub_dir(target) / weights.CONVERTED_NAME).is_file()


def info_command(s: InfoSettings) -> dict[str, Any]:
    """A checkpoint's kind, config, parameter count, progress and last losses."""
    from gptcli.checkpoint import load_checkpoint, read_model_config

    path = _resolve_info_target(s.target)
    obj = load_checkpoint(path)  # memory-mapped: the tensors are not read
    model_cfg = read_model_config(obj, path)
    progress = dict(obj.get("progress") or {})
    history = list(progress.get("history") or [])
    train_cfg = dict(obj.get("train_config") or {})
    run_dir = rundir.run_dir_of(path)
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "size_bytes": path.stat().st_size,
        "kind": obj.get("kind", "unknown"),
        "version": obj.get("version"),
        "run_dir": str(run_dir) if run_dir else None,
        "parameters": model_cfg.num_params(),
        "model_config": model_cfg.to_dict(),
        "train_config": train_cfg or None,
        "step": progress.get("step"),
        "epoch": progress.get("epoch"),
        "epochs": train_cfg.get("epochs"),
        "tokens_seen": progress.get("tokens_seen", progress.get("seen")),
        "last_eval": history[-1] if history else None,
        "best_val_loss": progress.get("best_val", _best_val(history)) if history else None,
        "unsaved_evals": _unsaved_evals(run_dir) if run_dir else None,
        "finetune": _finetune_info(obj),
        "stopped_by": _stopped_by(obj),
    }
    if s.json_out:
        console.print_result(json.dumps(result, indent=2, default=str))
        return result
    kind = result["kind"] + (
        "" if result["kind"] != "weights" else " (no optimizer state: use it with --init, --model)"
    )
    lines = [("checkpoint", f"{path} ({console.human_bytes(result['size_bytes'], digits=2)})"), ("kind", kind)]
    if run_dir:
        lines.append(("run", display_path(run_dir)))
    lines.append(("parameters", f"{result['parameters']:,}"))
    lines += _finetune_lines(result["finetune"])
    if result["step"] is not None:
        epochs = f" of {result['epochs']}" if result["epochs"] else ""
        lines.append(
            (
                "progress",
                f"epoch {result['epoch']}{epochs} done, step {result['step']:,}, {result['tokens_seen'] or 0:,} tokens seen"
                + (
                    f" ({progress['examples_seen']:,} examples)"
                    if (result["finetune"] or {}).get("labels") is not None and "examples_seen" in progress
                    else ""
                ),
            )
        )
    if result["stopped_by"]:
        flag = result["stopped_by"].split()[0]
        lines.append(
            (
                "status",
                f"done: stopped by {result['stopped_by']} (to go on: gptcli resume {shell_path(run_dir or path)} "
                f"{flag} N, a larger N)",
            )
        )
    last = result["last_eval"]
    if last:
        lines.append(
            (
                "last losses",
                f"train {console.fmt_loss(last['train_loss'])}, val {console.fmt_loss(last['val_loss'])} (step {last['step']})",
            )
        )
        lines.append(("best val loss", console.fmt_loss(result["best_val_loss"])))
    if result["unsaved_evals"]:
        lines.append(
            (
                "unsaved",
                f"{_evals(result['unsaved_evals'])} in metrics.jsonl after the run's last checkpoint "
                "(stopped before it could save; resume starts from the checkpoint)",
            )
        )
    width = max(len(k) for k, _ in lines) + 2
    out = [f"{k + ':':<{width}}{v}" for k, v in lines]
    if result["finetune"] is not None:  # only the settings that apply to this kind of run
        from gptcli.finetune.config import applicable_settings

        train_cfg = applicable_settings(train_cfg, merged=result["finetune"]["merged"])
    sections = {"model": result["model_config"], **({"train": train_cfg} if train_cfg else {})}
    if not s.verbose:
        sections = _not_default(sections, train_cfg.get("kind") if result["finetune"] is not None else None)
        out.append("# settings that differ from the defaults (all of them: --verbose)")
    settings = yaml.safe_dump(sections, sort_keys=False) if sections else ""
    console.print_result("\n".join(out) + "\n" + settings, end="")
    return result


def _not_default(sections: dict[str, dict[str, Any]], finetune_kind: str | None) -> dict[str, dict[str, Any]]:
    """The settings of each section that differ from a new run's defaults: ModelConfig's for the
    model, and TrainConfig's, or for a finetune run FinetuneConfig's for its kind (the data and
    the base always differ: they are the run's own). A section left empty is left out."""
    from gptcli.config import ModelConfig, TrainConfig
    from gptcli.finetune.config import FinetuneConfig

    if finetune_kind is not None:
        train = FinetuneConfig(kind=finetune_kind, data="-", init="-").to_dict()
        del train["data"], train["init"]
    else:
        train = TrainConfig().to_dict()
    defaults = {"model": ModelConfig().to_dict(), "train": train}
    out = {}
    for name, values in sections.items():
        d = defaults.get(name, {})
        changed = {k: v for k, v in values.items() if k not in d or d[k] != v}
        if changed:
            out[name] = changed
    return out


def _stopped_by(obj: dict[str, Any]) -> str | None:
    """The budget or --patience that ended a checkpoint's run before its epochs did, if any."""
    from gptcli.run import stopped_by

    progress, cfg = obj.get("progress"), obj.get("train_config")
    if not isinstance(progress, dict) or not isinstance(cfg, dict):
        return None
    try:
        if int(progress.get("epoch", 0)) >= int(cfg.get("epochs", 0)):
            return None  # its epochs are done
    except (TypeError, ValueError):
        return None
    return stopped_by(obj)


def _best_val(history: list[dict[str, Any]]) -> float | None:
    """The lowest validation loss of a history (finetune checkpoints do not store it apart)."""
    return min((h["val_loss"] for h in history if h.get("val_loss") == h.get("val_loss")), default=None)


def _finetune_info(obj: dict[str, Any]) -> dict[str, Any] | None:
    """What a finetune checkpoint (kind instruct or classify) records beyond the model."""
    if obj.get("kind") not in FINETUNE_RECORDED or not isinstance(obj.get("finetune"), dict):
        return None
    ft = obj["finetune"]
    out = {k: ft.get(k) for k in ("base", "lora")}
    # ``convert --merge-lora`` of a classifier: every weight, adapters folded in, no optimizer state
    out["merged"] = "optimizer_state_dict" not in obj
    # What the kind keeps: a classifier its labels and length, an instruct finetune its template.
    keys = ("labels", "max_length") if "labels" in ft else ("template",)
    return {**out, **{k: ft.get(k) for k in keys}}


def _finetune_lines(ft: dict[str, Any] | None) -> list[tuple[str, str]]:
    if ft is None:
        return []
    lines = []
    if "labels" in ft:
        labels = ft["labels"] or []
        lines.append(("labels", ", ".join(f"{i}={name}" for i, name in enumerate(labels))))
        lines.append(("max length", f"{ft['max_length']} tokens"))
    else:
        lines.append(
            ("template", "the book's format_input (Alpaca)" if ft["template"] is None else repr(ft["template"]))
        )
    lora = ft.get("lora")
    if ft.get("merged"):
        lines.append(("weights", "merged (any LoRA adapters folded in): every weight is in the file, no base needed"))
        return lines
    lines.append(
        (
            "lora",
            f"rank {lora['rank']}, alpha {lora['alpha']}, targets {lora['targets']}" if lora else "none (full weights)",
        )
    )
    base = ft.get("base") or {}
    if base:
        lines.append(("base", f"{base.get('path')} (sha256 {str(base.get('sha256'))[:12]}...)"))
    return lines


def runs_command(root: Path | None = None, *, json_out: bool = False) -> list[dict[str, Any]]:
    """Every run directory under ``root`` (default ``runs/``, which need not exist yet), oldest
    first, with its progress and last losses. A ``root`` given that is not a directory is an error."""
    if root is not None and not Path(root).is_dir():
        what = "is not a directory" if Path(root).exists() else "no such directory"
        raise UsageError(f"invalid --root: {root} ({what})")
    root = Path(root) if root is not None else rundir.RUNS_ROOT
    from gptcli.run import Run

    warnings: list[str] = []
    runs = [rundir.run_summary(p, warnings=warnings) for p in rundir.list_runs(root)]
    for r in runs:
        run = Run(r["run"])
        r["kind"] = run.kind
        r["stopped_by"] = _run_stopped_by(run.path) if (r["epochs_done"] or 0) < (r["epochs"] or 0) else None
        r["status"] = _status(r, run.path)
        if r["status"] == "interrupted" and run.newest is not None:
            # where resume goes on from, as `info` says: the newest checkpoint's step and tokens,
            # not the last evaluation's (an interrupted run saves between evaluations)
            progress = run.newest[1]["progress"]
            r["step"], r["tokens_seen"] = int(progress["step"]), int(progress.get("tokens_seen", 0))
    for w in warnings:  # an unreadable or malformed file: its run still shows, with '-' fields
        console.warn(w)
    if json_out:
        console.print_result(json.dumps(runs, indent=2))
        return runs
    if not runs:
        console.info(f"no runs under {root}/ (start one with: gptcli train FILE.txt)")
        return runs

    def loss(x: float | None) -> str:
        return console.fmt_loss(x) if x is not None else "-"

    def num(x: int | None, fmt: str = "") -> str:
        return format(x, fmt) if x is not None else "-"

    header = ("RUN", "KIND", "EPOCHS", "STEP", "TOKENS", "TRAIN", "VAL", "BEST VAL", "UPDATED")
    rows = [
        (
            r["run"],
            r["kind"] or "-",
            f"{num(r['epochs_done'])}/{r['epochs']}" if r["epochs"] else num(r["epochs_done"]),
            num(r["step"]),
            num(r["tokens_seen"], ","),
            loss(r["train_loss"]),
            loss(r["val_loss"]),
            loss(r["best_val_loss"]),
            r["updated"] or "-",
        )
        for r in runs
    ]
    unsaved = any(r.get("unsaved_evals") for r in runs)
    if unsaved:  # metrics lines after a run's last checkpoint: shown only when some run has them
        header = (*header, "UNSAVED")
        rows = [(*row, _evals(r.get("unsaved_evals")) or "-") for row, r in zip(rows, runs, strict=True)]
    stopped = {"stopped": lambda r: f"done ({r['stopped_by']})", "interrupted": lambda r: "interrupted"}
    if any(r["status"] in stopped for r in runs):  # a run a budget ended, or one cut short
        header = (*header, "STOPPED")
        rows = [
            (*row, stopped[r["status"]](r) if r["status"] in stopped else "-")
            for row, r in zip(rows, runs, strict=True)
        ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left = {0, 1, 8, 9, 10}
    for row in [header, *rows]:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        console.print_result("  ".join(cells).rstrip())
    if unsaved:
        console.info(
            "UNSAVED: evaluations logged after the run's last checkpoint (stopped before it could save); "
            "the other columns are the checkpoint's, and resume starts from it"
        )
    return runs


def _status(r: dict[str, Any], run: Path) -> str | None:
    """Where a listed run stands: "done" (its epochs), "stopped" (a budget or --patience ended
    it: ``stopped_by``), "running" (a train or resume holds its lock), "interrupted" (stopped
    short of both, and nothing is training it: ``gptcli resume`` continues it), or None when its
    files cannot say (no epochs known, no checkpoint)."""
    if r["epochs_done"] is None or not r["epochs"]:
        return None
    if r["epochs_done"] >= r["epochs"]:
        return "done"
    if r["stopped_by"]:
        return "stopped"
    if rundir.being_written(run):
        return "running"
    return "interrupted" if r["checkpoints"] else None


def _run_stopped_by(run: Path) -> str | None:
    """The budget or --patience that ended a run before its epochs did (``Run.ended_by_a_budget``)."""
    from gptcli.run import Run

    return Run(run).ended_by_a_budget()


def _evals(n: int | None) -> str:
    return f"{n} eval{'s' if n != 1 else ''}" if n else ""


def _unsaved_evals(run_dir: Path) -> int | None:
    """Evaluations in a run's metrics.jsonl logged after its newest step checkpoint."""
    try:
        records = read_metrics(rundir.metrics_path(run_dir)) if rundir.metrics_path(run_dir).is_file() else []
        _, later = rundir.split_saved(records, rundir.saved_step(run_dir))
    except OSError:
        return None
    return sum(1 for r in later if r.get("type") == "eval")


def plot_command(
    targets: list[Path], *, output: Path | None = None, log_y: bool = False, terminal: bool = False
) -> Path | None:
    """Loss curves as an image, in the terminal (``terminal``), or both when ``output`` is given too.

    Without ``output`` the image goes into the plotted run's own directory (``<run>/loss.png``),
    never over a file in the current directory; several runs together need ``output``.
    """
    if output is not None:  # a bad flag fails before any run is looked for
        check_output(output)
    if not targets:
        latest = rundir.find_latest_run()
        if latest is None:
            raise UsageError("no training run found under runs/; give a run directory or metrics.jsonl")
        console.info(f"plotting {display_path(latest)} (the most recent run)")
        targets = [latest]
    if output is None and not terminal:
        if len(targets) > 1:
            raise UsageError(
                f"plotting {len(targets)} runs together needs -o/--output FILE (.png, .svg or .pdf); "
                "one run's plot goes into its own directory"
            )
        output = default_plot_path(targets[0])
    warnings: list[str] = []  # malformed metrics lines, skipped
    path = None
    try:
        if output is not None:
            try:
                path = plot_runs(targets, output, log_y=log_y, warnings=warnings)
            except OSError as e:  # atomic_write left nothing behind
                raise SaveError(f"{output}: could not write the plot ({os_error_reason(e)})") from None
        if terminal:
            console.print_result(terminal_plot(targets, log_y=log_y, warnings=warnings if path is None else None))
    finally:
        for w in warnings:
            console.warn(w)
    if path is not None:
        console.info(f"wrote {display_path(path)}")
    return path
