"""Pre-tokenised shards, read as memory maps: nanoGPT's and llm.c's, and gptcli prepare's.

Two layouts exist in the wild, both GPT-2 token ids as little-endian uint16:

* nanoGPT (``data/*/prepare.py``): ``train.bin`` and ``val.bin``, the raw ids, no header.
* llm.c (``dev/data/data_common.py``, ``write_datafile``): a header of 256 int32s, ``[0]`` the
  magic 20240520, ``[1]`` the version (1: GPT-2 uint16 ids; llm.c's version 7 is Llama 3's
  uint32 ids, which GPT-2 cannot use), ``[2]`` the token count; then the ids. Shards are named
  like ``fineweb_train_000001.bin`` / ``fineweb_val_000000.bin``.

A raw nanoGPT file cannot start with the llm.c magic (its low 16 bits, 55240, are not a GPT-2
id), so a file is llm.c's exactly when its header says so; a ``.bin`` that is neither llm.c's
nor named ``train.bin``/``val.bin`` is an error naming the magic found. ``gptcli prepare`` writes
the llm.c layout (``write_shards``), which llm.c's own loader reads too.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

from gptcli import fsutil
from gptcli.errors import DataError, RunDirError, UsageError, os_error_reason

LLMC_MAGIC = 20240520
LLMC_VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VOCAB_SIZE = 50257
NANOGPT_NAMES = ("train.bin", "val.bin")
LOCK_NAME = ".prepare.lock"  # held by the prepare writing a directory (removed as it finishes)
_ID_BLOCK = 1 << 24  # ids checked per step (32 MiB of the memmap): bounded memory for any shard


def _check_ids(ids: np.ndarray, path: Path) -> None:
    """Every id of a shard is a GPT-2 id: one past the vocabulary would be an IndexError in the
    embedding (or a "non-finite loss" on a GPU) at whatever step first reads it. A max over the
    memmap, block by block, reads the file once (about a second per GB from the page cache)."""
    for start in range(0, len(ids), _ID_BLOCK):
        block = np.asarray(ids[start : start + _ID_BLOCK])
        if int(block.max()) >= VOCAB_SIZE:
            at = int(np.flatnonzero(block >= VOCAB_SIZE)[0])
            raise DataError(
                f"{path}: token id {int(block[at])} is not a GPT-2 id (vocabulary {VOCAB_SIZE}; at token "
                f"{start + at:,}); the file was made with another tokenizer, or is damaged"
            )


def _memmap(path: Path, offset: int, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=offset, shape=(count,))


def read_header(path: Path) -> np.ndarray | None:
    """The llm.c header of ``path``, or None when the file does not start with the llm.c magic."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if len(raw) < 4 or int(np.frombuffer(raw[:4], dtype="<i4")[0]) != LLMC_MAGIC:
        return None
    if len(raw) < HEADER_BYTES:
        raise DataError(f"{path}: truncated llm.c shard: header of {len(raw)} bytes, expected {HEADER_BYTES}")
    return np.frombuffer(raw, dtype="<i4")


def read_shard(path: str | Path) -> np.ndarray:
    """The token ids of one shard file as a read-only uint16 memmap."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    header = read_header(path)
    if header is not None:
        version, count = int(header[1]), int(header[2])
        if version != LLMC_VERSION:
            raise DataError(
                f"{path}: llm.c shard version {version}, expected {LLMC_VERSION} (GPT-2 uint16 ids)"
                + ("; version 7 holds Llama 3 ids, which GPT-2 models cannot use" if version == 7 else "")
            )
        if count < 0:
            raise DataError(f"{path}: llm.c header gives a negative token count ({count})")
        expected = HEADER_BYTES + 2 * count
        if size < expected:
            raise DataError(
                f"{path}: truncated llm.c shard: header says {count:,} tokens ({expected:,} bytes), "
                f"file has {size:,} bytes"
            )
        if size > expected:
            raise DataError(
                f"{path}: llm.c shard longer than its header says: {count:,} tokens ({expected:,} bytes), "
                f"file has {size:,} bytes"
            )
        ids = _memmap(path, HEADER_BYTES, count)
    elif path.name in NANOGPT_NAMES:
        if size % 2:
            raise DataError(f"{path}: {size:,} bytes, not a whole number of uint16 token ids (truncated?)")
        ids = _memmap(path, 0, size // 2)
    else:
        found = "nothing" if size < 4 else f"{int(np.fromfile(path, dtype='<i4', count=1)[0])}"
        raise DataError(
            f"{path}: not an llm.c shard (magic {found}, expected {LLMC_MAGIC}); raw nanoGPT token files "
            f"must be named {' or '.join(NANOGPT_NAMES)}"
        )
    _check_ids(ids, path)
    return ids


def _is_shard_file(path: Path) -> bool:
    """A file that is a token shard by its content: llm.c's header magic, or nanoGPT's name."""
    if path.name in NANOGPT_NAMES:
        return True
    try:
        return read_header(path) is not None
    except DataError:  # llm.c's magic with a short header: a damaged shard, which read_shard names
        return True


def is_shard_input(path: str | Path) -> bool:
    """Whether a training input is pre-tokenised: a ``.bin`` file, or a directory holding token
    shards (by content: a stray ``.bin`` that is not one leaves a text directory a text directory).
    A directory that holds both shards and text files is a DataError naming one of each."""
    p = Path(path)
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file())
        shard = next((q for q in files if q.suffix == ".bin" and _is_shard_file(q)), None)
        if shard is None:
            return False
        text = next((q for q in files if q.suffix.lower() in (".txt", ".md")), None)
        if text is not None:
            raise DataError(
                f"{p}: holds both token shards ({shard.name}) and text files ({text.name}); give a directory of one "
                "kind"
            )
        return True
    return p.suffix == ".bin" and p.is_file()


def _split_of(path: Path) -> str | None:
    words = re.split(r"[_.\-]", path.stem.lower())
    if "val" in words or "valid" in words or "validation" in words:
        return "val"
    if "train" in words:
        return "train"
    return None


def shard_files(paths: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(train, val) shard files of the inputs: files as given (a name with ``val`` in it is
    validation), and each directory's ``*.bin`` split the same way by name, sorted."""
    train: list[Path] = []
    val: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(q for q in p.glob("*.bin") if q.is_file())
            if not found:
                raise DataError(f"{p}: directory contains no .bin shards")
            for q in found:
                split = _split_of(q)
                if split is None:
                    raise DataError(f"{q}: cannot tell train from val: a shard's name should contain train or val")
                (val if split == "val" else train).append(q)
        elif p.is_file():
            (val if _split_of(p) == "val" else train).append(p)
        else:
            raise DataError(f"{p}: file not found")
    return train, val


class ConcatTokens:
    """Several token arrays read as one: ``len`` and slicing, which is all ``TokenWindows`` uses.
    A window may span two shards (the stream continues, as it does within one).

    With ``files`` (each part's shard), every slice first checks with ``os.stat`` that the shards
    it reads still have the size they had when opened, and copies what it reads at once. A shard
    truncated under a running job would otherwise kill it with SIGBUS (exit 135, no message) at
    the first read past its new end; now it is a DataError naming the file. What remains is the
    window between that stat and the copy (microseconds per slice): a truncation landing exactly
    there still ends the process with SIGBUS, which no Python code can catch."""

    def __init__(self, parts: Sequence[np.ndarray], files: Sequence[Path] | None = None):
        keep = [i for i, p in enumerate(parts) if len(p)]
        self.parts = [parts[i] for i in keep]
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.files = None
        if files is not None:
            self.files = [(Path(files[i]), Path(files[i]).stat().st_size) for i in keep]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _check(self, i: int) -> None:
        path, size = self.files[i]
        try:
            now = os.stat(path).st_size
        except OSError as e:
            now, reason = None, os_error_reason(e)
        if now is None or now < size:
            what = f"shrank from {size:,} to {now:,} bytes" if now is not None else f"cannot be read ({reason})"
            raise DataError(
                f"{path}: {what} while this run was reading it (truncated or rewritten in place?); "
                "restore the shard and resume from the last checkpoint"
            )

    def __getitem__(self, key: slice) -> np.ndarray:
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("ConcatTokens supports contiguous slices only")
        start, stop, _ = key.indices(len(self))
        if stop <= start:
            return np.zeros(0, dtype=np.uint16)
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        out = []
        while start < stop:
            lo = start - int(self.starts[i])
            take = min(stop, int(self.starts[i + 1])) - start
            if self.files is not None:
                self._check(i)
                out.append(np.array(self.parts[i][lo : lo + take]))  # a copy, made right after the check
            else:
                out.append(np.asarray(self.parts[i][lo : lo + take]))
            start += take
            i += 1
        return out[0] if len(out) == 1 else np.concatenate(out)


def read_tokens(files: Sequence[Path]) -> ConcatTokens:
    """The ids of shard files as one stream, each read checked against truncation (``ConcatTokens``)."""
    return ConcatTokens([read_shard(f) for f in files], files)


# ---------------------------------------------------------------------------------------------
# Writing


def write_shard(path: Path, ids: np.ndarray | Iterable[np.ndarray]) -> int:
    """Write one llm.c shard atomically (temporary file + rename); ``ids`` may be one array or
    several pieces. Returns the token count."""
    pieces = [ids] if isinstance(ids, np.ndarray) else list(ids)
    count = sum(len(p) for p in pieces)
    if count >= 2**31:
        raise ValueError(f"{count} tokens do not fit an llm.c header (at most 2**31 - 1)")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = LLMC_MAGIC, LLMC_VERSION, count

    def write(f) -> None:
        f.write(header.tobytes())
        for p in pieces:
            f.write(np.asarray(p, dtype="<u2").tobytes())

    fsutil.atomic_write(path, write)
    return count


def write_shards(
    tokens: np.ndarray,
    out_dir: Path,
    *,
    split: str,
    shard_size: int,
    prefix: str = "",
    block: int = 1 << 24,
    written: list[Path] | None = None,
) -> list[Path]:
    """``tokens`` (an array or memmap) as llm.c shards ``<prefix><split>_000000.bin`` ... of
    ``shard_size`` tokens (the last may be shorter), copied ``block`` tokens at a time; each
    path is also appended to ``written`` as soon as it exists."""
    if shard_size < 1:
        raise ValueError("shard_size must be at least 1")
    paths = []
    for k, start in enumerate(range(0, len(tokens), shard_size)):
        stop = min(start + shard_size, len(tokens))
        path = out_dir / f"{prefix}{split}_{k:06d}.bin"
        write_shard(path, (tokens[i : min(i + block, stop)] for i in range(start, stop, block)))
        paths.append(path)
        if written is not None:
            written.append(path)
    return paths


def tokenize_stream(
    pieces: Iterable[str],
    out: BinaryIO,
    *,
    num_threads: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> int:
    """Encode a stream of text (documents already joined by ``<|endoftext|>``) as GPT-2 ids and
    write them to ``out`` as uint16, in bounded memory: the token cache's safe cuts and worker
    threads, two chunks per thread in flight. Returns the token count; ``on_progress(chars)``."""
    from gptcli.tokencache import CHUNK_CHARS, _encode_np, iter_chunks

    count = 0
    chars = 0
    with ThreadPoolExecutor(num_threads) as pool:
        in_flight: deque = deque()

        def write_oldest() -> None:
            nonlocal count
            ids = in_flight.popleft().result()
            out.write(ids.astype("<u2", copy=False).tobytes())
            count += len(ids)

        for chunk in iter_chunks(pieces, CHUNK_CHARS):
            in_flight.append(pool.submit(_encode_np, chunk))
            chars += len(chunk)
            while len(in_flight) > 2 * num_threads:
                write_oldest()
            if on_progress is not None:
                on_progress(chars)
        while in_flight:
            write_oldest()
    return count


def _lock_out_dir(out_dir: Path) -> fsutil.FileLock:
    """Claim ``out_dir`` for one ``prepare``: two writing the same shards would interleave them.
    The lock file goes when the lock does, so the directory holds only the shards afterwards."""
    lock = fsutil.FileLock(out_dir / LOCK_NAME, remove_on_release=True)
    try:
        got = lock.acquire(blocking=False)
    except OSError as e:
        raise DataError(f"{out_dir}: cannot write here ({os_error_reason(e)})") from None
    if not got:
        raise RunDirError(
            f"{out_dir}: another gptcli prepare is writing shards here; wait for it to finish or choose another -o"
        )
    return lock


def prepare(
    inputs: Sequence[str | Path],
    out_dir: Path,
    *,
    format: str | None = None,
    text_field: str = "text",
    errors: str = "strict",
    shard_size: int = 100_000_000,
    val_ratio: float = 0.1,
    val_tokens: int | None = None,
    num_threads: int = 1,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """Tokenize ``inputs`` (any format ``gptcli.formats`` reads) into llm.c shards in ``out_dir``:
    the last ``val_tokens`` (or ``val_ratio`` of the tokens) as ``val_*.bin``, the rest as
    ``train_*.bin``, ``shard_size`` tokens each. The ids stream to one temporary file first (the
    split needs the total), so memory stays bounded and the disk briefly holds the tokens twice.
    Refuses a directory that already holds shards: nothing written before is overwritten."""
    from gptcli.formats import iter_text, resolve_inputs

    if shard_size < 1:
        raise DataError(f"invalid --shard-size: {shard_size} (must be at least 1)")
    if not 0.0 <= val_ratio < 1.0:
        raise DataError(f"invalid --val-ratio: {val_ratio} (must be in [0, 1))")
    sources = resolve_inputs(inputs, format=format)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.glob("*.bin")):
        raise DataError(f"{out_dir}: already holds .bin shards; choose another -o or remove them first")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = tmp = None
    ok = False
    written: list[Path] = []
    try:
        lock = _lock_out_dir(out_dir)
        if any(out_dir.glob("*.bin")):  # written by a prepare that finished while this one started
            raise DataError(f"{out_dir}: already holds .bin shards; choose another -o or remove them first")
        # Holding the directory's lock, whatever temporary files are here are a killed prepare's.
        for stale in [*out_dir.glob(".tokens-*.tmp"), *out_dir.glob(f"{fsutil.TMP_PREFIX}*{fsutil.TMP_SUFFIX}")]:
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tokens-", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            n = tokenize_stream(
                iter_text(sources, text_field=text_field, errors=errors),
                f,
                num_threads=num_threads,
                on_progress=on_progress,
            )
        all_ids = _memmap(Path(tmp), 0, n)
        if val_tokens is not None and val_tokens >= n:
            raise UsageError(
                f"invalid --val-tokens: {val_tokens:,} (the input has {n:,} tokens in all; give fewer than that, "
                "so that some are left for training)"
            )
        n_val = min(n, val_tokens if val_tokens is not None else int(round(val_ratio * n)))
        if n - n_val < 1:
            raise DataError(
                f"{inputs[0]}: the input has only {n:,} token(s), all of them taken by --val-ratio {val_ratio:g}; "
                "lower --val-ratio or give more text"
            )
        train = write_shards(all_ids[: n - n_val], out_dir, split="train", shard_size=shard_size, written=written)
        val = write_shards(all_ids[n - n_val :], out_dir, split="val", shard_size=shard_size, written=written)
        del all_ids
        ok = True
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not ok:  # an interrupted prepare leaves no partial set of shards that looks complete
            for path in written:
                path.unlink(missing_ok=True)
        if lock is not None:
            lock.release()
        if not ok and created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a failed run leaves no empty directory behind
    return {
        "dir": str(out_dir),
        "inputs": [str(s) for s in sources],
        "tokens": n,
        "train_tokens": n - n_val,
        "val_tokens": n_val,
        "train_shards": [p.name for p in train],
        "val_shards": [p.name for p in val],
    }


HASH_CACHE = "shard-sha256.json"  # under $GPTCLI_HOME: each shard's digest and the stat it was taken at
_HASH_BLOCK = 8 << 20


def _stat_key(path: Path) -> tuple[str, list[int]]:
    st = path.stat()
    return str(path.resolve()), [st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev]


def _read_hash_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    buf = bytearray(_HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def shard_digest(path: Path, *, cache_dir: Path | None = None) -> str:
    """The sha256 of every byte of ``path``, hashed once and then remembered in
    ``$GPTCLI_HOME/shard-sha256.json`` under the file's resolved path, keyed by its size,
    modification time (ns), inode and device: a later start re-hashes only a file whose stat
    changed. Hashing runs at about 1 GB/s (sha256 on one core, or the disk's read speed if lower),
    so a 10B-token corpus (20 GB) costs some 20 s once; afterwards a stat per shard.

    What escapes it: an edit that leaves size, mtime and inode all as they were (a writer that
    restores the mtime by hand); ``touch`` or any ordinary write is caught."""
    from gptcli.paths import gptcli_home

    cache = Path(cache_dir) if cache_dir is not None else gptcli_home()
    store = cache / HASH_CACHE
    name, key = _stat_key(path)
    hit = _read_hash_cache(store).get(name)
    if isinstance(hit, dict) and hit.get("stat") == key and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    digest = _sha256_file(path)
    if _stat_key(path)[1] != key:  # written while it was hashed: no digest to trust or remember
        raise DataError(f"{path}: changed while it was being read; run again once it is written")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with fsutil.FileLock(cache / (HASH_CACHE + ".lock")):
            entries = _read_hash_cache(store)
            entries[name] = {"stat": key, "sha256": digest}
            fsutil.atomic_write(store, json.dumps(entries, indent=0))
    except OSError:
        pass  # a read-only home: hashed again next time, the answer the same
    return digest


def fingerprint(files: Sequence[Path], *, cache_dir: Path | None = None) -> str:
    """A fingerprint of shard files: each file's name, size and the sha256 of all its bytes
    (``shard_digest``, cached by stat), so a change anywhere inside a shard is a change of data."""
    h = hashlib.sha256(b"shards-v2\0")
    for path in files:
        h.update(f"{path.name}\0{path.stat().st_size}\0{shard_digest(path, cache_dir=cache_dir)}\0".encode())
    return h.hexdigest()


def sampled_fingerprint(files: Sequence[Path], *, sample: int = 1 << 20) -> str:
    """The fingerprint of checkpoints made before ``fingerprint`` hashed every byte: each file's
    name, size, and first and last MiB. Accepted on resume for those checkpoints only."""
    h = hashlib.sha256()
    for path in files:
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            h.update(f.read(sample))
            f.seek(max(0, size - sample))
            h.update(f.read(sample))
    return h.hexdigest()


def run_tokens(data: Sequence[str | Path], val_file: str | Path | None) -> tuple:
    """(train ids, val ids, fingerprint, older fingerprint) of a training run whose data are shards: the train shards of ``data``,
    and the val shards of ``val_file`` or, without it, of ``data`` (llm.c and nanoGPT keep both
    splits side by side)."""
    train_files, val_files = shard_files(data)
    if val_file is not None:
        extra_train, extra_val = shard_files([val_file])
        val_files = extra_train + extra_val
    if not train_files:
        raise DataError(f"{data[0]}: no train shards (names with 'train', or train.bin)")
    if not val_files:
        raise DataError(
            f"{data[0]}: no val shards (names with 'val', or val.bin); pass --val-file SHARD or "
            "make them with gptcli prepare --val-ratio"
        )
    files = [*train_files, *val_files]
    return read_tokens(train_files), read_tokens(val_files), fingerprint(files), sampled_fingerprint(files)
