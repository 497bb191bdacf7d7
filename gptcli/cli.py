"""The ``gptcli`` command line: one thin function per subcommand.

Commands only parse, call the library and print. Heavy imports (torch) happen inside the
functions, so ``gptcli --help`` stays fast. Library errors (GptCliError) become one line on
stderr and an exit code in ``_Group.main``; set GPTCLI_DEBUG=1 for the traceback.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from typer.core import TyperArgument, TyperGroup

from gptcli.config import (
    DEVICE_NAMES,
    DTYPES,
    ENCODING_ERRORS,
    INPUT_FORMATS,
    PRESETS,
    ModelConfig,
    TrainConfig,
    flag_fields,
)
from gptcli.errors import GptCliError
from gptcli.finetune.config import LENGTH_FLAGS as FINETUNE_LENGTH_FLAGS
from gptcli.finetune.config import FinetuneConfig
from gptcli.finetune.config import flag_fields as finetune_flag_fields
from gptcli.weights import READERS, SIZES, SOURCES, TARGETS

# Recent typer versions vendor click; take its exception classes from wherever typer's come from.
_click_exceptions = sys.modules[typer.BadParameter.__module__]
_ClickException = _click_exceptions.ClickException
_Abort = typer.Abort
_NoArgsIsHelp = getattr(_click_exceptions, "NoArgsIsHelpError", ())


class _WordArgument(TyperArgument):
    """A positional argument shown as a word, as Click and argparse show one: ``FILE...`` when it
    takes several, ``[RUN]`` when optional, ``SRC`` when required. (Typer's own display adds the
    Python type, ``paths... <list[Path]>``, and braces, ``{src}``.)"""

    def _word(self) -> str:
        return (self.metavar or (self.name or "").upper()) + ("..." if self.nargs != 1 else "")

    def _usage_display_name(self) -> str:
        return self._word() if self.required else f"[{self._word()}]"

    def _rich_display_name(self) -> str:
        return self._word()

    def display_type_rich(self, ctx) -> str | None:
        return None


# The word an option's value is shown as when its declaration names none.
_TYPE_WORDS = {int: "N", float: "X", str: "TEXT", Path: "PATH"}


def _value_word(param: Any) -> str | None:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is not None and len(args) == 1:  # Optional[int], list[Path]
        annotation = args[0]
    return _TYPE_WORDS.get(annotation) if isinstance(annotation, type) else None


def _words_for_values(group: Any) -> None:
    """Show every value as a word, in every command and sub-command: positional arguments as
    ``FILE...``/``[RUN]``, and options without a metavar of their own by their type (``N``, ``X``)."""
    for command in group.commands.values():
        if getattr(command, "commands", None):
            _words_for_values(command)
        for param in command.params:
            if type(param) is TyperArgument:
                param.__class__ = _WordArgument
            elif not getattr(param, "is_flag", False) and param.metavar is None:
                word = _value_word(param)
                if word is not None:
                    param.metavar = word


class _Group(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _words_for_values(self)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        debug = os.environ.get("GPTCLI_DEBUG", "") not in ("", "0")
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
        except GptCliError as e:
            if debug:
                raise
            _error(str(e))
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


def _error(message: str) -> None:
    from gptcli import console

    console.error(message)


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
        help="CPU threads for PyTorch [default: PyTorch's choice, one per core]; 1 is often faster on a busy machine.",
        show_default=False,
        **kwargs,
    )


def _device_option(**kwargs: Any) -> Any:
    """``--device``: the usual names listed and completed; cuda:N accepted too (gptcli.device checks)."""
    return typer.Option(
        metavar=_listing(DEVICE_NAMES),
        autocompletion=_completer(DEVICE_NAMES),
        help="Where to run: auto picks a GPU if there is one; cuda:N picks one of several.",
        **kwargs,
    )


def _checkpoint_option() -> Any:
    return typer.Option(
        "--checkpoint", "-c", metavar="PATH", help="Checkpoint or run directory [default: the most recent run]."
    )


def _model_option() -> Any:
    return typer.Option(
        metavar="NAME", help="gpt2-124M etc. (downloaded) or a converted .pth, instead of --checkpoint."
    )


# --------------------------------------------------------------------------------------------
# train

_MODEL = "Model (default: the book's 124M training shape)"
_TRAIN = "Training (defaults: the book's chapter-5 run)"
_OUT = "Output"
_PANELS = {"model": _MODEL, "train": _TRAIN, "output": _OUT}

# The config sections whose fields with help metadata become `train` flags.
_CONFIGS = {"model": ModelConfig, "train": TrainConfig}


def _word(kind: Any) -> str | None:
    """The metavar of a value of type ``kind``: a word, not a Python type (None for a choice or a
    flag, which Typer shows as the list of choices or nothing)."""
    return {int: "N", float: "X", str: "TEXT", Path: "FILE"}.get(kind)


def _listing(values: tuple[str, ...]) -> str:
    """Values shown as Typer shows a choice's."""
    return "<" + "|".join(values) + ">"


def _completer(values: tuple[str, ...]) -> Callable[..., list[str]]:
    """Shell completion offering ``values`` (those without a placeholder such as cuda:N)."""

    def complete(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete) and not v.endswith(":N")]

    return complete


def _shown_default(f: dataclasses.Field) -> str | None:
    """The "[default: ...]" text of a config flag: its metadata's default_text, else its value."""
    if "default_text" in f.metadata:
        return f.metadata["default_text"]
    value = f.default
    if value is None:
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        fixed = f"{value:g}"
        mantissa, exponent = f"{value:e}".split("e")
        sci = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return sci if len(sci) < len(fixed) else fixed  # 4e-4 rather than 0.0004
    if isinstance(value, str) and (not value or any(c.isspace() for c in value)):
        return repr(value)
    return str(value)


def _config_option(
    f: dataclasses.Field, hint: Any, panels: dict[str, str] = _PANELS, *, numbers_as_typed: bool = False
) -> inspect.Parameter:
    """The ``--flag`` of one config field. It defaults to None, "not given", so that the config
    file's value or the dataclass default applies (or to metadata "flag_default" where the command
    line's default differs from the dataclass's). Metadata "choices" makes it a choice (a
    Literal), "suggest" lists values without enforcing them, "metavar" names its value.
    ``numbers_as_typed``: a float flag hands its text to the config's validation layer (which reads
    numbers from text), so that an error echoes ``--lr -1`` as typed, not as -1.0."""
    kind = f.metadata.get("type") or next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))
    if "choices" in f.metadata:
        kind = Literal[tuple(f.metadata["choices"])]
    word = f.metadata.get("metavar", _word(kind))
    if numbers_as_typed and kind is float:
        kind = str
    help_text, shown = f.metadata["help"], _shown_default(f)
    if shown is not None:
        help_text = f"{help_text.removesuffix('.')} [default: {shown}]."
    name = f.name.replace("_", "-")
    suggest = f.metadata.get("suggest")
    option = typer.Option(
        f"--{name}/--no-{name}" if kind is bool else f"--{name}",
        help=help_text,
        show_default=False,
        rich_help_panel=panels[f.metadata["panel"]],
        metavar=_listing(suggest) if suggest else word,
        autocompletion=_completer(suggest) if suggest else None,
    )
    return inspect.Parameter(
        f.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=f.metadata.get("flag_default"),
        annotation=Annotated[Optional[kind], option],
    )


def _with_config_flags(
    *layout: str, options: dict[str, tuple[Any, inspect.Parameter]] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a ``--flag`` for every config field with help metadata to a command taking ``**flags``
    (``train``'s: ModelConfig's and TrainConfig's; or ``options``, each field's and its option's).

    Typer reads a command's parameters through ``inspect.signature`` and ``typing.get_type_hints``,
    so the generated options go into ``__signature__`` and ``__annotations__``. ``layout`` orders
    ``--help``: the command's own parameters and pinned fields by name, and "<panel>" for the
    remaining fields of that panel in dataclass order.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = {
            p.name: p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        }
        generated = dict(options or {})
        for cls in _CONFIGS.values() if options is None else ():
            hints = typing.get_type_hints(cls)
            generated.update(
                {f.name: (f, _config_option(f, hints[f.name], numbers_as_typed=True)) for f in flag_fields(cls)}
            )
        params = []
        for item in layout:
            if item.startswith("<"):
                panel = item.strip("<>")
                params += [p for n, (f, p) in generated.items() if f.metadata["panel"] == panel and n not in layout]
            else:
                params.append(own[item] if item in own else generated[item][1])
        missing = (set(own) | set(generated)) - {p.name for p in params}
        if missing or len(params) != len({p.name for p in params}):
            raise RuntimeError(f"{func.__name__}: layout {layout} misses or repeats parameters ({sorted(missing)})")
        func.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
        func.__annotations__ = {**{p.name: p.annotation for p in params}, "return": None}
        return func

    return decorate


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
@_with_config_flags(
    "paths",
    "epochs",
    "config",
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
        typer.Option("--config", "-c", metavar="FILE", help="YAML config; flags override it.", rich_help_panel=_TRAIN),
    ] = None,
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
    from gptcli.commands.train import train_command

    # Every ModelConfig/TrainConfig field with help metadata is a flag (see _with_config_flags);
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
    target: Annotated[
        Optional[Path],
        typer.Argument(
            metavar="RUN",
            help="Run directory or checkpoint file [default: the most recent unfinished run].",
            show_default=False,
        ),
    ] = None,
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
    threads: Annotated[Optional[int], _threads_option()] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    wandb: Annotated[
        bool,
        typer.Option(
            "--wandb",
            help="Start logging to Weights & Biases (a run that logged to W&B continues its W&B run without it).",
        ),
    ] = False,
) -> None:
    """Continue a run exactly where it stopped: same batches, same dropout, same losses.

    A larger --epochs or budget extends a finished run as if it had been set from the start (with
    a warm-up/cosine schedule, the remaining steps follow the schedule over the new length)."""
    from gptcli.commands.train import resume_command

    resume_command(
        target,
        epochs=epochs,
        max_steps=max_steps,
        max_tokens=max_tokens,
        max_time=max_time,
        patience=patience,
        quiet=quiet,
        threads=threads,
        wandb=wandb,
    )


@app.command(
    name="eval",
    epilog="Examples:\n\n  gptcli eval examples/the-verdict.txt\n\n  gptcli eval data/ --checkpoint runs/x --json"
    "\n\n  gptcli eval examples/the-verdict.txt --stride 128"
    "\n\n  gptcli eval --task hellaswag hellaswag_val.jsonl --model gpt2-124M",
)
def eval_(
    paths: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="FILE",
            help="Text files (.txt, .md, .jsonl, .json, .csv, .tsv, .parquet, optionally compressed), directories "
            "of .txt files, quoted globs ('data/*.jsonl.gz'), or - for standard input.",
            show_default=False,
        ),
    ] = None,
    checkpoint: Annotated[Optional[Path], _checkpoint_option()] = None,
    model: Annotated[Optional[str], _model_option()] = None,
    input_format: Annotated[
        Literal[INPUT_FORMATS],
        typer.Option("--format", help="Format of every input; auto detects each from its name."),
    ] = "auto",
    text_field: Annotated[
        Optional[str],
        typer.Option(
            metavar="NAME",
            help="The field (JSON) or column (CSV, TSV, Parquet) that holds the text [default: text].",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            min=1,
            metavar="N",
            help="Windows per batch; the loss is the mean of the batch means, as the book's calc_loss_loader.",
        ),
    ] = 8,
    stride: Annotated[
        Optional[int],
        typer.Option(
            min=1,
            metavar="N",
            help="Score every token with a sliding window advancing by this many tokens (Hugging Face's perplexity "
            "method; 1 to the context length) [default: the book's windows, stride = context].",
            show_default=False,
        ),
    ] = None,
    device: Annotated[str, _device_option()] = "auto",
    threads: Annotated[Optional[int], _threads_option()] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    encoding_errors: Annotated[
        Literal[ENCODING_ERRORS], typer.Option(help="What to do with undecodable bytes.")
    ] = "strict",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output on stderr (warnings and errors still).")
    ] = False,
    task: Annotated[
        Literal["loss", "hellaswag"],
        typer.Option(
            help="loss: loss and perplexity of text files; hellaswag: acc and acc_norm on HellaSwag jsonl files "
            "(the official hellaswag_val.jsonl)."
        ),
    ] = "loss",
    split: Annotated[
        Optional[str],
        typer.Option(
            metavar="SPLIT",
            help="A finetune run (-c RUN): its loss on the train, val or test split of its own data "
            "(and a classifier's accuracy), no FILE needed.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Loss and perplexity over the given text: the book's calc_loss_loader, or a sliding window (--stride).
    With --task hellaswag: HellaSwag accuracy, scored as llm.c and nanoGPT do."""
    from gptcli.commands.evaluate import eval_command

    eval_command(
        paths or [],
        split=split,
        checkpoint=checkpoint,
        model=model,
        batch_size=batch_size,
        stride=stride,
        device=device,
        json_out=json_out,
        encoding_errors=encoding_errors,
        quiet=quiet,
        threads=threads,
        task=task,
        format=input_format,
        text_field=text_field,
    )


@app.command(
    epilog="Examples:\n\n  gptcli sample --temperature 1.4 --top-k 25\n\n"
    '  gptcli sample --model gpt2-124M --prompt "Every effort moves you" --top-k 50 --temperature 1.5\n\n'
    '  gptcli sample --prompt "Hello" --num-samples 4 --seed 1 --json\n\n'
    "  gptcli sample --interactive --temperature 1.0 --top-k 40"
)
def sample(
    checkpoint: Annotated[Optional[Path], _checkpoint_option()] = None,
    model: Annotated[Optional[str], _model_option()] = None,
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--prompt",
            "-p",
            metavar="TEXT",
            help="Prompt text; repeat for a batch of prompts [default: 'Every effort moves you'].",
        ),
    ] = None,
    max_new_tokens: Annotated[
        Optional[int],
        typer.Option(
            metavar="N",
            help="Tokens to generate per sample [default: 50; 256 with --instruction or --responses, as the book].",
            show_default=False,
        ),
    ] = None,
    temperature: Annotated[float, typer.Option(metavar="X", help="0 is greedy; higher is more random.")] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(metavar="N", help="Keep only the k most likely tokens.")] = None,
    top_p: Annotated[
        Optional[float],
        typer.Option(metavar="X", help="Nucleus sampling: keep the smallest set with this much probability."),
    ] = None,
    seed: Annotated[Optional[int], typer.Option(metavar="N", help="Seed for repeatable sampling.")] = None,
    num_samples: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Samples per prompt; several are printed each under a '--- sample I of N ---' line "
            "(needs --temperature above 0 to differ).",
        ),
    ] = 1,
    device: Annotated[str, _device_option()] = "auto",
    threads: Annotated[Optional[int], _threads_option()] = None,
    dtype: Annotated[
        Literal[DTYPES],
        typer.Option(
            help="Weights' dtype: fp32 (exactly the reference), bf16 (faster on CPUs with native bf16; greedy text "
            "drifts from fp32's after a while) or auto (bf16 where native on CPU, else fp32)."
        ),
    ] = "fp32",
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Re-run the whole context for every token (slow; for checking).")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    stream: Annotated[
        Optional[bool],
        typer.Option(
            "--stream/--no-stream",
            help="Print tokens as they come [default: when stdout is a terminal].",
            show_default=False,
        ),
    ] = None,
    interactive: Annotated[
        bool,
        typer.Option(
            "--interactive",
            "-i",
            help="Prompt loop that keeps the model loaded (one prompt per line; Ctrl-D to leave).",
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output on stderr (warnings and errors still).")
    ] = False,
    instruction: Annotated[
        Optional[str],
        typer.Option(
            metavar="TEXT",
            help="An instruct finetune run: answer this instruction, formatted with the run's template; prints only the response.",
            show_default=False,
        ),
    ] = None,
    input_: Annotated[
        Optional[str],
        typer.Option(
            "--input", metavar="TEXT", help="The instruction's input (with --instruction).", show_default=False
        ),
    ] = None,
    responses: Annotated[
        Optional[str],
        typer.Option(
            metavar="SPLIT",
            help="An instruct finetune run: answer every record of its train, val or test split; writes -o FILE "
            "as the book's instruction-data-with-response.json.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "--out", "-o", metavar="FILE", help="The JSON file --responses writes.", show_default=False
        ),
    ] = None,
) -> None:
    """Generate text with temperature, top-k and top-p sampling, stopping at <|endoftext|>."""
    from gptcli.commands.sample import instruct_command, interactive_sample, sample_command

    # what every way of sampling takes (--instruction/--responses, -i, prompts)
    common = dict(
        checkpoint=checkpoint,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        device=device,
        dtype=dtype,
        use_cache=not no_cache,
        quiet=quiet,
        threads=threads,
    )
    if instruction is not None or responses is not None or input_ is not None or output is not None:
        if interactive or prompt or model or num_samples != 1:
            raise typer.BadParameter(
                "cannot be combined with --interactive, --prompt, --model or --num-samples",
                param_hint="--instruction/--responses",
            )
        if input_ is not None and instruction is None:
            raise typer.BadParameter("needs --instruction", param_hint="--input")
        if output is not None and output.is_dir():  # found before the model loads and answers
            from gptcli.errors import UsageError

            raise UsageError(f"{output}: is a directory; give a file name (e.g. -o {output / 'responses.json'})")
        instruct_command(
            instruction=instruction,
            input_text=input_ or "",
            responses=responses,
            output=output,
            max_new_tokens=max_new_tokens,
            json_out=json_out,
            **common,
        )
        return
    max_new_tokens = 50 if max_new_tokens is None else max_new_tokens
    if interactive:
        if prompt or json_out or num_samples != 1:
            raise typer.BadParameter(
                "cannot be combined with --prompt, --json or --num-samples", param_hint="--interactive"
            )
        interactive_sample(model=model, max_new_tokens=max_new_tokens, stream=stream, **common)
        return
    sample_command(
        model=model,
        prompts=prompt or ["Every effort moves you"],
        max_new_tokens=max_new_tokens,
        num_samples=num_samples,
        json_out=json_out,
        stream=stream,
        **common,
    )


@app.command(
    epilog="Examples:\n\n  gptcli plot\n\n  gptcli plot runs/a runs/b --log-y -o compare.svg\n\n  gptcli plot --terminal"
)
def plot(
    targets: Annotated[
        Optional[list[Path]],
        typer.Argument(
            metavar="RUN",
            help="Run directories or metrics.jsonl files [default: the most recent run].",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "--out",
            "-o",
            metavar="FILE",
            help="Image file: .png, .svg or .pdf [default: <run>/loss.png for one run; several runs need it].",
            show_default=False,
        ),
    ] = None,
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic loss axis.")] = False,
    terminal: Annotated[
        bool, typer.Option("--terminal", help="Draw the curves in the terminal (and write -o too, if given).")
    ] = False,
) -> None:
    """Plot training and validation loss against epochs and tokens seen."""
    from gptcli.commands.runs import plot_command

    plot_command(targets or [], output=output, log_y=log_y, terminal=terminal)


@app.command(
    epilog="Examples:\n\n  gptcli download --size 124M\n\n"
    "  gptcli download --size 355M --dir models/355M --no-convert\n\n"
    "  gptcli download --size 124M --base-url https://my-mirror.example/gpt2"
)
def download(
    size: Annotated[Literal[SIZES], typer.Option(help="Which of OpenAI's four GPT-2 models.")] = "124M",
    directory: Annotated[
        Optional[Path],
        typer.Option(
            "--dir",
            "-d",
            metavar="DIR",
            help="Folder for the files [default: $GPTCLI_HOME/gpt2/<size>, i.e. ~/.cache/gptcli/gpt2/<size>].",
            show_default=False,
        ),
    ] = None,
    base_url: Annotated[
        Optional[str],
        typer.Option(
            metavar="URL",
            help="Mirror serving <size>/<file> [default: $GPTCLI_GPT2_BASE_URL, else OpenAI's host, then the book's mirror].",
            show_default=False,
        ),
    ] = None,
    no_convert: Annotated[
        bool, typer.Option("--no-convert", help="Only download; skip the conversion to model.pth.")
    ] = False,
    reader: Annotated[
        Literal[READERS],
        typer.Option(help="Read the TensorFlow checkpoint with: builtin (no TensorFlow needed) or tensorflow."),
    ] = "builtin",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Download OpenAI's GPT-2 weights (resumable, verified) and convert them for gptcli."""
    from gptcli.commands.weights import download_command

    download_command(
        size=size, directory=directory, base_url=base_url, convert=not no_convert, reader=reader, quiet=quiet
    )


@app.command(
    epilog="Examples:\n\n  gptcli convert ~/.cache/gptcli/gpt2/124M\n\n"
    "  gptcli convert model_and_optimizer.pth --data the-verdict.txt -o book.pth && gptcli resume book.pth\n\n"
    "  gptcli convert hf-gpt2/ -o gpt2.pth\n\n  gptcli convert runs/verdict --to hf -o verdict-hf/"
)
def convert(
    src: Annotated[
        str,
        typer.Argument(
            metavar="SRC",
            help="OpenAI checkpoint folder, Hugging Face folder or weights file, the book's .pth, or (with --to hf) a gptcli checkpoint, run or gpt2-124M.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "--out",
            "-o",
            metavar="PATH",
            help="Output .pth (--to gptcli) or folder (--to hf) [default: beside SRC; with --merge-lora, "
            "<run>/merged.pth].",
            show_default=False,
        ),
    ] = None,
    from_: Annotated[
        Optional[Literal[SOURCES]],
        typer.Option("--from", help="The format of SRC [default: detected].", show_default=False),
    ] = None,
    to: Annotated[Literal[TARGETS], typer.Option("--to", help="The format to write.")] = "gptcli",
    reader: Annotated[
        Literal[READERS],
        typer.Option(help="TensorFlow checkpoints: builtin (no TensorFlow needed) or tensorflow."),
    ] = "builtin",
    n_heads: Annotated[
        Optional[int],
        typer.Option(
            metavar="N",
            help="Book checkpoints: attention heads (not stored in the file) [default: emb_dim / 64].",
            show_default=False,
        ),
    ] = None,
    drop_rate: Annotated[
        float, typer.Option(metavar="X", help="Book checkpoints: dropout rate for further training.")
    ] = 0.1,
    data: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--data",
            metavar="FILE",
            help="Book checkpoints with optimizer state: the training text, so 'gptcli resume' can continue and the epochs the notebook ran are known (repeatable).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
    merge_lora: Annotated[
        bool,
        typer.Option(
            "--merge-lora",
            help="A finetune run: fold its LoRA adapters into the weights and write a file that needs no base "
            "(with --to hf, always merged).",
        ),
    ] = False,
) -> None:
    """Convert GPT-2 weights: OpenAI (TensorFlow), Hugging Face or the book's checkpoints -> gptcli, or gptcli -> Hugging Face."""
    from gptcli.commands.weights import convert_command

    convert_command(
        src,
        output=output,
        source=from_,
        target=to,
        reader=reader,
        n_heads=n_heads,
        drop_rate=drop_rate,
        data=data,
        quiet=quiet,
        merge_lora=merge_lora,
    )


@app.command(
    epilog="Examples:\n\n  gptcli info runs/verdict\n\n"
    "  gptcli info runs/verdict/checkpoints/step-00000090.pth --json\n\n  gptcli info gpt2-124M"
)
def info(
    target: Annotated[
        Optional[str],
        typer.Argument(
            metavar="TARGET",
            help="Checkpoint file, run directory or downloaded model name like gpt2-124M [default: the most recent run].",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Show a checkpoint's config, parameter count, step, epoch, tokens seen and last losses."""
    from gptcli.commands.runs import info_command

    info_command(target, json_out=json_out)


@app.command(epilog="Examples:\n\n  gptcli runs\n\n  gptcli runs --root experiments --json")
def runs(
    root: Annotated[
        Optional[Path],
        typer.Option(
            "--root", metavar="DIR", help="Directory holding run directories [default: runs].", show_default=False
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the training runs under ./runs with their progress and last losses."""
    from gptcli.commands.runs import runs_command

    runs_command(root, json_out=json_out)


@app.command(
    epilog="Examples:\n\n  gptcli prepare examples/the-verdict.txt -o data/verdict\n\n"
    "  gptcli prepare 'corpus/*.jsonl.gz' -o data/corpus --shard-size 100M --val-tokens 10M\n\n"
    "  zcat dump.jsonl.gz | gptcli prepare - --format jsonl --text-field content -o data/dump"
)
def prepare(
    inputs: Annotated[
        list[str],
        typer.Argument(
            metavar="INPUT",
            help="Files (.txt .md .jsonl .json .csv .tsv .parquet, optionally .gz .bz2 .xz .zst), globs, "
            "directories of .txt files, or - for standard input.",
            show_default=False,
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", metavar="DIR", help="Directory to write the shards to.")],
    format: Annotated[
        Literal[INPUT_FORMATS],
        typer.Option(help="Format of every input; auto detects each from its name."),
    ] = "auto",
    text_field: Annotated[
        Optional[str],
        typer.Option(
            metavar="NAME",
            help="The JSON field or CSV/TSV/Parquet column holding the text [default: text].",
            show_default=False,
        ),
    ] = None,
    shard_size: Annotated[str, typer.Option(metavar="N", help="Tokens per shard (100M, 2B accepted).")] = "100M",
    val_ratio: Annotated[
        float, typer.Option(metavar="R", help="Fraction of the tokens, at the end, written as val shards.")
    ] = 0.1,
    val_tokens: Annotated[
        Optional[str],
        typer.Option(metavar="N", help="Exactly this many val tokens instead of --val-ratio.", show_default=False),
    ] = None,
    encoding_errors: Annotated[
        Literal[ENCODING_ERRORS], typer.Option(help="What to do with undecodable bytes.")
    ] = "strict",
    threads: Annotated[
        Optional[int],
        typer.Option(min=1, metavar="N", help="Tokenizer threads [default: one per core].", show_default=False),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output on stderr.")] = False,
) -> None:
    """Tokenize text once into llm.c-format shards (train_*.bin, val_*.bin) that train reads as memory maps."""
    from gptcli.commands.prepare import prepare_command

    prepare_command(
        inputs,
        out=out,
        format=format,
        text_field=text_field,
        shard_size=shard_size,
        val_ratio=val_ratio,
        val_tokens=val_tokens,
        encoding_errors=encoding_errors,
        threads=threads,
        json_out=json_out,
        quiet=quiet,
    )


# ---------------------------------------------------------------------------------------------
# gptcli finetune ... and gptcli classify: the book's chapters 6 and 7 (gptcli.commands.finetune)

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
        options[f.name] = (f, _config_option(f, hints[f.name], _FT_PANELS))
    return options


def _finetune_settings(kind: str, data: str, init: str, flags: dict[str, Any]) -> dict[str, Any]:
    """FinetuneConfig's keyword arguments: the flags given (None: not given, the book's default)."""
    given = {"data": data, "init": init, **flags}
    return {"kind": kind, **{k: v for k, v in given.items() if v is not None}}


@_finetune_app.command(
    "instruct",
    epilog="Examples:\n\n  gptcli finetune instruct instruction-data.json --init gpt2-355M\n\n"
    "  gptcli finetune instruct alpaca.jsonl --init gpt2-124M --lora-rank 16 --lora-alpha 16 --mask-prompt\n\n"
    "  gptcli finetune instruct alpaca.jsonl --init gpt2-124M --max-steps 2000 --warmup-steps 100 --grad-clip 1",
)
@_with_config_flags(
    "data",
    "init",
    "config_file",
    "out",
    "template",
    "<data>",
    "<train>",
    "threads",
    "<lora>",
    "<output>",
    "quiet",
    "tensorboard",
    "wandb",
    "wandb_project",
    options=_finetune_options("instruct"),
)
def finetune_instruct(
    *,
    data: Annotated[
        Optional[str],
        typer.Argument(
            metavar="DATA",
            help="JSON list or JSONL of {instruction, input, output} records (or 'data' in --config).",
            show_default=False,
        ),
    ] = None,
    init: _FtInit = None,
    config_file: _FtConfig = None,
    out: _FtOut = None,
    template: Annotated[
        Optional[Path],
        typer.Option(
            help="Prompt template: a format string with {instruction}, {input}, {output} [default: the book's Alpaca format].",
            show_default=False,
        ),
    ] = None,
    threads: _FtThreads = None,
    quiet: _FtQuiet = False,
    tensorboard: _FtTensorBoard = False,
    wandb: _Wandb = False,
    wandb_project: _WandbProject = None,
    **flags: Any,
) -> None:
    """Finetune a model to follow instructions, as the book's chapter 7."""
    from gptcli.commands.finetune import finetune_command

    finetune_command(
        _finetune_settings("instruct", data, init, flags),
        config_file=config_file,
        out=out,
        template_file=template,
        quiet=quiet,
        threads=threads,
        tensorboard=tensorboard,
        wandb=wandb,
        wandb_project=wandb_project,
    )


@_finetune_app.command(
    "classify",
    epilog="Examples:\n\n  gptcli finetune classify sms.csv --init gpt2-124M --balance\n\n"
    "  gptcli finetune classify reviews.jsonl --init gpt2-124M --text-field review --label-field stars",
)
@_with_config_flags(
    "data",
    "init",
    "config_file",
    "out",
    "<data>",
    "<train>",
    "threads",
    "<lora>",
    "<output>",
    "quiet",
    "tensorboard",
    "wandb",
    "wandb_project",
    options=_finetune_options("classify"),
)
def finetune_classify(
    *,
    data: Annotated[
        Optional[str],
        typer.Argument(
            metavar="DATA",
            help="CSV, TSV (.tsv), or JSON (.json list or .jsonl lines) with a text and a label field "
            "(or 'data' in --config).",
            show_default=False,
        ),
    ] = None,
    init: _FtInit = None,
    config_file: _FtConfig = None,
    out: _FtOut = None,
    threads: _FtThreads = None,
    quiet: _FtQuiet = False,
    tensorboard: _FtTensorBoard = False,
    wandb: _Wandb = False,
    wandb_project: _WandbProject = None,
    **flags: Any,
) -> None:
    """Finetune a model as a text classifier, as the book's chapter 6."""
    from gptcli.commands.finetune import finetune_command

    finetune_command(
        _finetune_settings("classify", data, init, flags),
        config_file=config_file,
        out=out,
        quiet=quiet,
        threads=threads,
        tensorboard=tensorboard,
        wandb=wandb,
        wandb_project=wandb_project,
    )


@_finetune_app.command(
    "resume",
    epilog="Examples:\n\n  gptcli finetune resume runs/alpaca\n\n  gptcli finetune resume runs/alpaca --max-steps 4000",
)
@_with_config_flags(
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
    from gptcli.commands.finetune import resume_command

    resume_command(target, quiet=quiet, threads=threads, wandb=wandb, **flags)


@app.command(
    "classify",
    epilog='Examples:\n\n  gptcli classify -c runs/spam "You won a prize!"\n\n'
    "  gptcli classify -c runs/spam --file messages.txt --json",
)
def classify(
    texts: Annotated[
        Optional[list[str]], typer.Argument(metavar="TEXT", help="Texts to label.", show_default=False)
    ] = None,
    checkpoint: Annotated[
        Optional[Path],
        typer.Option(
            "--checkpoint",
            "-c",
            metavar="RUN",
            help="A classify run or checkpoint [default: the most recent classify run].",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        Optional[Path],
        typer.Option("--file", metavar="FILE", help="Also label each non-empty line of FILE.", show_default=False),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """Label texts with a model from `gptcli finetune classify`: label and probability."""
    from gptcli.commands.finetune import classify_command

    classify_command(checkpoint, list(texts or []), file=file, json_out=json_out)


app.add_typer(_finetune_app, name="finetune")


def main() -> None:
    app()
