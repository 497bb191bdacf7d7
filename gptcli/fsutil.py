"""Publishing a file whole or not at all, and claiming a file or directory for one process.

``atomic_write`` (and ``atomic_path`` for writers that need a path) is how every file gptcli
publishes gets written: checkpoints, config.yaml, metrics.jsonl rewrites, shards, the token cache,
exported weights, plots, sampled responses. The bytes go to ``.tmp-<pid>-<name>.tmp`` in the same
directory (the same file system, so the rename is atomic), which is fsynced and renamed over the
final name, and then the directory is fsynced so that the rename itself survives a power cut. On
any failure, Ctrl-C included, the temporary file is removed and the old file is as it was. A
crash that kills the process outright can leave a temporary file behind: its ``.tmp-`` prefix is
what ``rundir.remove_stale_temporaries`` deletes, and its ``.tmp`` suffix keeps a reader that
lists ``*.bin`` or ``*.pth`` from taking it for a finished file. A new file gets the mode any
new file gets (0666 less the umask), as ``open`` creates it.

``FileLock`` is the one inter-process lock: an exclusive advisory lock on a file (``flock`` on
POSIX, ``msvcrt.locking`` on Windows) that the OS drops when its holder exits, however it exits.

Imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from gptcli.errors import DataError, GptCliError, os_error_reason

TMP_PREFIX = ".tmp-"
TMP_SUFFIX = ".tmp"

Content = bytes | str | Callable[[BinaryIO], object]


def temporary_path(final: str | Path, pid: int | None = None) -> Path:
    """Where a write of ``final`` goes before it is renamed into place."""
    final = Path(final)
    return final.with_name(f"{TMP_PREFIX}{os.getpid() if pid is None else pid}-{final.name}{TMP_SUFFIX}")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (one of another user counts)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # no signal 0 there: keep the file rather than guess
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def temporary_owner(name: str) -> tuple[int, str] | None:
    """(pid, final name) of a ``temporary_path`` name, or None for any other name."""
    m = re.fullmatch(rf"{re.escape(TMP_PREFIX)}(\d+)-(.+){re.escape(TMP_SUFFIX)}", name)
    return (int(m.group(1)), m.group(2)) if m else None


def fsync_dir(path: str | Path) -> None:
    """Make a rename in directory ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    # Windows flushes only a handle opened for writing; POSIX needs no more than reading, so a
    # file the writer made read-only can still be synced.
    fd = os.open(path, (os.O_RDWR | getattr(os, "O_BINARY", 0)) if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass  # the write's own error is the one to report


@contextlib.contextmanager
def atomic_path(path: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path for a writer that takes a file name (``safetensors``, ``os.link``): what
    the ``with`` block writes there is renamed over ``path`` when the block ends, or removed if
    it raises. The temporary path does not exist when the block starts."""
    path = Path(path)
    tmp = temporary_path(path)
    tmp.unlink(missing_ok=True)  # a left-over of a killed process that had this pid
    try:
        yield tmp
        if fsync:
            _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise
    if fsync:
        fsync_dir(path.parent)


def atomic_write(path: str | Path, content: Content, *, fsync: bool = True, encoding: str = "utf-8") -> Path:
    """Write ``content`` to ``path`` whole or not at all: bytes, text (in ``encoding``), or a
    function that writes to the open binary file. Raises what the write raised (an OSError on a
    full disk), with the temporary file removed and any old file at ``path`` unchanged."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        if isinstance(content, str):
            f.write(content.encode(encoding))
        elif isinstance(content, (bytes, bytearray, memoryview)):
            f.write(content)
        else:
            content(f)
    return path


def write_failure(directory: str | Path) -> OSError | None:
    """Why files cannot be created in ``directory`` (made if missing), or None if they can: a
    real try, since permission bits say nothing for root and nothing of a read-only mount."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=TMP_PREFIX, suffix=TMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return e
    return None


@contextlib.contextmanager
def writable_or_temporary(directory: str | Path, *, prefix: str) -> Iterator[tuple[Path, OSError | None]]:
    """``directory`` and None when files can be written there; else a temporary directory
    (removed when the block ends) and the error that ruled ``directory`` out. A file still open
    or memory-mapped from the temporary directory stays readable after it goes (POSIX)."""
    failure = write_failure(directory)
    if failure is None:
        yield Path(directory), None
        return
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as tmp:
        yield Path(tmp), failure


# ---------------------------------------------------------------------------------------------
# One lock

# Windows locks bytes, and a locked byte cannot be read by anyone else: the lock sits far past
# the end of the file, so that what the holder writes into it (its name) stays readable.
_WINDOWS_LOCK_OFFSET = 2**30
_HELD = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)


def _try_lock(fd: int) -> bool | None:
    """Lock ``fd`` without waiting: True if locked, False if another process holds it, None if
    the file system has no locks (some network mounts)."""
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        return False if e.errno in _HELD else None
    return True


def lock_held(path: str | Path) -> bool | None:
    """Whether a process holds the ``FileLock`` on ``path`` now: False when the file is missing or
    not locked, None where that cannot be told (Windows, a file system without locks, a file that
    cannot be opened). It never creates the file, and tests with a shared lock that it drops at
    once, so a reader (``gptcli runs``) never keeps a writer out."""
    if os.name == "nt":
        return None
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as e:
        return True if e.errno in _HELD else None
    else:
        return False
    finally:
        os.close(fd)  # drops the shared lock, if taken


def _wait_lock(fd: int) -> None:
    if os.name == "nt":
        while not _try_lock(fd):
            time.sleep(0.1)
        return
    import fcntl

    fcntl.flock(fd, fcntl.LOCK_EX)


def _unlock(fd: int) -> None:
    if os.name == "nt":
        import msvcrt

        os.lseek(fd, _WINDOWS_LOCK_OFFSET, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
    # POSIX: closing the descriptor releases the flock


class FileLock:
    """An exclusive lock on the file ``path``, one holder at a time across processes; advisory (it
    keeps out only those that take it too). The lock file is created if missing.

    ``acquire(blocking=False)`` tries once; ``acquire()`` (and ``with``) waits, calling
    ``on_wait(path)`` once if it has to. ``remove_on_release``: the holder deletes the file before
    it lets go, so that no lock file is left behind; a waiter that then wins the lock on the
    deleted file sees that the path no longer names it, and locks the path afresh (Windows cannot
    delete an open file, so there it stays). On a file system without locks the lock is granted
    unenforced (``enforced`` is False): the work goes ahead unprotected rather than not at all.
    Opening the file can raise OSError, for the caller to report in its own words.
    """

    def __init__(self, path: str | Path, *, remove_on_release: bool = False):
        self.path = Path(path)
        self.remove_on_release = remove_on_release
        self.enforced = True
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, blocking: bool = True, on_wait: Callable[[Path], object] | None = None) -> bool:
        """Take the lock: True once held, False if ``blocking`` is off and another process holds it."""
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: already locked by this FileLock")
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        while True:
            fd = os.open(self.path, flags, 0o644)
            try:
                got = _try_lock(fd)
                if got is False:
                    if not blocking:
                        os.close(fd)
                        return False
                    if on_wait is not None:
                        on_wait(self.path)
                        on_wait = None
                    _wait_lock(fd)
            except BaseException:  # Ctrl-C while waiting: the file is the holder's, left alone
                os.close(fd)
                raise
            if got is None:
                self.enforced, self._fd = False, fd
                return True
            if self._names(fd):
                self.enforced, self._fd = True, fd
                return True
            os.close(fd)  # the holder deleted the file as it let go: lock the one the path names now

    def _names(self, fd: int) -> bool:
        """Whether ``self.path`` still names the file open as ``fd``."""
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return False
        except OSError:
            return True  # cannot tell: take it as named rather than loop
        mine = os.fstat(fd)
        return (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino)

    def release(self) -> None:
        """Let the lock go (a no-op if not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.remove_on_release and os.name != "nt":
                self.path.unlink(missing_ok=True)  # while still holding it: see the class docstring
        except OSError:
            pass
        finally:
            try:
                if self.enforced:
                    _unlock(fd)
            except OSError:
                pass
            finally:
                os.close(fd)

    def write_note(self, text: str) -> None:
        """Replace the lock file's contents with ``text`` (who holds it); best effort: a full disk
        leaves the holder unnamed, the lock held all the same."""
        if self._fd is None:
            raise RuntimeError(f"{self.path}: not locked")
        try:
            os.ftruncate(self._fd, 0)
            if text:
                os.lseek(self._fd, 0, os.SEEK_SET)
                os.write(self._fd, text.encode("utf-8"))
        except OSError:
            pass

    def read_note(self) -> str:
        """What the holder wrote into the lock file ("" if nothing, or if it cannot be read)."""
        try:
            with open(self.path, "rb") as f:
                return f.read(400).decode("utf-8", "replace").strip()
        except OSError:
            return ""

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_file(
    path: str | Path, *, error: type[GptCliError] = DataError, prefix: str = "", newline: str | None = None
) -> str:
    """A user's UTF-8 text file, a leading byte order mark dropped (Windows tools write one);
    ``error`` (with ``prefix``, such as "invalid --template: ") naming the file and what is wrong
    with it otherwise. ``newline`` as ``open`` takes it: "" keeps line ends as they are, for a
    parser (a quoted CSV field may hold a "\r")."""
    p = Path(path)
    try:
        if p.is_dir():
            raise error(f"{prefix}{p}: is a directory, not a file")
        with open(p, encoding="utf-8", newline=newline) as f:
            return f.read().removeprefix("\ufeff")
    except FileNotFoundError:
        raise error(f"{prefix}{p}: no such file") from None
    except UnicodeDecodeError as e:
        raise error(f"{prefix}{p}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise error(f"{prefix}{p}: cannot read it ({os_error_reason(e)})") from None
