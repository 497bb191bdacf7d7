"""``gptcli eval``'s settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli.config import ENCODING_ERRORS, INPUT_FORMATS
from gptcli.errors import UsageError
from gptcli.settings import (
    check_choice,
    check_device,
    check_inputs,
    check_text_field,
    check_threads,
    checkpoint_flag,
    coerce_paths,
    device_flag,
    flag,
    invalid,
    json_flag,
    model_flag,
    quiet_flag,
    threads_flag,
)

TASKS = ("loss", "hellaswag")


@dataclass
class EvalSettings:
    """``gptcli eval``: a model's loss and perplexity over text files, its HellaSwag accuracy
    (``--task hellaswag``), or a finetune run's loss on a split of its own data (``--split``)."""

    paths: list[Path] | None = flag(
        None,
        argument=True,
        metavar="FILE",
        help="Text files (.txt, .md, .jsonl, .json, .csv, .tsv, .parquet, optionally compressed), directories "
        "of .txt files, quoted globs ('data/*.jsonl.gz'), or - for standard input.",
        show_default=False,
    )
    checkpoint: Path | None = checkpoint_flag()
    model: str | None = model_flag()
    format: str = flag("auto", choices=INPUT_FORMATS, help="Format of every input; auto detects each from its name.")
    text_field: str | None = flag(
        None,
        metavar="NAME",
        help="The field (JSON) or column (CSV, TSV, Parquet) that holds the text [default: text].",
        show_default=False,
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
        show_default=False,
    )
    device: str = device_flag()
    threads: int | None = threads_flag()
    json_out: bool = json_flag()
    encoding_errors: str = flag("strict", choices=ENCODING_ERRORS, help="What to do with undecodable bytes.")
    quiet: bool = quiet_flag("No progress output on stderr (warnings and errors still).")
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
        show_default=False,
    )

    def __post_init__(self) -> None:
        coerce_paths(self)
        self.paths = list(self.paths or [])
        if self.split is not None:
            if self.paths or self.model is not None or self.task != "loss":
                raise UsageError(
                    "--split evaluates a finetune run's own data: give -c RUN and no FILE, --model or --task"
                )
        elif not self.paths:
            raise UsageError("no FILE given: pass text files or directories (or --split with a finetune run)")
        check_choice("--task", self.task, TASKS)
        if self.task == "hellaswag" and self.stride is not None:
            raise UsageError("--stride applies to --task loss only")
        check_inputs(self.format, self.encoding_errors)
        if self.stride is not None and self.stride < 1:
            raise invalid("--stride", f"{self.stride} (must be at least 1)")
        if self.batch_size < 1:
            raise invalid("--batch-size", f"{self.batch_size} (must be at least 1)")
        check_text_field(self.text_field)
        check_device(self.device)
        check_threads(self.threads)
