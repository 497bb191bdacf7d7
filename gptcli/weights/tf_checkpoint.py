"""Reading TensorFlow checkpoints (the "V2" tensor-bundle format) without TensorFlow.

A checkpoint ``PREFIX`` is two files:

- ``PREFIX.index``: an SSTable (LevelDB's table format: prefix-compressed key/value blocks, an
  index block and a 48-byte footer). The key ``""`` holds a ``BundleHeaderProto``; every other
  key is a tensor name whose value is a ``BundleEntryProto``: dtype, shape, shard, offset and size
  in the data file, and the masked CRC32C of the tensor's bytes.
- ``PREFIX.data-00000-of-00001``: the tensors' raw little-endian bytes, back to back.

OpenAI's GPT-2 checkpoints are written this way (uncompressed, one shard), so a few hundred lines
replace a 600 MB TensorFlow install. Every tensor is checked against the CRC32C in the index, so a
corrupted or truncated download is reported with the tensor's name instead of loading garbage.
(The tests build checkpoints offline with a writer of their own, tests/weights_helpers.py.)
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import google_crc32c  # C implementation: GB/s, so checking 6 GB of 1558M weights is cheap
import numpy as np

from gptcli.errors import CheckpointError, UsageError

TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_LEN = 48  # two BlockHandles padded to 40 bytes, then the 8-byte magic
HEADER_KEY = b""

# tensorflow/core/framework/types.proto: the numeric dtypes a checkpoint of weights may hold.
DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"),
    2: np.dtype("<f8"),
    3: np.dtype("<i4"),
    4: np.dtype("u1"),
    5: np.dtype("<i2"),
    6: np.dtype("i1"),
    9: np.dtype("<i8"),
    10: np.dtype("?"),
    17: np.dtype("<u2"),
    19: np.dtype("<f2"),
    22: np.dtype("<u4"),
    23: np.dtype("<u8"),
}
_DTYPE_NAMES = {7: "string", 8: "complex64", 14: "bfloat16", 18: "complex128", 20: "resource", 21: "variant"}


# ---------------------------------------------------------------------------------------------
# CRC32C, masked as LevelDB and TensorFlow store it


_CRC_CHUNK = 8 << 20


def crc32c(data: bytes | bytearray | memoryview) -> int:
    if isinstance(data, bytes):
        return google_crc32c.value(data)
    # The C function takes only bytes; copy a writable buffer a slice at a time, not whole.
    view, crc = memoryview(data).cast("B"), 0
    for i in range(0, len(view), _CRC_CHUNK):
        crc = google_crc32c.extend(crc, bytes(view[i : i + _CRC_CHUNK]))
    return crc


def unmask_crc(masked: int) -> int:
    """Undo LevelDB's mask (a CRC stored next to data that itself holds CRCs is rotated and offset)."""
    rot = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Protocol-buffer wire format: only what the two bundle messages need


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """(field number, wire type, value) for each field of a serialized message."""
    pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        field_no, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value = buf[pos : pos + n]
            if len(value) != n:
                raise ValueError("truncated field")
            pos += n
        elif wire == 5:
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        yield field_no, wire, value


@dataclass(frozen=True)
class TensorEntry:
    """One tensor's ``BundleEntryProto``."""

    name: str
    dtype_code: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    crc32c: int  # masked, as stored
    sliced: bool = False

    @property
    def dtype(self) -> np.dtype | None:
        return DTYPES.get(self.dtype_code)

    @property
    def dtype_name(self) -> str:
        dt = self.dtype
        return str(dt.name) if dt is not None else _DTYPE_NAMES.get(self.dtype_code, f"dtype {self.dtype_code}")


def _parse_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for no, _, value in _fields(buf):
        if no == 2:  # Dim
            size = 0
            for dno, _, dval in _fields(value):  # type: ignore[arg-type]
                if dno == 1:
                    size = dval if dval < (1 << 63) else dval - (1 << 64)  # type: ignore[operator]
            dims.append(int(size))
        elif no == 3 and value:
            raise ValueError("shape of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    kw: dict = {"dtype_code": 0, "shape": (), "shard_id": 0, "offset": 0, "size": 0, "crc32c": 0, "sliced": False}
    for no, _, value in _fields(buf):
        if no == 1:
            kw["dtype_code"] = value
        elif no == 2:
            kw["shape"] = _parse_shape(value)  # type: ignore[arg-type]
        elif no == 3:
            kw["shard_id"] = value
        elif no == 4:
            kw["offset"] = value
        elif no == 5:
            kw["size"] = value
        elif no == 6:
            kw["crc32c"] = value
        elif no == 7:
            kw["sliced"] = True
    return TensorEntry(name=name, **kw)


# ---------------------------------------------------------------------------------------------
# SSTable


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Key/value pairs of one (uncompressed) table block, undoing the prefix compression."""
    if len(block) < 4:
        raise ValueError("block too short")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError("bad restart array")
    pos, key = 0, b""
    while pos < limit:
        shared, pos = _read_varint(block, pos)
        non_shared, pos = _read_varint(block, pos)
        value_len, pos = _read_varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise ValueError("corrupt block entry")
        key = key[:shared] + block[pos : pos + non_shared]
        pos += non_shared
        yield key, block[pos : pos + value_len]
        pos += value_len


def _read_block(data: bytes, offset: int, size: int, what: str) -> bytes:
    end = offset + size
    if end + 5 > len(data):
        raise ValueError(f"{what} runs past the end of the file")
    block, kind = data[offset:end], data[end]
    stored = struct.unpack_from("<I", data, end + 1)[0]
    if unmask_crc(stored) != crc32c(data[offset : end + 1]):
        raise ValueError(f"{what} fails its CRC32C check")
    if kind != 0:
        raise ValueError(f"{what} is compressed (type {kind}); only uncompressed tables are supported")
    return block


def read_table(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Every key/value pair of an SSTable held in ``data``, in key order."""
    if len(data) < _FOOTER_LEN:
        raise ValueError("file too short for a table")
    footer = data[-_FOOTER_LEN:]
    if struct.unpack_from("<Q", footer, 40)[0] != TABLE_MAGIC:
        raise ValueError("no table magic number in the footer")
    _, pos = _read_varint(footer, 0)  # metaindex offset
    _, pos = _read_varint(footer, pos)  # metaindex size
    index_offset, pos = _read_varint(footer, pos)
    index_size, pos = _read_varint(footer, pos)
    index = _read_block(data, index_offset, index_size, "index block")
    for _, handle in _block_entries(index):
        off, p = _read_varint(handle, 0)
        size, _ = _read_varint(handle, p)
        yield from _block_entries(_read_block(data, off, size, f"data block at {off}"))


# ---------------------------------------------------------------------------------------------
# Bundles


def data_file(prefix: str | Path, shard: int = 0, num_shards: int = 1) -> Path:
    return Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")


def find_prefix(path: str | Path) -> Path:
    """The checkpoint prefix from a directory (its ``checkpoint`` file, else its one ``.index``),
    a prefix, or a path to the ``.index`` or a ``.data`` file."""
    p = Path(path)
    if p.is_dir():
        state = p / "checkpoint"
        if state.is_file():
            for line in state.read_text(encoding="utf-8", errors="replace").splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "model_checkpoint_path":
                    name = Path(value.strip().strip('"'))
                    candidate = name if name.is_absolute() else p / name
                    # A checkpoint file copied from another machine may name an absolute path there.
                    for c in (candidate, p / name.name):
                        if Path(f"{c}.index").is_file():
                            return c
        indexes = sorted(p.glob("*.index"))
        if len(indexes) == 1:
            return indexes[0].with_suffix("")
        if not indexes:
            raise CheckpointError(f"{p}: no TensorFlow checkpoint here (no .index file)")
        raise CheckpointError(f"{p}: several checkpoints here ({', '.join(i.name for i in indexes)}); name one")
    if p.suffix == ".index":
        return p.with_suffix("")
    if ".data-" in p.name:
        return p.with_name(p.name.split(".data-")[0])
    if Path(f"{p}.index").is_file():
        return p
    raise CheckpointError(f"{p}: no TensorFlow checkpoint found ({p}.index missing)")


class BundleReader:
    """Reads tensors of a TensorFlow V2 checkpoint, checking each against its CRC32C."""

    def __init__(self, path: str | Path):
        self.prefix = find_prefix(path)
        index_path = Path(f"{self.prefix}.index")
        try:
            raw = index_path.read_bytes()
        except OSError as e:
            raise CheckpointError(f"{index_path}: cannot read ({e.strerror or e})") from None
        self.num_shards = 1
        self.entries: dict[str, TensorEntry] = {}
        try:
            for key, value in read_table(raw):
                if key == HEADER_KEY:
                    for no, _, v in _fields(value):
                        if no == 1:
                            self.num_shards = int(v)  # type: ignore[arg-type]
                        elif no == 2 and v != 0:
                            raise CheckpointError(f"{index_path}: big-endian checkpoints are not supported")
                    continue
                name = key.decode("utf-8")
                self.entries[name] = _parse_entry(name, value)
        except ValueError as e:
            raise CheckpointError(f"{index_path}: not a readable TensorFlow checkpoint index ({e})") from None
        self._files: dict[int, object] = {}

    def names(self) -> list[str]:
        return sorted(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self.entries[name].shape

    def _file(self, shard: int):
        f = self._files.get(shard)
        if f is None:
            path = data_file(self.prefix, shard, self.num_shards)
            try:
                f = open(path, "rb")  # noqa: SIM115 - kept open across reads, closed in close()
            except OSError as e:
                raise CheckpointError(f"{path}: cannot read ({e.strerror or e})") from None
            self._files[shard] = f
        return f

    def read(self, name: str) -> np.ndarray:
        """The tensor as a fresh, writable numpy array in native byte order."""
        e = self.entries.get(name)
        if e is None:
            raise CheckpointError(f"{self.prefix}: no tensor named {name!r}")
        if e.sliced:
            raise CheckpointError(f"{name}: partitioned (sliced) variables are not supported")
        dt = e.dtype
        if dt is None:
            raise CheckpointError(f"{name}: unsupported dtype {e.dtype_name}")
        count = int(np.prod(e.shape, dtype=np.int64))
        if count * dt.itemsize != e.size:
            raise CheckpointError(
                f"{name}: index says {e.size} bytes, but shape {list(e.shape)} of {dt.name} needs {count * dt.itemsize}"
            )
        f = self._file(e.shard_id)
        buf = bytearray(e.size)
        f.seek(e.offset)
        got = f.readinto(buf)
        if got != e.size:
            path = data_file(self.prefix, e.shard_id, self.num_shards)
            raise CheckpointError(
                f"{path}: tensor {name} is truncated: needs bytes {e.offset}..{e.offset + e.size}, file ends at {e.offset + got} "
                "(incomplete download? run gptcli download again)"
            )
        if crc32c(buf) != unmask_crc(e.crc32c):
            path = data_file(self.prefix, e.shard_id, self.num_shards)
            raise CheckpointError(
                f"{path}: tensor {name} fails its CRC32C check (corrupted download? delete it and download again)"
            )
        arr = np.frombuffer(buf, dtype=dt).reshape(e.shape)
        return arr.astype(dt.newbyteorder("="), copy=False)

    def close(self) -> None:
        for f in self._files.values():
            f.close()  # type: ignore[attr-defined]
        self._files.clear()

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorFlowReader:
    """The same interface, through TensorFlow's own ``tf.train.load_variable`` (as the book reads)."""

    def __init__(self, path: str | Path):
        try:
            import tensorflow as tf
        except ImportError:
            raise CheckpointError("--reader tensorflow needs TensorFlow: pip install tensorflow") from None
        self._tf = tf
        self.prefix = find_prefix(path)
        try:
            self._shapes = {n: tuple(s) for n, s in tf.train.list_variables(str(self.prefix))}
        except Exception as e:  # TensorFlow raises its own error types
            raise CheckpointError(
                f"{self.prefix}: TensorFlow cannot read this checkpoint: {str(e).splitlines()[0]}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._shapes)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def read(self, name: str) -> np.ndarray:
        try:
            return np.asarray(self._tf.train.load_variable(str(self.prefix), name))
        except Exception as e:
            raise CheckpointError(f"{self.prefix}: tensor {name}: {str(e).splitlines()[0]}") from None

    def close(self) -> None:
        pass

    def __enter__(self) -> TensorFlowReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_checkpoint(path: str | Path, reader: str = "builtin") -> BundleReader | TensorFlowReader:
    if reader == "builtin":
        return BundleReader(path)
    if reader in ("tensorflow", "tf"):
        return TensorFlowReader(path)
    raise UsageError(f"invalid --reader: {reader!r} (choose from builtin, tensorflow)")
