"""Downloading OpenAI's GPT-2 files, reliably: resume, retry, verify, never a half file.

Each file goes to ``NAME.part`` beside its target and is renamed only once complete and checked.
A partial file resumes with an HTTP Range request (a server that ignores Range sends the whole
file with 200, and the download starts over cleanly). Transient failures (connection reset or
refused, timeout, a body shorter than its Content-Length, 408, 429, 5xx) are retried with capped
exponential backoff, resuming where they stopped; 403, 404 and other client errors are not. A
transfer that stalls (too few bytes for ``stall`` seconds) is retried the same way, and the whole
download has a deadline. An unresolvable host or a refused connection gets one quick retry only:
that is an offline machine or a wrong --base-url, not a busy server. An HTML or XML body is an
error page, never a model file, and a file whose size cannot be checked (no Content-Length, no
known size) is never kept. A lock file serialises two downloads into the same folder, so the
second finds the files complete and makes no requests at all; it is removed when the download
ends, however it ends.

The library never prints: progress and retries are reported through ``DownloadCallbacks``.
"""

from __future__ import annotations

import errno
import http.client
import itertools
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gptcli import fsutil
from gptcli.errors import CheckpointError, DownloadError, UsageError
from gptcli.weights import HPARAMS, SIZES, gpt2_dir
from gptcli.weights.openai import config_from_hparams, data_size, read_hparams

PRIMARY_URL = "https://openaipublic.blob.core.windows.net/gpt-2/models"
MIRROR_URL = "https://f001.backblazeb2.com/file/LLMs-from-scratch/gpt2"
BASE_URL_ENV = "GPTCLI_GPT2_BASE_URL"
BACKOFF_ENV = "GPTCLI_DOWNLOAD_BACKOFF"
STALL_ENV = "GPTCLI_DOWNLOAD_STALL_TIMEOUT"
DEADLINE_ENV = "GPTCLI_DOWNLOAD_DEADLINE"
# Where a failure that looks like no network points the user.
OFFLINE_HINT = (
    "check the network, or pass --base-url URL of a mirror (see 'An offline machine' in the README's Troubleshooting)"
)
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
    """``attempts`` tries per URL; waits ``backoff * 2**n`` seconds between them, at most ``max_backoff``.

    A transfer that receives fewer than ``stall_bytes`` in ``stall`` seconds has stalled, and
    counts as a failed attempt (a server dripping a byte every two seconds would otherwise hold
    it forever); ``deadline`` bounds a whole download. An unresolvable host or a refused
    connection gets ``unreachable_attempts`` tries in all, with at most a second between them.
    """

    attempts: int = 8
    backoff: float = 1.0
    max_backoff: float = 30.0
    timeout: float = 60.0
    stall: float = 60.0
    stall_bytes: int = 16_384
    deadline: float = 12 * 3600.0
    unreachable_attempts: int = 2

    def delay(self, failures: int, retry_after: float | None = None) -> float:
        d = min(self.max_backoff, self.backoff * 2 ** (failures - 1))
        if retry_after is not None:
            d = min(self.max_backoff, max(d, retry_after))
        return d

    @classmethod
    def from_env(cls) -> RetryPolicy:
        def seconds(env: str, example: str, *, zero_ok: bool = False) -> float | None:
            raw = os.environ.get(env)
            if not raw:
                return None
            try:
                value = float(raw)
            except ValueError:
                value = float("nan")
            if not (value >= 0 if zero_ok else value > 0) or value == float("inf"):
                raise UsageError(f"invalid {env}: {raw!r} (seconds, e.g. {example})") from None
            return value

        kw: dict[str, float] = {}
        if (base := seconds(BACKOFF_ENV, "1.0", zero_ok=True)) is not None:
            kw.update(backoff=base, max_backoff=max(base, min(30.0, base * 32)))
        if (stall := seconds(STALL_ENV, "60")) is not None:
            kw.update(stall=stall)
        if (deadline := seconds(DEADLINE_ENV, "3600")) is not None:
            kw.update(deadline=deadline)
        return cls(**kw)


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
    def __init__(self, reason: str, retry_after: float | None = None, *, unreachable: bool = False):
        super().__init__(reason)
        self.retry_after = retry_after
        self.unreachable = unreachable  # no DNS answer or a refused connection: maybe offline


class _Fatal(Exception):
    """A failure that retrying the same URL cannot fix (another mirror still may). ``cause``: the
    failure in a few words, without the URL (``connection refused``)."""

    def __init__(self, reason: str, *, unreachable: bool = False, cause: str | None = None):
        super().__init__(reason)
        self.unreachable = unreachable
        self.cause = cause or reason


class _Deadline(Exception):
    """The whole download ran past its deadline: no retry, no mirror."""


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
    """An exclusive lock on ``directory/.download.lock`` (``fsutil.FileLock``), waited for.

    The holder deletes the lock file before releasing it, so no download, finished or
    interrupted, leaves it behind (Windows cannot delete an open file, so there it stays).
    """

    def __init__(self, directory: Path, on_wait):
        self.lock = fsutil.FileLock(directory / LOCK_NAME, remove_on_release=True)
        self.on_wait = on_wait

    def __enter__(self) -> _DirLock:
        try:
            self.lock.acquire(on_wait=self.on_wait)
        except OSError as e:
            raise DownloadError(f"{self.lock.path.parent}: cannot write here ({e.strerror or e})") from None
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


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
        return f"cannot resolve host: {e.strerror or e}"
    msg = getattr(e, "strerror", None) or str(e) or type(e).__name__
    return str(msg)


def _is_unreachable(e: BaseException) -> bool:
    """No DNS answer, a refused connection or no route: an offline machine or a wrong host, which
    waiting minutes will not fix (unlike a reset or a timeout)."""
    if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
        e = e.reason if isinstance(e.reason, BaseException) else e
    return isinstance(e, (socket.gaierror, ConnectionRefusedError)) or (
        isinstance(e, OSError) and e.errno in (errno.ECONNREFUSED, errno.ENETUNREACH, errno.EHOSTUNREACH)
    )


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
    def __init__(
        self,
        name: str,
        part: Path,
        expected: int | None,
        policy: RetryPolicy,
        cb: DownloadCallbacks,
        *,
        until: float,
        checked_after: bool = False,
    ):
        self.name, self.part, self.expected, self.policy, self.cb = name, part, expected, policy, cb
        self.until = until  # time.monotonic() deadline of the whole download
        self.checked_after = checked_after  # its content is validated once complete (hparams.json)
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

    def transfer(self, url: str) -> tuple[int, bool]:
        """One request; returns the complete size and whether the transfer's end was checked (a
        size known in advance, or chunked encoding's final chunk), or raises _Transient / _Fatal
        / _Deadline."""
        have = self.part.stat().st_size if self.part.exists() else 0
        resp = self._request(url, have)
        if resp is None:
            return have, True  # the partial file was already complete, at the size the server gave
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
            if total is None:  # no size from the server: the one the file must have, if known
                total = self.expected
            self._check_total(url, total)
            self.cb.on_file_start(self.name, total, offset)
            offset = self._receive(url, resp, offset, mode)
            if total is not None and offset < total:
                raise _Transient(f"connection closed after {offset:,} of {total:,} bytes")
            if total is not None and offset > total:
                self.part.unlink(missing_ok=True)
                raise _Fatal(f"{url}: received {offset:,} bytes, more than the {total:,} announced")
            # A body without Content-Length ends when the connection closes, cut short or not;
            # chunked encoding ends with a final empty chunk (http.client raises without one).
            return offset, total is not None or bool(getattr(resp, "chunked", False))

    def _request(self, url: str, have: int) -> http.client.HTTPResponse | None:
        """The response to a GET of ``url`` for the bytes after the ``have`` already kept, or None
        when the server says those are the whole file."""
        headers = {"User-Agent": "gptcli", "Accept-Encoding": "identity"}
        if have:
            headers["Range"] = f"bytes={have}-"
        # A socket silent for the stall time has stalled, and none may outlast the deadline.
        timeout = max(0.05, min(self.policy.timeout, self.policy.stall, self.until - time.monotonic()))
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
        except urllib.error.HTTPError as e:
            with e:
                if e.code == 416 and have:
                    m = re.search(r"/(\d+)\s*$", e.headers.get("Content-Range") or "")
                    total = int(m.group(1)) if m else None
                    if total == have:
                        self._check_total(url, total)
                        return None
                    self.part.unlink(missing_ok=True)
                    self.cb.on_restart(self.name, f"server refused to resume at byte {have:,}")
                    raise _Transient(f"HTTP 416 resuming at byte {have:,}") from None
                status = f"HTTP {e.code} {e.reason}".strip()
                if e.code in RETRY_STATUSES or 500 <= e.code < 600:
                    raise _Transient(status, _retry_after(e.headers)) from None
                raise _Fatal(f"{url}: {status}") from None
        except (OSError, http.client.HTTPException) as e:  # URLError is an OSError
            raise _Transient(_describe(e), unreachable=_is_unreachable(e)) from None

    def _receive(self, url: str, resp: http.client.HTTPResponse, offset: int, mode: str) -> int:
        """Copy the body into the ``.part`` file (opened with ``mode``, holding ``offset`` bytes),
        watching for markup, stalls and the deadline; returns the file's size after it."""
        try:
            f = open(self.part, mode)  # noqa: SIM115 - closed in the finally below
        except OSError as e:
            raise DownloadError(f"{self.part}: cannot write ({e.strerror or e})") from None
        # read1 returns what has arrived, so a server that drips bytes is seen to stall rather
        # than keeping one read(CHUNK) waiting forever.
        read = getattr(resp, "read1", resp.read)
        first = True
        window_start, window_bytes = time.monotonic(), 0
        try:
            while True:
                try:
                    chunk = read(CHUNK)
                except (OSError, http.client.HTTPException) as e:
                    raise _Transient(f"{_describe(e)} after {offset:,} bytes") from None
                if not chunk:
                    return offset
                if first and offset == 0 and _looks_like_markup(resp.headers.get("Content-Type", ""), chunk):
                    raise _Fatal(f"{url}: server sent an HTML/XML page (HTTP {resp.status}), not the file")
                first = False
                try:
                    f.write(chunk)
                except OSError as e:  # a full disk is not worth retrying
                    raise DownloadError(f"{self.part}: cannot write ({e.strerror or e})") from None
                offset += len(chunk)
                self.cb.on_bytes(self.name, len(chunk))
                now, window_bytes = time.monotonic(), window_bytes + len(chunk)
                if now > self.until:
                    raise _Deadline
                if now - window_start >= self.policy.stall:
                    if window_bytes < self.policy.stall_bytes:
                        raise _Transient(
                            f"stalled: {window_bytes:,} bytes in {now - window_start:.0f}s, after {offset:,} bytes"
                        )
                    window_start, window_bytes = now, 0
        finally:
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError:
                pass
            f.close()

    def fetch(self, url: str) -> None:
        failures = unreachable = 0
        while True:
            if time.monotonic() > self.until:
                raise _Deadline
            try:
                size, end_checked = self.transfer(url)
                break
            except _Transient as e:
                if e.unreachable:  # offline or a wrong host: one quick retry, not minutes of them
                    unreachable += 1
                    if unreachable >= self.policy.unreachable_attempts:
                        raise _Fatal(
                            f"{url}: {e} (gave up after {unreachable} attempts)", unreachable=True, cause=str(e)
                        ) from None
                else:
                    failures += 1
                    if failures >= self.policy.attempts:
                        raise _Fatal(f"{url}: {e} (gave up after {failures} attempts)") from None
                delay = self.policy.delay(max(failures, 1), e.retry_after)
                if e.unreachable:
                    delay = min(delay, 1.0)
                delay = max(0.0, min(delay, self.until - time.monotonic()))
                if not e.unreachable:  # the one quick retry of an unreachable host is not worth a warning
                    self.cb.on_retry(url, str(e), delay)
                time.sleep(delay)
        if self.expected is not None and size != self.expected:
            self.part.unlink(missing_ok=True)
            raise _Fatal(f"{url}: received {size:,} bytes, but {self.name} is {self.expected:,} bytes")
        if not end_checked and not self.checked_after:
            self.part.unlink(missing_ok=True)
            raise _Fatal(
                f"{url}: sent without a Content-Length, and {self.name}'s size is not known in advance, so a "
                "copy cut short cannot be told from a whole one; not kept (use a server that sends "
                "Content-Length, or fetch the file yourself)"
            )
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
    check: Callable[[Path, str], None] | None = None,
    until: float | None = None,
) -> Path:
    """Download ``dest`` from the first of ``urls`` that works. The caller holds the folder's lock.

    ``check(part, url)``, when given, validates the complete file's content before it takes its
    final name (raising ``_Fatal``); such a file may come without a checkable size. ``until`` is
    the ``time.monotonic()`` deadline (default: ``policy.deadline`` from now)."""
    policy = policy or RetryPolicy()
    cb = callbacks or DownloadCallbacks()
    until = until if until is not None else time.monotonic() + policy.deadline
    part = dest.with_name(dest.name + PART_SUFFIX)
    errors: list[_Fatal] = []
    for i, url in enumerate(urls):
        want = expected[i] if expected else None
        try:
            _Fetcher(dest.name, part, want, policy, cb, until=until, checked_after=check is not None).fetch(url)
            if check is not None:
                check(part, url)
        except _Deadline:
            raise DownloadError(
                f"{url}: gave up: the download ran past its deadline of {policy.deadline:g}s ({DEADLINE_ENV}); "
                "run it again to resume where it stopped"
            ) from None
        except _Fatal as e:
            errors.append(e)
            if i + 1 < len(urls):
                # A mirror's partial file is no use for another's bytes only if they differ; the
                # official copies are identical, so the partial file is kept for the next one.
                # An unreachable host (offline?) is said once, if the mirror fails too.
                if not e.unreachable:
                    cb.on_fallback(url, str(e), urls[i + 1])
                continue
            raise _download_error(dest.name, urls, errors) from None
        try:
            os.replace(part, dest)  # the .part file, fsynced, keeps its name across runs to resume
        except OSError as e:
            raise DownloadError(f"{dest}: cannot write ({e.strerror or e})") from None
        fsutil.fsync_dir(dest.parent)
        return dest
    raise DownloadError(f"{dest.name}: no URL to download from")


def _download_error(name: str, urls: list[str], errors: list[_Fatal]) -> DownloadError:
    """Every URL of one file failed. Where none could be reached (an offline machine, a wrong
    host) that is one short line naming the hosts, and a hint; otherwise each URL's own reason."""
    if all(e.unreachable for e in errors):
        hosts = " or ".join(dict.fromkeys(urllib.parse.urlparse(u).netloc or u for u in urls))
        return DownloadError(f"{name}: cannot reach {hosts} ({errors[-1].cause})", hint=OFFLINE_HINT)
    return DownloadError("; ".join(str(e) for e in errors))


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
    bases = base_urls(base_url)
    policy = policy or RetryPolicy.from_env()
    created = list(itertools.takewhile(lambda p: not p.exists(), (out, *out.parents)))  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"{out}: cannot create the folder ({e.strerror or e})") from None
    try:
        return _download_into(out, size, bases, policy, callbacks or DownloadCallbacks())
    except BaseException:
        # A download that got nothing leaves no empty folder behind (one holding a partial file
        # stays, so that the next run resumes it).
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        raise


def _download_into(out: Path, size: str, bases: list[str], policy: RetryPolicy, cb: DownloadCallbacks) -> Path:
    cb.on_plan([(name, expected_size(size, name, file_url(bases[0], size, name), out)) for name in ORDER])
    with _DirLock(out, cb.on_wait):
        until = time.monotonic() + policy.deadline  # from when this download may start
        for name in ORDER:
            dest = out / name
            urls = [file_url(b, size, name) for b in bases]
            if name == HPARAMS and dest.is_file():
                try:  # one kept from an earlier run is checked again: the data file's size comes from it
                    _check_hparams(dest, str(dest))
                except _Fatal:
                    pass  # removed: fetched again below
            sizes = [expected_size(size, name, u, out) for u in urls]
            if dest.is_file():
                if all(s is None or dest.stat().st_size == s for s in sizes):
                    cb.on_file_done(name, dest, skipped=True)
                    continue
                dest.unlink()  # a complete-looking file of the wrong size: fetch it again
            check = _check_hparams if name == HPARAMS else None
            fetch_file(urls, dest, expected=sizes, policy=policy, callbacks=cb, check=check, until=until)
            cb.on_file_done(name, dest, skipped=False)
    return out


def _check_hparams(path: Path, url: str) -> None:
    """hparams.json must be JSON giving a sane GPT-2 shape (bounded: see ``HPARAM_LIMITS``), since
    the data file's size and the model are computed from it; otherwise it is removed."""
    try:
        hp = json.loads(path.read_text(encoding="utf-8"))
        reason = None if isinstance(hp, dict) else "not a JSON object"
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        reason = "not JSON"
    if reason is None:
        try:
            config_from_hparams(hp, where=url)
        except CheckpointError as e:
            path.unlink(missing_ok=True)
            raise _Fatal(f"{e} (not usable GPT-2 hyperparameters)") from None
        return
    path.unlink(missing_ok=True)
    raise _Fatal(
        f"{url}: not GPT-2 hyperparameters ({reason}; expected JSON with n_vocab, n_ctx, n_embd, n_head, n_layer)"
    )
