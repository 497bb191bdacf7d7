"""Reading input text files: expanding directories, decoding UTF-8 with checks, joining documents.

The one place that opens a user's text: the in-memory path (``read_corpus``) and the token cache's
streaming path (``iter_file_text``) share the same checks and messages.
"""

from __future__ import annotations

import codecs
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from gptcli.errors import DataError
from gptcli.tokenizer import EOT_TOKEN, mask_literal_eot

_NUL_CHECK_BYTES = 1 << 20  # a NUL byte in the first 1 MiB marks a binary file
_READ_BLOCK = 16 * 2**20


def _stat(p: Path) -> os.stat_result | None:
    """``os.stat(p)``, None where nothing is there; a symlink loop is a DataError naming ``p``
    (``Path.exists()`` would call a loop "not there", and the message would say "not found")."""
    try:
        return os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{p}: symlink loop (too many levels of symbolic links)") from None
        if e.errno in (errno.ENOENT, errno.ENOTDIR):
            return None
        raise DataError(f"{p}: cannot read ({e.strerror})") from None


def _txt_files_under(directory: Path) -> list[Path]:
    """Every regular ``*.txt`` file under ``directory``, sorted; a looping link among them is an
    error (symlinked directories are not followed, so a link to a parent cannot recurse)."""
    found = []
    try:
        candidates = sorted(directory.rglob("*.txt"))
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{e.filename or directory}: symlink loop (too many levels of symbolic links)") from None
        raise DataError(f"{directory}: cannot list ({e.strerror})") from None
    for q in candidates:
        st = _stat(q)
        if st is not None and stat.S_ISREG(st.st_mode):
            found.append(q)
    return found


def expand_paths(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, and every ``*.txt`` under each directory, sorted."""
    if not paths:
        raise DataError("no input text given")
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        st = _stat(p)
        if st is None:
            raise DataError(f"{p}: file not found")
        if stat.S_ISDIR(st.st_mode):
            found = _txt_files_under(p)
            if not found:
                raise DataError(f"{p}: directory contains no .txt files")
            files.extend(found)
        elif stat.S_ISREG(st.st_mode):
            files.append(p)
        else:
            raise DataError(f"{p}: not a regular file")
    return files


def iter_file_text(
    path: Path, errors: str, block_bytes: int, on_raw: Callable[[bytes], None] | None = None
) -> Iterator[str]:
    """Decoded text of one file, block by block, with ``decode_stream``'s checks."""
    try:
        f = open(path, "rb")  # closed in the finally below
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"{path}: symlink loop (too many levels of symbolic links)") from None
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        yield from decode_stream(f, str(path), errors, block_bytes, on_raw=on_raw)
    finally:
        f.close()


def decode_stream(
    f: BinaryIO, name: str, errors: str, block_bytes: int, *, on_raw: Callable[[bytes], None] | None = None
) -> Iterator[str]:
    """Decoded text of a byte stream (a file, or a decompressed one), block by block. Undecodable
    bytes fail by default, naming ``name`` and the byte offset; a NUL byte in the first MiB means
    a binary file; an empty or whitespace-only stream is an error. A literal ``<|endoftext|>`` in
    the text comes as ``tokenizer.LITERAL_EOT`` (document text, not a separator), even across blocks."""
    return _mask_literals(_decode_blocks(f, name, errors, block_bytes, on_raw=on_raw))


def _mask_literals(pieces: Iterator[str]) -> Iterator[str]:
    carry = ""  # the end of the text so far while it could begin an <|endoftext|>
    for piece in pieces:
        text = mask_literal_eot(carry + piece)
        keep = next((k for k in range(min(len(EOT_TOKEN) - 1, len(text)), 0, -1) if text.endswith(EOT_TOKEN[:k])), 0)
        carry = text[len(text) - keep :] if keep else ""
        text = text[: len(text) - keep]
        if text:
            yield text
    if carry:
        yield carry


def _decode_blocks(
    f: BinaryIO, name: str, errors: str, block_bytes: int, *, on_raw: Callable[[bytes], None] | None = None
) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors=errors)
    offset = chars = 0
    seen_text = False
    while True:
        try:
            raw = f.read(block_bytes)
        except OSError as e:
            raise DataError(f"{name}: cannot read ({e.strerror})") from None
        if errors == "strict" and offset < _NUL_CHECK_BYTES:
            nul = raw.find(b"\x00", 0, _NUL_CHECK_BYTES - offset)
            if nul >= 0:
                raise DataError(
                    f"{name}: looks like a binary file (NUL byte at offset {offset + nul}); "
                    "pass --encoding-errors replace to read it anyway"
                )
        if on_raw is not None and raw:
            on_raw(raw)
        pending = len(decoder.getstate()[0])
        try:
            text = decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise DataError(
                f"{name}: not valid UTF-8 at byte offset {offset - pending + e.start}; "
                "use --encoding-errors replace|ignore to read it anyway"
            ) from None
        offset += len(raw)
        if text:
            chars += len(text)
            seen_text = seen_text or bool(text.strip())
            yield text
        if not raw:
            break
    if not seen_text:
        raise DataError(f"{name}: file is empty" if chars == 0 else f"{name}: file contains only whitespace")


def read_text(path: Path, *, errors: str = "strict") -> str:
    """One UTF-8 file's text, with ``iter_file_text``'s checks."""
    return "".join(iter_file_text(Path(path), errors, _READ_BLOCK))


def read_corpus(paths: Sequence[str | Path], *, errors: str = "strict") -> str:
    """All files' text, documents separated by ``<|endoftext|>`` as in GPT-2's training data."""
    return EOT_TOKEN.join(read_text(f, errors=errors) for f in expand_paths(paths))
