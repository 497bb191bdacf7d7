"""``gptcli info``'s, ``gptcli runs``' and ``gptcli plot``'s settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli.settings import coerce_paths, flag, json_flag


@dataclass
class InfoSettings:
    """``gptcli info``: what one checkpoint holds."""

    target: str | None = flag(
        None,
        argument=True,
        metavar="TARGET",
        help="Checkpoint file, run directory or downloaded model name like gpt2-124M [default: the most recent run].",
        show_default=False,
    )
    json_out: bool = json_flag()

    def __post_init__(self) -> None:
        self.target = None if self.target is None else str(self.target)


@dataclass
class RunsSettings:
    """``gptcli runs``: the runs under a directory."""

    root: Path | None = flag(
        None,
        flags=("--root",),
        metavar="DIR",
        help="Directory holding run directories [default: runs].",
        show_default=False,
    )
    json_out: bool = json_flag()

    def __post_init__(self) -> None:
        coerce_paths(self)


@dataclass
class PlotSettings:
    """``gptcli plot``: loss curves of runs, as an image file or in the terminal."""

    targets: list[Path] | None = flag(
        None,
        argument=True,
        metavar="RUN",
        help="Run directories or metrics.jsonl files [default: the most recent run].",
        show_default=False,
    )
    output: Path | None = flag(
        None,
        flags=("--output", "--out", "-o"),
        metavar="FILE",
        help="Image file: .png, .svg or .pdf [default: <run>/loss.png for one run; several runs need it].",
        show_default=False,
    )
    log_y: bool = flag(False, flags=("--log-y",), help="Logarithmic loss axis.")
    terminal: bool = flag(
        False, flags=("--terminal",), help="Draw the curves in the terminal (and write -o too, if given)."
    )

    def __post_init__(self) -> None:
        coerce_paths(self)
        self.targets = list(self.targets or [])
