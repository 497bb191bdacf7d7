"""``gptcli eval``'s settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.errors import UsageError
from gptcli.settings import flag, invalid

TASKS = ("loss", "hellaswag")


@dataclass
class EvalSettings:
    """``gptcli eval``: a model's loss and perplexity over text files, its HellaSwag accuracy
    (``--task hellaswag``), or a finetune run's loss on a split of its own data (``--split``)."""

    paths: list[Path] | None = shared.arguments_flag(
        "FILE",
        "Text files (.txt, .md, .jsonl, .json, .csv, .tsv, .parquet, optionally compressed), directories "
        "of .txt files, quoted globs ('data/*.jsonl.gz'), or - for standard input.",
    )
    checkpoint: Path | None = shared.checkpoint_flag()
    model: str | None = shared.model_flag()
    format: str = shared.format_flag()
    text_field: str | None = shared.text_field_flag(
        "The field (JSON) or column (CSV, TSV, Parquet) that holds the text [default: text]."
    )
    batch_size: int = flag(
        8,
        min=1,
        metavar="N",
        help="Windows per batch; the loss is the mean of the batch means, as the book's calc_loss_loader.",
    )
    stride: int | None = flag(
        None,
        min=1,
        metavar="N",
        help="Score every token with a sliding window advancing by this many tokens (Hugging Face's perplexity "
        "method; 1 to the context length) [default: the book's windows, stride = context].",
    )
    device: str = shared.device_flag()
    threads: int | None = shared.threads_flag()
    json_out: bool = shared.json_flag()
    encoding_errors: str = shared.encoding_errors_flag()
    quiet: bool = shared.quiet_flag("No progress output on stderr (warnings and errors still).")
    task: str = flag(
        "loss",
        choices=TASKS,
        help="loss: loss and perplexity of text files; hellaswag: acc and acc_norm on HellaSwag jsonl files "
        "(the official hellaswag_val.jsonl).",
    )
    split: str | None = flag(
        None,
        metavar="SPLIT",
        help="A finetune run (-c RUN): its loss on the train, val or test split of its own data "
        "(and a classifier's accuracy), no FILE needed.",
    )

    def __post_init__(self) -> None:
        shared.check_flags(self)  # --format, --text-field, --device, --threads, --encoding-errors, --task
        self.paths = list(self.paths or [])
        if self.split is not None:
            if self.paths or self.model is not None or self.task != "loss":
                raise UsageError(
                    "--split evaluates a finetune run's own data: give -c RUN and no FILE, --model or --task"
                )
        elif not self.paths:
            raise UsageError("no FILE given: pass text files or directories (or --split with a finetune run)")
        if self.task == "hellaswag" and self.stride is not None:
            raise UsageError("--stride applies to --task loss only")
        if self.stride is not None and self.stride < 1:
            raise invalid("--stride", f"{self.stride} (must be at least 1)")
        if self.batch_size < 1:
            raise invalid("--batch-size", f"{self.batch_size} (must be at least 1)")
