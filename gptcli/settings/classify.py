"""``gptcli classify``'s settings: labelling texts with a model from ``gptcli finetune classify``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.errors import UsageError
from gptcli.settings import flag


@dataclass
class ClassifySettings:
    """``gptcli classify``: the texts given and the lines of ``file``, labelled."""

    texts: list[str] | None = shared.arguments_flag("TEXT", "Texts to label.")
    checkpoint: Path | None = shared.checkpoint_flag(
        "A classify run or checkpoint [default: the most recent classify run].", metavar="RUN"
    )
    file: Path | None = flag(None, flags=("--file",), metavar="FILE", help="Also label each non-empty line of FILE.")
    json_out: bool = shared.json_flag()

    def __post_init__(self) -> None:
        shared.check_flags(self)
        self.texts = list(self.texts or [])
        if not self.texts and self.file is None:
            raise UsageError("nothing to classify: give TEXT arguments or --file")
