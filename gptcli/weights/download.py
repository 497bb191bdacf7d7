"""Downloading OpenAI's GPT-2 files, reliably: resume, retry, verify, never a half file.

Each file goes to ``NAME.part`` beside its target and is renamed only once complete and checked.
A partial file resumes with an HTTP Range request (a server that ignores Range sends the whole
file with 200, and the download starts over cleanly). Transient failures (connection reset or
refused, timeout, a body shorter than its Content-Length, 408, 429, 5xx) are retried with capped
exponential backoff, resuming where they stopped; 403, 404 and other client errors are not. An
HTML or XML body is an error page, never a model file. A lock file serialises two downloads into
the same folder, so the second finds the files complete and makes no requests at all.

The library never prints: progress and retries are reported through ``DownloadCallbacks``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from gptcli.errors import DownloadError, UsageError
from gptcli.weights import HPARAMS, SIZES, gpt2_dir
from gptcli.weights.openai import data_size, read_hparams

PRIMARY_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
MIRROR_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
BASE_URL_ENV = "GPTCLI_GPT2_BASE_URL"
BACKOFF_ENV = "GPTCLI_DOWNLOAD_BACKOFF"
# The hosts whose files are OpenAI's originals, byte for byte.
OFFICIAL_HOSTS = frozenset({"openaipublic.blob.core.windows.net", "f001.backblazeb2.com"})
DATA_FILE = "model.ckpt.data-00000-of-00001"

# Sizes of OpenAI's files. The data file's size follows from the shape in hparams.json (float32
# tensors back to back) and is checked for every host; .index and .meta depend on the program
# that wrote them, so theirs are checked only against the official hosts.
KNOWN_SIZES: dict[str, dict[str, int]] = {
    "124M": {DATA_FILE: 497_759_232, "model.ckpt.index": 5_215, "model.ckpt.meta": 471_155},
    "355M": {DATA_FILE: 1_419_292_672, "model.ckpt.index": 10_399, "model.ckpt.meta": 926_519},
    "774M": {DATA_FILE: 3_096_120_320},
    "1558M": {DATA_FILE: 6_230_444_800},
}
# GPT-2's tokenizer is the same for every size; a mirror with other bytes here is broken.
TOKENIZER_SIZES = {"encoder.json": 1_042_301, "vocab.bpe": 456_318}
# OpenAI's seven files per size, in download order: hparams.json first (the data file's expected
# size is computed from it), the big file last.
ORDER = (HPARAMS, "checkpoint", "encoder.json", "vocab.bpe", "model.ckpt.index", "model.ckpt.meta", DATA_FILE)

RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
CHUNK = 1 << 20
PART_SUFFIX = ".part"
LOCK_NAME = ".download.lock"


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries per URL; waits ``backoff * 2**n`` seconds between them, at most ``max_backoff``."""

    attempts: int = 8
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 60.0

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        d = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
        if retry_after is not None:
            d = min(self.max_backoff, max(d, retry_after))
        return d

    @classmethod
    def from_env(cls) -> RetryPolicy:
        raw = os.environ.get(BACKOFF_ENV)
        if not raw:
            return cls()
        try:
            base = float(raw)
        except ValueError:
            raise UsageError(f"invalid {BACKOFF_ENV}: {raw!r} (seconds, e.g. 1.0)") from None
        return cls(backoff=base, max_backoff=max(base, min(30.0, base * 32)))


class DownloadCallbacks:
    """What a download reports. The CLI draws progress bars from these; tests record them."""

    def on_plan(self, files: list[tuple[str, int | None]]) -> None: ...
    def on_file_start(self, name: str, total: int | None, done: int) -> None: ...
    def on_bytes(self, name: str, n: int) -> None: ...
    def on_file_done(self, name: str, path: Path, *, skipped: bool) -> None: ...
    def on_restart(self, name: str, reason: str) -> None: ...
    def on_retry(self, url: str, reason: str, delay: float) -> None: ...
    def on_fallback(self, failed_url: str, reason: str, next_url: str) -> None: ...
    def on_wait(self, lock: Path) -> None: ...


class _Transient(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _Fatal(Exception):
    """A failure that retrying the same URL cannot fix (another mirror still may)."""


# ---------------------------------------------------------------------------------------------
# Sizes


def base_urls(base_url: str | None = None) -> list[str]:
    """``--base-url``, else $GPTCLI_GPT2_BASE_URL, else OpenAI's host with the book's mirror as fallback."""
    chosen = base_url or os.environ.get(BASE_URL_ENV)
    if chosen:
        if urllib.parse.urlparse(chosen).scheme not in ("http", "https", "file"):
            raise UsageError(f"invalid --base-url: {chosen!r} (an http:// or https:// URL)")
        return [chosen.rstrip("/")]
    return [PRIMARY_URL, MIRROR_URL]


def file_url(base: str, size: str, name: str) -> str:
    return f"{base.rstrip('/')}/{size}/{name}"


def is_official(url: str) -> bool:
    return urllib.parse.urlparse(url).hostname in OFFICIAL_HOSTS


def expected_size(size: str, name: str, url: str, directory: Path | None = None) -> int | None:
    """The size this file must have, when it is known for this host; None when it is not."""
    if is_official(url) and name in KNOWN_SIZES.get(size, {}):
        return KNOWN_SIZES[size][name]
    if name in TOKENIZER_SIZES:
        return TOKENIZER_SIZES[name]
    if name == DATA_FILE and directory is not None and (directory / HPARAMS).is_file():
        try:
            return data_size(read_hparams(directory))
        except Exception:  # a broken hparams.json is reported by the conversion, with its name
            return None
    return None


# ---------------------------------------------------------------------------------------------
# Locking: two downloads into one folder take turns


class _DirLock:
    """An exclusive lock on ``directory/.download.lock`` (flock; msvcrt on Windows)."""

    def __init__(self, directory: Path, on_wait):
        self.path = directory / LOCK_NAME
        self.on_wait = on_wait
        self.f = None

    def __enter__(self) -> _DirLock:
        try:
            self.f = open(self.path, "a+b")  # noqa: SIM115 - closed in __exit__
        except OSError as e:
            raise DownloadError(f"{self.path.parent}: cannot write here ({e.strerror or e})") from None
        try:
            import fcntl
        except ImportError:  # Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(self.f.fileno(), msvcrt.LK_NBLCK, 1)
                    return self
                except OSError:
                    self.on_wait(self.path)
                    time.sleep(0.5)
        try:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.on_wait(self.path)
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        try:
            import fcntl

            fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        except ImportError:
            import msvcrt

            self.f.seek(0)
            msvcrt.locking(self.f.fileno(), msvcrt.LK_UNLCK, 1)
        finally:
            self.f.close()


# ---------------------------------------------------------------------------------------------
# One file


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_MARKUP = re.compile(rb"^\s*(<\?xml|<!doctype|<html|<head|<body|<error)", re.IGNORECASE)


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
        if isinstance(e, str):
            return e
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, ConnectionResetError):
        return "connection reset"
    if isinstance(e, http.client.RemoteDisconnected):
        return "server closed the connection without a response"
    if isinstance(e, http.client.IncompleteRead):
        return "connection closed mid-transfer"
    if isinstance(e, socket.gaierror):
        return f"cannot resolve host ({e.strerror or e})"
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg)


def _looks_like_markup(content_type: str, first: bytes) -> bool:
    ctype = content_type.split(";")[0].strip().lower()
    return ctype in ("text/html", "application/xhtml+xml", "application/xml", "text/xml") or bool(
        _MARKUP.match(first[:512])
    )


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class _Fetcher:
    def __init__(self, name: str, part: Path, expected: int | None, policy: RetryPolicy, cb: DownloadCallbacks):
        self.name, self.part, self.expected, self.policy, self.cb = name, part, expected, policy, cb
        self.announced: int | None = None  # the total size the server gave first

    def _check_total(self, url: str, total: int | None) -> None:
        if total is None:
            return
        if self.expected is not None and total != self.expected:
            raise _Fatal(f"{url}: server says {total:,} bytes, but {self.name} is {self.expected:,} bytes")
        if self.announced is not None and total != self.announced:
            self.part.unlink(missing_ok=True)
            raise _Fatal(f"{url}: server announced {self.announced:,} bytes, then {total:,} (wrong Content-Length)")
        self.announced = total

    def transfer(self, url: str) -> int:
        """One request; returns the complete size, or raises _Transient / _Fatal."""
        have = self.part.stat().st_size if self.part.exists() else 0
        headers = {"User-Agent": "gptcli", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        try:
            resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=self.policy.timeout)
        except urllib.error.HTTPError as e:
            with e:
                if e.code == 416 and have:
                    m = re.search(r"/(\d+)\s*$", e.headers.get("Content-Range") or "")
                    total = int(m.group(1)) if m else None
                    if total == have:
                        self._check_total(url, total)
                        return have  # the partial file was already complete
                    self.part.unlink(missing_ok=True)
                    self.cb.on_restart(self.name, f"server refused to resume at byte {have:,}")
                    raise _Transient(f"HTTP 416 resuming at byte {have:,}") from None
                status = f"HTTP {e.code} {e.reason}".strip()
                if e.code in RETRY_STATUSES or 500 <= e.code < 600:
                    raise _Transient(status, _retry_after(e.headers)) from None
                raise _Fatal(f"{url}: {status}") from None
        except urllib.error.URLError as e:
            raise _Transient(_describe(e)) from None
        except (OSError, http.client.HTTPException) as e:
            raise _Transient(_describe(e)) from None

        with resp:
            status = resp.status
            length = resp.headers.get("Content-Length")
            length = int(length) if length and length.isdigit() else None
            if status == 206 and have:
                m = _CONTENT_RANGE.match(resp.headers.get("Content-Range") or "")
                if not m or int(m.group(1)) != have:
                    self.part.unlink(missing_ok=True)
                    raise _Transient(f"server resumed at the wrong place ({resp.headers.get('Content-Range')!r})")
                total = int(m.group(3)) if m.group(3) != "*" else (have + length if length is not None else None)
                offset, mode = have, "ab"
            elif status == 200:
                if have:  # the server ignored Range and sends the whole file: start over
                    self.cb.on_restart(self.name, "server does not support resuming; starting over")
                total, offset, mode = length, 0, "wb"
            else:
                raise _Fatal(f"{url}: unexpected HTTP {status}")
            self._check_total(url, total)
            self.cb.on_file_start(self.name, total, offset)
            first = True
            try:
                f = open(self.part, mode)  # noqa: SIM115 - closed in the finally below
            except OSError as e:
                raise DownloadError(f"{self.part}: cannot write ({e.strerror or e})") from None
            try:
                while True:
                    try:
                        chunk = resp.read(CHUNK)
                    except (OSError, http.client.HTTPException) as e:
                        raise _Transient(f"{_describe(e)} after {offset:,} bytes") from None
                    if not chunk:
                        break
                    if first and offset == 0 and _looks_like_markup(resp.headers.get("Content-Type", ""), chunk):
                        raise _Fatal(f"{url}: server sent an HTML/XML page (HTTP {status}), not the file")
                    first = False
                    try:
                        f.write(chunk)
                    except OSError as e:  # a full disk is not worth retrying
                        raise DownloadError(f"{self.part}: cannot write ({e.strerror or e})") from None
                    offset += len(chunk)
                    self.cb.on_bytes(self.name, len(chunk))
            finally:
                try:
                    f.flush()
                    os.fsync(f.fileno())
                except OSError:
                    pass
                f.close()
            if total is not None and offset < total:
                raise _Transient(f"connection closed after {offset:,} of {total:,} bytes")
            if total is not None and offset > total:
                self.part.unlink(missing_ok=True)
                raise _Fatal(f"{url}: received {offset:,} bytes, more than the {total:,} announced")
            return offset

    def fetch(self, url: str) -> None:
        failures = 0
        while True:
            try:
                size = self.transfer(url)
                break
            except _Transient as e:
                failures += 1
                if failures >= self.policy.attempts:
                    raise _Fatal(f"{url}: {e} (gave up after {failures} attempts)") from None
                delay = self.policy.delay(failures, e.retry_after)
                self.cb.on_retry(url, str(e), delay)
                time.sleep(delay)
        if self.expected is not None and size != self.expected:
            self.part.unlink(missing_ok=True)
            raise _Fatal(f"{url}: received {size:,} bytes, but {self.name} is {self.expected:,} bytes")
        with open(self.part, "rb") as f:
            if _MARKUP.match(f.read(512)):
                self.part.unlink(missing_ok=True)
                raise _Fatal(f"{url}: server sent an HTML/XML page, not the file")


def fetch_file(
    urls: list[str],
    dest: Path,
    *,
    expected: list[int | None] | None = None,
    policy: RetryPolicy | None = None,
    callbacks: DownloadCallbacks | None = None,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that works. The caller holds the folder's lock."""
    policy = policy or RetryPolicy()
    cb = callbacks or DownloadCallbacks()
    part = dest.with_name(dest.name + PART_SUFFIX)
    errors: list[str] = []
    for i, url in enumerate(urls):
        want = expected[i] if expected else None
        try:
            _Fetcher(dest.name, part, want, policy, cb).fetch(url)
        except _Fatal as e:
            errors.append(str(e))
            if i + 1 < len(urls):
                # A mirror's partial file is no use for another's bytes only if they differ; the
                # official copies are identical, so the partial file is kept for the next one.
                cb.on_fallback(url, str(e), urls[i + 1])
                continue
            raise DownloadError("; ".join(errors)) from None
        try:
            os.replace(part, dest)
        except OSError as e:
            raise DownloadError(f"{dest}: cannot write ({e.strerror or e})") from None
        return dest
    raise DownloadError("; ".join(errors) or f"{dest.name}: no URL to download from")


# ---------------------------------------------------------------------------------------------
# A GPT-2 size


def download_gpt2(
    size: str,
    directory: str | Path | None = None,
    *,
    base_url: str | None = None,
    policy: RetryPolicy | None = None,
    callbacks: DownloadCallbacks | None = None,
) -> Path:
    """Fetch OpenAI's seven files of one GPT-2 size into ``directory`` (default: the cache).

    Files already complete are not requested again. Returns the directory."""
    if size not in SIZES:
        raise UsageError(f"invalid --size: {size!r} (choose from {', '.join(SIZES)})")
    out = Path(directory) if directory is not None else gpt2_dir(size)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{out}: cannot create the folder ({e.strerror or e})") from None
    bases = base_urls(base_url)
    policy = policy or RetryPolicy.from_env()
    cb = callbacks or DownloadCallbacks()
    cb.on_plan([(name, expected_size(size, name, file_url(bases[0], size, name), out)) for name in ORDER])
    with _DirLock(out, cb.on_wait):
        for name in ORDER:
            dest = out / name
            urls = [file_url(b, size, name) for b in bases]
            sizes = [expected_size(size, name, u, out) for u in urls]
            if dest.is_file():
                if all(s is None or dest.stat().st_size == s for s in sizes):
                    cb.on_file_done(name, dest, skipped=True)
                    continue
                dest.unlink()  # a complete-looking file of the wrong size: fetch it again
            fetch_file(urls, dest, expected=sizes, policy=policy, callbacks=cb)
            if name == HPARAMS:
                _check_hparams(dest, urls[0])
            cb.on_file_done(name, dest, skipped=False)
    return out


def _check_hparams(path: Path, url: str) -> None:
    try:
        hp = json.loads(path.read_text(encoding="utf-8"))
        ok = isinstance(hp, dict) and all(k in hp for k in ("n_vocab", "n_ctx", "n_embd", "n_head", "n_layer"))
    except (OSError, ValueError):
        ok = False
    if not ok:
        path.unlink(missing_ok=True)
        raise DownloadError(
            f"{url}: not GPT-2 hyperparameters (expected JSON with n_vocab, n_ctx, n_embd, n_head, n_layer)"
        )
