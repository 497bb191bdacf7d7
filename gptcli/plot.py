"""Loss curves from metrics.jsonl: the book's figure (loss against epochs, tokens seen on top)."""

from __future__ import annotations

from pathlib import Path

from gptcli.errors import UsageError
from gptcli.metrics import METRICS_FILE, read_metrics

FORMATS = (".png", ".svg", ".pdf")


def metrics_path(target: str | Path) -> Path:
    p = Path(target)
    if p.is_dir():
        p = p / METRICS_FILE
    if not p.is_file():
        raise UsageError(f"{p}: no metrics file found (give a run directory or a metrics.jsonl)")
    return p


def eval_series(path: Path) -> dict[str, list[float]]:
    evals = [r for r in read_metrics(path) if r.get("type") == "eval"]
    if not evals:
        raise UsageError(f"{path}: holds no evaluations yet")
    # An eval happens after its optimizer step, so it sits (step+1)/steps_per_epoch epochs in.
    # Each epoch's sample record marks the epoch's last step, which gives steps_per_epoch.
    samples = [r for r in read_metrics(path) if r.get("type") == "sample"]
    steps_per_epoch = samples[0]["step"] + 1 if samples else max(r["step"] + 1 for r in evals)
    return {
        "epoch": [(r["step"] + 1) / steps_per_epoch for r in evals],
        "tokens": [r["tokens_seen"] for r in evals],
        "train": [r["train_loss"] for r in evals],
        "val": [r["val_loss"] for r in evals],
    }


def plot_runs(targets: list[str | Path], output: str | Path, *, log_y: bool = False) -> Path:
    out = Path(output)
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"invalid -o/--output: {out} (the extension must be one of {', '.join(FORMATS)})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [(Path(t), eval_series(metrics_path(t))) for t in targets]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    multi = len(series) > 1
    for i, (target, s) in enumerate(series):
        name = (target if target.is_dir() else target.parent).name
        prefix = f"{name}: " if multi else ""
        color = f"C{i}"
        ax1.plot(s["epoch"], s["train"], color=color, label=f"{prefix}Training loss")
        ax1.plot(s["epoch"], s["val"], color=color, linestyle="-." if not multi else "--", label=f"{prefix}Validation loss")
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss")
    if log_y:
        ax1.set_yscale("log")
    ax1.legend(loc="upper right", fontsize="small")
    # Second x axis: tokens seen, from the first run (the book's figure)
    ax2 = ax1.twiny()
    first = series[0][1]
    ax2.plot(first["tokens"], first["train"], alpha=0)
    ax2.set_xlabel("Tokens seen")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def terminal_plot(targets: list[str | Path], *, width: int = 72, height: int = 18, log_y: bool = False) -> str:
    """Loss curves drawn with characters, for a terminal over SSH."""
    import math

    series = [(Path(t), eval_series(metrics_path(t))) for t in targets]
    pts = []
    marks = "tv*o+x#@"
    for i, (_, s) in enumerate(series):
        pts.append((marks[(2 * i) % len(marks)], s["epoch"], s["train"]))
        pts.append((marks[(2 * i + 1) % len(marks)], s["epoch"], s["val"]))
    f = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xs = [x for _, ex, _ in pts for x in ex]
    ys = [f(y) for _, _, ey in pts for y in ey if y == y and y > 0 or (not log_y and y == y)]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    grid = [[" "] * width for _ in range(height)]
    for mark, ex, ey in pts:
        for x, y in zip(ex, ey):
            if y != y or (log_y and y <= 0):
                continue
            c = int((x - x0) / (x1 - x0 or 1) * (width - 1))
            r = height - 1 - int((f(y) - y0) / (y1 - y0 or 1) * (height - 1))
            grid[r][c] = mark
    lab = (lambda v: f"{10 ** v:7.3f}") if log_y else (lambda v: f"{v:7.3f}")
    lines = []
    for r, row in enumerate(grid):
        yv = y1 - (y1 - y0) * r / (height - 1)
        lines.append(f"{lab(yv)} |" + "".join(row))
    lines.append(" " * 8 + "+" + "-" * width)
    lines.append(" " * 9 + f"epoch {x0:.2f}".ljust(width - 12) + f"{x1:.2f}")
    legend = []
    for i, (t, _) in enumerate(series):
        name = (t if t.is_dir() else t.parent).name
        legend.append(f"{marks[(2 * i) % len(marks)]} train, {marks[(2 * i + 1) % len(marks)]} val: {name}")
    lines.extend(" " * 9 + x for x in legend)
    return "\n".join(lines)
