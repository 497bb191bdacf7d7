"""Nothing already saved is ever lost: run directories, the writer lock, saves and signals, resume.

`train --out` writes only into a new or empty directory; one process at a time writes a run (an
OS lock, shown with real processes started together); a save that fails or is interrupted says
what happened and leaves no temporary file; `resume` continues the same run when config.yaml or
metrics.jsonl is gone. Tests run as root, where permissions are not enforced, so a read-only
directory is simulated by failing the writes (each test says what it simulates).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import console, rundir
from gptcli.cli import app
from gptcli.commands.common import StopFlag
from gptcli.commands.resume import resume_command
from gptcli.commands.train import train_command
from gptcli.errors import RunDirError, SaveError, TrainingError, UsageError
from gptcli.metrics import read_metrics
from gptcli.training import Trainer

from ..conftest import VERDICT, gptcli_exe

MODEL = {"context_length": 12, "emb_dim": 32, "n_heads": 4, "n_layers": 2}
# ~2k tokens: 17 optimizer steps of 8 windows per epoch, so a run takes a second or two.
SMALL_TEXT = VERDICT.read_text(encoding="utf-8")[:8000]
FLAGS = [
    "--context-length", "12", "--emb-dim", "32", "--n-heads", "4", "--n-layers", "2",
    "--batch-size", "8", "--eval-freq", "100", "--epochs", "1", "--quiet",
]  # fmt: skip


def train_flags(data: Path, **extra) -> dict:
    return {"data": [str(data)], "epochs": 1, "batch_size": 8, "eval_freq": 100, "sample_tokens": 3, **extra}


def train_in_process(out: Path, data: Path, **extra) -> Path:
    try:
        return train_command(model_flags=dict(MODEL), train_flags=train_flags(data, **extra), out=out, quiet=True)
    finally:
        console.set_quiet(False)


def resume_in_process(target: Path, **kw) -> Path:
    try:
        return resume_command(target, quiet=True, **kw)
    finally:
        console.set_quiet(False)


def snapshot(run: Path) -> dict[str, bytes]:
    """Every file of a run and its bytes (the lock file aside: it only names its holder)."""
    return {
        str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"
    }


def one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.fixture(scope="module")
def small_text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "small.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, small_text) -> Path:
    """One tiny one-epoch run (evaluating every step), trained once; tests take copies."""
    root = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTCLI_HOME", str(root / "home"))
        train_in_process(root / "run", small_text, eval_freq=1)
    return root / "run"


@pytest.fixture
def run_copy(workdir, finished_run) -> Path:
    dst = workdir / "runs" / "r"
    shutil.copytree(finished_run, dst)
    return dst


def start(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [*gptcli_exe(), *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw
    )


# ---------------------------------------------------------------------------------------------
# train --out: a new or empty directory only


@pytest.mark.parametrize("kind", ["only-best", "no-checkpoint", "not-a-run"])
def test_train_refuses_a_directory_that_is_not_empty_and_changes_nothing(workdir, small_text, kind):
    """The reported case: a finished run whose owner kept only best.pth was overwritten with exit 0
    (config.yaml replaced, metrics.jsonl truncated, best.pth replaced, .tmp-* deleted)."""
    out = workdir / "out"
    if kind == "not-a-run":
        (out / "notes").mkdir(parents=True)
        (out / "notes" / "a.txt").write_text("mine")
    else:
        (out / "checkpoints").mkdir(parents=True)
        (out / "config.yaml").write_text("model: {}\ntrain: {}\n")
        (out / "metrics.jsonl").write_text('{"type": "eval", "step": 0, "tokens_seen": 0}\n')
        (out / "checkpoints" / ".tmp-123-step-00000009.pth").write_bytes(b"a save in progress")
        if kind == "only-best":
            (out / "checkpoints" / "best.pth").write_bytes(b"the best weights")
    before = snapshot(out)
    with pytest.raises(UsageError) as e:
        train_in_process(out, small_text)
    assert snapshot(out) == before
    message = str(e.value)
    assert "--out" in message and "choose another --out" in message
    if kind == "only-best":
        assert "gptcli resume" in message and "best.pth" in message
    elif kind == "no-checkpoint":
        assert "saved no checkpoint" in message
    else:
        assert "not empty" in message and "notes/" in message


def test_train_out_pointing_at_a_file_is_one_usage_error(workdir, small_text):
    (workdir / "taken").write_text("a file")
    with pytest.raises(UsageError, match="is an existing file, not a directory"):
        train_in_process(workdir / "taken", small_text)
    assert (workdir / "taken").read_text() == "a file"


def test_a_run_that_fails_before_its_first_save_leaves_no_directory(workdir, small_text, monkeypatch):
    """Everything this run created goes (the new parents too), and nothing it did not create."""

    def fail(self, steps_per_epoch):
        raise TrainingError("failed in the first epoch")

    monkeypatch.setattr(Trainer, "_train_epoch", fail)
    with pytest.raises(TrainingError):
        train_in_process(workdir / "runs" / "deep" / "new", small_text)
    assert not (workdir / "runs").exists()
    # An empty directory that was there before stays, empty.
    (workdir / "empty").mkdir()
    with pytest.raises(TrainingError):
        train_in_process(workdir / "empty", small_text)
    assert (workdir / "empty").is_dir() and not list((workdir / "empty").iterdir())


# ---------------------------------------------------------------------------------------------
# One writer per run directory

HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from gptcli import rundir
    lock = rundir.lock_run_dir(sys.argv[1])
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


def hold_lock(run: Path, seconds: float = 60) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_run_is_refused_at_once_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = hold_lock(run)
    try:
        t0 = time.monotonic()
        with pytest.raises(RunDirError) as e:
            rundir.lock_run_dir(run)
        assert time.monotonic() - t0 < 2
        assert f"pid {holder.pid}" in str(e.value) and os.uname().nodename in str(e.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_never_blocks(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = hold_lock(run)
    holder.send_signal(signal.SIGKILL)  # no clean-up of any kind
    holder.wait()
    assert f"pid {holder.pid}" in (run / ".lock").read_text(), "the dead holder's lock file is still there"
    lock = rundir.lock_run_dir(run)
    assert f"pid {os.getpid()}" in (run / ".lock").read_text()
    lock.release()


def test_readers_never_take_the_lock_nor_wait_for_it(workdir, run_copy, small_text):
    """A guard more than a fix (readers never locked): with a writer holding the run, every reader
    answers at once."""
    holder = hold_lock(run_copy)
    try:
        for args in (
            ["info", str(run_copy)],
            ["runs", "--root", str(run_copy.parent)],
            ["sample", "-c", str(run_copy), "--max-new-tokens", "2", "--prompt", "Every"],
            ["eval", str(small_text), "-c", str(run_copy)],
            ["plot", str(run_copy), "-o", str(workdir / "loss.png")],
        ):
            t0 = time.monotonic()
            res = CliRunner().invoke(app, args)
            assert res.exit_code == 0, (args, res.output, res.exception)
            assert time.monotonic() - t0 < 30
        assert holder.poll() is None, "the writer still holds the run"
    finally:
        holder.kill()
        holder.wait()
        console.set_quiet(False)


def refusal_limit(cwd: Path) -> float:
    """2 seconds, the promise. On a machine so loaded that merely starting gptcli takes more than
    a second (measured now, with `gptcli train --help`), start-up plus one second: the refusal
    itself must never wait for the lock."""
    t0 = time.monotonic()
    subprocess.run([*gptcli_exe(), "train", "--help"], cwd=cwd, capture_output=True, check=True)
    return max(2.0, time.monotonic() - t0 + 1.0)


@pytest.mark.slow
def test_two_trains_started_together_exactly_one_runs(workdir, small_text):
    args = ["train", str(small_text), *FLAGS, "--eval-freq", "1", "--out", "runs/x"]
    t0 = time.monotonic()
    procs = [start(args, workdir), start(args, workdir)]
    ended: dict[int, float] = {}
    while len(ended) < 2 and time.monotonic() - t0 < 300:
        for i, p in enumerate(procs):
            if i not in ended and p.poll() is not None:
                ended[i] = time.monotonic() - t0
        time.sleep(0.02)
    codes = sorted(p.wait() for p in procs)
    assert codes == [0, 1], [p.stderr.read() for p in procs]
    loser = next(i for i, p in enumerate(procs) if p.returncode == 1)
    winner = procs[1 - loser]
    line = one_error_line(procs[loser].stderr.read())
    assert ended[loser] < refusal_limit(workdir), f"refused after {ended[loser]:.1f} s"
    assert f"pid {winner.pid}" in line and "host" in line
    # One writer's log: one eval per step of one run, in order.
    steps = [r["step"] for r in read_metrics(workdir / "runs/x/metrics.jsonl") if r["type"] == "eval"]
    assert steps == list(range(len(steps))) and steps
    assert len(rundir.list_step_checkpoints(workdir / "runs/x")) == 1


@pytest.mark.slow
def test_two_resumes_started_together_exactly_one_runs(workdir, run_copy):
    procs = [start(["resume", "runs/r", "--epochs", "2", "--quiet"], workdir) for _ in range(2)]
    t0 = time.monotonic()
    while all(p.poll() is None for p in procs) and time.monotonic() - t0 < 300:
        time.sleep(0.02)
    first_end = time.monotonic() - t0
    codes = sorted(p.wait() for p in procs)
    assert codes == [0, 1], [p.stderr.read() for p in procs]
    loser = next(i for i, p in enumerate(procs) if p.returncode == 1)
    line = one_error_line(procs[loser].stderr.read())
    assert first_end < refusal_limit(workdir), f"refused after {first_end:.1f} s"
    assert f"pid {procs[1 - loser].pid}" in line
    records = read_metrics(run_copy / "metrics.jsonl")
    steps = [r["step"] for r in records if r["type"] == "eval"]
    assert steps == list(range(len(steps))), "two writers interleaved the log"
    assert [r["epoch"] for r in records if r["type"] == "sample"] == [1, 2]


# ---------------------------------------------------------------------------------------------
# Saves and signals

# Runs gptcli in this interpreter with the checkpoint's file instrumented: the second checkpoint
# written gets two real SIGINTs (two Ctrl-C) while torch is in the middle of writing it.
CTRL_C_TWICE_DURING_SAVE = textwrap.dedent(
    """
    import builtins, os, signal, sys
    import gptcli.checkpoint as ckpt

    saves = 0

    class File:
        def __init__(self, f):
            self.f, self.writes = f, 0
        def write(self, data):
            self.writes += 1
            if saves == 2 and self.writes == 3:
                os.kill(os.getpid(), signal.SIGINT)
                os.kill(os.getpid(), signal.SIGINT)
            return self.f.write(data)
        def __getattr__(self, name):
            return getattr(self.f, name)
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.f.close()

    def instrumented_open(path, mode="r", *args, **kwargs):
        global saves
        f = builtins.open(path, mode, *args, **kwargs)
        if mode == "wb":
            saves += 1
            return File(f)
        return f

    ckpt.open = instrumented_open
    from gptcli.cli import main
    sys.argv = ["gptcli", *sys.argv[1:]]
    main()
    """
)


@pytest.mark.slow
def test_second_ctrl_c_during_a_save_exits_130_and_leaves_no_temporary_file(workdir, small_text):
    """Today torch's zip writer turns the KeyboardInterrupt into "enforce fail at
    inline_container.cc ... unexpected pos", exit 1."""
    proc = subprocess.run(
        [sys.executable, "-c", CTRL_C_TWICE_DURING_SAVE, "train", str(small_text), *FLAGS, "--save-every", "4",
         "--out", "runs/c"],
        cwd=workdir, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 130, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("interrupted: stopped at once"), proc.stderr  # issue 21
    assert "inline_container" not in proc.stderr and "enforce fail" not in proc.stderr
    d = workdir / "runs/c/checkpoints"
    assert not list(d.glob(".tmp-*")), "the interrupted save removed its temporary file"
    assert [p.name for p in rundir.list_step_checkpoints(workdir / "runs/c")] == ["step-00000004.pth"]
    ckpt.load_checkpoint(d / "step-00000004.pth")  # the checkpoint before it is complete


@pytest.mark.slow
def test_a_failed_first_save_says_what_happened_and_claims_no_intact_checkpoint(workdir, small_text):
    """A real write failure: RLIMIT_FSIZE makes the write fail with EFBIG (SIGXFSZ is ignored by
    Python). The message names it; with no earlier checkpoint it must not claim one is intact."""

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    proc = subprocess.run(
        [*gptcli_exe(), "train", str(small_text), *FLAGS, "--out", "runs/f"],
        cwd=workdir, capture_output=True, text=True, preexec_fn=cap, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "file size limit exceeded" in line
    assert "inline_container" not in line and "unexpected pos" not in line
    assert "intact" not in line and "no checkpoint of this run had been saved yet" in line
    assert not (workdir / "runs/f").exists(), "a run that never saved leaves no directory"


def test_train_refuses_at_the_start_when_the_disk_cannot_hold_a_checkpoint(workdir, small_text, monkeypatch):
    """Simulated with a file system reporting 1 MB free (shutil.disk_usage): refused with the
    numbers before the first step, not after an epoch's work."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    stepped = []
    monkeypatch.setattr(Trainer, "_train_step", lambda self, ids: stepped.append(1))
    with pytest.raises(SaveError) as e:
        train_in_process(workdir / "runs" / "d", small_text)
    assert "needs about" in str(e.value) and "1.0 MB free" in str(e.value) and "nothing was trained" in str(e.value)
    assert not stepped
    assert not (workdir / "runs").exists()


def test_atomic_save_checks_the_free_space_before_writing(tmp_path, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=5_000_000))
    with pytest.raises(SaveError, match=r"needs about 11\.\d MB, 5\.0 MB free"):
        ckpt.atomic_save({"w": torch.zeros(10_000_000, dtype=torch.uint8)}, tmp_path / "c.pth")
    assert not list(tmp_path.iterdir()), "nothing written"


def test_a_failed_save_names_the_os_error_not_torchs_text(tmp_path, monkeypatch):
    """A disk that fills during the write (simulated: the file's write raises ENOSPC): torch turns
    it into "enforce fail ... unexpected pos"; the message must say "No space left on device"."""
    import builtins

    class Full:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:  # the disk fills up partway through the file
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(ckpt, "open", lambda p, m="r", *a, **k: Full(builtins.open(p, m, *a, **k)), raising=False)
    with pytest.raises(SaveError) as e:
        ckpt.atomic_save({"w": torch.zeros(1000)}, tmp_path / "c.pth")
    assert "No space left on device" in str(e.value) and "unexpected pos" not in str(e.value)
    assert not list(tmp_path.iterdir()), "the temporary file is removed"


def test_sigterm_message_does_not_offer_ctrl_c(capsys):
    flag = StopFlag()
    flag._handle(signal.SIGTERM, None)
    err = capsys.readouterr().err
    assert "SIGTERM" in err and "Ctrl-C" not in err
    flag._handle(signal.SIGTERM, None)  # a second SIGTERM neither aborts nor repeats itself
    assert capsys.readouterr().err == ""
    assert flag() == signal.SIGTERM


@pytest.mark.slow
def test_a_full_metrics_log_stops_with_one_line_and_loses_nothing(workdir, run_copy):
    """A real write failure in metrics.jsonl (RLIMIT_FSIZE a few hundred bytes above its size:
    the appends of the resumed run hit it while the checkpoint is still far off)."""
    metrics = run_copy / "metrics.jsonl"
    limit = metrics.stat().st_size + 700
    checkpoints = {k: v for k, v in snapshot(run_copy).items() if k.startswith("checkpoints")}
    lines_before = metrics.read_text().splitlines()

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [*gptcli_exe(), "resume", "runs/r", "--epochs", "2", "--quiet"],
        cwd=workdir, capture_output=True, text=True, preexec_fn=cap, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc.stderr)
    assert "metrics.jsonl" in line and "file size limit exceeded" in line
    assert "previous checkpoint is intact" in line and "gptcli resume" in line
    # config.yaml now says --epochs 2; the checkpoints and every logged line are as they were.
    assert {k: v for k, v in snapshot(run_copy).items() if k.startswith("checkpoints")} == checkpoints
    lines = metrics.read_text().splitlines()
    assert lines[: len(lines_before)] == lines_before
    for x in lines:
        json.loads(x)  # no torn line is left behind


def test_resume_on_a_full_disk_refuses_early_and_changes_nothing(workdir, run_copy, monkeypatch):
    """Simulated with a file system reporting 1 MB free."""
    before = snapshot(run_copy)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1_000_000))
    with pytest.raises(SaveError, match="not enough free space"):
        resume_in_process(run_copy, epochs=2)
    assert snapshot(run_copy) == before


def test_resume_of_a_read_only_run_directory_is_one_error_and_changes_nothing(workdir, run_copy, monkeypatch):
    """Simulated: root ignores permissions, so every open for writing under the run directory
    fails with EROFS, as on a read-only mount (os.open and the built-in open both)."""
    import builtins

    before = snapshot(run_copy)
    root = str(run_copy.resolve())
    real_os_open, real_open = os.open, builtins.open

    def inside(path) -> bool:
        return str(Path(os.fspath(path)).resolve()).startswith(root)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(path))
        return real_os_open(path, flags, *a, **k)

    def open_(file, mode="r", *a, **k):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and inside(file):
            raise OSError(errno.EROFS, "Read-only file system", os.fspath(file))
        return real_open(file, mode, *a, **k)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(builtins, "open", open_)
    res = CliRunner().invoke(app, ["resume", str(run_copy), "--epochs", "2"])
    monkeypatch.undo()
    assert res.exit_code == 1, (res.output, res.exception)
    assert "Read-only file system" in res.output and "Traceback" not in res.output
    assert snapshot(run_copy) == before


# ---------------------------------------------------------------------------------------------
# resume without config.yaml or metrics.jsonl, or with an edited config.yaml


def test_resume_without_config_yaml_continues_the_same_run(workdir, run_copy, capsys):
    """Today it silently forks into a new runs/<name>-<date> directory."""
    config = (run_copy / "config.yaml").read_text()
    (run_copy / "config.yaml").unlink()
    assert resume_in_process(run_copy, epochs=2) == run_copy
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["r"], "no new run directory"
    assert (run_copy / "config.yaml").read_text() == config.replace("epochs: 1", "epochs: 2")
    assert [r["epoch"] for r in read_metrics(run_copy / "metrics.jsonl") if r["type"] == "sample"] == [1, 2]
    assert "config.yaml is missing" in capsys.readouterr().err


def test_resume_rebuilds_a_missing_metrics_log_from_the_checkpoint(workdir, run_copy, finished_run, capsys):
    original = read_metrics(finished_run / "metrics.jsonl")
    (run_copy / "metrics.jsonl").unlink()
    resume_in_process(run_copy, epochs=2)
    records = read_metrics(run_copy / "metrics.jsonl")
    rebuilt = [r for r in records if r.get("rebuilt")]
    keys = ("type", "epoch", "step", "tokens_seen", "train_loss", "val_loss", "lr")
    # Every evaluation comes back from the checkpoint's history. The epoch's sample was still to
    # be logged when the epoch's checkpoint was saved: resume logs it again, the same greedy text.
    assert original[-1]["type"] == "sample"
    assert [tuple(r.get(k) for k in keys) for r in rebuilt] == [tuple(r.get(k) for k in keys) for r in original[:-1]]
    assert records[: len(rebuilt)] == rebuilt and records[len(rebuilt)] == original[-1]
    assert len(records) == 2 * len(original)
    assert "metrics.jsonl was missing: rebuilt" in capsys.readouterr().err


def test_resume_warns_that_an_edited_config_yaml_is_not_used(workdir, run_copy, capsys):
    config = run_copy / "config.yaml"
    settings = yaml.safe_load(config.read_text())
    settings["train"]["lr"] = 0.5
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    resume_in_process(run_copy, epochs=2)
    err = capsys.readouterr().err
    assert "config.yaml was edited" in err and "lr: 0.5 in the file" in err and "--epochs" in err
    assert yaml.safe_load(config.read_text())["train"]["lr"] != 0.5, "the checkpoint's settings are written back"
