"""Reading input text files: expanding directories, decoding UTF-8 with checks, joining documents.

The one place that opens a user's text: the in-memory path (``read_corpus``) and the token cache's
streaming path (``iter_file_text``) share the same checks and messages.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from gptcli.errors import DataError
from gptcli.tokenizer import EOT_TOKEN

_NUL_CHECK_BYTES = 1 << 20  # a NUL byte in the first 1 MiB marks a binary file
_READ_BLOCK = 16 * 2**20


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every ``*.txt`` under each directory, sorted."""
    if not paths:
        raise DataError("no input text given")
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*.txt") if q.is_file())
            if not found:
                raise DataError(f"{p}: directory contains no .txt files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists():
            raise DataError(f"{p}: not a regular file")
        else:
            raise DataError(f"{p}: file not found")
    return files


def iter_file_text(
    path: Path, errors: str, block_bytes: int, on_raw: Callable[[bytes], None] | None = None
) -> Iterator[str]:
    """Decoded text of one file, block by block. Undecodable bytes fail by default, naming the
    file and byte offset; a NUL byte in the first MiB means a binary file; an empty or
    whitespace-only file is an error."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = chars = 0
    seen_text = False
    try:
        f = open(path, "rb")  # closed in the finally below
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        while True:
            try:
                raw = f.read(block_bytes)
            except OSError as e:
                raise DataError(f"{path}: cannot read ({e.strerror})") from None
            if errors == "strict" and offset < _NUL_CHECK_BYTES:
                nul = raw.find(b"\x00", 0, _NUL_CHECK_BYTES - offset)
                if nul >= 0:
                    raise DataError(
                        f"{path}: looks like a binary file (NUL byte at offset {offset + nul}); "
                        "pass --encoding-errors replace to read it anyway"
                    )
            if on_raw is not None and raw:
                on_raw(raw)
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path}: not valid UTF-8 at byte offset {offset - pending + e.start}; "
                    "use --encoding-errors replace|ignore to read it anyway"
                ) from None
            offset += len(raw)
            if text:
                chars += len(text)
                seen_text = seen_text or bool(text.strip())
                yield text
            if not raw:
                break
    finally:
        f.close()
    if not seen_text:
        raise DataError(f"{path}: file is empty" if chars == 0 else f"{path}: file contains only whitespace")


def read_text(path: Path, *, errors: str = "strict") -> str:
    """One UTF-8 file's text, with ``iter_file_text``'s checks."""
    return "".join(iter_file_text(Path(path), errors, _READ_BLOCK))


def read_corpus(paths: Sequence[str | Path], *, errors: str = "strict") -> str:
    """All files' text, documents separated by ``<|endoftext|>`` as in GPT-2's training data."""
    return EOT_TOKEN.join(read_text(f, errors=errors) for f in expand_paths(paths))
