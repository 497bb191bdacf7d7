"""The settings of each command that is not a training run, one dataclass per command.

A field is a command-line flag (or argument) when its metadata has "help", as for ``TrainConfig``
(``gptcli.config.flag_fields``), and ``gptcli.cli_options`` makes the option from it: the same
metadata keys ("help", "metavar", "choices", "suggest", "type") plus what a hand-declared
option said in its declaration ("flags", "argument", "min", "show_default"; see ``flag``), and
"check", how a value is checked. Each dataclass checks its values in ``__post_init__``: first
what each flag's declaration says (``check_flags``: choices, "check"), then the ranges and what
combines several flags, with errors that name the flag: ``invalid --top-k: 0 (must be >= 1)``.
So a command receives settings that are already valid, whether they came from the command line or
from Python.

No typer, rich or torch here: ``gptcli --help`` builds every command's options from these.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from dataclasses import MISSING, field
from pathlib import Path
from typing import Any

from gptcli.config import (
    DEVICE_CHOICES,
    DEVICE_NAMES,
    DTYPES,
    ENCODING_ERRORS,
    INPUT_FORMATS,
    flag_fields,
    is_device_name,
)
from gptcli.errors import UsageError


def flag(
    default: Any = MISSING,
    *,
    help: str,
    flags: tuple[str, ...] | None = None,
    metavar: str | None = None,
    choices: tuple[str, ...] | None = None,
    suggest: tuple[str, ...] | None = None,
    argument: bool = False,
    min: int | None = None,
    show_default: bool = True,
    type: type | None = None,
    check: Callable[[Any], None] | None = None,
) -> Any:
    """A settings field that is a flag. ``flags``: its spellings, as Typer declares them
    (``("--output", "--out", "-o")``, ``("--stream/--no-stream",)``) [default: ``--field-name``];
    ``argument``: a positional argument instead (a list field takes several); ``choices``: the only
    values it takes (``--help`` lists them); ``suggest``: values ``--help`` lists and completion
    offers, leaving the check to ``__post_init__`` (``--device`` takes cuda:N too); ``min``: the
    least integer the parser takes; ``show_default``: whether ``--help`` adds "[default: ...]"
    (off where the help text says it; a None default never shows); ``type``: the command-line type where it differs from the
    field's (a count typed as text, "100M", and read into an int); ``check``: what checks a value
    given from Python, as ``check_flags`` runs it (``check_device``). A field without a default
    is required."""
    metadata = {"help": help, "flags": flags, "metavar": metavar, "choices": choices, "suggest": suggest}
    metadata |= {"argument": argument, "min": min, "show_default": show_default, "type": type, "check": check}
    return field(default=default, metadata={k: v for k, v in metadata.items() if v is not None})


def invalid(flag_name: str, detail: str) -> UsageError:
    """The error of a bad flag value, worded as TrainConfig's: ``invalid --top-k: 0 (must be >= 1)``."""
    return UsageError(f"invalid {flag_name}: {detail}")


def check_choice(flag_name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise invalid(flag_name, f"{value!r} (choose from {', '.join(choices)})")


def check_device(device: str) -> None:
    if not isinstance(device, str) or not is_device_name(device):
        raise invalid("--device", f"{device!r} (choose from {DEVICE_CHOICES})")


def check_text_field(text_field: str | None) -> None:
    """``--text-field`` given must name a field (whether the inputs have it, the command checks)."""
    if text_field is not None and not text_field:
        raise invalid("--text-field", "'' (must not be empty)")


def check_threads(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise invalid("--threads", f"{threads} (must be >= 1)")


def flag_name(f: dataclasses.Field) -> str:
    """How errors name field ``f``'s flag: its first spelling (``--output`` of -o/--out/--output)."""
    flags = f.metadata.get("flags")
    return flags[0].split("/")[0] if flags else "--" + f.name.replace("_", "-")


def check_flags(settings: Any) -> None:
    """What every settings dataclass's ``__post_init__`` does first: paths given as text become
    Paths (``coerce_paths``), and each flag's own declaration is checked, in field order: a value
    outside its "choices" (None, where a flag may be left out, passes) and its "check". The parser
    enforces choices already; Python callers get the same errors."""
    coerce_paths(settings)
    for f in flag_fields(type(settings)):
        value = getattr(settings, f.name)
        if "choices" in f.metadata and value is not None:
            check_choice(flag_name(f), value, f.metadata["choices"])
        if "check" in f.metadata:
            f.metadata["check"](value)


# The flags several commands share.


def json_flag() -> Any:
    return flag(False, flags=("--json",), help="Print machine-readable JSON.")


def quiet_flag(help: str = "No progress output.") -> Any:
    return flag(False, flags=("--quiet", "-q"), help=help)


THREADS_HELP = "CPU threads for PyTorch [default: PyTorch's choice, one per core]; 1 is often faster on a busy machine."


def threads_flag(help: str = THREADS_HELP) -> Any:
    """``--threads N`` (one owner: gptcli.device.set_threads)."""
    return flag(None, help=help, metavar="N", min=1, check=check_threads)


DTYPE_HELP = (
    "Weights' dtype: fp32 (exactly the reference), bf16 (faster on CPUs with native bf16; greedy text drifts from "
    "fp32's after a while), int8 (CPU only: int8 matrices, a quarter of fp32's bytes; drifts sooner) or auto "
    "(bf16 where native on CPU, else fp32)."
)


def dtype_flag(help: str = DTYPE_HELP) -> Any:
    """``--dtype`` of the commands that run a model (one owner of the choices: gptcli.config.DTYPES)."""
    return flag("fp32", choices=DTYPES, help=help)


def device_flag() -> Any:
    """``--device``: the usual names listed and completed; cuda:N accepted too (check_device)."""
    return flag(
        "auto",
        help="Where to run: auto picks a GPU if there is one; cuda:N picks one of several.",
        suggest=DEVICE_NAMES,
        check=check_device,
    )


def checkpoint_flag(
    help: str = "Checkpoint or run directory [default: the most recent run].", *, metavar: str = "PATH"
) -> Any:
    """``-c/--checkpoint``: a checkpoint file or a run directory."""
    return flag(None, flags=("--checkpoint", "-c"), metavar=metavar, help=help)


def model_flag() -> Any:
    return flag(None, metavar="NAME", help="gpt2-124M etc. (downloaded) or a converted .pth, instead of --checkpoint.")


def output_flag(help: str, *, metavar: str = "FILE") -> Any:
    """``-o/--out/--output``: the file (or folder) a command writes."""
    return flag(None, flags=("--output", "--out", "-o"), metavar=metavar, help=help)


def arguments_flag(metavar: str, help: str) -> Any:
    """The positional arguments (none, one or several) a command reads: files, runs, texts."""
    return flag(None, argument=True, metavar=metavar, help=help)


# The flags of the commands that read text inputs (eval, prepare), checked as train checks its own.


def format_flag() -> Any:
    return flag("auto", choices=INPUT_FORMATS, help="Format of every input; auto detects each from its name.")


def text_field_flag(help: str) -> Any:
    return flag(None, metavar="NAME", help=help, check=check_text_field)


def encoding_errors_flag() -> Any:
    return flag("strict", choices=ENCODING_ERRORS, help="What to do with undecodable bytes.")


@functools.cache
def _path_fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """The fields of ``cls`` that hold a path, or a list of paths (True)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        if Path in args:
            out.append((f.name, False))
        elif any(typing.get_origin(a) is list and typing.get_args(a) == (Path,) for a in args):
            out.append((f.name, True))
    return tuple(out)


def coerce_paths(settings: Any) -> None:
    """Paths given as text, as a Python caller may, become Paths (the parser makes them already)."""
    for name, many in _path_fields(type(settings)):
        value = getattr(settings, name)
        if value is not None:
            setattr(settings, name, [Path(v) for v in value] if many else Path(value))
