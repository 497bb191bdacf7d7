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
from gptcli.errors import UsageError
from gptcli.paths import display_path
from gptcli.plot import plot_runs, terminal_plot


def _resolve_info_target(target: str | None) -> Path:
    from gptcli.checkpoint import resolve_checkpoint  # imports torch: only info opens a checkpoint

    if target is not None and not Path(target).exists() and weights.model_name_to_size(target):
        return weights.resolve_model(target)  # gpt2-124M etc.: the converted download
    return resolve_checkpoint(Path(target) if target is not None else None, warn=console.warn)


def info_command(target: str | None, *, json_out: bool = False) -> dict[str, Any]:
    """A checkpoint's kind, config, parameter count, progress and last losses."""
    from gptcli.checkpoint import load_checkpoint, read_model_config

    path = _resolve_info_target(target)
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
        "tokens_seen": progress.get("tokens_seen"),
        "last_eval": history[-1] if history else None,
        "best_val_loss": progress.get("best_val") if history else None,
    }
    if json_out:
        console.print_result(json.dumps(result, indent=2, default=str))
        return result
    kind = result["kind"] + (
        "" if result["kind"] != "weights" else " (no optimizer state: use it with --init, --model)"
    )
    lines = [("checkpoint", f"{path} ({console.human_bytes(result['size_bytes'], digits=2)})"), ("kind", kind)]
    if run_dir:
        lines.append(("run", display_path(run_dir)))
    lines.append(("parameters", f"{result['parameters']:,}"))
    if result["step"] is not None:
        epochs = f" of {result['epochs']}" if result["epochs"] else ""
        lines.append(
            (
                "progress",
                f"epoch {result['epoch']}{epochs} done, step {result['step']:,}, {result['tokens_seen'] or 0:,} tokens seen",
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
    width = max(len(k) for k, _ in lines) + 2
    out = [f"{k + ':':<{width}}{v}" for k, v in lines]
    sections = {"model": result["model_config"], **({"train": train_cfg} if train_cfg else {})}
    console.print_result("\n".join(out) + "\n" + yaml.safe_dump(sections, sort_keys=False), end="")
    return result


def runs_command(root: Path = rundir.RUNS_ROOT, *, json_out: bool = False) -> list[dict[str, Any]]:
    """Every run directory under ``root``, oldest first, with its progress and last losses."""
    root = Path(root)
    runs = [rundir.run_summary(p) for p in rundir.list_runs(root)]
    if json_out:
        console.print_result(json.dumps(runs, indent=2))
        return runs
    if not runs:
        console.info(f"no runs under {root}/ (start one with: gptcli train FILE.txt)")
        return runs

    def loss(x: float | None) -> str:
        return console.fmt_loss(x) if x is not None else "-"

    header = ("RUN", "EPOCHS", "STEP", "TOKENS", "TRAIN", "VAL", "BEST VAL", "UPDATED")
    rows = [
        (
            r["run"],
            f"{r['epochs_done']}/{r['epochs']}" if r["epochs"] else str(r["epochs_done"]),
            str(r["step"]),
            f"{r['tokens_seen']:,}",
            loss(r["train_loss"]),
            loss(r["val_loss"]),
            loss(r["best_val_loss"]),
            r["updated"],
        )
        for r in runs
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    left = {0, 7}
    for row in [header, *rows]:
        cells = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        console.print_result("  ".join(cells).rstrip())
    return runs


def plot_command(targets: list[Path], *, output: Path, log_y: bool = False, terminal: bool = False) -> None:
    if not targets:
        latest = rundir.find_latest_run()
        if latest is None:
            raise UsageError("no training run found under runs/; give a run directory or metrics.jsonl")
        targets = [latest]
    if terminal:
        console.print_result(terminal_plot(targets, log_y=log_y))
        return
    path = plot_runs(targets, output, log_y=log_y)
    console.info(f"wrote {path}")
