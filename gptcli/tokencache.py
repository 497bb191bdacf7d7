"""Tokenize a large corpus once, in parallel and in bounded memory, into a cached uint16 file.

The in-memory path (``read_corpus`` -> ``split_text`` -> ``tokenize``) holds the whole text, its
token list and an int64 array at once: over 10 bytes of RAM per input byte (1.56 GB for 125 MB in
benchmarks/bench_corpus.py), and it re-tokenizes on every run at tiktoken's single-thread speed. This module
gives the *same token arrays* for large corpora without either cost:

* The input is streamed in blocks. The text is cut into chunks only at points where a cut cannot
  change GPT-2's tokenization (see ``safe_cut``), and the chunks are encoded on worker threads
  (tiktoken releases the GIL), a bounded number in flight, so peak memory does not depend on the
  corpus size.
* The ids are written as uint16 (GPT-2's 50257 ids fit) to ``$GPTCLI_HOME/tokens/<key>.bin``,
  atomically (temporary file + ``os.replace``), and read back as an ``np.memmap``: training reads
  only the windows of each batch.
* ``<key>`` hashes the bytes of every input file, the tokenizer, the decoding-error mode and the
  train/validation split, so a second run reuses the file and any change to the input makes a new
  one. A ``<key>.json`` written after the ``.bin`` marks the entry complete.

The book's semantics are kept exactly: files are joined with ``<|endoftext|>``, and the split is
by characters, train = ``text[:int((1 - val_ratio) * len(text))]``; the ids equal
``tokenize(train_text)`` and ``tokenize(val_text)``, and ``fingerprint`` equals the in-memory
path's ``text_fingerprint``. (tests/test_tokencache.py checks all three.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gptcli import fsutil
from gptcli.errors import DataError, GptCliWarning, os_error_reason
from gptcli.formats import Input, detect, iter_text, refuse_terminal_stdin, resolve_inputs, sniff_compression
from gptcli.paths import gptcli_home
from gptcli.textfiles import expand_paths, iter_file_text
from gptcli.tokenizer import EOT_TOKEN, corpus_pieces, encode_corpus, get_tokenizer

# What produced the ids: part of every key, so a change of tokenizer never reuses old files.
TOKENIZER_ID = "gpt2-bpe-50257"
CACHE_VERSION = 2  # 2: a literal <|endoftext|> inside a document is text, not id 50256
# Corpora at least this large (sum of input file sizes) train from the memmap cache.
MEMMAP_MIN_BYTES = 64 * 2**20
BLOCK_BYTES = 4 * 2**20  # read size
CHUNK_CHARS = 1 * 2**20  # target size of one encode call; the unit of parallel work
_COPY_BYTES = 4 * 2**20


def token_cache_dir() -> Path:
    return gptcli_home() / "tokens"


def cache_skipped(cache: Path, e: OSError) -> str:
    return (
        f"the token cache {cache} cannot be written ({os_error_reason(e)}); "
        "tokenizing without it (set GPTCLI_HOME to a writable folder to keep the tokens for next time)"
    )


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def corpus_bytes(paths: Sequence[str | Path]) -> int:
    """Total size of the input files (directories expanded as ``read_corpus`` does)."""
    return sum(p.stat().st_size for p in expand_paths(paths))


# Formats whose documents are records with a text field: the field is part of the cache key.
_RECORD_FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")


def inputs_bytes(inputs: Sequence[Input]) -> int:
    """Total size of the input files on disk (standard input counts as 0)."""
    return sum(i.path.stat().st_size for i in inputs if i.path is not None)


# ---------------------------------------------------------------------------------------------
# Where text may be cut without changing its tokenization


def safe_cut(text: str, limit: int) -> int | None:
    """The largest ``b <= limit`` such that ``encode(text[:b]) + encode(text[b:]) == encode(text)``
    by the rules below, or None.

    GPT-2's pre-tokenizer (``'s|'t|...| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+$|\\s+(?!\\S)|\\s``)
    has no look-behind, and no piece of it runs from a non-space character into a space. So:

    * after a ``"\\n"`` that follows a non-space and precedes a non-space (``X\\n|Y``): the
      newline is a piece of its own either way (``\\s+$`` at the end of the left part, ``\\s`` in
      the whole text), and ``Y`` starts a piece in both;
    * failing that, before a ``" "`` between two non-spaces (``X| Y``): ``X`` ends a piece, and
      ``" Y..."`` is matched from the same position with the same text after it.

    A cut next to whitespace runs would not be safe (``" \\n"`` at the end of a string is one
    piece, but two in ``" \\nY"``), hence the non-space neighbours. "Non-space" uses Python's
    ``str.isspace``, a superset of the regex's ``\\s`` (Unicode White_Space), so it errs on the
    safe side. Special tokens contain neither character, so no cut falls inside one.
    """
    n = len(text)
    limit = min(limit, n - 1)  # the character after the cut must be known
    for sep, offset in (("\n", 1), (" ", 0)):
        end = limit if offset else min(limit + 1, n - 1)  # a " " cut keeps the " " on the right
        for _ in range(4096):  # normal text finds one at once; bounded for pathological runs
            i = text.rfind(sep, 1, end)
            if i < 1:
                break
            b = i + offset
            if b <= limit and not text[i - 1].isspace() and not text[i + 1].isspace():
                return b
            end = i
    return None


# The longest stretch without a safe cut (``safe_cut``) that is tokenized whole: encoding takes
# about 50 bytes of memory a character, so this bounds it near 1 GB.
MAX_UNCUT_CHARS = 1 << 24


def iter_chunks(pieces: Iterable[str], chunk_chars: int = CHUNK_CHARS) -> Iterator[str]:
    """Regroup a stream of text into chunks of about ``chunk_chars`` cut only at ``safe_cut``
    points, so encoding each chunk and concatenating gives the encoding of the whole stream.

    A chunk is longer only when no safe point exists in it (a single "word" longer than the
    chunk, or a long run of whitespace): then more text is read until one appears.
    """
    buf = ""
    for piece in pieces:
        buf += piece
        search_from = chunk_chars
        while len(buf) > search_from:
            cut = safe_cut(buf, search_from)
            if cut is None:
                if search_from >= MAX_UNCUT_CHARS:  # memory stays bounded: refuse, never cut unsafely
                    raise DataError(
                        f"the text runs for over {MAX_UNCUT_CHARS:,} characters with no line break or space between "
                        "words; gptcli tokenizes long text in pieces cut there (whole, such a run would take "
                        "about 50 times its size in memory): break it up"
                    )
                search_from *= 2  # nothing safe yet: look further, then wait for more text
                continue
            yield buf[:cut]
            buf = buf[cut:]
            search_from = chunk_chars
    if buf:
        yield buf


def _encode_np(text: str) -> np.ndarray:
    """``tokenizer.encode_corpus`` as a uint16 array (what the cache stores)."""
    enc = get_tokenizer()
    if corpus_pieces(text) is not None:  # a literal <|endoftext|> in a document: text, not id 50256
        return np.asarray(encode_corpus(text), dtype=np.uint16)
    if hasattr(enc, "encode_to_numpy"):  # tiktoken >= 0.8: no Python list in between
        ids = enc.encode_to_numpy(text, allowed_special={EOT_TOKEN})
    else:
        ids = np.asarray(enc.encode(text, allowed_special={EOT_TOKEN}), dtype=np.uint32)
    return ids.astype(np.uint16)


def encode_chunked(text: str, *, chunk_chars: int = CHUNK_CHARS, num_threads: int = 1) -> np.ndarray:
    """``tokenize(text)`` computed chunk by chunk (uint16); equal to it for any ``chunk_chars``."""
    chunks = list(iter_chunks([text], chunk_chars))
    if not chunks:
        return np.zeros(0, dtype=np.uint16)
    with ThreadPoolExecutor(num_threads) as ex:
        return np.concatenate(list(ex.map(_encode_np, chunks)))


# ---------------------------------------------------------------------------------------------
# Streaming the corpus


def needs_formats(files: Sequence[Path]) -> bool:
    """Whether any file is not a plain ``.txt`` file: JSON Lines, CSV, Parquet, compressed...
    (``gptcli.formats``); those always go through the cache, which streams them."""
    return any(detect(p) != ("txt", None) for p in files)


def _as_input(path: Path | Input) -> Input:
    if isinstance(path, Input):
        return path
    fmt, compression = detect(path)
    return Input(Path(path), fmt, compression)


def _file_text(
    path: Path | Input,
    errors: str,
    block_bytes: int,
    on_raw: Callable[[bytes], None] | None = None,
    text_field: str = "text",
):
    """One input's text: a plain text file as ``read_text`` reads it; any other format's documents
    joined by ``<|endoftext|>`` (``gptcli.formats``), ``on_raw`` then seeing the file's own bytes."""
    inp = _as_input(path)
    if inp.plain_text:
        yield from iter_file_text(inp.path, errors, block_bytes, on_raw=on_raw)
        return
    if on_raw is not None:
        with open(inp.path, "rb") as f:
            while block := f.read(block_bytes):
                on_raw(block)
    yield from iter_text([inp], text_field=text_field, errors=errors, block_bytes=block_bytes)


def _iter_corpus_text(
    files: Sequence[Path | Input], errors: str, block_bytes: int, text_field: str = "text", hashers=None
) -> Iterator[str]:
    """``read_corpus``'s text as a stream: files joined with ``<|endoftext|>``; ``hashers``: one
    sha256 per file, fed the raw bytes of each plain text file as they are decoded (the other
    formats' readers parse the bytes themselves: those rely on the stat check of ``_cached``)."""
    for i, path in enumerate(files):
        if i:
            yield EOT_TOKEN
        on_raw = hashers[i].update if hashers is not None and _as_input(path).plain_text else None
        yield from _file_text(path, errors, block_bytes, on_raw=on_raw, text_field=text_field)


def _stat_key(inp: Input) -> tuple[int, int, int] | None:
    if inp.path is None:
        return None
    st = inp.path.stat()
    return st.st_size, st.st_mtime_ns, st.st_ino


def _scan(
    files: Sequence[Path | Input], errors: str, block_bytes: int, text_field: str = "text"
) -> list[tuple[str, int]]:
    """(sha256 of the bytes, characters after decoding) of each file; validates like read_text."""
    out = []
    for path in files:
        h = hashlib.sha256()
        chars = sum(len(t) for t in _file_text(path, errors, block_bytes, on_raw=h.update, text_field=text_field))
        out.append((h.hexdigest(), chars))
    return out


@contextlib.contextmanager
def _spooled_stdin(inputs: list[Input], spool_dir: Path) -> Iterator[list[Input]]:
    """The inputs with standard input (``-``) copied once to a temporary file under ``spool_dir``,
    so that it can be hashed and then tokenized like a file; the copy is removed afterwards (the
    cache keeps only the tokens). Errors name ``<stdin>``, not the temporary file."""
    if all(i.path is not None for i in inputs):
        yield inputs
        return
    refuse_terminal_stdin()
    spool_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=spool_dir, prefix=f"stdin-{os.getpid()}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(sys.stdin.buffer, f, _COPY_BYTES)
        with open(tmp, "rb") as f:  # compressed data piped in (no name to tell it by): decompressed
            sniffed = sniff_compression(f.read(64))
        spooled = [Input(Path(tmp), i.format, i.compression or sniffed) if i.path is None else i for i in inputs]
        try:
            yield spooled
        except DataError as e:
            raise DataError(str(e).replace(tmp, "<stdin>")) from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _split_at(pieces: Iterable[str], split: int | None) -> Iterator[tuple[int, str]]:
    """Tag each piece with its side, 0 (train) before character ``split`` and 1 after it."""
    done = 0
    for piece in pieces:
        if split is None or done >= split:
            yield (0 if split is None else 1), piece
        elif done + len(piece) <= split:
            yield 0, piece
        else:
            k = split - done
            if k:
                yield 0, piece[:k]
            yield 1, piece[k:]
        done += len(piece)


# ---------------------------------------------------------------------------------------------
# The cache


def remove_stale_temporaries(cache: Path) -> list[Path]:
    """Delete what builds killed outright (``kill -9``, a power cut) left in the cache: an
    entry's ``.tmp-<pid>-<key>.bin.tmp`` (or ``.json.tmp``) whose process is gone and whose key
    no build holds the lock of, and a ``stdin-<pid>-*.tmp`` spool whose process is gone. A live
    build's files are never touched; a pid reused since keeps its file until that process ends."""
    removed: list[Path] = []
    try:
        names = list(cache.iterdir())
    except OSError:
        return removed
    for p in names:
        owner = fsutil.temporary_owner(p.name)
        if owner is not None:
            pid, final = owner
            if fsutil.pid_alive(pid):
                continue
            lock_path = cache / f"{final.split('.', 1)[0]}.lock"
            if lock_path.exists():
                lock = fsutil.FileLock(lock_path)
                try:
                    if not lock.acquire(blocking=False):
                        continue  # that key is being built (by a process this machine cannot see)
                except OSError:
                    continue
                lock.release()
        elif p.name.startswith("stdin-") and p.name.endswith(".tmp"):
            pid_text = p.name[len("stdin-") :].split("-", 1)[0]
            if not pid_text.isdigit() or fsutil.pid_alive(int(pid_text)):
                continue
        else:
            continue
        try:
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


@dataclass
class CachedTokens:
    """Train ids then validation ids of one run's data, as a read-only uint16 memmap."""

    tokens: np.ndarray
    n_train: int
    fingerprint: str  # equals data.text_fingerprint(train_text + "\x00" + val_text)
    path: Path
    built: bool  # True if this call tokenized; False if it reused the file

    @property
    def train(self) -> np.ndarray:
        return self.tokens[: self.n_train]

    @property
    def val(self) -> np.ndarray:
        return self.tokens[self.n_train :]


def _open(path: Path, meta: dict) -> np.ndarray:
    if meta["n_tokens"] == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", shape=(meta["n_tokens"],))


def _read_meta(bin_path: Path, meta_path: Path) -> dict | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") == CACHE_VERSION and bin_path.stat().st_size == 2 * meta["n_tokens"]:
            return meta
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def cached_corpus_tokens(
    paths: Sequence[str | Path],
    *,
    val_ratio: float | None = None,
    val_paths: Sequence[str | Path] | None = None,
    errors: str = "strict",
    num_threads: int | None = None,
    cache_dir: Path | None = None,
    block_bytes: int = BLOCK_BYTES,
    chunk_chars: int = CHUNK_CHARS,
    on_progress: Callable[[int, int], None] | None = None,
    format: str | None = None,
    text_field: str = "text",
) -> CachedTokens:
    """The token ids of a run's training and validation text, from the cache or built into it.

    Either ``val_ratio`` (the book's character split of the joined ``paths``) or ``val_paths``
    (validation text of its own; then all of ``paths`` trains), or neither: every token is
    "train" (what ``eval`` reads). ``on_progress(done, total)`` reports input bytes while
    tokenizing. ``paths`` may hold globs and ``-`` (standard input, read once); ``format``
    overrides the format detected from each name, ``text_field`` names the text of a record
    (``gptcli.formats``).
    """
    if val_ratio is not None and val_paths is not None:
        raise ValueError("give at most one of val_ratio and val_paths")
    train_inputs = resolve_inputs(paths, format=format)
    val_inputs = resolve_inputs(val_paths, format=format) if val_paths is not None else []
    if sum(i.path is None for i in (*train_inputs, *val_inputs)) > 1:
        raise DataError("'-' (standard input) given twice")
    wanted = Path(cache_dir) if cache_dir is not None else token_cache_dir()
    with (
        fsutil.writable_or_temporary(wanted, prefix="gptcli-tokens-") as (cache, failed),
        _spooled_stdin([*train_inputs, *val_inputs], cache) as spooled,
    ):
        if failed is not None:  # a read-only GPTCLI_HOME: tokenize all the same, just not kept
            warnings.warn(cache_skipped(wanted, failed), GptCliWarning, stacklevel=2)
        return _cached(
            spooled[: len(train_inputs)],
            spooled[len(train_inputs) :],
            has_val_paths=val_paths is not None,
            val_ratio=val_ratio,
            errors=errors,
            num_threads=num_threads,
            cache=cache,
            block_bytes=block_bytes,
            chunk_chars=chunk_chars,
            on_progress=on_progress,
            text_field=text_field,
        )


def _cached(
    train_files: list[Input],
    val_files: list[Input],
    *,
    has_val_paths: bool,
    val_ratio: float | None,
    errors: str,
    num_threads: int | None,
    cache: Path,
    block_bytes: int,
    chunk_chars: int,
    on_progress: Callable[[int, int], None] | None,
    text_field: str,
) -> CachedTokens:
    val_paths = val_files if has_val_paths else None
    # The key hashes a first read of each file and the tokens come from a second: a file
    # rewritten in between would make an entry whose key says one text and whose ids are
    # another's, reused by every later run. The build hashes the bytes it tokenizes (plain text)
    # and every input's size, mtime and inode must be as they were before the first read.
    stats = [_stat_key(i) for i in (*train_files, *val_files)]
    train_scan = _scan(train_files, errors, block_bytes, text_field)
    val_scan = _scan(val_files, errors, block_bytes, text_field)
    split = None
    if val_ratio is not None:
        total_chars = sum(c for _, c in train_scan) + len(EOT_TOKEN) * (len(train_files) - 1)
        split = int((1.0 - val_ratio) * total_chars)  # exactly split_text's index
    key_fields = {
        "version": CACHE_VERSION,
        "tokenizer": TOKENIZER_ID,
        "errors": errors,
        "train": [h for h, _ in train_scan],
        "val": [h for h, _ in val_scan] if val_paths is not None else None,
        "split": split,
    }
    every = (*train_files, *val_files)
    if not all(i.plain_text for i in every):  # the same bytes read as another format are other text
        key_fields["formats"] = [(i.format, i.compression) for i in every]
        if any(i.format in _RECORD_FORMATS for i in every):
            key_fields["text_field"] = text_field
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:40]
    bin_path, meta_path = cache / f"{key}.bin", cache / f"{key}.json"

    meta = _read_meta(bin_path, meta_path)
    if meta is not None:
        return CachedTokens(_open(bin_path, meta), meta["n_train"], meta["fingerprint"], bin_path, built=False)

    cache.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(cache)
    # Every rank of a distributed run prepares its data: one builds, the others wait and reuse.
    with fsutil.FileLock(cache / f"{key}.lock"):  # one build of an entry at a time
        meta = _read_meta(bin_path, meta_path)
        if meta is not None:
            return CachedTokens(_open(bin_path, meta), meta["n_train"], meta["fingerprint"], bin_path, built=False)
        hashers = [hashlib.sha256() for _ in every]
        train_h, val_h = hashers[: len(train_files)], hashers[len(train_files) :]
        if val_paths is not None:
            sides = _chain_sides(train_files, val_files, errors, block_bytes, text_field, train_h, val_h)
        else:
            sides = _split_at(_iter_corpus_text(train_files, errors, block_bytes, text_field, train_h), split)
        total_bytes = inputs_bytes(every)
        n_train, n_tokens, fingerprint = _build(
            sides, bin_path, num_threads or default_threads(), chunk_chars, total_bytes, on_progress
        )
        scanned = [h for h, _ in (*train_scan, *val_scan)]
        for inp, h, digest, before in zip(every, hashers, scanned, stats, strict=True):
            changed = _stat_key(inp) != before or (inp.plain_text and h.hexdigest() != digest)
            if changed:
                bin_path.unlink(missing_ok=True)
                raise DataError(f"{inp.path}: changed while it was being tokenized; run again once it is written")
        meta = {
            "version": CACHE_VERSION,
            "tokenizer": TOKENIZER_ID,
            "n_tokens": n_tokens,
            "n_train": n_train,
            "fingerprint": fingerprint,
            "key": key_fields,
            "sources": [str(p) for p in train_files],
            "val_sources": [str(p) for p in val_files],
        }
        fsutil.atomic_write(meta_path, json.dumps(meta, indent=1))  # last: marks the entry complete
    return CachedTokens(_open(bin_path, meta), n_train, fingerprint, bin_path, built=True)


def _chain_sides(
    train_files, val_files, errors, block_bytes, text_field="text", train_h=None, val_h=None
) -> Iterator[tuple[int, str]]:
    for t in _iter_corpus_text(train_files, errors, block_bytes, text_field, train_h):
        yield 0, t
    for t in _iter_corpus_text(val_files, errors, block_bytes, text_field, val_h):
        yield 1, t


def _build(
    sides: Iterator[tuple[int, str]],
    bin_path: Path,
    num_threads: int,
    chunk_chars: int,
    total_bytes: int,
    on_progress: Callable[[int, int], None] | None,
) -> tuple[int, int, str]:
    """Tokenize the tagged text stream into ``bin_path``; returns (n_train, n_tokens, fingerprint)."""
    fingerprint = hashlib.sha256()
    done_bytes = 0

    def side_text(side: int) -> Iterator[str]:
        # Pulls from the shared stream while it yields this side; hashes as the text passes.
        nonlocal done_bytes, head
        while True:
            if head is None:
                try:
                    head = next(sides)
                except StopIteration:
                    return
            if head[0] != side:
                return
            text = head[1]
            head = None
            b = text.encode("utf-8", "surrogatepass")  # see data.text_fingerprint
            fingerprint.update(b)
            done_bytes += len(b)
            yield text

    head: tuple[int, str] | None = None
    counts = [0, 0]

    def write(f) -> None:
        with ThreadPoolExecutor(num_threads) as pool:
            in_flight: deque = deque()

            def write_oldest() -> None:
                side, fut = in_flight.popleft()
                ids = fut.result()
                f.write(ids.tobytes())
                counts[side] += len(ids)

            for side in (0, 1):
                if side == 1:
                    fingerprint.update(b"\x00")
                for chunk in iter_chunks(side_text(side), chunk_chars):
                    in_flight.append((side, pool.submit(_encode_np, chunk)))
                    # Two chunks per thread in flight: enough to keep every thread busy, and a
                    # bound on memory whatever the corpus size.
                    while len(in_flight) > 2 * num_threads:
                        write_oldest()
                    if on_progress is not None:
                        on_progress(min(done_bytes, total_bytes), total_bytes)
                while in_flight:
                    write_oldest()

    fsutil.atomic_write(bin_path, write)
    if on_progress is not None:
        on_progress(total_bytes, total_bytes)
    return counts[0], counts[0] + counts[1], fingerprint.hexdigest()
