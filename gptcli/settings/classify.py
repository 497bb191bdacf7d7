"""``gptcli classify``'s settings: labelling texts with a model from ``gptcli finetune classify``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli.errors import UsageError
from gptcli.settings import coerce_paths, flag, json_flag


@dataclass
class ClassifySettings:
    """``gptcli classify``: the texts given and the lines of ``file``, labelled."""

    texts: list[str] | None = flag(None, argument=True, metavar="TEXT", help="Texts to label.", show_default=False)
    checkpoint: Path | None = flag(
        None,
        flags=("--checkpoint", "-c"),
        metavar="RUN",
        help="A classify run or checkpoint [default: the most recent classify run].",
        show_default=False,
    )
    file: Path | None = flag(
        None, flags=("--file",), metavar="FILE", help="Also label each non-empty line of FILE.", show_default=False
    )
    json_out: bool = json_flag()

    def __post_init__(self) -> None:
        coerce_paths(self)
        self.texts = list(self.texts or [])
        if not self.texts and self.file is None:
            raise UsageError("nothing to classify: give TEXT arguments or --file")
