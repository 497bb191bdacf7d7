"""What the training loop reports, as a torch-free base class.

The trainer calls these hooks and never prints; ``console.TrainProgress`` draws progress bars
from them, ``tensorboard.TensorBoardWriter`` writes event files, tests record them. No torch
here, so the console can subclass it without importing the training loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptcli.engine.progress import Progress as TrainState


class Callbacks:
    """Every hook is optional: the base class does nothing."""

    def on_tokenize(self, done: int, total: int) -> None: ...  # bytes, while building a token cache
    def on_start(self, info: dict[str, Any]) -> None: ...
    def on_step(self, state: TrainState, info: dict[str, Any]) -> None: ...
    def on_eval(self, record: dict[str, Any]) -> None: ...
    def on_sample(self, record: dict[str, Any]) -> None: ...
    def on_record(self, record: dict[str, Any]) -> None: ...  # another epoch-end record: accuracies
    def on_save(self, path: Path, reason: str) -> None: ...
    def warn(self, message: str) -> None: ...
    def info(self, message: str) -> None: ...  # why the run stopped early; how a resume changed it
    def close(self) -> None: ...


class Fanout(Callbacks):
    """Passes each hook to several receivers (the progress display, TensorBoard)."""

    def __init__(self, *receivers: Callbacks):
        self.receivers = receivers

    def on_tokenize(self, done: int, total: int) -> None:
        self._all("on_tokenize", done, total)

    def on_start(self, info: dict[str, Any]) -> None:
        self._all("on_start", info)

    def on_step(self, state: TrainState, info: dict[str, Any]) -> None:
        self._all("on_step", state, info)

    def on_eval(self, record: dict[str, Any]) -> None:
        self._all("on_eval", record)

    def on_sample(self, record: dict[str, Any]) -> None:
        self._all("on_sample", record)

    def on_record(self, record: dict[str, Any]) -> None:
        self._all("on_record", record)

    def on_save(self, path: Path, reason: str) -> None:
        self._all("on_save", path, reason)

    def warn(self, message: str) -> None:
        self._all("warn", message)

    def info(self, message: str) -> None:
        self._all("info", message)

    def close(self) -> None:
        self._all("close")

    def _all(self, name: str, *args: Any) -> None:
        for r in self.receivers:
            method = getattr(r, name, None)
            if method is not None:
                method(*args)
