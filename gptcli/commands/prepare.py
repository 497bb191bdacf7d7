"""``gptcli prepare``: tokenize inputs of any supported format once into llm.c-format shards,
so many training runs (gptcli's, llm.c's) read the ids as memory maps instead of re-tokenizing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.config import ENCODING_ERRORS
from gptcli.errors import UsageError
from gptcli.units import count_flag


def prepare_command(
    inputs: list[str],
    *,
    out: Path,
    format: str | None = None,
    text_field: str | None = None,
    shard_size: str | int = "100M",
    val_ratio: float = 0.1,
    val_tokens: str | int | None = None,
    encoding_errors: str = "strict",
    threads: int | None = None,
    json_out: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    from gptcli.shards import prepare
    from gptcli.tokencache import default_threads

    console.set_quiet(quiet)
    if encoding_errors not in ENCODING_ERRORS:
        raise UsageError(f"invalid --encoding-errors: {encoding_errors!r} (choose from {', '.join(ENCODING_ERRORS)})")
    size = count_flag(shard_size, "--shard-size")
    if size < 1:
        raise UsageError(f"invalid --shard-size: {shard_size!r} (must be at least 1)")
    if not 0.0 <= val_ratio < 1.0:
        raise UsageError(f"invalid --val-ratio: {val_ratio} (must be at least 0 and below 1)")
    n_val = None if val_tokens is None else count_flag(val_tokens, "--val-tokens")
    format = None if format in (None, "auto") else format  # auto: each input's format from its name
    if text_field is not None:  # given: some input must hold records (formats.check_text_field)
        from gptcli.formats import check_text_field, resolve_inputs

        if not text_field:
            raise UsageError("invalid --text-field: '' (must not be empty)")
        check_text_field(resolve_inputs(inputs, format=format), text_field)
    with console.step_progress("tokenizing", None) as prog:
        task = prog.add_task("tokenize", total=None)
        result = prepare(
            inputs,
            Path(out),
            format=format,
            text_field=text_field or "text",
            errors=encoding_errors,
            shard_size=size,
            val_ratio=val_ratio,
            val_tokens=n_val,
            num_threads=threads or default_threads(),
            on_progress=lambda chars: prog.update(task, completed=chars),
        )
    if json_out:
        console.print_result(json.dumps(result))
    else:
        console.print_result(
            f"{result['dir']}: {result['tokens']:,} tokens from {len(result['inputs'])} input(s): "
            f"{result['train_tokens']:,} train in {len(result['train_shards'])} shard(s), "
            f"{result['val_tokens']:,} val in {len(result['val_shards'])} shard(s)"
        )
    return result
