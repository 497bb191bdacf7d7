"""Loss curves from metrics.jsonl: the book's figure 5.12 and its ``plot_losses`` (loss against epochs,
tokens seen on top), several runs overlaid, or drawn with characters for a terminal."""

from __future__ import annotations

from pathlib import Path

from gptcli.errors import UsageError
from gptcli.metrics import read_metrics
from gptcli.rundir import METRICS_FILE

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


def run_labels(targets: list[str | Path]) -> list[str]:
    """A legend label per run: its directory name, or the whole path where two names collide."""
    paths = [Path(t) for t in targets]
    names = [(p if p.is_dir() else p.parent).name or str(p) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths, strict=True)]


def plot_runs(targets: list[str | Path], output: str | Path, *, log_y: bool = False) -> Path:
    """The book's figure 5.12 for one run; several runs overlaid, one colour each, with a legend."""
    out = Path(output)
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"invalid -o/--output: {out} (the extension must be one of {', '.join(FORMATS)})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [eval_series(metrics_path(t)) for t in targets]
    labels = run_labels(targets)
    multi = len(series) > 1
    fig, ax1 = plt.subplots(figsize=(6, 3.5) if not multi else (7, 4))
    for i, (label, s) in enumerate(zip(labels, series, strict=True)):
        prefix = f"{label}: " if multi else ""
        color = f"C{i}"
        ax1.plot(s["epoch"], s["train"], color=color, label=f"{prefix}Training loss")
        ax1.plot(
            s["epoch"], s["val"], color=color, linestyle="-." if not multi else "--", label=f"{prefix}Validation loss"
        )
    ax1.set_xlabel("Epochs")
    ax1.set_ylabel("Loss" + (" (log scale)" if log_y else ""))
    if log_y:
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

        ax1.set_yscale("log")
        ax1.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax1.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.5, 1, 2, 5 rather than 10^0
        ax1.yaxis.set_minor_formatter(NullFormatter())
    if multi:  # below the axes, one column per run, so no curve hides behind it
        ax1.legend(
            loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=min(len(series), 4), fontsize="small", frameon=False
        )
    else:
        ax1.legend(loc="upper right", fontsize="small")
    # Second x axis: tokens seen, from the first run (the book's figure)
    ax2 = ax1.twiny()
    first = series[0]
    ax2.plot(first["tokens"], first["train"], alpha=0)
    ax2.set_xlabel("Tokens seen" + (f" ({labels[0]})" if multi else ""))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


def terminal_plot(targets: list[str | Path], *, width: int | None = None, height: int = 18, log_y: bool = False) -> str:
    """Loss curves drawn with characters, for a terminal over SSH.

    Each curve has its own letter at the evaluations, joined by dots; the y axis is labelled in
    loss (log-scaled with ``log_y``) and the x axis in epochs.
    """
    import math
    import shutil

    if width is None:  # fill the terminal, less the axis labels
        width = max(40, min(120, shutil.get_terminal_size((80, 24)).columns - 10))
    series = [eval_series(metrics_path(t)) for t in targets]
    labels = run_labels(targets)
    marks = "tv*o+x#@"
    curves = []
    for i, s in enumerate(series):
        curves.append((marks[(2 * i) % len(marks)], s["epoch"], s["train"]))
        curves.append((marks[(2 * i + 1) % len(marks)], s["epoch"], s["val"]))

    def usable(y: float) -> bool:
        return y == y and not math.isinf(y) and (y > 0 or not log_y)

    f = math.log10 if log_y else (lambda v: v)
    xs = [x for _, ex, _ in curves for x in ex]
    ys = [f(y) for _, _, ey in curves for y in ey if usable(y)]
    if not ys:
        raise UsageError(
            "nothing to plot: every loss is NaN or infinite" + (" (or <= 0 with --log-y)" if log_y else "")
        )
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)

    def col(x: float) -> int:
        return round((x - x0) / ((x1 - x0) or 1) * (width - 1))

    def row(y: float) -> int:
        return height - 1 - round((f(y) - y0) / ((y1 - y0) or 1) * (height - 1))

    grid = [[" "] * width for _ in range(height)]
    # Dots first, so every evaluation's letter is drawn over them.
    for _, ex, ey in curves:
        pts = [(col(x), row(y)) for x, y in zip(ex, ey, strict=True) if usable(y)]
        for (c0, r0), (c1, r1) in zip(pts, pts[1:], strict=False):
            n = max(abs(c1 - c0), abs(r1 - r0))
            for k in range(1, n):
                c, r = round(c0 + (c1 - c0) * k / n), round(r0 + (r1 - r0) * k / n)
                if grid[r][c] == " ":
                    grid[r][c] = "."
    for mark, ex, ey in curves:
        for x, y in zip(ex, ey, strict=True):
            if usable(y):
                grid[row(y)][col(x)] = mark
    lab = (lambda v: f"{10**v:7.3f}") if log_y else (lambda v: f"{v:7.3f}")
    lines = [f"loss{' (log scale)' if log_y else ''}"]
    for r, cells in enumerate(grid):
        yv = y1 - (y1 - y0) * r / (height - 1)
        lines.append(f"{lab(yv)} |" + "".join(cells).rstrip())
    lines.append(" " * 8 + "+" + "-" * width)
    mid = f"{(x0 + x1) / 2:.2f}"
    left, right = f"{x0:.2f}", f"{x1:.2f}"
    axis = left + " " * max(1, width // 2 - len(left) - len(mid) // 2) + mid
    axis += " " * max(1, width - len(axis) - len(right)) + right
    lines.append(" " * 9 + axis + "  epochs")
    for i, label in enumerate(labels):
        lines.append(
            " " * 9
            + f"{marks[(2 * i) % len(marks)]} training loss, {marks[(2 * i + 1) % len(marks)]} validation loss: {label}"
        )
    return "\n".join(lines)
