"""Loss curves from metrics.jsonl: the book's figure 5.12 and its ``plot_losses`` (loss against epochs,
tokens seen on top), several runs overlaid, or drawn with characters for a terminal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli import fsutil
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


def check_output(output: str | Path) -> Path:
    """The image path, if its extension is one matplotlib writes here; else a UsageError."""
    out = Path(output)
    if out.is_dir():  # "runs/x.png/" would otherwise fail only after every run is read
        raise UsageError(f"{out}: is a directory; give a file name (e.g. -o {out / 'loss.png'})")
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"invalid -o/--output: {out} (the extension must be one of {', '.join(FORMATS)})")
    return out


def default_plot_path(target: str | Path) -> Path:
    """Where ``gptcli plot`` writes one run's figure without ``-o``: ``loss.png`` beside its
    metrics.jsonl, in the run directory, so nothing in the current directory is overwritten."""
    return metrics_path(target).parent / "loss.png"


def eval_series(path: Path, *, warnings: list[str] | None = None) -> dict[str, Any]:
    """Epoch, tokens and both losses at each evaluation, and what the tokens axis counts
    ("seen_label"); malformed lines are skipped, with a message appended to ``warnings``."""
    try:
        records = read_metrics(path, warnings=warnings)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({e.strerror or e})") from None
    evals = [r for r in records if r["type"] == "eval"]
    if not evals:
        raise UsageError(f"{path}: holds no evaluations yet")
    # An eval happens after its optimizer step, so it sits (step+1)/steps_per_epoch epochs in.
    # Runs record steps_per_epoch in every eval. Older runs did not: there each epoch's sample
    # record, which marks the epoch's last step, stands in, else the last eval (which stretches a
    # run stopped inside its first epoch to exactly one epoch).
    samples = [r for r in records if r["type"] == "sample"]
    fallback = max(1, samples[0]["step"] + 1 if samples else max(r["step"] + 1 for r in evals))

    def per_epoch(r: dict) -> int:
        n = r.get("steps_per_epoch")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else fallback

    # Classify runs logged their examples as tokens_seen until their records carried both counts
    # (examples_seen beside the true tokens_seen); an accuracy record marks a classify run.
    legacy = any(r["type"] == "accuracy" for r in records) and not any("examples_seen" in r for r in evals)
    return {
        "seen_label": "Examples seen" if legacy else "Tokens seen",
        "epoch": [(r["step"] + 1) / per_epoch(r) for r in evals],
        "tokens": [r["tokens_seen"] for r in evals],
        "train": [r["train_loss"] for r in evals],
        "val": [r["val_loss"] for r in evals],
    }


def run_labels(targets: list[str | Path]) -> list[str]:
    """A legend label per run: its directory name, or the whole path where two names collide."""
    paths = [Path(t) for t in targets]
    names = [(p if p.is_dir() else p.parent).name or str(p) for p in paths]
    return [n if names.count(n) == 1 else str(p) for n, p in zip(names, paths, strict=True)]


def plot_runs(
    targets: list[str | Path], output: str | Path, *, log_y: bool = False, warnings: list[str] | None = None
) -> Path:
    """The book's figure 5.12 for one run; several runs overlaid, one colour each, with a legend.
    Malformed metrics lines are skipped, each file's appended to ``warnings``."""
    out = check_output(output)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [eval_series(metrics_path(t), warnings=warnings) for t in targets]
    labels = run_labels(targets)
    multi = len(series) > 1
    fig, ax1 = plt.subplots(figsize=(6, 4) if not multi else (7, 4))
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
        _log_ticks(ax1, [y for s in series for k in ("train", "val") for y in s[k]])
    # Below the axes, so no curve hides behind it (the book's "upper right" sits on the
    # validation curve of its own run): one column per run, or the two curves side by side.
    ax1.legend(
        loc="upper center",
        bbox_to_anchor=(0.5, -0.18 if multi else -0.22),
        ncol=min(len(series), 4) if multi else 2,
        fontsize="small",
        frameon=False,
    )
    # Second x axis: tokens seen, from the first run (the book's figure)
    ax2 = ax1.twiny()
    first = series[0]
    ax2.plot(first["tokens"], first["train"], alpha=0)
    ax2.set_xlabel(first["seen_label"] + (f" ({labels[0]})" if multi else ""))
    if not multi:  # several runs are named in the legend
        ax2.set_title(labels[0])
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    # Through a file object, so the format comes from the final name, not the temporary one.
    fsutil.atomic_write(out, lambda f: fig.savefig(f, format=out.suffix[1:].lower(), dpi=150, bbox_inches="tight"))
    plt.close(fig)
    return out


def _log_ticks(ax, losses: list[float]) -> None:
    """A log-scaled loss axis whose labels can be read: plain numbers (0.5, 2, 7 rather than
    10^0), and enough of them. Within one decade (a tiny run's 6 to 11, which would otherwise show
    a lone "10") the ticks are the linear axis's round numbers; over more, the powers of ten and
    2, 3, 5 (or 2, 5) times them."""
    import math

    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

    usable = [y for y in losses if y > 0 and not math.isinf(y) and y == y]
    decades = math.log10(max(usable) / min(usable)) if usable else 0.0
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    ax.set_yscale("log")
    if decades <= 1.0:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_minor_formatter(NullFormatter())
        return
    shown = {2, 3, 5} if decades <= 2.0 else {2, 5}

    def minor_label(value: float, _pos: int) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9)) if value > 0 else 0
        return f"{value:g}" if mantissa in shown else ""

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0,)))
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_locator(LogLocator(base=10, subs=tuple(range(2, 10)), numticks=100))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor_label))


def terminal_plot(
    targets: list[str | Path],
    *,
    width: int | None = None,
    height: int = 18,
    log_y: bool = False,
    warnings: list[str] | None = None,
) -> str:
    """Loss curves drawn with characters, for a terminal over SSH.

    Each curve has its own letter at the evaluations, joined by dots; the y axis is labelled in
    loss (log-scaled with ``log_y``) and the x axis in epochs.
    """
    import math
    import shutil

    if width is None:  # fill the terminal, less the axis labels
        width = max(40, min(120, shutil.get_terminal_size((80, 24)).columns - 10))
    series = [eval_series(metrics_path(t), warnings=warnings) for t in targets]
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
