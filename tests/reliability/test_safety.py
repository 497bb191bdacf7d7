"""Safe loading, corrupt files, architecture mismatches, NaN losses, full disks, bad input."""

from __future__ import annotations

import errno
import os
import pickle
import resource
import subprocess
import zipfile

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.config import ModelConfig, TrainConfig
from gptcli.errors import SaveError, TrainingError
from gptcli.training import Trainer

from ..conftest import TINY_FLAGS, TINY_MODEL, VERDICT, gptcli_exe, run_gptcli

FAST = [*TINY_FLAGS, "--batch-size", "8", "--eval-freq", "100", "--epochs", "1"]


def one_line(proc, code, *needles):
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == code, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_crafted_pickle_is_refused_and_runs_nothing(workdir):
    sentinel = workdir / "PWNED"
    with open(workdir / "evil.pth", "wb") as f:
        torch.save({"format": "gptcli-checkpoint", "payload": Evil(sentinel)}, f)
    # the plain pickle path too
    (workdir / "evil2.pth").write_bytes(pickle.dumps(Evil(sentinel)))
    for name in ("evil.pth", "evil2.pth"):
        proc = run_gptcli("sample", "--checkpoint", name, cwd=workdir)
        one_line(proc, 2, name)
        assert not sentinel.exists(), "unpickling ran code"
    # and the protection is what stops it: unsafe loading would have run the payload
    torch.load(workdir / "evil.pth", weights_only=False)
    assert sentinel.exists()


@pytest.fixture
def trained(workdir):
    run_gptcli("train", "the-verdict.txt", *FAST, "--out", "runs/r", cwd=workdir, check=True)
    return rundir.list_step_checkpoints(workdir / "runs/r")[-1]


def test_truncated_checkpoint_is_one_line_naming_the_file(workdir, trained):
    bad = workdir / "trunc.pth"
    bad.write_bytes(trained.read_bytes()[:100_000])
    one_line(run_gptcli("sample", "-c", str(bad), cwd=workdir), 2, "trunc.pth")


def test_bit_flip_is_caught_by_the_crc_check(workdir, trained):
    data = bytearray(trained.read_bytes())
    with zipfile.ZipFile(trained) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)  # the largest tensor record
    data[info.header_offset + 200 + info.file_size // 2] ^= 0x01
    bad = workdir / "flipped.pth"
    bad.write_bytes(bytes(data))
    one_line(run_gptcli("sample", "-c", str(bad), cwd=workdir), 2, "flipped.pth", "CRC")


def test_architecture_mismatch_lists_the_fields(workdir, trained):
    proc = run_gptcli(
        "train",
        "the-verdict.txt",
        "--init",
        str(trained),
        "--emb-dim",
        "64",
        "--n-layers",
        "3",
        "--epochs",
        "1",
        "--out",
        "runs/x",
        cwd=workdir,
    )
    one_line(proc, 2, "emb_dim", "n_layers")


def test_nonfinite_loss_exits_nonzero_naming_the_step_and_writes_no_nan_checkpoint(workdir):
    proc = run_gptcli("train", "the-verdict.txt", *FAST, "--lr", "1e30", "--out", "runs/nan", cwd=workdir)
    assert proc.returncode == 1, proc.stderr
    assert "non-finite loss at step" in proc.stderr
    for p in rundir.list_step_checkpoints(workdir / "runs/nan"):
        sd = ckpt.load_checkpoint(p)["model_state_dict"]
        assert all(torch.isfinite(v).all() for v in sd.values())


def test_skip_nonfinite_tolerates_n_steps(tmp_path, monkeypatch):
    import gptcli.tasks.lm as tr

    calls = {"n": 0}
    real = tr.batch_loss

    def poisoned(model, x, y):
        loss = real(model, x, y)
        if model.training:
            calls["n"] += 1
            if calls["n"] in (3, 5):
                return loss * float("inf")
        return loss

    monkeypatch.setattr(tr, "batch_loss", poisoned)
    cfg = TrainConfig(epochs=1, data=[str(VERDICT)], batch_size=8, eval_freq=100, skip_nonfinite=2)
    st = Trainer(ModelConfig(**TINY_MODEL), cfg, tmp_path / "run").fit()
    assert st.nonfinite_steps == 2
    calls["n"] = 0
    with pytest.raises(TrainingError, match="step 4"):
        Trainer(
            ModelConfig(**TINY_MODEL), TrainConfig(**{**cfg.to_dict(), "skip_nonfinite": 1}), tmp_path / "run2"
        ).fit()


def test_enospc_during_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cfg = TrainConfig(epochs=2, data=[str(VERDICT)], batch_size=8, eval_freq=100)
    t = Trainer(ModelConfig(**TINY_MODEL), cfg, tmp_path / "run")
    real_save = torch.save
    state = {"saves": 0}

    def failing_save(obj, f, *a, **k):
        state["saves"] += 1
        if state["saves"] == 2:
            f.write(b"partial bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(SaveError, match="No space left on device"):
        t.fit()
    d = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in d.iterdir()) == ["best.pth", "step-00000048.pth"], "no temporary file is left"
    ckpt.load_checkpoint(d / "step-00000048.pth")


def test_file_size_limit_during_save_in_a_real_process(workdir, trained):
    """A real write failure (RLIMIT_FSIZE -> EFBIG) while saving: clear error, old checkpoint intact."""
    before = trained.read_bytes()
    limit = 1 << 20

    def cap():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run(
        [*gptcli_exe(), "resume", "runs/r", "--epochs", "2"],
        cwd=workdir,
        capture_output=True,
        text=True,
        preexec_fn=cap,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "could not save checkpoint" in proc.stderr and "previous checkpoint is intact" in proc.stderr
    assert trained.read_bytes() == before
    assert not list(trained.parent.glob(".tmp-*"))


def test_weights_only_everywhere():
    """Every torch.load in the package passes weights_only=True."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "gptcli"
    for py in root.rglob("*.py"):
        for m in re.finditer(r"torch\.load\(([^)]*)\)", py.read_text()):
            assert "weights_only=True" in m.group(1), f"{py}: {m.group(0)}"


def test_resolving_a_run_then_loading_reads_the_archive_once_but_a_changed_file_again(workdir, trained, monkeypatch):
    reads = []
    real = zipfile.ZipFile.testzip
    monkeypatch.setattr(zipfile.ZipFile, "testzip", lambda zf: reads.append(zf.filename) or real(zf))
    path = ckpt.resolve_checkpoint(workdir / "runs/r")
    ckpt.load_checkpoint(path)
    assert len(reads) == 1
    ckpt.load_checkpoint(path)  # a second load checks again
    assert len(reads) == 2

    path = ckpt.resolve_checkpoint(workdir / "runs/r")
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = max(zf.infolist(), key=lambda i: i.file_size)
    data[info.header_offset + 200 + info.file_size // 2] ^= 0x01
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(bytes(data))
    os.replace(tmp, path)  # a new inode: the remembered check no longer applies
    with pytest.raises(ckpt.CheckpointError, match="CRC"):
        ckpt.load_checkpoint(path)
