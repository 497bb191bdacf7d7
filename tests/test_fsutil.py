"""gptcli.fsutil: the one atomic write and the one file lock, and prepare's claim on its -o."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from gptcli import fsutil, shards
from gptcli.cli import app
from gptcli.rundir import remove_stale_temporaries


def test_atomic_write_takes_bytes_text_or_a_writer(tmp_path):
    p = tmp_path / "f.bin"
    fsutil.atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    fsutil.atomic_write(p, "héllo\n")
    assert p.read_bytes() == "héllo\n".encode()
    fsutil.atomic_write(p, lambda f: f.write(b"abc"), fsync=False)
    assert p.read_bytes() == b"abc"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.bin"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def fail(f):
        f.write(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        fsutil.atomic_write(p, fail)
    with pytest.raises(KeyboardInterrupt):
        fsutil.atomic_write(p, lambda f: (_ for _ in ()).throw(KeyboardInterrupt))
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.txt"]


def test_one_temporary_name_that_stale_cleanup_finds_and_readers_skip(tmp_path):
    tmp = fsutil.temporary_path(tmp_path / "train_000000.bin", 123)
    assert tmp.name == ".tmp-123-train_000000.bin.tmp"
    tmp.write_bytes(b"a write a crash cut short")
    assert not list(tmp_path.glob("*.bin")), "a reader that lists *.bin never sees it"
    assert remove_stale_temporaries(tmp_path) == [tmp]


@pytest.mark.skipif(os.name == "nt", reason="POSIX modes")
def test_a_new_file_gets_the_umask_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fsutil.atomic_write(tmp_path / "a", b"x")
        with fsutil.atomic_path(tmp_path / "b") as tmp:
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == 0o644


def test_atomic_path_publishes_or_removes(tmp_path):
    p = tmp_path / "p"
    with fsutil.atomic_path(p) as tmp:
        assert not tmp.exists()
        tmp.write_text("new")
    assert p.read_text() == "new"
    with pytest.raises(RuntimeError), fsutil.atomic_path(p) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert p.read_text() == "new"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["p"]


# ---------------------------------------------------------------------------------------------
# The lock


def _hold_in_child(path, ready):
    """A second process that holds ``path``'s lock until its stdin closes."""
    code = textwrap.dedent(
        f"""
        import sys
        from gptcli.fsutil import FileLock
        lock = FileLock({str(path)!r})
        assert lock.acquire(blocking=False)
        lock.write_note("pid child")
        open({str(ready)!r}, "w").close()
        sys.stdin.read()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
    for _ in range(600):
        if ready.exists() or proc.poll() is not None:
            break
        time.sleep(0.05)
    assert ready.exists(), "the child took the lock"
    return proc


def test_the_lock_excludes_another_process_and_names_its_holder(tmp_path):
    path = tmp_path / "x.lock"
    child = _hold_in_child(path, tmp_path / "ready")
    try:
        lock = fsutil.FileLock(path)
        assert lock.acquire(blocking=False) is False and not lock.held
        assert lock.read_note() == "pid child"
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    waited = []
    assert lock.acquire(on_wait=waited.append) is True and lock.held and waited == []
    lock.release()
    assert path.exists(), "kept unless remove_on_release"


def test_a_waiter_says_it_waits_once_and_gets_the_lock_when_the_holder_goes(tmp_path):
    import threading

    path = tmp_path / "x.lock"
    child = _hold_in_child(path, tmp_path / "ready")
    waited = []
    threading.Timer(0.5, child.stdin.close).start()
    lock = fsutil.FileLock(path, remove_on_release=True)
    assert lock.acquire(on_wait=waited.append) and lock.held and lock.enforced
    assert waited == [path]
    lock.release()
    child.wait(timeout=60)
    assert not path.exists(), "removed by its last holder"


def test_remove_on_release_leaves_no_lock_file_and_a_later_holder_locks_afresh(tmp_path):
    path = tmp_path / "d.lock"
    first = fsutil.FileLock(path, remove_on_release=True)
    assert first.acquire(blocking=False)
    first.release()
    assert not path.exists()
    second = fsutil.FileLock(path, remove_on_release=True)
    assert second.acquire(blocking=False) and path.exists()
    second.release()


# ---------------------------------------------------------------------------------------------
# prepare claims its -o directory


def test_a_second_prepare_into_one_directory_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.txt").write_text("Some words to tokenize. " * 50, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    child = _hold_in_child(out / shards.LOCK_NAME, tmp_path / "ready")  # a prepare at work
    try:
        res = CliRunner().invoke(app, ["prepare", "t.txt", "-o", "out", "--shard-size", "1_000"])
    finally:
        child.stdin.close()
        child.wait(timeout=60)
    assert res.exit_code == 1, res.output
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in res.output, res.stderr
    assert "another gptcli prepare is writing shards here" in lines[0] and "-o" in lines[0]
    assert not list(out.glob("*.bin"))

    res = CliRunner().invoke(app, ["prepare", "t.txt", "-o", "out", "--shard-size", "1_000"])
    assert res.exit_code == 0, res.output
    assert list(out.glob("train_*.bin")) and not (out / shards.LOCK_NAME).exists()
