"""Helpers for the weights tests: OpenAI-layout checkpoints written offline (with a TensorFlow
checkpoint writer: the library only reads them), reference models, and a loopback HTTP server
that injects faults."""

from __future__ import annotations

import json
import re
import shutil
import socket
import struct
import threading
import time
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from gptcli.config import ModelConfig
from gptcli.weights.openai import openai_shapes
from gptcli.weights.tf_checkpoint import DTYPES, HEADER_KEY, TABLE_MAGIC, TensorEntry, crc32c, data_file

ASSETS = Path(__file__).resolve().parents[1] / "gptcli" / "assets"
# The book's closing example on downloaded weights, as a user types it.
BOOK_SAMPLE = (
    "sample",
    "--model",
    "gpt2-124M",
    "--prompt",
    "Every effort moves you",
    "--top-k",
    "50",
    "--temperature",
    "1.5",
)
# OpenAI's shape (qkv bias, tied head) at the book's unit-test size.
TINY_OPENAI = dict(
    vocab_size=50257, context_length=16, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=True, tie_weights=True
)


# ---------------------------------------------------------------------------------------------
# A TensorFlow V2 checkpoint writer (TensorFlow reads what it writes): the inverse of
# gptcli.weights.tf_checkpoint, so the tests build OpenAI's files offline

_DTYPE_CODES = {dt: code for code, dt in DTYPES.items()}


def mask_crc(crc: int) -> int:
    """LevelDB's mask: a CRC stored next to data that itself contains CRCs stays distinguishable."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    if n < 0:
        n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(no: int, wire: int, payload: bytes | int) -> bytes:
    tag = _varint((no << 3) | wire)
    if wire == 0:
        return tag + _varint(int(payload))
    if wire == 5:
        return tag + struct.pack("<I", int(payload))
    assert isinstance(payload, bytes)
    return tag + _varint(len(payload)) + payload


def _entry_bytes(e: TensorEntry) -> bytes:
    shape = b"".join(_field(2, 2, _field(1, 0, d) if d else b"") for d in e.shape)
    out = _field(1, 0, e.dtype_code) + _field(2, 2, shape)
    if e.shard_id:
        out += _field(3, 0, e.shard_id)
    if e.offset:
        out += _field(4, 0, e.offset)
    if e.size:
        out += _field(5, 0, e.size)
    return out + _field(6, 5, e.crc32c)


class _BlockBuilder:
    def __init__(self, restart_interval: int):
        self.restart_interval = restart_interval
        self.buf = bytearray()
        self.restarts = [0]
        self.count = 0
        self.last_key = b""

    def add(self, key: bytes, value: bytes) -> None:
        shared = 0
        if self.count < self.restart_interval:
            n = min(len(key), len(self.last_key))
            while shared < n and key[shared] == self.last_key[shared]:
                shared += 1
        else:
            self.restarts.append(len(self.buf))
            self.count = 0
        self.buf += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        self.last_key = key
        self.count += 1

    def size(self) -> int:
        return len(self.buf) + 4 * len(self.restarts) + 4

    def finish(self) -> bytes:
        return (
            bytes(self.buf)
            + b"".join(struct.pack("<I", r) for r in self.restarts)
            + struct.pack("<I", len(self.restarts))
        )


def write_table(items: list[tuple[bytes, bytes]], *, block_size: int = 262144, restart_interval: int = 16) -> bytes:
    """An uncompressed SSTable of sorted ``items`` (TensorFlow's bundle writer settings by default)."""
    out = bytearray()

    def emit(block: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(block))
        out.extend(block + b"\x00" + struct.pack("<I", mask_crc(crc32c(block + b"\x00"))))
        return handle

    index = _BlockBuilder(1)
    block = _BlockBuilder(restart_interval)
    for key, value in items:
        block.add(key, value)
        if block.size() >= block_size:
            # The block's last key separates it from the next one: every key in it is <= it.
            index.add(block.last_key, emit(block.finish()))
            block = _BlockBuilder(restart_interval)
    if block.count or not index.count:
        index.add(block.last_key, emit(block.finish()))
    meta_handle = emit(_BlockBuilder(restart_interval).finish())
    index_handle = emit(index.finish())
    footer = (meta_handle + index_handle).ljust(40, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out + footer)


def write_bundle(prefix: str | Path, tensors: Mapping[str, np.ndarray], *, block_size: int = 262144) -> None:
    """Write ``tensors`` as a one-shard TensorFlow V2 checkpoint at ``prefix`` (.index and .data)."""
    entries = []
    offset = 0
    with open(data_file(prefix), "wb") as f:
        for name in sorted(tensors):
            arr = np.asarray(tensors[name])
            dt = arr.dtype.newbyteorder("<")
            code = _DTYPE_CODES.get(dt)
            if code is None:
                raise ValueError(f"{name}: dtype {arr.dtype} cannot be written")
            raw = arr.astype(dt, copy=False).tobytes(order="C")
            f.write(raw)
            entries.append(TensorEntry(name, code, tuple(arr.shape), 0, offset, len(raw), mask_crc(crc32c(raw))))
            offset += len(raw)
    header = _field(1, 0, 1) + _field(3, 2, _field(1, 0, 1))  # one shard, little-endian, producer 1
    items = [(HEADER_KEY, header)] + [(e.name.encode("utf-8"), _entry_bytes(e)) for e in entries]
    Path(f"{prefix}.index").write_bytes(write_table(items, block_size=block_size))


# ---------------------------------------------------------------------------------------------
# OpenAI's layout


def hparams_from_config(cfg: ModelConfig) -> dict[str, int]:
    """OpenAI's hparams.json for this shape: the inverse of ``openai.config_from_hparams``."""
    return {
        "n_vocab": cfg.vocab_size,
        "n_ctx": cfg.context_length,
        "n_embd": cfg.emb_dim,
        "n_head": cfg.n_heads,
        "n_layer": cfg.n_layers,
    }


def tiny_openai_cfg(**overrides) -> ModelConfig:
    return ModelConfig(**{**TINY_OPENAI, **overrides})


def random_openai_tensors(cfg: ModelConfig, seed: int = 0) -> dict[str, np.ndarray]:
    """Weights in OpenAI's layout, scaled like a trained GPT-2 so logits stay in a sane range."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in openai_shapes(cfg).items():
        if name.endswith("/g"):
            arr = 1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)
        elif name.endswith("/b"):
            arr = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        else:
            arr = 0.02 * rng.standard_normal(shape, dtype=np.float32)
        out[name] = arr.astype(np.float32, copy=False)
    return out


def write_openai_dir(
    directory: Path, cfg: ModelConfig, tensors: dict[str, np.ndarray], *, block_size: int = 262144
) -> Path:
    """The seven files of an OpenAI GPT-2 download, with these weights."""
    directory.mkdir(parents=True, exist_ok=True)
    write_bundle(directory / "model.ckpt", tensors, block_size=block_size)
    (directory / "hparams.json").write_text(json.dumps(hparams_from_config(cfg), indent=2), encoding="utf-8")
    (directory / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt"\nall_model_checkpoint_paths: "model.ckpt"\n', encoding="utf-8"
    )
    (directory / "model.ckpt.meta").write_bytes(b"\x0a\x0bmeta-graph placeholder" * 20)
    for name in ("encoder.json", "vocab.bpe"):
        shutil.copyfile(ASSETS / name, directory / name)
    return directory


def hf_model_from_openai(cfg: ModelConfig, tensors: dict[str, np.ndarray]):
    """transformers' GPT2LMHeadModel holding the same weights: HF's Conv1D keeps OpenAI's
    (in, out) layout, so this map is only a rename, independent of gptcli's transposes."""
    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.context_length,
        n_embd=cfg.emb_dim,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(hf_cfg)
    sd = {}
    for name, arr in tensors.items():
        parts = name.split("/")[1:]
        if parts[0].startswith("h"):
            parts[0] = "h." + parts[0][1:]
        leaf = {"g": "weight", "w": "weight", "b": "bias"}.get(parts[-1])
        key = "transformer." + (".".join(parts[:-1] + [leaf]) if leaf else parts[0] + ".weight")
        t = torch.from_numpy(np.array(arr))
        sd[key] = t.squeeze(0) if name.endswith("/w") else t
    sd["lm_head.weight"] = sd["transformer.wte.weight"]
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not [m for m in missing if not m.endswith((".attn.bias", ".attn.masked_bias"))], missing
    assert not unexpected, unexpected
    return model.eval()


def invoke(*args: str):
    """Run a gptcli command in-process (no interpreter start-up), as CliRunner does. --quiet sets a
    module-level flag in gptcli.console that outlives the call, so each call starts from loud."""
    from typer.testing import CliRunner

    from gptcli import console
    from gptcli.cli import app

    console.set_quiet(False)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        console.set_quiet(False)


def logits_of(model, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(idx)
    return (out.logits if hasattr(out, "logits") else out).float()


# ---------------------------------------------------------------------------------------------
# A loopback server with faults


class FaultServer:
    """Serves files under ``root`` on 127.0.0.1 with Range support, and injects faults.

    ``faults[filename]`` is a list consumed one per request for that file:
      "drop"        send the headers and half the body, then close the connection
      "reset"       the same, but abort the connection (TCP RST: the client sees ECONNRESET)
      "503"         HTTP 503 (with Retry-After: 0)
      "404"         HTTP 404 with an XML error body (as Azure and S3 send)
      "html"        HTTP 200 with an HTML page
      "long-length" a Content-Length 1000 bytes larger than the body, then close
      "short-length" a Content-Length 1000 bytes smaller than the file
    ``ignore_range`` makes it answer every request with the whole file (200).
    ``requests`` records [filename, Range header, status, body bytes sent] per request, from the
    moment the request arrives (so a client never finishes before its request is recorded).
    """

    def __init__(self, root: Path, *, ignore_range: bool = False):
        self.root = Path(root)
        self.faults: dict[str, list[str]] = {}
        self.ignore_range = ignore_range
        self.requests: list[list] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 10  # a stuck client cannot hold a thread forever

            def log_message(self, *args):
                pass

            def _record(self, name, status, sent):
                self.entry[2], self.entry[3] = status, sent

            def _send(self, status, body: bytes, ctype="application/octet-stream", extra=None):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                rel = self.path.split("?")[0].lstrip("/")
                name = rel.rsplit("/", 1)[-1]
                path = server.root / rel
                self.entry = [name, self.headers.get("Range"), None, 0]
                with server.lock:
                    server.requests.append(self.entry)
                    queue = server.faults.get(name) or []
                    fault = queue.pop(0) if queue else None
                if fault == "503":
                    self._send(503, b"busy", "text/plain", {"Retry-After": "0"})
                    return self._record(name, 503, 0)
                if fault == "404" or not path.is_file():
                    body = b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code></Error>'
                    self._send(404, body, "application/xml")
                    return self._record(name, 404, 0)
                if fault == "html":
                    self._send(200, b"<!DOCTYPE html><html><body>Sign in to continue</body></html>", "text/html")
                    return self._record(name, 200, 0)
                data_len = path.stat().st_size
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and not server.ignore_range:
                    m = re.match(r"bytes=(\d+)-$", rng)
                    start = int(m.group(1)) if m else 0
                    if start >= data_len:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{data_len}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return self._record(name, 416, 0)
                    status = 206
                length = data_len - start
                announced = (
                    length + 1000 if fault == "long-length" else length - 1000 if fault == "short-length" else length
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(announced))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{data_len - 1}/{data_len}")
                self.end_headers()
                limit = length // 2 if fault in ("drop", "reset") else min(length, announced)
                sent = 0
                with open(path, "rb") as f:
                    f.seek(start)
                    while sent < limit:
                        chunk = f.read(min(1 << 20, limit - sent))
                        if not chunk:
                            break
                        try:
                            self.wfile.write(chunk)
                        except OSError:
                            break
                        sent += len(chunk)
                        self._record(name, status, sent)
                self._record(name, status, sent)
                if fault == "reset":
                    time.sleep(0.3)  # let the client read what was sent: an RST discards unread data
                    self.close_connection = True
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()
                if fault in ("drop", "long-length"):
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def gets(self, name: str) -> list[tuple[str, str | None, int, int]]:
        with self.lock:
            return [tuple(r) for r in self.requests if r[0] == name]

    def __enter__(self) -> FaultServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
