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
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperGroup

from gptcli.config import ModelConfig, TrainConfig, flag_fields
from gptcli.errors import GptCliError

# Recent typer versions vendor click; take its exception classes from wherever typer's come from.
_click_exceptions = sys.modules[typer.BadParameter.__module__]
_ClickException = _click_exceptions.ClickException
_Abort = typer.Abort
_NoArgsIsHelp = getattr(_click_exceptions, "NoArgsIsHelpError", ())


class _Group(TyperGroup):
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
            _error(cmd + e.format_message().replace("\n", " "))
            sys.exit(e.exit_code)
        except _Abort:
            _error("aborted")
            sys.exit(130)
        except KeyboardInterrupt:
            _error("interrupted")
            sys.exit(130)
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
# train

_MODEL = "Model (default: the book's 124M training shape)"
_TRAIN = "Training (defaults: the book's chapter-5 run)"
_OUT = "Output"
_PANELS = {"model": _MODEL, "train": _TRAIN, "output": _OUT}

# The config sections whose fields with help metadata become `train` flags.
_CONFIGS = {"model": ModelConfig, "train": TrainConfig}


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


def _config_option(f: dataclasses.Field, hint: Any) -> inspect.Parameter:
    """The ``--flag`` of one config field. It defaults to None, "not given", so that the config
    file's value or the dataclass default applies."""
    kind = f.metadata.get("type") or next(t for t in (typing.get_args(hint) or (hint,)) if t is not type(None))
    help_text, shown = f.metadata["help"], _shown_default(f)
    if shown is not None:
        help_text = f"{help_text.removesuffix('.')} [default: {shown}]."
    name = f.name.replace("_", "-")
    option = typer.Option(
        f"--{name}/--no-{name}" if kind is bool else f"--{name}",
        help=help_text,
        show_default=False,
        rich_help_panel=_PANELS[f.metadata["panel"]],
    )
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[kind], option]
    )


def _with_config_flags(*layout: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add a ``--flag`` for every config field with help metadata to a command taking ``**flags``.

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
        generated = {}
        for cls in _CONFIGS.values():
            hints = typing.get_type_hints(cls)
            generated.update({f.name: (f, _config_option(f, hints[f.name])) for f in flag_fields(cls)})
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
    "out",
    "<output>",
    "quiet",
    "tensorboard",
)
def train(
    *,
    paths: Annotated[
        Optional[list[Path]], typer.Argument(help="Text files, or directories of .txt files.", show_default=False)
    ] = None,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config; flags override it.", rich_help_panel=_TRAIN)
    ] = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Show the resolved settings and exit.", rich_help_panel=_TRAIN)
    ] = False,
    preset: Annotated[
        Optional[str],
        typer.Option(help="gpt2-124M, gpt2-355M, gpt2-774M or gpt2-1558M (OpenAI's shapes).", rich_help_panel=_MODEL),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Run directory [default: runs/<name>].", rich_help_panel=_OUT)
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.", rich_help_panel=_OUT)] = False,
    tensorboard: Annotated[
        bool,
        typer.Option(
            "--tensorboard",
            help="Also write TensorBoard events to <run>/tensorboard (needs: pip install 'gptcli[tensorboard]').",
            rich_help_panel=_OUT,
        ),
    ] = False,
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
    )


@app.command(
    epilog="Examples:\n\n  gptcli resume runs/the-verdict-20260101-120000\n\n  gptcli resume runs/x/checkpoints/step-00000045.pth --epochs 20"
)
def resume(
    target: Annotated[
        Optional[Path],
        typer.Argument(help="Checkpoint file or run directory [default: the most recent run].", show_default=False),
    ] = None,
    epochs: Annotated[Optional[int], typer.Option(help="New total number of epochs (extends the run).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Continue a run exactly where it stopped: same batches, same dropout, same losses."""
    from gptcli.commands.train import resume_command

    resume_command(target, epochs=epochs, quiet=quiet)


@app.command(
    name="eval",
    epilog="Examples:\n\n  gptcli eval examples/the-verdict.txt\n\n  gptcli eval data/ --checkpoint runs/x --json",
)
def eval_(
    paths: Annotated[list[Path], typer.Argument(help="Text files, or directories of .txt files.", show_default=False)],
    checkpoint: Annotated[
        Optional[Path],
        typer.Option("--checkpoint", "-c", help="Checkpoint or run directory [default: the most recent run]."),
    ] = None,
    model: Annotated[
        Optional[str], typer.Option(help="gpt2-124M etc. (downloaded) or a converted .pth, instead of --checkpoint.")
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    encoding_errors: Annotated[str, typer.Option(help="strict, replace or ignore undecodable bytes.")] = "strict",
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress output on stderr (warnings and errors still).")
    ] = False,
) -> None:
    """Loss and perplexity over every window of the given text."""
    from gptcli.commands.evaluate import eval_command

    eval_command(
        paths,
        checkpoint=checkpoint,
        model=model,
        batch_size=batch_size,
        device=device,
        json_out=json_out,
        encoding_errors=encoding_errors,
        quiet=quiet,
    )


@app.command(
    epilog="Examples:\n\n  gptcli sample --temperature 1.4 --top-k 25\n\n"
    '  gptcli sample --model gpt2-124M --prompt "Every effort moves you" --top-k 50 --temperature 1.5\n\n'
    '  gptcli sample --prompt "Hello" --num-samples 4 --seed 1 --json\n\n'
    "  gptcli sample --interactive --temperature 1.0 --top-k 40"
)
def sample(
    checkpoint: Annotated[
        Optional[Path],
        typer.Option("--checkpoint", "-c", help="Checkpoint or run directory [default: the most recent run]."),
    ] = None,
    model: Annotated[
        Optional[str], typer.Option(help="gpt2-124M etc. (downloaded) or a converted .pth, instead of --checkpoint.")
    ] = None,
    prompt: Annotated[
        Optional[list[str]],
        typer.Option(
            "--prompt", "-p", help="Prompt text; repeat for a batch of prompts [default: 'Every effort moves you']."
        ),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per sample.")] = 50,
    temperature: Annotated[float, typer.Option(help="0 is greedy; higher is more random.")] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(help="Keep only the k most likely tokens.")] = None,
    top_p: Annotated[
        Optional[float], typer.Option(help="Nucleus sampling: keep the smallest set with this much probability.")
    ] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed for repeatable sampling.")] = None,
    num_samples: Annotated[int, typer.Option(help="Samples per prompt.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    dtype: Annotated[
        str, typer.Option(help="Weights' dtype: auto, fp32 or bf16 (auto: bf16 on CPUs with native bf16, else fp32).")
    ] = "auto",
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
) -> None:
    """Generate text with temperature, top-k and top-p sampling, stopping at <|endoftext|>."""
    from gptcli.commands.sample import interactive_sample, sample_command

    if interactive:
        if prompt or json_out or num_samples != 1:
            raise typer.BadParameter(
                "cannot be combined with --prompt, --json or --num-samples", param_hint="--interactive"
            )
        interactive_sample(
            checkpoint=checkpoint,
            model=model,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            device=device,
            dtype=dtype,
            use_cache=not no_cache,
            stream=stream,
            quiet=quiet,
        )
        return
    sample_command(
        checkpoint=checkpoint,
        model=model,
        prompts=prompt or ["Every effort moves you"],
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        num_samples=num_samples,
        device=device,
        dtype=dtype,
        use_cache=not no_cache,
        json_out=json_out,
        stream=stream,
        quiet=quiet,
    )


@app.command(
    epilog="Examples:\n\n  gptcli plot -o loss.png\n\n  gptcli plot runs/a runs/b --log-y -o compare.svg\n\n  gptcli plot --terminal"
)
def plot(
    targets: Annotated[
        Optional[list[Path]],
        typer.Argument(
            help="Run directories or metrics.jsonl files [default: the most recent run].", show_default=False
        ),
    ] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Image file: .png, .svg or .pdf.")] = Path("loss.png"),
    log_y: Annotated[bool, typer.Option("--log-y", help="Logarithmic loss axis.")] = False,
    terminal: Annotated[bool, typer.Option("--terminal", help="Draw the curves in the terminal instead.")] = False,
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
    size: Annotated[str, typer.Option(help="124M, 355M, 774M or 1558M.")] = "124M",
    directory: Annotated[
        Optional[Path],
        typer.Option(
            "--dir",
            "-d",
            help="Folder for the files [default: $GPTCLI_HOME/gpt2/<size>, i.e. ~/.cache/gptcli/gpt2/<size>].",
            show_default=False,
        ),
    ] = None,
    base_url: Annotated[
        Optional[str],
        typer.Option(
            help="Mirror serving <size>/<file> [default: $GPTCLI_GPT2_BASE_URL, else OpenAI's host, then the book's mirror].",
            show_default=False,
        ),
    ] = None,
    no_convert: Annotated[
        bool, typer.Option("--no-convert", help="Only download; skip the conversion to model.pth.")
    ] = False,
    reader: Annotated[
        str, typer.Option(help="Read the TensorFlow checkpoint with: builtin (no TensorFlow needed) or tensorflow.")
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
            help="OpenAI checkpoint folder, Hugging Face folder or weights file, the book's .pth, or (with --to hf) a gptcli checkpoint, run or gpt2-124M.",
            show_default=False,
        ),
    ],
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            "-o",
            help="Output .pth (--to gptcli) or folder (--to hf) [default: beside SRC].",
            show_default=False,
        ),
    ] = None,
    from_: Annotated[
        Optional[str], typer.Option("--from", help="openai, hf or book [default: detected].", show_default=False)
    ] = None,
    to: Annotated[str, typer.Option("--to", help="gptcli or hf.")] = "gptcli",
    reader: Annotated[
        str, typer.Option(help="TensorFlow checkpoints: builtin (no TensorFlow needed) or tensorflow.")
    ] = "builtin",
    n_heads: Annotated[
        Optional[int],
        typer.Option(
            help="Book checkpoints: attention heads (not stored in the file) [default: emb_dim / 64].",
            show_default=False,
        ),
    ] = None,
    drop_rate: Annotated[float, typer.Option(help="Book checkpoints: dropout rate for further training.")] = 0.1,
    data: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--data",
            help="Book checkpoints with optimizer state: the training text, so 'gptcli resume' can continue (repeatable).",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
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
    )


@app.command(
    epilog="Examples:\n\n  gptcli info runs/verdict\n\n"
    "  gptcli info runs/verdict/checkpoints/step-00000090.pth --json\n\n  gptcli info gpt2-124M"
)
def info(
    target: Annotated[
        Optional[str],
        typer.Argument(
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
    root: Annotated[Path, typer.Option("--root", help="Directory holding run directories.")] = Path("runs"),
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
) -> None:
    """List the training runs under ./runs with their progress and last losses."""
    from gptcli.commands.runs import runs_command

    runs_command(root, json_out=json_out)


def main() -> None:
    app()
