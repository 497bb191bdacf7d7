"""Integrity on a hostile pass (issue 21): changed finetune data, a shard edited in its middle,
a token cache entry made from a file rewritten while it was read, leftover temporary files, a
shard truncated under a running job, a terminal on standard input, and settings that were
accepted silently. Each is refused (or cleaned up) with one line naming what is wrong."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.cli import app
from gptcli.commands.finetune import finetune_command
from gptcli.config import ModelConfig
from gptcli.model import GPT

from ..finetune_helpers import BOOK_CFG, RECORDS

TINY = dict(BOOK_CFG, context_length=48)


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(res, code: int = 2) -> str:
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == code, (res.output, res.exception)
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def _base(path):
    torch.manual_seed(0)
    cfg = ModelConfig(**TINY)
    return ckpt.atomic_save(ckpt.weights_checkpoint(cfg, GPT(cfg).state_dict()), path)


COMMON = dict(epochs=1, batch_size=2, eval_iter=1, lr=1e-2, device="cpu", eval_freq=2)


# ---------------------------------------------------------------------------------------------
# 1. Finetune data changed after training: resume, eval --split and sample --responses refuse


@pytest.fixture(scope="module")
def instruct_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    base = _base(root / "base.pth")
    data = root / "data.json"
    data.write_text(json.dumps(RECORDS * 2), encoding="utf-8")
    cfg = dict(kind="instruct", data=str(data), init=str(base), sample_tokens=2, **COMMON)
    finetune_command(cfg, out=root / "run")
    return root


@pytest.fixture
def edited(instruct_run):
    data = instruct_run / "data.json"
    original = data.read_bytes()
    changed = [dict(r) for r in RECORDS * 2]
    changed[-1]["output"] = "relabelled"
    data.write_text(json.dumps(changed), encoding="utf-8")
    yield instruct_run
    data.write_bytes(original)


def test_the_finetune_checkpoint_records_its_data(instruct_run):
    path = rundir.list_step_checkpoints(instruct_run / "run")[-1]
    assert len(ckpt.load_checkpoint(path)["finetune"]["data_fingerprint"]) == 64


@pytest.mark.parametrize(
    "args",
    [
        ("finetune", "resume", "{run}", "--epochs", "2"),
        ("resume", "{run}", "--epochs", "2"),
        ("eval", "-c", "{run}", "--split", "test", "-q"),
        ("sample", "-c", "{run}", "--responses", "test", "-o", "{root}/out.json", "--max-new-tokens", "2", "-q"),
    ],
)
def test_changed_finetune_data_is_refused(edited, args):
    args = [a.format(run=edited / "run", root=edited) for a in args]
    line = one_error(invoke(*args))
    assert "data.json: the data differs from the one this run was trained on" in line


def test_unchanged_finetune_data_evaluates(instruct_run):
    res = invoke("eval", "-c", instruct_run / "run", "--split", "test", "-q", "--json")
    assert res.exit_code == 0, res.output


def test_a_checkpoint_without_a_data_fingerprint_still_evaluates(instruct_run, tmp_path):
    path = rundir.list_step_checkpoints(instruct_run / "run")[-1]
    obj = ckpt.load_checkpoint(path)
    obj["finetune"].pop("data_fingerprint", None)
    old = ckpt.atomic_save(obj, tmp_path / "old.pth")
    assert invoke("eval", "-c", old, "--split", "test", "-q", "--json").exit_code == 0


# ---------------------------------------------------------------------------------------------
# 2. A change inside a shard, past its first and last MiB, is a change of data


def _shard(path, n_tokens: int):
    from gptcli import shards

    ids = (np.arange(n_tokens) % 50000).astype(np.uint16)
    shards.write_shard(path, ids)
    return path


def test_a_change_in_the_middle_of_a_shard_changes_its_fingerprint(tmp_path):
    from gptcli import shards

    path = _shard(tmp_path / "train_000000.bin", 3 << 20)  # 6 MiB of ids
    before = shards.fingerprint([path])
    with open(path, "r+b") as f:
        f.seek(3 << 20)
        f.write(b"\x01\x00")
    assert shards.fingerprint([path]) != before


def test_the_shard_digest_is_cached_by_stat_and_rehashed_on_change(tmp_path, monkeypatch):
    from gptcli import shards

    path = _shard(tmp_path / "train_000000.bin", 1000)
    first = shards.fingerprint([path])
    calls = []
    real = shards._sha256_file
    monkeypatch.setattr(shards, "_sha256_file", lambda p: calls.append(p) or real(p))
    assert shards.fingerprint([path]) == first and calls == []  # the cache answered
    with open(path, "r+b") as f:
        f.seek(2000)
        f.write(b"\x02\x00")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert shards.fingerprint([path]) != first and calls == [path]


def test_resume_accepts_the_sampled_fingerprint_of_older_checkpoints(tmp_path):
    from gptcli import shards

    files = [_shard(tmp_path / "train_000000.bin", 1000), _shard(tmp_path / "val_000000.bin", 100)]
    _, _, full, sampled = shards.run_tokens([tmp_path], None)
    assert sampled == shards.sampled_fingerprint(files) and full == shards.fingerprint(files)


# ---------------------------------------------------------------------------------------------
# 5. A shard truncated while a run reads it: a DataError, not SIGBUS


def test_a_shard_truncated_under_a_reader_is_a_data_error(tmp_path):
    from gptcli import shards
    from gptcli.errors import DataError

    path = _shard(tmp_path / "train_000000.bin", 1 << 16)
    tokens = shards.read_tokens([path])
    assert len(tokens[0:100]) == 100
    os.truncate(path, shards.HEADER_BYTES + 1000)
    with pytest.raises(DataError, match=r"train_000000\.bin: shrank from .* while this run was reading it"):
        tokens[60000:60100]
