"""``gptcli train --wandb``: Weights & Biases logging, tested offline.

wandb runs with ``WANDB_MODE=offline`` and every one of its directories under the test's tmp_path,
so nothing reaches the network. What it logged is read back from the offline run's ``.wandb``
file: W&B's LevelDB-style log of protocol buffers (``wandb.proto.wandb_internal_pb2.Record``),
framed as below (wandb 0.30 ships no reader for it).
"""

from __future__ import annotations

import contextlib
import json
import re
import struct
import sys
from pathlib import Path

import pytest
import wandb  # the test extra installs it
from typer.testing import CliRunner

from gptcli import rundir
from gptcli.cli import app
from gptcli.metrics import read_metrics

from .conftest import TINY_FLAGS, VERDICT

# A dozen optimizer steps per epoch: 46 windows of 12 tokens, 100 tokens apart, 4 per batch.
QUICK = [*TINY_FLAGS, "--batch-size", "4", "--stride", "100", "--eval-freq", "3", "--eval-iter", "1"]


@pytest.fixture(autouse=True)
def offline_wandb(tmp_path, monkeypatch):
    """wandb offline, silent, and confined to tmp_path; torn down after each test, as wandb reads
    its settings from the environment once per process."""
    home = tmp_path / "wandb-home"
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_ERROR_REPORTING", "false")  # no crash reports to Sentry
    for var, sub in [
        ("WANDB_CONFIG_DIR", "config"),
        ("WANDB_CACHE_DIR", "cache"),
        ("WANDB_DATA_DIR", "data"),
        ("WANDB_ARTIFACT_DIR", "artifacts"),
    ]:
        monkeypatch.setenv(var, str(home / sub))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    wandb.teardown()
    yield cwd
    wandb.teardown()


def invoke(*args: str, expect: int = 0):
    from gptcli import console

    try:
        res = CliRunner().invoke(app, list(args))
    finally:
        console.set_quiet(False)
        # What the end of the gptcli process does (wandb's atexit hook): stop wandb's service
        # process, which closes the run's .wandb file. run.finish() alone can leave the end of it
        # buffered for a moment.
        if sys.modules.get("wandb") is not None:
            wandb.teardown()
    if res.exit_code != expect:
        raise AssertionError(
            f"gptcli {' '.join(args)} exited {res.exit_code}, expected {expect}\n{res.output}\n{res.exception!r}"
        )
    return res


# -- reading an offline run back ----------------------------------------------------------------

_BLOCK = 32768  # the LevelDB log's block size; a record header is 7 bytes: CRC32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]  # the file header: ident, magic 0xBEE1, version
    records, i, parts = [], 7, b""
    while i < len(data):
        left = _BLOCK - i % _BLOCK
        if left < 7:  # too little room for a header: the rest of the block is padding
            i += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[i : i + 7])
        if kind == 0:
            break
        chunk, i = data[i + 7 : i + 7 + n], i + 7 + n
        if kind == _FULL:
            records.append(Record.FromString(chunk))
        elif kind == _FIRST:
            parts = chunk
        elif kind == _MIDDLE:
            parts += chunk
        elif kind == _LAST:
            records.append(Record.FromString(parts + chunk))
    return records


def offline_runs(run: Path) -> list[Path]:
    return sorted((run / "wandb").glob("offline-run-*"))


def history(session: Path) -> list[dict]:
    """The logged rows of one offline session, keys joined by / (``samples/path``)."""
    (log,) = session.glob("run-*.wandb")
    rows = []
    for r in wandb_records(log):
        if r.WhichOneof("record_type") == "history":
            rows.append({"/".join(it.nested_key) or it.key: json.loads(it.value_json) for it in r.history.item})
    return rows


def run_record(session: Path):
    (log,) = session.glob("run-*.wandb")
    (run,) = [r.run for r in wandb_records(log) if r.WhichOneof("record_type") == "run"]
    return run


def evals(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "eval"]


# -- the tests -----------------------------------------------------------------------------------


def test_wandb_logs_the_scalars_and_samples_of_metrics_jsonl_offline(tmp_path, offline_wandb):
    run = tmp_path / "runs" / "a"
    res = invoke("train", str(VERDICT), *QUICK, "--epochs", "2", "--out", str(run), "--wandb")
    assert "wandb:" not in res.output  # wandb itself never prints
    assert f"W&B run {json.loads(rundir.wandb_run_path(run).read_text())['id']} logged offline" in res.output
    assert not any(offline_wandb.iterdir())  # nothing in the current directory

    record = json.loads(rundir.wandb_run_path(run).read_text())
    (session,) = offline_runs(run)
    assert session.name.endswith(f"-{record['id']}") and record["project"] == "gptcli"
    info = run_record(session)
    assert (info.run_id, info.project, info.display_name) == (record["id"], "gptcli", "a")
    config = {u.key: json.loads(u.value_json) for u in info.config.update}
    assert config["model"]["emb_dim"] == 32 and config["train"]["epochs"] == 2

    rows = history(session)
    expected = evals(run)
    logged = [(row["_step"], row["loss/val"]) for row in rows if "loss/val" in row]
    assert logged == [(r["step"], r["val_loss"]) for r in expected]
    assert [row["loss/train"] for row in rows if "loss/train" in row] == [r["train_loss"] for r in expected]
    keys = set().union(*rows)
    assert {"loss/train", "loss/val", "perplexity/val", "lr", "tokens_seen", "tokens_per_sec"} <= keys

    # Each epoch's sample: a table of every sample so far, as metrics.jsonl has them
    samples = [r for r in read_metrics(run / "metrics.jsonl") if r["type"] == "sample"]
    tables = [row for row in rows if "samples/path" in row]
    assert [row["_step"] for row in tables] == [r["step"] for r in samples] and len(samples) == 2
    last = json.loads((session / "files" / tables[-1]["samples/path"]).read_text())
    assert last["columns"] == ["epoch", "step", "text"]
    assert last["data"] == [[r["epoch"], r["step"], r["text"]] for r in samples]


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    run = tmp_path / "runs" / "b"
    invoke("train", str(VERDICT), *QUICK, "--epochs", "2", "--max-steps", "5", "--out", str(run), "--wandb", "-q")
    id_file = rundir.wandb_run_path(run)
    stored = id_file.read_bytes()
    run_id = json.loads(stored)["id"]
    saved = rundir.saved_step(run)

    res = invoke("resume", str(run), "--max-steps", "14")  # no --wandb: the run remembers it
    assert "wandb:" not in res.output
    assert id_file.read_bytes() == stored
    first, second = offline_runs(run)
    # offline-run-<time>-<id>, with -1 after it when both sessions started in the same second
    assert all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{run_id}(-\d+)?", s.name) for s in (first, second))
    assert run_record(second).run_id == run_id
    config = {u.key: json.loads(u.value_json) for u in run_record(second).config.update}
    assert config["train"]["max_steps"] == 14
    # The second session logs the evaluations after the checkpoint it resumed from.
    logged = [(row["_step"], row["loss/val"]) for row in history(second) if "loss/val" in row]
    assert logged == [(r["step"], r["val_loss"]) for r in evals(run) if r["step"] >= saved]
    assert logged and [row["_step"] for row in history(first) if "loss/val" in row] == [
        r["step"] for r in evals(run) if r["step"] < saved
    ]


@contextlib.contextmanager
def without_wandb(monkeypatch):
    """A context in which ``import wandb`` fails, undone before the fixture tears wandb down."""
    with monkeypatch.context() as patch:
        for name in [n for n in sys.modules if n == "wandb" or n.startswith("wandb.")]:
            patch.setitem(sys.modules, name, None)
        yield


def test_wandb_missing_is_a_one_line_error(monkeypatch, tmp_path):
    with without_wandb(monkeypatch):
        res = invoke("train", str(VERDICT), *QUICK, "--out", str(tmp_path / "r"), "--wandb", expect=2)
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert lines == ["error: --wandb needs the wandb package, which is not installed; run: pip install wandb"]
    assert not (tmp_path / "r").exists()


def test_wandb_project_without_wandb_is_a_usage_error(tmp_path):
    res = invoke("train", str(VERDICT), *QUICK, "--out", str(tmp_path / "r"), "--wandb-project", "x", expect=2)
    assert [x for x in res.output.splitlines() if x.strip()] == [
        "error: --wandb-project is the W&B project for --wandb: pass --wandb too"
    ]


def test_online_without_credentials_is_a_one_line_error_before_training(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")  # no API key and an empty HOME: refused before any request
    res = invoke("train", str(VERDICT), *QUICK, "--out", str(tmp_path / "r"), "--wandb", expect=2)
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "error: --wandb: not logged in to Weights & Biases; run: wandb login"
    )
    assert not (tmp_path / "r").exists()


def test_resume_of_a_wandb_run_with_a_bad_record_or_without_wandb(monkeypatch, tmp_path):
    run = tmp_path / "runs" / "c"
    invoke("train", str(VERDICT), *QUICK, "--max-steps", "2", "--out", str(run), "-q")
    record = rundir.wandb_run_path(run)
    record.write_text("not json\n")
    res = invoke("resume", str(run), "--max-steps", "4", expect=1)
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {record}: is not a W&B run record"), lines
    assert rundir.saved_step(run) == 2 and record.read_text() == "not json\n"  # nothing changed

    # wandb gone: the run continues without W&B, and says so
    record.write_text('{"id": "abc123", "project": "gptcli"}\n')
    with without_wandb(monkeypatch):
        res = invoke("resume", str(run), "--max-steps", "4")
    assert "exists but wandb is not installed; not logging to W&B" in res.output
    assert rundir.saved_step(run) == 4 and not (run / "wandb").exists()
