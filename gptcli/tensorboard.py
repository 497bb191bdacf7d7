"""``gptcli train --tensorboard``: the records of ``metrics.jsonl`` as TensorBoard event files.

Events go to ``<run>/tensorboard/``; view them with ``tensorboard --logdir runs``. Needs the
``tensorboard`` package: ``pip install tensorboard`` (or, in a clone, ``pip install -e '.[tensorboard]'``).

The events are framed with the ``tensorboard`` package's record writer and protocol buffers, not
through ``torch.utils.tensorboard`` or the package's EventFileWriter: both load all of TensorFlow
whenever it is installed, which costs seconds and floods stderr with TensorFlow's start-up logs.
"""

from __future__ import annotations

import os
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
    """Raise a one-line UsageError unless the tensorboard package can be imported."""
    try:
        import tensorboard.compat.proto.event_pb2  # noqa: F401
        import tensorboard.summary.writer.record_writer  # noqa: F401
    except ImportError:
        raise UsageError(
            f"--tensorboard needs the tensorboard package, which is not installed; run: {INSTALL_HINT}"
        ) from None


class TensorBoardWriter(Callbacks):
    """Training callbacks that mirror each eval and sample record into TensorBoard.

    Scalars: ``loss/train``, ``loss/val``, ``perplexity/val``, ``lr``, ``tokens_seen`` and
    ``tokens_per_sec`` at each evaluation's step; each epoch's sample as text. On resume from step
    ``purge_step``, events the earlier session wrote at or after that step are discarded by
    TensorBoard, exactly as ``metrics.jsonl`` is truncated back to the checkpoint.
    """

    def __init__(self, run_dir: str | Path, *, purge_step: int | None = None):
        check_available()
        import socket
        import time

        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        self.log_dir = Path(run_dir) / LOG_DIR
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # The file name TensorBoard looks for. The package's EventFileWriter is not used: it makes
        # the directory through tf.io.gfile, which loads all of TensorFlow when that is installed.
        self.path = (
            self.log_dir / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.gptcli"
        )
        self._file = open(self.path, "ab")  # noqa: SIM115  (closed in close())
        self._records = RecordWriter(self._file)
        self._add_event(Event(wall_time=time.time(), file_version="brain.Event:2"))
        if purge_step is not None:
            self._add_event(
                Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START))
            )
        self._file.flush()

    # -- the training loop's callbacks (see gptcli.callbacks) ----------------------------------

    def on_eval(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for tag, value in eval_scalars(record).items():
            self.add_scalar(tag, value, step)
        self._file.flush()

    def on_sample(self, record: dict[str, Any]) -> None:
        self.add_text("sample", f"epoch {record['epoch']}: {record['text']}", int(record["step"]))
        self._file.flush()

    def on_record(self, record: dict[str, Any]) -> None:
        """A finetuning run's accuracies (classify) as ``accuracy/train`` and ``accuracy/val``."""
        if record.get("type") == "accuracy":
            for split in ("train", "val"):
                self.add_scalar(f"accuracy/{split}", float(record[f"{split}_acc"]), int(record["step"]))
            self.flush()

    # -- writing ------------------------------------------------------------------------------------

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._add(Summary(value=[Summary.Value(tag=tag, simple_value=value)]), step)

    def add_text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData

        meta = SummaryMetadata(
            plugin_data=SummaryMetadata.PluginData(
                plugin_name="text", content=TextPluginData(version=0).SerializeToString()
            )
        )
        tensor = TensorProto(
            dtype="DT_STRING",
            string_val=[text.encode("utf-8")],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        self._add(Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor)]), step)

    def _add(self, summary: Any, step: int) -> None:
        import time

        from tensorboard.compat.proto.event_pb2 import Event

        self._add_event(Event(wall_time=time.time(), step=step, summary=summary))

    def _add_event(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def flush(self) -> None:
        """Hand the events written so far to the OS, so TensorBoard sees them now."""
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
