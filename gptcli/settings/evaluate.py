"""``gptcli eval``'s settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from gptcli import judge as jd
from gptcli import settings as shared
from gptcli.errors import UsageError
from gptcli.settings import flag, invalid

TASKS = ("loss", "hellaswag")
JUDGE_FLAGS = ("responses", "judge_url", "judge_model", "judge_api", "judge_timeout", "judge_retries")


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
    # --judge: the book's LLM-as-judge (gptcli.judge; commands.evaluate.judge_command)
    judge: bool = flag(
        False,
        flags=("--judge",),
        help="Score an instruct run's answers from 0 to 100 with a larger model as the judge, as the book's "
        "section 7.8 (-c RUN: its test split, answered by the run; or --responses FILE).",
    )
    responses: Path | None = flag(
        None,
        metavar="FILE",
        help="With --judge: the answers to score, a JSON file that sample --responses wrote "
        "[default: the run's test split, answered by the run].",
    )
    judge_url: str = flag(
        jd.DEFAULT_URL, metavar="URL", help="With --judge: the judge server (Ollama's, or an OpenAI-compatible one)."
    )
    judge_model: str = flag(jd.DEFAULT_MODEL, metavar="NAME", help="With --judge: the model that judges.")
    judge_api: str = flag(
        jd.DEFAULT_API,
        choices=jd.APIS,
        help="With --judge: ollama: Ollama's native /api/chat, as the book; openai: URL/v1/chat/completions "
        "(gptcli serve, vLLM, ...; an API key from GPTCLI_JUDGE_API_KEY or OPENAI_API_KEY).",
    )
    judge_timeout: float = flag(
        jd.DEFAULT_TIMEOUT, metavar="SECONDS", help="With --judge: how long to wait for each reply before trying again."
    )
    judge_retries: int = flag(
        jd.DEFAULT_RETRIES,
        min=0,
        metavar="N",
        help="With --judge: more tries after a timeout, a dropped connection or a 5xx.",
    )

    def __post_init__(self) -> None:
        shared.check_flags(self)  # --format, --text-field, --device, --threads, --encoding-errors, --task
        self.paths = list(self.paths or [])
        self._check_judge()
        if self.judge:
            return
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

    def _check_judge(self) -> None:
        """--judge scores a run's answers: no FILE, --model, --task, --split or --stride; its own
        flags go with it only."""
        if not self.judge:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            given = [f"--{name.replace('_', '-')}" for name in JUDGE_FLAGS if getattr(self, name) != defaults[name]]
            if given:
                raise UsageError(f"{given[0]} goes with --judge")
            return
        if self.paths or self.model is not None or self.task != "loss" or self.split is not None:
            raise UsageError(
                "--judge scores an instruct run's answers: give -c RUN or --responses FILE, and no FILE, "
                "--model, --task or --split"
            )
        if self.stride is not None:
            raise UsageError("--stride applies to --task loss only")
        self.judge_client()  # checks --judge-url, --judge-model, --judge-timeout, --judge-retries

    def judge_client(self) -> jd.Judge:
        """The judge the --judge flags describe."""
        return jd.Judge(
            url=self.judge_url,
            model=self.judge_model,
            api=self.judge_api,
            timeout=self.judge_timeout,
            retries=self.judge_retries,
        )
