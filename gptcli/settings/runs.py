"""``gptcli info``'s, ``gptcli runs``' and ``gptcli plot``'s settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.settings import flag


@dataclass
class InfoSettings:
    """``gptcli info``: what one checkpoint holds."""

    target: str | None = shared.arguments_flag(
        "TARGET",
        "Checkpoint file, run directory or downloaded model name like gpt2-124M [default: the most recent run].",
    )
    verbose: bool = flag(
        False,
        flags=("--verbose", "-v"),
        help="Every setting of the model and the run, not only those that differ from the defaults.",
    )
    json_out: bool = shared.json_flag()

    def __post_init__(self) -> None:
        self.target = None if self.target is None else str(self.target)


@dataclass
class RunsSettings:
    """``gptcli runs``: the runs under a directory."""

    root: Path | None = flag(
        None, flags=("--root",), metavar="DIR", help="Directory holding run directories [default: runs]."
    )
    json_out: bool = shared.json_flag()

    def __post_init__(self) -> None:
        shared.check_flags(self)


@dataclass
class PlotSettings:
    """``gptcli plot``: loss curves of runs, as an image file or in the terminal."""

    targets: list[Path] | None = shared.arguments_flag(
        "RUN", "Run directories or metrics.jsonl files [default: the most recent run]."
    )
    output: Path | None = shared.output_flag(
        "Image file: .png, .svg or .pdf [default: <run>/loss.png for one run; several runs need it]."
    )
    log_y: bool = flag(False, flags=("--log-y",), help="Logarithmic loss axis.")
    terminal: bool = flag(
        False, flags=("--terminal",), help="Draw the curves in the terminal (and write -o too, if given)."
    )

    def __post_init__(self) -> None:
        shared.check_flags(self)
        self.targets = list(self.targets or [])
