"""``gptcli prepare``: tokenize inputs of any supported format once into llm.c-format shards,
so many training runs (gptcli's, llm.c's) read the ids as memory maps instead of re-tokenizing."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.errors import GptCliError, SaveError, os_error_reason
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
        result = _write_shards(s, format)
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


def _write_shards(s: PrepareSettings, format: str | None) -> dict[str, Any]:
    """Tokenize into -o; on a failed write (a read-only or full disk) one line, and nothing of
    this run left behind."""
    from gptcli.shards import prepare
    from gptcli.tokencache import default_threads

    made = _missing_ancestor(s.out)
    before = set(s.out.glob("*.bin")) if s.out.is_dir() else set()
    try:
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
    except OSError as e:  # a read-only or full disk: one line, and nothing of this run left behind
        _discard(s.out, made, keep=before)
        raise SaveError(f"{s.out}: could not write the shards ({os_error_reason(e)})") from None


def _missing_ancestor(path: Path) -> Path | None:
    """The outermost of ``path`` and its parents that does not exist yet (what a run would create)."""
    made = None
    for p in (path, *path.parents):
        if p.exists() or p.is_symlink():
            break
        made = p
    return made


def _discard(out: Path, made: Path | None, *, keep: set[Path]) -> None:
    """After a failed write: the shards it wrote (any but those in ``keep``, there before), and
    the folders it created, if they are empty."""
    try:
        for p in set(out.glob("*.bin")) - keep:
            p.unlink(missing_ok=True)
        if made is not None:
            for d in (out, *out.parents):
                if d.is_dir():  # the shards' own clean-up may have removed it already
                    d.rmdir()  # stops at the first folder that is not empty (OSError)
                if d == made:
                    break
    except OSError:
        pass  # the write's own error is the one to report
