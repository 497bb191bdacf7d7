"""Typer options generated from dataclass fields: the one way every command gets its flags.

A field whose metadata has "help" is a flag (``gptcli.config.flag_fields``); ``option`` turns it
into the parameter Typer reads, and the decorators below give a command those parameters:

- ``settings_command(app, Settings)``: a command whose every flag is a field of its settings
  dataclass (``gptcli.settings``). The function receives ``Settings(**flags)``, so the
  dataclass's ``__post_init__`` checks the values before the command runs.
- ``with_flags(*layout, options=...)``: ``train`` and ``finetune``, whose flags are the fields of
  run configs *layered* over a config file or a checkpoint: each flag defaults to None (not
  given), and its help text says the default the config applies.

The metadata keys are those ``gptcli.config.flag_fields`` and ``gptcli.settings.flag`` describe.
Typer reads a command's parameters through ``inspect.signature`` and ``typing.get_type_hints``,
so the generated parameters go into ``__signature__`` and ``__annotations__``.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from typer.core import TyperArgument

from gptcli.config import flag_fields

_KEYWORD = inspect.Parameter.KEYWORD_ONLY

# --------------------------------------------------------------------------------------------
# How values are shown in --help


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


def words_for_values(group: Any) -> None:
    """Show every value as a word, in every command and sub-command: positional arguments as
    ``FILE...``/``[RUN]``, and options without a metavar of their own by their type (``N``, ``X``)."""
    for command in group.commands.values():
        if getattr(command, "commands", None):
            words_for_values(command)
        for param in command.params:
            if type(param) is TyperArgument:
                param.__class__ = _WordArgument
            elif not getattr(param, "is_flag", False) and param.metavar is None:
                word = _value_word(param)
                if word is not None:
                    param.metavar = word


def _word(kind: Any) -> str | None:
    """The metavar of a layered config flag of type ``kind``: a word, not a Python type (None for a
    choice or a flag, which Typer shows as the list of choices or nothing)."""
    return {int: "N", float: "X", str: "TEXT", Path: "FILE"}.get(kind)


def listing(values: Sequence[str]) -> str:
    """Values shown as Typer shows a choice's."""
    return "<" + "|".join(values) + ">"


def completer(values: Sequence[str]) -> Callable[..., list[str]]:
    """Shell completion offering ``values`` (those without a placeholder such as cuda:N)."""

    def complete(ctx: typer.Context, args: list[str], incomplete: str) -> list[str]:
        return [v for v in values if v.startswith(incomplete) and not v.endswith(":N")]

    return complete


def _shown_default(f: dataclasses.Field) -> str | None:
    """The "[default: ...]" text of a layered config flag: its metadata's default_text, else its value."""
    if "default_text" in f.metadata:
        return f.metadata["default_text"]
    value = f.default
    if value is None or value is dataclasses.MISSING:
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


# --------------------------------------------------------------------------------------------
# One field -> one parameter


def _bare(hint: Any) -> Any:
    """The type a field holds, without its ``| None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return None if f.default_factory is not dataclasses.MISSING else inspect.Parameter.empty


def option(
    f: dataclasses.Field,
    hint: Any,
    panels: dict[str, str] | None = None,
    *,
    layered: bool = False,
    numbers_as_typed: bool = False,
) -> inspect.Parameter:
    """The parameter (an option, or with metadata "argument" a positional argument) of one field.

    Metadata "flags" spells it (default ``--field-name``; ``--x/--no-x`` for a bool that defaults
    to None, not given), "choices" makes it a choice (a Literal), "suggest" lists values without
    enforcing them, "metavar" names its value, "min" is the least integer it takes, "panel" its
    ``--help`` group in ``panels``. ``layered``: a run config's field, which defaults to None so
    that the config file's value or the dataclass default applies (or to metadata "flag_default"
    where the command line's default differs from the dataclass's), with that default in its help
    text. ``numbers_as_typed``: a float flag hands its text to the config's validation layer (which
    reads numbers from text), so that an error echoes ``--lr -1`` as typed, not as -1.0."""
    md = f.metadata
    kind = md.get("type") or _bare(hint)
    if "choices" in md:
        kind = Literal[tuple(md["choices"])]
    help_text, show_default = md["help"], md.get("show_default", True)
    if layered:
        default, word = md.get("flag_default"), md.get("metavar", _word(kind))
        if (shown := _shown_default(f)) is not None:
            help_text = f"{help_text.removesuffix('.')} [default: {shown}]."
        show_default = False
    else:
        default, word = _field_default(f), md.get("metavar")
    if numbers_as_typed and kind is float:
        kind = str
    suggest = md.get("suggest")
    shown = {"help": help_text, "show_default": show_default, "metavar": listing(suggest) if suggest else word}
    if md.get("argument"):
        info = typer.Argument(**shown)
    else:
        name = f.name.replace("_", "-")
        flags = md.get("flags") or ((f"--{name}/--no-{name}" if kind is bool and default is None else f"--{name}"),)
        extra = {"min": md["min"]} if md.get("min") is not None else {}
        if panels is not None and "panel" in md:
            extra["rich_help_panel"] = panels[md["panel"]]
        info = typer.Option(*flags, **shown, autocompletion=completer(suggest) if suggest else None, **extra)
    optional = default is None or layered
    return inspect.Parameter(
        f.name, _KEYWORD, default=default, annotation=Annotated[Optional[kind] if optional else kind, info]
    )


def _set_parameters(func: Callable[..., Any], params: list[inspect.Parameter]) -> None:
    func.__signature__ = inspect.Signature(params, return_annotation=None)  # type: ignore[attr-defined]
    func.__annotations__ = {**{p.name: p.annotation for p in params}, "return": None}


# --------------------------------------------------------------------------------------------
# Commands whose flags are a settings dataclass's fields


def examples_epilog(examples: Sequence[str]) -> str | None:
    """A command's ``--help`` epilog: its example command lines, one paragraph each."""
    return "Examples:\n\n" + "\n\n".join(f"  {e}" for e in examples) if examples else None


def settings_command(
    app: typer.Typer,
    cls: type,
    *,
    name: str | None = None,
    help: str | None = None,
    examples: Sequence[str] = (),
) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Register ``func(settings)`` as command ``name`` (default: the function's name) of ``app``,
    with a flag for every field of the settings dataclass ``cls``, in field order, and ``help``
    (default: the function's docstring). A flag not given (None) leaves the field at its default."""

    def decorate(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
        hints = typing.get_type_hints(cls)

        def command(**flags: Any) -> Any:
            return func(cls(**{k: v for k, v in flags.items() if v is not None}))

        command.__name__, command.__qualname__, command.__doc__ = func.__name__, func.__qualname__, help or func.__doc__
        command.__module__ = func.__module__
        _set_parameters(command, [option(f, hints[f.name]) for f in flag_fields(cls)])
        app.command(name=name, epilog=examples_epilog(examples))(command)
        return func

    return decorate


# --------------------------------------------------------------------------------------------
# train and finetune: flags layered over a config file or a checkpoint


def layered_options(
    fields: Sequence[tuple[dataclasses.Field, Any]], panels: dict[str, str], *, numbers_as_typed: bool = False
) -> dict[str, tuple[dataclasses.Field, inspect.Parameter]]:
    """Each (field, type hint)'s layered option, by field name, for ``with_flags``."""
    return {f.name: (f, option(f, hint, panels, layered=True, numbers_as_typed=numbers_as_typed)) for f, hint in fields}


def with_flags(
    *layout: str, options: dict[str, tuple[dataclasses.Field, inspect.Parameter]]
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add ``options`` (each field's and its option's, from ``layered_options``) to a command
    taking ``**flags``. ``layout`` orders ``--help``: the command's own parameters and pinned
    fields by name, and "<panel>" for the remaining fields of that panel in field order."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        own = {
            p.name: p.replace(kind=_KEYWORD)
            for p in inspect.signature(func, eval_str=True).parameters.values()
            if p.kind is not inspect.Parameter.VAR_KEYWORD
        }
        params = []
        for item in layout:
            if item.startswith("<"):
                panel = item.strip("<>")
                params += [p for n, (f, p) in options.items() if f.metadata["panel"] == panel and n not in layout]
            else:
                params.append(own[item] if item in own else options[item][1])
        missing = (set(own) | set(options)) - {p.name for p in params}
        if missing or len(params) != len({p.name for p in params}):
            raise RuntimeError(f"{func.__name__}: layout {layout} misses or repeats parameters ({sorted(missing)})")
        _set_parameters(func, params)
        return func

    return decorate
