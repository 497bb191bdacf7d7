"""The ``gptcli`` command line: a table of commands, one thin function each.

Every flag is generated from a dataclass field (``gptcli.cli_options``): each command's settings
(``gptcli.settings``), or for ``train`` and ``finetune`` the run configs. Commands only hand the
settings to ``gptcli.commands``. Heavy imports (torch) happen inside the functions, so ``gptcli
--help`` stays fast. Library errors become one line on stderr and an exit code in ``_Group.main``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from typer.core import TyperGroup

from gptcli.cli_options import layered_options, option, settings_command, with_flags, words_for_values
from gptcli.config import PRESETS, ModelConfig, TrainConfig, flag_fields
from gptcli.errors import GptCliError
from gptcli.finetune.config import LENGTH_FLAGS as FINETUNE_LENGTH_FLAGS
from gptcli.finetune.config import FinetuneConfig
from gptcli.finetune.config import flag_fields as finetune_flag_fields
from gptcli.settings import THREADS_HELP
from gptcli.settings.chat import ChatSettings
from gptcli.settings.classify import ClassifySettings
from gptcli.settings.evaluate import EvalSettings
from gptcli.settings.prepare import PrepareSettings
from gptcli.settings.runs import InfoSettings, PlotSettings, RunsSettings
from gptcli.settings.sample import SampleSettings
from gptcli.settings.serve import ServeSettings
from gptcli.settings.weights import ConvertSettings, DownloadSettings

# Recent typer versions vendor click; take its exception classes from wherever typer's come from.
_click_exceptions = sys.modules[typer.BadParameter.__module__]
_ClickException = _click_exceptions.ClickException
_Abort = typer.Abort
_NoArgsIsHelp = getattr(_click_exceptions, "NoArgsIsHelpError", ())


def _argument(metavar: str, help: str) -> Any:
    """An optional positional argument, shown as its word (its default is said in ``help``)."""
    return typer.Argument(metavar=metavar, help=help, show_default=False)


class _Group(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        words_for_values(self)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        debug = os.environ.get("GPTCLI_DEBUG", "") not in ("", "0")
        _show_library_warnings()
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except GptCliError as e:
            if debug:
                raise
            _error(str(e), hint=e.hint, label=e.label)
            sys.exit(e.exit_code)
        except _NoArgsIsHelp as e:
            typer.echo(e.ctx.get_help(), err=True)
            sys.exit(2)
        except _ClickException as e:
            if debug:
                raise
            cmd = f"{e.ctx.command_path}: " if getattr(e, "ctx", None) is not None else "gptcli: "
            # Recent typer validates through pydantic, whose messages start "Value error, ".
            _error(cmd + e.format_message().replace("\n", " ").replace("Value error, ", ""))
            sys.exit(e.exit_code)
        except BrokenPipeError:  # stdout's reader left (gptcli sample | head -1): nothing to say
            if debug:
                raise
            _silence_stdout()
            sys.exit(141)
        except OSError as e:  # a write the library did not word itself: still one line, never a traceback
            if debug:
                raise
            from gptcli.errors import os_error_reason

            _silence_stdout()
            _error(f"{e.filename}: {os_error_reason(e)}" if e.filename else f"could not write ({os_error_reason(e)})")
            sys.exit(1)
        except _Abort:
            _error("aborted")
            sys.exit(130)
        except KeyboardInterrupt:
            _error("interrupted")
            sys.exit(130)
        if rv == 130:
            # Typer turns a Ctrl-C inside a command into a silent Exit(130), returned here as 130
            # (no command of ours returns a number), so say what happened.
            _error("interrupted")
        if standalone_mode:
            sys.exit(rv if isinstance(rv, int) else 0)
        return rv


def _error(message: str, *, hint: str | None = None, label: str = "error") -> None:
    from gptcli import console

    console.error(message, label=label)
    if hint:
        console.hint(hint)


def _show_library_warnings() -> None:
    """The library's ``warnings.warn(..., GptCliWarning)`` as a ``warning: ...`` line, as
    console.warn prints it; other warnings as Python shows them."""
    import warnings

    from gptcli.errors import GptCliWarning

    shown = warnings.showwarning
    if getattr(shown, "gptcli", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, GptCliWarning):
            from gptcli import console

            console.warn(str(message))
        else:
            shown(message, category, filename, lineno, file, line)

    show.gptcli = True
    warnings.showwarning = show


def _silence_stdout() -> None:
    from gptcli import console

    console.silence_stdout()


app = typer.Typer(
    cls=_Group,
    help="Pretrain, resume, evaluate and sample GPT-2-style models, and load OpenAI's GPT-2 weights.",
    no_args_is_help=True,
    add_completion=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# --------------------------------------------------------------------------------------------
# --version, and options several commands share


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"gptcli {version('gptcli')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            from gptcli import __version__

            typer.echo(f"gptcli {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", help="Show the version and exit.", callback=_version, is_eager=True)
    ] = False,
) -> None:
    pass


def _threads_option(**kwargs: Any) -> Any:
    """``--threads N`` of the commands that run a model (one owner: gptcli.device.set_threads)."""
    return typer.Option(
        min=1,
        metavar="N",
        help=THREADS_HELP,
        show_default=False,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# train

_MODEL = "Model (default: the book's 124M training shape)"
_TRAIN = "Training (defaults: the book's chapter-5 run)"
_OUT = "Output"
_PANELS = {"model": _MODEL, "train": _TRAIN, "output": _OUT}

# The config sections whose fields with help metadata become `train` flags.
_CONFIGS = {"model": ModelConfig, "train": TrainConfig}


def _train_options() -> dict[str, tuple[Any, inspect.Parameter]]:
    """A flag for every ModelConfig and TrainConfig field with help metadata."""
    fields = [(f, typing.get_type_hints(cls)[f.name]) for cls in _CONFIGS.values() for f in flag_fields(cls)]
    return layered_options(fields, _PANELS, numbers_as_typed=True)


_Wandb = Annotated[
    bool,
    typer.Option(
        "--wandb",
        help="Also log to Weights & Biases (WANDB_MODE=offline: files in <run>/wandb; needs: pip install wandb).",
        rich_help_panel=_OUT,
    ),
]
_WandbProject = Annotated[
    Optional[str],
    typer.Option(
        "--wandb-project",
        metavar="NAME",
        help="W&B project for --wandb [default: $WANDB_PROJECT, else gptcli].",
        show_default=False,
        rich_help_panel=_OUT,
    ),
]


@app.command(
    epilog="Examples:\n\n  gptcli train examples/the-verdict.txt --epochs 10\n\n"
    "  gptcli train data/ --preset gpt2-124M --context-length 512 --precision bf16\n\n"
    "  gptcli train --config examples/configs/verdict.yaml --epochs 2"
)
@with_flags(
    "paths",
    "epochs",
    "config",
    "config_short",
    "print_config",
    "preset",
    "<model>",
    "<train>",
    "threads",
    "out",
    "<output>",
    "quiet",
    "tensorboard",
    "wandb",
    "wandb_project",
    options=_train_options(),
)
def train(
    *,
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="FILE",
            help="Files (.txt .md .jsonl .json .csv .tsv .parquet, optionally .gz .bz2 .xz .zst), quoted globs "
            "('data/*.jsonl.gz'), directories of .txt files (of --format's files with --format), directories of "
            "token shards from gptcli prepare, or - for standard input (compressed or not).",
            show_default=False,
        ),
    ] = None,
    config: Annotated[
        Optional[Path],
        typer.Option("--config", metavar="FILE", help="YAML config; flags override it.", rich_help_panel=_TRAIN),
    ] = None,
    # -c is --checkpoint in every other command; train's old -c (its --config) still works, said.
    config_short: Annotated[Optional[Path], typer.Option("-c", metavar="FILE", hidden=True)] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Show the resolved settings and exit.", rich_help_panel=_TRAIN)
    ] = False,
    preset: Annotated[
        Optional[Literal[tuple(PRESETS)]],
        typer.Option(help="One of OpenAI's GPT-2 shapes (context 1024, tied head, qkv bias).", rich_help_panel=_MODEL),
    ] = None,
    threads: Annotated[Optional[int], _threads_option(rich_help_panel=_TRAIN)] = None,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", metavar="DIR", help="Run directory [default: runs/<name>].", rich_help_panel=_OUT),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=_OUT)] = False,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Also write TensorBoard events to <run>/tensorboard (needs: pip install tensorboard).",
            rich_help_panel=_OUT,
        ),
    ] = False,
    wandb: _Wandb = False,
    wandb_project: _WandbProject = None,
    **flags: Any,
) -> None:
    """Train a GPT model on text files (the book's chapter-5 training loop)."""
    from gptcli.commands.train import deprecated_config_flag, train_command

    config = deprecated_config_flag(config, config_short)

    # Every ModelConfig/TrainConfig field with help metadata is a flag (see _train_options);
    # None means not given, so the config file's value or the default applies.
    routed = {
        section: {f.name: str(v) if isinstance(v := flags.pop(f.name, None), Path) else v for f in flag_fields(cls)}
        for section, cls in _CONFIGS.items()
    }
    if flags:
        raise TypeError(f"train() got unexpected keyword arguments: {', '.join(sorted(flags))}")
    routed["train"]["data"] = [str(p) for p in paths] if paths else None
    train_command(
        config_file=config,
        preset=preset,
        model_flags=routed["model"],
        train_flags=routed["train"],
        out=out,
        print_config=print_config,
        quiet=quiet,
        tensorboard=tensorboard,
        wandb=wandb,
        wandb_project=wandb_project,
        threads=threads,
    )


@app.command(
    epilog="Examples:\n\n  gptcli resume runs/the-verdict-20260101-120000\n\n  gptcli resume runs/x/checkpoints/step-00000045.pth --epochs 20"
    "\n\n  gptcli resume runs/x --max-tokens 2B"
)
def resume(
    target: Annotated[Optional[Path], _argument("RUN", "Run directory or checkpoint file [default: the most recent unfinished run].")] = None,
    epochs: Annotated[
        Optional[int], typer.Option(metavar="N", help="New total number of epochs (extends the run).")
    ] = None,
    max_steps: Annotated[
        Optional[str], typer.Option(metavar="N", help="New step budget (10k), replacing the run's own.")
    ] = None,
    max_tokens: Annotated[
        Optional[str], typer.Option(metavar="N", help="New token budget (50M, 2B), replacing the run's own.")
    ] = None,
    max_time: Annotated[
        Optional[str],
        typer.Option(metavar="DURATION", help="New training-time budget over all resumes (90m, 2h, or seconds)."),
    ] = None,
    patience: Annotated[
        Optional[int], typer.Option(metavar="K", help="New --patience (0 turns early stopping off).")
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", metavar="DIR", help="For a checkpoint outside any run: the new run's directory [default: runs/<data>-<time>].")
    ] = None,
    threads: Annotated[Optional[int], _threads_option()] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    wandb: Annotated[bool, typer.Option("--wandb", help="Start logging to Weights & Biases (a run that logged to W&B continues its W&B run without it).")] = False,
) -> None:  # fmt: skip
    """Continue a run exactly where it stopped: same batches, same dropout, same losses.

    A larger --epochs or budget extends a finished run as if it had been set from the start (with
    a warm-up/cosine schedule, the remaining steps follow the schedule over the new length)."""
    from gptcli.commands.resume import resume_command

    resume_command(
        target,
        epochs=epochs,
        max_steps=max_steps,
        max_tokens=max_tokens,
        max_time=max_time,
        patience=patience,
        out=out,
        quiet=quiet,
        threads=threads,
        wandb=wandb,
    )


# --------------------------------------------------------------------------------------------
# The commands whose flags are their settings' fields (gptcli.settings), as a table: each hands
# its settings, which checked themselves when the flags made them, to the function that runs it:
# "module:function" of gptcli.commands, imported only when the command runs (torch), or one of
# the adapters below where that function takes the settings' values one by one.


def _plot(settings: PlotSettings) -> None:
    from gptcli.commands.runs import plot_command

    plot_command(settings.targets, output=settings.output, log_y=settings.log_y, terminal=settings.terminal)


def _runs(settings: RunsSettings) -> None:
    from gptcli.commands.runs import runs_command

    runs_command(settings.root, json_out=settings.json_out)


def _classify(settings: ClassifySettings) -> None:
    from gptcli.commands.finetune import classify_command

    classify_command(settings.checkpoint, settings.texts, file=settings.file, json_out=settings.json_out)


def _command_function(target: str | Callable[[Any], None]) -> Callable[[Any], None]:
    """What runs a command of the table: an adapter, or "module:function" of gptcli.commands."""
    if callable(target):
        return target
    module, function = target.split(":")

    def run(settings: Any) -> None:
        getattr(importlib.import_module(f"gptcli.commands.{module}"), function)(settings)

    return run


# name, settings, what runs it, help, examples; in the order `gptcli --help` lists them
_SETTINGS_COMMANDS: tuple[tuple[str, type, str | Callable[[Any], None], str, tuple[str, ...]], ...] = (
    (
        "eval",
        EvalSettings,
        "evaluate:eval_command",
        "Loss and perplexity over the given text: the book's calc_loss_loader, or a sliding window (--stride).\n"
        "With --task hellaswag: HellaSwag accuracy, scored as llm.c and nanoGPT do.\n"
        "With --task lm-eval:TASKS: any task of EleutherAI's lm-evaluation-harness (pip install 'gptcli[eval]').\n"
        "With --judge: an instruct run's answers scored from 0 to 100 by a larger model, as the book's section 7.8.",
        (
            "gptcli eval examples/the-verdict.txt",
            "gptcli eval data/ --checkpoint runs/x --json",
            "gptcli eval examples/the-verdict.txt --stride 128",
            "gptcli eval --task hellaswag hellaswag_val.jsonl --model gpt2-124M",
            "gptcli eval --judge -c runs/instruct --judge-model llama3",
            "gptcli eval --task lm-eval:arc_easy,piqa,lambada_openai -c runs/x",
        ),
    ),
    (
        "sample",
        SampleSettings,
        "sample:run_sample",
        "Generate text with temperature, top-k and top-p sampling, stopping at <|endoftext|>.",
        (
            "gptcli sample --temperature 1.4 --top-k 25",
            'gptcli sample --model gpt2-124M --prompt "Every effort moves you" --top-k 50 --temperature 1.5',
            'gptcli sample --prompt "Hello" --num-samples 4 --seed 1 --json',
            "gptcli sample --interactive --temperature 1.0 --top-k 40",
        ),
    ),
    (
        "chat",
        ChatSettings,
        "chat:chat_command",
        "A multi-turn conversation in the terminal, formatted as `gptcli serve`'s chat endpoint formats it.\n"
        "The oldest turns are dropped when the context fills; /reset starts again, /quit or Ctrl-D leaves.",
        (
            "gptcli chat -c runs/instruct",
            "gptcli chat -c runs/verdict --temperature 0.8 --top-k 40 --system 'You are terse.'",
        ),
    ),
    (
        "serve",
        ServeSettings,
        "serve:serve_command",
        "Serve a model over HTTP: OpenAI's API (/v1/completions, /v1/chat/completions, /v1/models) and a chat page.",
        (
            "gptcli serve -c runs/verdict",
            "gptcli serve --model gpt2-124M --port 8080 --max-batch 8",
            "GPTCLI_API_KEY=secret gptcli serve -c runs/instruct --host 0.0.0.0",
            "gptcli serve -c runs/spam   # a classifier: POST /v1/classify",
        ),
    ),
    (
        "plot",
        PlotSettings,
        _plot,
        "Plot training and validation loss against epochs and tokens seen.",
        ("gptcli plot", "gptcli plot runs/a runs/b --log-y -o compare.svg", "gptcli plot --terminal"),
    ),
    (
        "download",
        DownloadSettings,
        "weights:download_command",
        "Download OpenAI's GPT-2 weights (resumable, verified), or a GPT-2 model from the Hugging Face Hub, "
        "and convert them for gptcli.",
        (
            "gptcli download --size 124M",
            "gptcli download --size 355M --dir models/355M --no-convert",
            "gptcli download --size 124M --base-url https://my-mirror.example/gpt2",
            "gptcli download --size 124M --source hf",
            "gptcli download distilgpt2 && gptcli sample --model distilgpt2",
        ),
    ),
    (
        "convert",
        ConvertSettings,
        "weights:convert_command",
        "Convert GPT-2 weights: OpenAI (TensorFlow), Hugging Face or the book's checkpoints -> gptcli, "
        "or gptcli -> Hugging Face, GGUF (llama.cpp, Ollama) or a weights-only file.",
        (
            "gptcli convert ~/.cache/gptcli/gpt2/124M",
            "gptcli convert model_and_optimizer.pth --data the-verdict.txt -o book.pth && gptcli resume book.pth",
            "gptcli convert hf-gpt2/ -o gpt2.pth",
            "gptcli convert runs/verdict --to hf -o verdict-hf/",
            "gptcli convert runs/verdict --to hf -o verdict-hf/ --push me/verdict-gpt2 --private",
            "gptcli convert runs/verdict --to gguf -o verdict.gguf --outtype q8_0 --ollama",
            "gptcli convert runs/verdict --weights-only -o verdict.pth",
        ),
    ),
    (
        "info",
        InfoSettings,
        "runs:info_command",
        "Show a checkpoint's config, parameter count, step, epoch, tokens seen and last losses.",
        (
            "gptcli info runs/verdict",
            "gptcli info runs/verdict/checkpoints/step-00000090.pth --json",
            "gptcli info gpt2-124M",
        ),
    ),
    (
        "runs",
        RunsSettings,
        _runs,
        "List the training runs under ./runs with their progress and last losses.",
        ("gptcli runs", "gptcli runs --root experiments --json"),
    ),
    (
        "prepare",
        PrepareSettings,
        "prepare:prepare_command",
        "Tokenize text once into llm.c-format shards (train_*.bin, val_*.bin) that train reads as memory maps.",
        (
            "gptcli prepare examples/the-verdict.txt -o data/verdict",
            "gptcli prepare 'corpus/*.jsonl.gz' -o data/corpus --shard-size 100M --val-tokens 10M",
            "zcat dump.jsonl.gz | gptcli prepare - --format jsonl --text-field content -o data/dump",
        ),
    ),
    (
        "classify",
        ClassifySettings,
        _classify,
        "Label texts with a model from `gptcli finetune classify`: label and probability.",
        (
            'gptcli classify -c runs/spam "You won a prize!"',
            "gptcli classify -c runs/spam --file messages.txt --json",
        ),
    ),
)

for _name, _settings, _target, _help, _examples in _SETTINGS_COMMANDS:
    settings_command(app, _settings, name=_name, help=_help, examples=_examples)(_command_function(_target))


# ---------------------------------------------------------------------------------------------
# gptcli finetune ...: the book's chapters 6 and 7 (gptcli.commands.finetune)

_finetune_app = typer.Typer(
    help="Finetune a pretrained model: instructions (the book's chapter 7), classification (chapter 6), with LoRA (appendix E).",
    epilog="Examples:\n\n  gptcli finetune instruct instruction-data.json --init gpt2-355M\n\n"
    "  gptcli finetune classify sms.csv --init gpt2-124M --balance",
    no_args_is_help=True,
)

_FtInit = Annotated[
    Optional[str],
    typer.Option(
        "--init",
        metavar="MODEL",
        help="Pretrained model: a gptcli checkpoint, run directory or gpt2-124M etc. (required here or in --config)",
        show_default=False,
    ),
]
_FtConfig = Annotated[
    Optional[Path],
    typer.Option(
        "--config",
        metavar="FILE",
        help="YAML settings with a 'finetune' section (a run's config.yaml works); flags override it.",
        show_default=False,
    ),
]
_FtOut = Annotated[
    Optional[Path],
    typer.Option("--out", "-o", metavar="DIR", help="Run directory [default: runs/<data>-<time>].", show_default=False),
]

_FT_PANELS = {"data": "Data", "train": "Training (defaults: the book's)", "lora": "LoRA (appendix E)", "output": _OUT}
_FtThreads = Annotated[Optional[int], _threads_option(rich_help_panel=_FT_PANELS["train"])]
_FtQuiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress output on stderr (the final accuracies or test loss still print).",
        rich_help_panel=_OUT,
    ),
]
_FtTensorBoard = Annotated[
    bool,
    typer.Option(
        "--tensorboard",
        help="Also write TensorBoard events to <run>/tensorboard (needs: pip install tensorboard).",
        rich_help_panel=_OUT,
    ),
]


def _finetune_options(
    kind: str | None, *, only: tuple[str, ...] | None = None, default_text: str | None = None
) -> dict[str, tuple[Any, inspect.Parameter]]:
    """The flags of ``gptcli finetune KIND`` from FinetuneConfig's field metadata (``only``: just
    those; ``default_text``: what every one says it defaults to, e.g. resume's "the run's")."""
    hints = typing.get_type_hints(FinetuneConfig)
    options = {}
    for f in finetune_flag_fields(kind):
        if only is not None and f.name not in only:
            continue
        if default_text is not None:  # f is finetune_flag_fields' own copy
            f.metadata = {**f.metadata, "default_text": default_text}  # type: ignore[misc]
        options[f.name] = (f, option(f, hints[f.name], _FT_PANELS, layered=True))
    return options


# The --help order of a new finetune's flags: its inputs (instruct's --template after them), then
# the settings' panels with --threads among the training ones, then how the run reports.
_FT_INPUTS = ("data", "init", "config_file", "out")
_FT_SETTINGS = ("<data>", "<train>", "threads", "<lora>", "<output>", "quiet", "tensorboard", "wandb", "wandb_project")


# The options both finetune commands take besides their settings: given to ``with_flags`` as
# options (with no panel of their own: the layout places them by name), so each is declared once.
_FT_COMMON = {
    name: (types.SimpleNamespace(metadata={"panel": None}), inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a))
    for name, a, d in (("init", _FtInit, None), ("config_file", _FtConfig, None), ("out", _FtOut, None),
                       ("threads", _FtThreads, None), ("quiet", _FtQuiet, False), ("tensorboard", _FtTensorBoard, False),
                       ("wandb", _Wandb, False), ("wandb_project", _WandbProject, None))
}  # fmt: skip
_FT_RUN_OPTIONS = ("config_file", "out", "quiet", "threads", "tensorboard", "wandb", "wandb_project")


def _finetune(kind: str, data: str | None, flags: dict[str, Any], **options: Any) -> None:
    """Start a finetune of ``kind`` with the flags given (None: not given, the book's default)."""
    from gptcli.commands.finetune import finetune_command

    run = {k: flags.pop(k) for k in _FT_RUN_OPTIONS}
    given = {"data": data, **flags}
    finetune_command({"kind": kind, **{k: v for k, v in given.items() if v is not None}}, **run, **options)


@_finetune_app.command(
    "instruct",
    epilog="Examples:\n\n  gptcli finetune instruct instruction-data.json --init gpt2-355M\n\n"
    "  gptcli finetune instruct alpaca.jsonl --init gpt2-124M --lora-rank 16 --lora-alpha 16 --mask-prompt\n\n"
    "  gptcli finetune instruct alpaca.jsonl --init gpt2-124M --max-steps 2000 --warmup-steps 100 --grad-clip 1",
)
@with_flags(*_FT_INPUTS, "template", *_FT_SETTINGS, options={**_finetune_options("instruct"), **_FT_COMMON})
def finetune_instruct(
    *,
    data: Annotated[
        Optional[str],
        _argument("DATA", "JSON list or JSONL of {instruction, input, output} records (or 'data' in --config)."),
    ] = None,
    template: Annotated[
        Optional[Path],
        typer.Option(
            help="Prompt template: a format string with {instruction}, {input}, {output} [default: the book's Alpaca format].",
            show_default=False,
        ),
    ] = None,
    **flags: Any,
) -> None:
    """Finetune a model to follow instructions, as the book's chapter 7."""
    _finetune("instruct", data, flags, template_file=template)


@_finetune_app.command(
    "classify",
    epilog="Examples:\n\n  gptcli finetune classify sms.csv --init gpt2-124M --balance\n\n"
    "  gptcli finetune classify reviews.jsonl --init gpt2-124M --text-field review --label-field stars",
)
@with_flags(*_FT_INPUTS, *_FT_SETTINGS, options={**_finetune_options("classify"), **_FT_COMMON})
def finetune_classify(
    *,
    data: Annotated[
        Optional[str],
        _argument(
            "DATA",
            "CSV, TSV (.tsv), or JSON (.json list or .jsonl lines) with a text and a label field "
            "(or 'data' in --config).",
        ),
    ] = None,
    **flags: Any,
) -> None:
    """Finetune a model as a text classifier, as the book's chapter 6."""
    _finetune("classify", data, flags)


@_finetune_app.command(
    "resume",
    epilog="Examples:\n\n  gptcli finetune resume runs/alpaca\n\n  gptcli finetune resume runs/alpaca --max-steps 4000",
)
@with_flags(
    "target",
    "<train>",
    "threads",
    "quiet",
    "wandb",
    options=_finetune_options(None, only=FINETUNE_LENGTH_FLAGS, default_text="the run's"),
)
def finetune_resume(
    *,
    target: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="RUN", help="Run directory or checkpoint [default: the most recent run].", show_default=False
        ),
    ] = None,
    threads: _FtThreads = None,
    quiet: _FtQuiet = False,
    wandb: Annotated[
        bool,
        typer.Option(
            "--wandb",
            help="Start logging to Weights & Biases (a run that logged to W&B continues its W&B run without it).",
            rich_help_panel=_OUT,
        ),
    ] = False,
    **flags: Any,
) -> None:
    """Continue a finetuning run exactly where its newest checkpoint stopped.

    A larger --epochs or budget extends a run that has ended as if it had been set from the start."""
    from gptcli.commands.resume import resume_command

    resume_command(target, quiet=quiet, threads=threads, wandb=wandb, finetune_only=True, **flags)


app.add_typer(_finetune_app, name="finetune")


def main() -> None:
    # 2 MB pages for PyTorch's large CPU buffers, the weights above all: decoding streams every
    # weight once a token, and with 4 KB pages a step's products ran 1.09x (fp32) to 1.16x (bf16)
    # slower (README, "CPU decoding"). PyTorch reads this once, at its first allocation, so it is
    # set before anything imports torch; an explicit THP_MEM_ALLOC_ENABLE=0 keeps 4 KB pages.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    app()
