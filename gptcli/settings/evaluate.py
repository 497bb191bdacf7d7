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

LM_EVAL_PREFIX = "lm-eval:"  # then the harness's task names: lm-eval:arc_easy,piqa,lambada_openai


def lm_eval_task_names(task: str) -> list[str]:
    """``lm-eval:arc_easy,piqa`` -> ["arc_easy", "piqa"], each name once, in order."""
    names = [n.strip() for n in task.removeprefix(LM_EVAL_PREFIX).split(",")]
    if not all(names):
        raise invalid("--task", f"{task!r} (give lm-eval:TASK[,TASK...], e.g. lm-eval:arc_easy,piqa)")
    return list(dict.fromkeys(names))


def check_task(task: str) -> None:
    if not isinstance(task, str) or not (task in TASKS or task.startswith(LM_EVAL_PREFIX)):
        harness = f"{LM_EVAL_PREFIX}{task}" if isinstance(task, str) and task else f"{LM_EVAL_PREFIX}TASK[,TASK...]"
        raise invalid(
            "--task", f"{task!r} (choose from {', '.join(TASKS)}; or {harness}, lm-evaluation-harness's task)"
        )


@dataclass
class EvalSettings:
    """``gptcli eval``: a model's loss and perplexity over text files, its HellaSwag accuracy
    (``--task hellaswag``), lm-evaluation-harness tasks (``--task lm-eval:arc_easy,piqa``), or a
    finetune run's loss on a split of its own data (``--split``)."""

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
        help="Windows per batch; the loss is the mean of the batch means, as the book's calc_loss_loader "
        "(with --task lm-eval:...: requests per batch).",
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
    dtype: str = shared.dtype_flag(
        "Weights' dtype, as gptcli sample --dtype: fp32 (exactly the reference), bf16, int8 (CPU only) or auto; "
        "the others measure what the faster modes cost in loss or accuracy (not with --split or --judge)."
    )
    json_out: bool = shared.json_flag()
    encoding_errors: str = shared.encoding_errors_flag()
    quiet: bool = shared.quiet_flag("No progress output on stderr (warnings and errors still).")
    task: str = flag(
        "loss",
        suggest=(*TASKS, LM_EVAL_PREFIX),
        check=check_task,
        help="loss: loss and perplexity of text files; hellaswag: acc and acc_norm on HellaSwag jsonl files "
        "(the official hellaswag_val.jsonl); lm-eval:TASK[,TASK...]: tasks of EleutherAI's lm-evaluation-harness "
        "(its registry's names; datasets from the Hugging Face Hub), no FILE.",
    )
    num_fewshot: int | None = flag(
        None,
        min=0,
        metavar="K",
        help="lm-eval: examples shown before each question [default: each task's own, else 0].",
    )
    limit: float | None = flag(
        None,
        metavar="N",
        help="lm-eval: only the first N examples of each task (below 1: that fraction); for quick checks, "
        "not for reporting.",
    )
    include_path: Path | None = flag(
        None,
        metavar="DIR",
        help="lm-eval: a folder of task YAMLs (the harness's format) to add to its registry.",
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
        for name in ("num_fewshot", "limit", "include_path"):
            if getattr(self, name) is not None and not self.task.startswith(LM_EVAL_PREFIX):
                raise UsageError(f"--{name.replace('_', '-')} applies to --task lm-eval:... only")
        self._check_judge()
        if self.dtype != "fp32" and (self.judge or self.split is not None):
            raise UsageError(f"--dtype {self.dtype} applies to text files, --task hellaswag and lm-eval:... only")
        if self.judge:
            return
        if self.split is not None:
            if self.paths or self.model is not None or self.task != "loss":
                raise UsageError(
                    "--split evaluates a finetune run's own data: give -c RUN and no FILE, --model or --task"
                )
        elif self.task.startswith(LM_EVAL_PREFIX):
            self._check_lm_eval()
        elif not self.paths:
            raise UsageError("no FILE given: pass text files or directories (or --split with a finetune run)")
        if self.task != "loss" and self.stride is not None:
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

    def _check_lm_eval(self) -> None:
        """The harness reads its tasks' own data: no FILE; --limit a count or a fraction."""
        lm_eval_task_names(self.task)
        if self.paths:
            raise UsageError(
                f"--task {self.task} reads its tasks' own data: give no FILE ({self.paths[0]}); "
                "--include-path DIR adds task YAMLs over local files"
            )
        if self.text_field is not None:
            raise UsageError("--text-field applies to text files, not to --task lm-eval:...")
        if self.limit is not None:
            if not self.limit > 0:
                raise invalid("--limit", f"{self.limit:g} (a count of examples, or a fraction between 0 and 1)")
            if self.limit >= 1:
                if self.limit != int(self.limit):
                    raise invalid("--limit", f"{self.limit:g} (a whole number of examples, or a fraction below 1)")
                self.limit = int(self.limit)
        if self.num_fewshot is not None and self.num_fewshot < 0:
            raise invalid("--num-fewshot", f"{self.num_fewshot} (must be at least 0)")
