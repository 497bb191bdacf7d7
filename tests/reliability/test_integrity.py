"""Integrity on a hostile pass (issue 21): changed finetune data, a shard edited in its middle,
a token cache entry made from a file rewritten while it was read, leftover temporary files, a
shard truncated under a running job, a terminal on standard input, and settings that were
accepted silently. Each is refused (or cleaned up) with one line naming what is wrong."""

from __future__ import annotations

import json

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
