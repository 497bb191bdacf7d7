"""``gptcli prepare``: tokenize inputs of any supported format once into llm.c-format shards,
so many training runs (gptcli's, llm.c's) read the ids as memory maps instead of re-tokenizing."""

from __future__ import annotations

import json
import signal
from typing import Any

from gptcli import console
from gptcli.errors import GptCliError
from gptcli.settings.prepare import PrepareSettings


class Terminated(GptCliError):
    """SIGTERM stopped ``prepare``: raised in the main thread, so that its clean-up runs (the
    temporary token file and any shard already written are removed). Exit 128 + 15, as a
    process killed by SIGTERM."""

    exit_code = 128 + signal.SIGTERM


def _terminate(signum, frame) -> None:
    raise Terminated("SIGTERM: prepare stopped; its temporary file and any shard it had written are removed")


def prepare_command(s: PrepareSettings) -> dict[str, Any]:
    console.set_quiet(s.quiet)
    format = None if s.format == "auto" else s.format  # auto: each input's format from its name
    if s.text_field is not None:  # given: some input must hold records (formats.check_text_field)
        from gptcli.formats import check_text_field, resolve_inputs

        check_text_field(resolve_inputs(s.inputs, format=format), s.text_field)
    old = signal.signal(signal.SIGTERM, _terminate)
    try:
        result = _prepare(s, format)
    finally:
        signal.signal(signal.SIGTERM, old)
    if s.json_out:
        console.print_result(json.dumps(result))
    else:
        console.print_result(
            f"{result['dir']}: {result['tokens']:,} tokens from {len(result['inputs'])} input(s): "
            f"{result['train_tokens']:,} train in {len(result['train_shards'])} shard(s), "
            f"{result['val_tokens']:,} val in {len(result['val_shards'])} shard(s)"
        )
    return result


def _prepare(s: PrepareSettings, format: str | None) -> dict[str, Any]:
    from gptcli.shards import prepare
    from gptcli.tokencache import default_threads

    with console.step_progress("tokenizing", None) as prog:
        task = prog.add_task("tokenize", total=None)
        return prepare(
            s.inputs,
            s.out,
            format=format,
            text_field=s.text_field or "text",
            errors=s.encoding_errors,
            shard_size=s.shard_size,
            val_ratio=s.val_ratio,
            val_tokens=s.val_tokens,
            num_threads=s.threads or default_threads(),
            on_progress=lambda chars: prog.update(task, completed=chars),
        )
