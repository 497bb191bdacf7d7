"""``gptcli train --tensorboard``: the records of ``metrics.jsonl`` as TensorBoard event files.

Events go to ``<run>/tensorboard/``; view them with ``tensorboard --logdir runs``. Needs the
``tensorboard`` package: ``pip install tensorboard`` (or, in a clone, ``pip install -e '.[tensorboard]'``).

The events go through ``torch.utils.tensorboard.SummaryWriter``, the public writer API (the
``tensorboard`` package's own writer underneath), so the file format is the package's concern,
not ours. Its one cost: where TensorFlow is installed too, the writer imports it (through
``tf.io.gfile``) when it opens the event file, which takes seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gptcli.callbacks import Callbacks
from gptcli.errors import UsageError
from gptcli.metrics import eval_scalars

LOG_DIR = "tensorboard"
# gptcli is installed from a clone or a wheel, not from an index, so the hint names the package
# itself (what the [tensorboard] extra installs), which works wherever pip does.
INSTALL_HINT = "pip install tensorboard"


def check_available() -> None:
    """Raise a one-line UsageError unless the tensorboard package can be imported. Checked before
    torch loads, so a run with ``--tensorboard`` fails at once without it."""
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        raise _missing() from None


def _missing() -> UsageError:
    return UsageError(f"--tensorboard needs the tensorboard package, which is not installed; run: {INSTALL_HINT}")


class TensorBoardWriter(Callbacks):
    """Training callbacks that mirror each eval and sample record into TensorBoard.

    Scalars: ``loss/train``, ``loss/val``, ``perplexity/val``, ``lr``, ``tokens_seen`` and
    ``tokens_per_sec`` at each evaluation's step; each epoch's sample as text. On resume from step
    ``purge_step``, events the earlier session wrote at or after that step are discarded by
    TensorBoard, exactly as ``metrics.jsonl`` is truncated back to the checkpoint.
    """

    def __init__(self, run_dir: str | Path, *, purge_step: int | None = None):
        check_available()
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch checks the package's version as it imports it
            raise _missing() from None

        self.log_dir = Path(run_dir) / LOG_DIR
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # Flushed after every record (flush()), so the writer's own timer never holds one back.
        self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    # -- the training loop's callbacks (see gptcli.callbacks) ----------------------------------

    def on_eval(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in eval_scalars(record).items():
            self.add_scalar(tag, value, step)
        self.flush()

    def on_sample(self, record: dict[str, Any]) -> None:
        self.add_text("sample", f"epoch {record['epoch']}: {record['text']}", int(record["step"]))
        self.flush()

    def on_record(self, record: dict[str, Any]) -> None:
        """A finetuning run's accuracies (classify) as ``accuracy/train`` and ``accuracy/val``."""
        if record.get("type") == "accuracy":
            for split in ("train", "val"):
                self.add_scalar(f"accuracy/{split}", float(record[f"{split}_acc"]), int(record["step"]))
            self.flush()

    # -- writing ------------------------------------------------------------------------------------

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self._writer.add_scalar(tag, float(value), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from torch.utils.tensorboard.summary import text as text_summary

        # SummaryWriter.add_text files the text under "<tag>/text_summary"; written through the
        # file writer with the tag as given, a run's samples stay under "sample", as before.
        summary = text_summary(tag, text)
        summary.value[0].tag = tag
        self._writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        """Hand the events written so far to the OS, so TensorBoard sees them now."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
