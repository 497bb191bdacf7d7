"""Documents from input files in the formats corpora come in, streamed in bounded memory.

A *document* is one ``.txt``/``.md`` file, one JSON record, one CSV/TSV row or one Parquet row;
documents are joined by ``<|endoftext|>`` as in GPT-2's own training data, so the same documents
give the same token stream whichever format holds them (tests/test_formats.py checks it).

* The format comes from the name (``data.jsonl.gz`` is gzip-compressed JSON Lines), or from
  ``--format`` for every input; a name with no known extension is plain text, as before.
* ``.jsonl``/``.json`` and ``.csv``/``.tsv`` take the text from ``--text-field`` (default
  ``text``); a ``.json`` file that starts with ``[`` is one array of records (read whole: use
  JSON Lines for large data), otherwise it is read as JSON Lines. A record may also be a bare string.
* ``.parquet`` is read with pyarrow (``pip install 'gptcli[data]'``) one record batch at a time,
  only the text column, so a file larger than memory streams.
* ``.gz``, ``.bz2``, ``.xz`` (standard library) and ``.zst`` (``zstandard``, same extra) are
  decompressed on the fly; globs (``'data/*.jsonl.gz'``) expand here, sorted; ``-`` is stdin.
* Empty records are skipped (real corpora have them); an input with no document at all, a
  missing field, a non-string value or invalid UTF-8 is one ``DataError`` naming the file and
  the line or row.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import io
import lzma
import sys
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gptcli import jsontext
from gptcli.errors import DataError, UsageError
from gptcli.paths import display_path
from gptcli.textfiles import decode_stream, expand_paths, iter_file_text
from gptcli.tokenizer import EOT_TOKEN, mask_literal_eot

FORMATS = ("txt", "jsonl", "json", "csv", "tsv", "parquet")
RECORD_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")  # the formats --text-field applies to
_EXTENSIONS = {
    ".txt": "txt",
    ".md": "txt",
    ".jsonl": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
}
COMPRESSIONS = {".gz": "gzip", ".bz2": "bzip2", ".xz": "xz", ".zst": "zstd"}
# How each compressed stream starts (bzip2: "BZh", the block size, then a block's or the end's magic).
_MAGIC = {"gzip": (b"\x1f\x8b",), "xz": (b"\xfd7zXZ\x00",), "zstd": (b"\x28\xb5\x2f\xfd",)}
_SNIFF_BYTES = 16
_BZIP2_MAGICS = (b"1AY&SY", b"\x17\x72\x45\x38\x50\x90")
_GLOB_CHARS = set("*?[")
_BLOCK = 4 * 2**20
_NUL_CHECK_BYTES = 1 << 20
_UTF8_BOM = b"\xef\xbb\xbf"
_PARQUET_BATCH_ROWS = 1024
DATA_EXTRA = "pip install 'gptcli[data]'"


@dataclass(frozen=True)
class Input:
    """One input: a file (or stdin, ``path is None``), its format and its compression."""

    path: Path | None
    format: str
    compression: str | None = None

    def __str__(self) -> str:
        return "<stdin>" if self.path is None else str(self.path)

    @property
    def plain_text(self) -> bool:
        """An uncompressed text file on disk: read exactly as ``textfiles`` always has."""
        return self.path is not None and self.format == "txt" and self.compression is None


def detect(name: str | Path) -> tuple[str, str | None]:
    """(format, compression) from a file name: ``a.jsonl.zst`` -> ("jsonl", "zstd"). Names with no
    known extension are plain text."""
    suffixes = [s.lower() for s in Path(name).suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    fmt = _EXTENSIONS.get(suffixes[-1], "txt") if suffixes else "txt"
    return fmt, compression


def check_format(fmt: str | None) -> str | None:
    if fmt is None:
        return None
    f = fmt.lower().lstrip(".")
    f = "txt" if f in ("text", "md") else f
    if f not in FORMATS:
        raise UsageError(f"invalid --format: {fmt!r} (choose from {', '.join(FORMATS)})")
    return f


def sniff_compression(head: bytes) -> str | None:
    """The compression whose magic bytes ``head`` starts with (gzip, bzip2, xz, zstd), or None:
    standard input has no name to tell it by."""
    for name, magics in _MAGIC.items():
        if head.startswith(magics):
            return name
    if len(head) >= 10 and head[:3] == b"BZh" and head[3:4] in b"123456789" and head[4:10] in _BZIP2_MAGICS:
        return "bzip2"
    return None


def check_text_field(inputs: Sequence[Input], text_field: str, *, flag: str = "--text-field") -> None:
    """A ``--text-field`` given explicitly must be used by some input: one of JSON, CSV, TSV or
    Parquet. With only plain text it would be ignored, so it is refused, since it usually means the
    records' format was not recognised (``data.ndjson`` reads as text without ``--format jsonl``)."""
    if any(i.format in RECORD_FORMATS for i in inputs):
        return
    first = (display_path(inputs[0].path) if inputs[0].path is not None else "<stdin>") if inputs else "every input"
    more = f" (and {len(inputs) - 1} more)" if len(inputs) > 1 else ""
    raise UsageError(
        f"invalid {flag} {text_field!r}: no input holds records (JSON, CSV, TSV or Parquet); {first}{more} is "
        "read as plain text. If it holds records, say their format with --format jsonl (or json, csv, tsv, parquet)"
    )


def _other_formats_hint(directory: Path) -> str:
    """For a directory without .txt files: which supported files it holds instead, and how to
    read them (``--format``, or a quoted glob), or "" when it holds none."""
    try:
        files = sorted(q for q in directory.rglob("*") if q.is_file())
    except OSError:
        return ""
    found: dict[str, tuple[str, Path]] = {}  # format -> (suffixes, first file) of each format found
    for q in files:
        fmt, compression = detect(q)
        exts = [x.lower() for x in q.suffixes[-2 if compression else -1 :]]
        suffixes = "".join(exts)
        if fmt != "txt" or (exts and exts[0] in (".txt", ".md")):  # .md, .txt.gz: text, but not *.txt
            found.setdefault(fmt if fmt != "txt" else suffixes, (suffixes, q))
    if not found:
        return ""
    suffix, first = next(iter(found.values()))
    where = display_path(directory)
    pattern = f"'{where}/{'**/' if first.parent != directory else ''}*{suffix}'"
    formats = [f for f in found if f in FORMATS]
    held = " and ".join(x for x, _ in found.values())
    if not formats:
        return f"it holds {held} files: give a quoted glob such as {pattern}"
    read = (
        f"read them with --format {formats[0]}"
        if len(found) == 1
        else f"read one format with --format {' or '.join(formats)}"
    )
    return f"it holds {held} files: {read}, or give a quoted glob such as {pattern}"


def resolve_inputs(paths: Sequence[str | Path], *, format: str | None = None) -> list[Input]:
    """Every input file in order: globs expanded (sorted), directories expanded to their ``*.txt``
    files (or, with ``format``, to the files of that format), ``-`` as stdin."""
    fmt = check_format(format)
    if not paths:
        raise DataError("no input given")
    out: list[Input] = []
    for raw in paths:
        s = str(raw)
        if s == "-":
            if any(i.path is None for i in out):
                raise UsageError("'-' (standard input) given twice")
            out.append(Input(None, fmt or "txt"))
            continue
        p = Path(s)
        if not p.exists() and _GLOB_CHARS & set(s):
            matches = sorted(m for m in glob.glob(s, recursive=True) if Path(m).is_file())
            if not matches:
                raise DataError(f"{s}: no files match")
            files = [Path(m) for m in matches]
        elif fmt not in (None, "txt") and p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and detect(q)[0] == fmt)
            if not files:
                raise DataError(f"{p}: directory contains no {fmt} files")
        else:
            try:
                files = expand_paths([p])  # the same checks and messages as the .txt path
            except DataError:
                hint = _other_formats_hint(p) if p.is_dir() else ""
                if hint:
                    raise DataError(f"{display_path(p)}: directory contains no .txt files; {hint}") from None
                raise
        for f in files:
            detected, compression = detect(f)
            out.append(Input(f, fmt or detected, compression))
    return out


# ---------------------------------------------------------------------------------------------
# Opening: decompression and read errors


class _Checked(io.RawIOBase):
    """A byte stream whose read failures (a corrupt or truncated archive, an I/O error) become one
    DataError naming the input."""

    def __init__(self, inner: BinaryIO, name: str, what: str):
        self._inner, self._name, self._what = inner, name, what

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            data = self._inner.read(len(b))
        except Exception as e:  # gzip.BadGzipFile, EOFError, lzma.LZMAError, zstd.ZstdError, OSError...
            if isinstance(e, (OSError, EOFError, ValueError, lzma.LZMAError, zlib.error)) or "Zstd" in type(e).__name__:
                reason = getattr(e, "strerror", None) or str(e) or type(e).__name__
                raise DataError(f"{self._name}: cannot read {self._what} ({reason})") from None
            raise
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


class _Prefixed(io.RawIOBase):
    """``head`` (bytes already read from ``rest``), then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n], self._head = self._head[:n], self._head[n:]
            return n
        data = self._rest.read(len(b))
        b[: len(data)] = data
        return len(data)


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # to 0x184D2A5F: a skippable frame (4-byte magic, 4-byte size, data)


class _ZstdFrames(io.RawIOBase):
    """The compressed bytes of a ``.zst`` input, passed on unchanged while their frame structure is
    followed (RFC 8878: frame header, block headers, checksum), so that an input that ends inside a
    frame is a DataError. zstandard's stream reader returns what it decoded and stops, which would
    read a truncated download as shorter data (gzip, bzip2 and xz report it themselves)."""

    def __init__(self, inner: BinaryIO, name: str):
        self._inner, self._name = inner, name
        self._buf = b""  # header bytes gathered so far
        self._need = 4  # header bytes the current state needs
        self._skip = 0  # bytes to pass before the next header (a block's body, a checksum)
        self._state = "magic"
        self._checksum = False
        self._lost = False  # not zstd after all: the decompressor reports that itself

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self._inner.read(len(b))
        if data:
            if not self._lost:
                self._follow(memoryview(data))
        elif not self._lost and (self._state != "magic" or self._buf or self._skip):
            raise DataError(f"{self._name}: cannot read zstd data (truncated: the file ends inside a frame)")
        n = len(data)
        b[:n] = data
        return n

    def _follow(self, data: memoryview) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                step = min(self._skip, n - i)
                self._skip -= step
                i += step
                continue
            take = min(self._need - len(self._buf), n - i)
            self._buf += bytes(data[i : i + take])
            i += take
            if len(self._buf) == self._need:
                header, self._buf = self._buf, b""
                self._parse(header)
                if self._lost:
                    return

    def _parse(self, h: bytes) -> None:
        if self._state == "magic":
            magic = int.from_bytes(h, "little")
            if magic == _ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
                self._state, self._need = "skippable", 4
            else:
                self._lost = True
        elif self._state == "skippable":
            self._skip = int.from_bytes(h, "little")
            self._state, self._need = "magic", 4
        elif self._state == "descriptor":
            d = h[0]
            single_segment = (d >> 5) & 1
            self._checksum = bool((d >> 2) & 1)
            content_size = (single_segment, 2, 4, 8)[d >> 6]
            self._skip = (1 - single_segment) + (0, 1, 2, 4)[d & 3] + content_size
            self._state, self._need = "block", 3
        elif self._state == "block":
            v = int.from_bytes(h, "little")
            last, kind, size = v & 1, (v >> 1) & 3, v >> 3
            if kind == 3:
                self._lost = True
                return
            self._skip = 1 if kind == 1 else size  # an RLE block's body is its one byte
            if last:
                self._skip += 4 if self._checksum else 0
                self._state, self._need = "magic", 4

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            super().close()


def stdin_is_terminal() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError):  # closed, or replaced by an object without isatty
        return False


def refuse_terminal_stdin(example: str = "gptcli train -") -> None:
    """``-`` on a terminal would wait silently for typed text (and tokenize what Ctrl-D ends):
    a UsageError saying to pipe the text in instead."""
    if stdin_is_terminal():
        raise UsageError(
            f"'-' reads standard input, which is a terminal here: pipe the text in, e.g. cat FILE | {example}"
        )


def open_binary(inp: Input) -> BinaryIO:
    """The decompressed bytes of ``inp`` as a buffered stream (close it when done)."""
    name = str(inp)
    compression = inp.compression
    if inp.path is None:
        refuse_terminal_stdin("gptcli prepare - -o DIR")
        raw: BinaryIO = sys.stdin.buffer
        if compression is None:  # compressed data piped in: told by its first bytes, decompressed
            head = raw.read(_SNIFF_BYTES)
            compression = sniff_compression(head)
            raw = io.BufferedReader(_Prefixed(head, raw), buffer_size=_BLOCK)
    else:
        try:
            raw = open(inp.path, "rb")
        except OSError as e:
            raise DataError(f"{inp.path}: cannot read ({e.strerror})") from None
    what = "it"
    try:
        if compression == "gzip":
            raw, what = gzip.GzipFile(fileobj=raw, mode="rb"), "gzip data"
        elif compression == "bzip2":
            raw, what = bz2.BZ2File(raw, mode="rb"), "bzip2 data"
        elif compression == "xz":
            raw, what = lzma.LZMAFile(raw, mode="rb"), "xz data"
        elif compression == "zstd":
            try:
                import zstandard
            except ImportError:
                raise DataError(f"{name}: reading .zst files needs zstandard: {DATA_EXTRA}") from None
            framed = io.BufferedReader(_ZstdFrames(raw, name), buffer_size=_BLOCK)
            raw = zstandard.ZstdDecompressor().stream_reader(framed, read_across_frames=True, closefd=True)
            what = "zstd data"
    except BaseException:
        raw.close()
        raise
    return io.BufferedReader(_Checked(raw, name, what), buffer_size=_BLOCK)


# ---------------------------------------------------------------------------------------------
# Documents by format


def _decode_stream(f: BinaryIO, name: str, errors: str, block_bytes: int) -> Iterator[str]:
    """``textfiles.iter_file_text``'s checks over a (decompressed) byte stream."""
    return decode_stream(f, name, errors, block_bytes)


def _field(record: Any, field: str, where: str) -> str | None:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with a {field!r} field, got {type(record).__name__}")
    if field not in record:
        keys = ", ".join(map(str, list(record)[:8])) or "none"
        raise DataError(f"{where}: no field {field!r} (fields: {keys}); choose one with --text-field")
    value = record[field]
    if value is None:
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, not a string")
    return value


def _decode_line(raw: bytes, errors: str, where: str) -> str:
    try:
        return raw.decode("utf-8", errors=errors)
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not valid UTF-8 at byte {e.start + 1} of the line; "
            "use --encoding-errors replace|ignore to read it anyway"
        ) from None


def _jsonl_records(f: BinaryIO, name: str, field: str, errors: str) -> Iterator[str | None]:
    for lineno, raw in enumerate(f, 1):
        where = f"{name}: line {lineno}"
        line = _decode_line(raw, errors, where)
        if lineno == 1:
            line = jsontext.strip_bom(line)
        if not line.strip():
            continue
        yield _field(jsontext.loads(line, where), field, where)


def _json_records(f: BinaryIO, name: str, field: str, errors: str) -> Iterator[str | None]:
    head = f.peek(64)[:64]
    head = head[len(_UTF8_BOM) :] if head.startswith(_UTF8_BOM) else head
    if not head.lstrip().startswith(b"["):
        yield from _jsonl_records(f, name, field, errors)
        return
    text = jsontext.strip_bom(_decode_line(f.read(), errors, name))
    records = jsontext.loads(text, name)
    for i, record in enumerate(records):
        yield _field(record, field, f"{name}: record {i}")


def csv_rows(lines: Iterable[str], name: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the row starts, row) of each non-empty row of CSV/TSV text given as lines read
    with ``newline=""`` (so a quoted field keeps its newlines). Parsing is strict: a quote left
    open, which would otherwise swallow every row after it into one field, is a DataError naming
    the line where its row starts; so is text after a closing quote."""
    csv.field_size_limit(2**31 - 1)  # a document is often longer than csv's 128 KiB default
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(_csv_error(name, start, reader.line_num, str(e))) from None
        if row:
            yield start, row
        start = reader.line_num + 1


def _csv_error(name: str, start: int, line: int, reason: str) -> str:
    if "unexpected end of data" in reason:
        return (
            f'{name}: line {start}: a quoted field opened in this row never closes (an unbalanced " '
            "runs to the end of the file); close it, or double a quote that is part of the text"
        )
    if "expected after" in reason and line > start:
        return (
            f"{name}: line {start}: a quoted field opened in this row runs to line {line} and text follows "
            'its closing quote there (an unbalanced "?); close it, or double a quote that is part of the text'
        )
    return f"{name}: line {line}: not valid CSV ({reason})"


def _csv_records(f: BinaryIO, name: str, field: str, errors: str, delimiter: str) -> Iterator[str | None]:
    # utf-8-sig: a byte order mark (Excel writes one) is not part of the first column's name
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors=errors, newline="")
    rows = csv_rows(text, name, delimiter)
    line = 0
    try:
        try:
            _, header = next(rows)
        except StopIteration:
            raise DataError(f"{name}: file is empty") from None
        if field not in header:
            cols = ", ".join(header[:8])
            raise DataError(
                f"{name}: no column {field!r} in the header (columns: {cols}); choose one with --text-field"
            )
        col = header.index(field)
        for row_no, (line, row) in enumerate(rows, 1):
            if col >= len(row):
                raise DataError(f"{name}: row {row_no} (line {line}): has no {field!r} column")
            yield row[col]
    except UnicodeDecodeError:
        raise DataError(
            f"{name}: not valid UTF-8 near line {line + 1}; use --encoding-errors replace|ignore to read it anyway"
        ) from None
    finally:
        text.detach()


def _parquet_records(inp: Input, field: str) -> Iterator[str | None]:
    name = str(inp)
    if inp.path is None or inp.compression is not None:
        raise DataError(f"{name}: Parquet is read from an uncompressed file on disk (it compresses itself)")
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{name}: reading Parquet needs pyarrow: {DATA_EXTRA}") from None
    try:
        pf = pq.ParquetFile(inp.path)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{name}: not a readable Parquet file ({e})") from None
    names = pf.schema_arrow.names
    if field not in names:
        raise DataError(f"{name}: no column {field!r} (columns: {', '.join(names[:8])}); choose one with --text-field")
    kind = pf.schema_arrow.field(field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{name}: column {field!r} is {kind}, not a string")
    row = 0
    try:
        for batch in pf.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[field]):
            for value in batch.column(0).to_pylist():
                row += 1
                yield value
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{name}: cannot read row {row + 1} ({e})") from None


def iter_documents(
    inp: Input, *, text_field: str = "text", errors: str = "strict", block_bytes: int = _BLOCK
) -> Iterator[Iterable[str]]:
    """Each document of ``inp`` as pieces of text: a text file streams in blocks; a record is one
    piece. Empty records are skipped; an input without any document is an error."""
    if inp.plain_text:
        yield iter_file_text(inp.path, errors, block_bytes)
        return
    if inp.format == "parquet":
        records: Iterator[str | None] = _parquet_records(inp, text_field)
        yield from _non_empty(records, str(inp))
        return
    f = open_binary(inp)
    try:
        name = str(inp)
        if inp.format == "txt":
            yield _decode_stream(f, name, errors, block_bytes)
            return
        if inp.format == "jsonl":
            records = _jsonl_records(f, name, text_field, errors)
        elif inp.format == "json":
            records = _json_records(f, name, text_field, errors)
        else:
            records = _csv_records(f, name, text_field, errors, "\t" if inp.format == "tsv" else ",")
        yield from _non_empty(records, name)
    finally:
        if inp.path is not None:
            f.close()


def _non_empty(records: Iterator[str | None], name: str) -> Iterator[Iterable[str]]:
    n = 0
    for text in records:
        if text:
            n += 1
            yield (mask_literal_eot(text),)
    if n == 0:
        raise DataError(f"{name}: no documents (every record is empty)")


def iter_text(
    inputs: Sequence[Input], *, text_field: str = "text", errors: str = "strict", block_bytes: int = _BLOCK
) -> Iterator[str]:
    """The text of every document of every input, in order, joined by ``<|endoftext|>``."""
    first = True
    for inp in inputs:
        for doc in iter_documents(inp, text_field=text_field, errors=errors, block_bytes=block_bytes):
            if not first:
                yield EOT_TOKEN
            first = False
            yield from doc


def read_documents_text(
    paths: Sequence[str | Path], *, format: str | None = None, text_field: str = "text", errors: str = "strict"
) -> str:
    """All documents' text joined by ``<|endoftext|>`` (in memory: for small inputs and tests)."""
    return "".join(iter_text(resolve_inputs(paths, format=format), text_field=text_field, errors=errors))
