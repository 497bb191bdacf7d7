"""Runs written by an earlier gptcli (tests/fixtures/compat, made by make_fixtures.py there, before
the one-engine rewrite) still load, resume exactly and sample identically: each fixture is a run
stopped part-way, and expected.json holds what that gptcli gave when the same run went on
uninterrupted."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from gptcli.metrics import read_metrics

from .conftest import run_gptcli

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compat"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
BASE_DIR = Path("/tmp/gptcli-compat-fixtures")  # where the finetune runs name their base
TEXT_DIR = Path("/tmp/gptcli-fixture-work")  # where the pretraining run names its text (an absolute path)


def _digest(path: Path) -> str:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    h = hashlib.sha256()
    for k in sorted(obj["model_state_dict"]):
        h.update(k.encode())
        h.update(obj["model_state_dict"][k].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture
def fixture_dir(tmp_path):
    BASE_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "base.pth", BASE_DIR / "base.pth")
    TEXT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy(FIXTURES / "data" / "verdict.txt", TEXT_DIR / "verdict.txt")
    for f in (FIXTURES / "data").iterdir():
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "runs").mkdir()
    return tmp_path


def _resume(name: str, work: Path) -> Path:
    run = work / "runs" / EXPECTED[name]["run"]
    shutil.copytree(FIXTURES / EXPECTED[name]["run"], run)
    run_gptcli(
        "resume", f"runs/{run.name}", "--max-steps", "999999", "-q", cwd=work, env={"OMP_NUM_THREADS": "1"}, check=True
    )
    return run


@pytest.mark.parametrize("name", ["lm", "instruct", "classify-lora"])
def test_an_earlier_run_resumes_to_the_same_weights_and_losses(fixture_dir, name):
    exp = EXPECTED[name]
    run = _resume(name, fixture_dir)
    last = sorted((run / "checkpoints").glob("step-*.pth"))[-1]
    assert torch.load(last, weights_only=True)["progress"]["step"] == exp["final_step"]
    assert _digest(last) == exp["weights_sha256"]
    records = read_metrics(run / "metrics.jsonl")
    assert [[r["train_loss"], r["val_loss"]] for r in records if r["type"] == "eval"] == exp["eval_losses"]
    for want in exp.get("records", []):
        got = [r for r in records if r["type"] == want["type"] and r["epoch"] == want["epoch"]]
        assert got and {k: got[-1][k] for k in want} == want


def test_an_earlier_pretraining_run_samples_the_same_text(fixture_dir):
    run = _resume("lm", fixture_dir)
    out = run_gptcli(
        "sample", "-c", str(run), "--max-new-tokens", "8", "--prompt", "Every effort", cwd=fixture_dir, check=True
    )
    assert out.stdout == EXPECTED["lm"]["sample"]


def test_an_earlier_finetune_run_samples_and_classifies_the_same(fixture_dir):
    run = _resume("instruct", fixture_dir)
    out = run_gptcli(
        "sample",
        "-c",
        str(run),
        "--max-new-tokens",
        "6",
        "--prompt",
        "Repeat the word cat.",
        cwd=fixture_dir,
        check=True,
    )
    assert out.stdout == EXPECTED["instruct"]["sample"]
    run = _resume("classify-lora", fixture_dir)
    out = run_gptcli("classify", "-c", str(run), "win cash now 3", cwd=fixture_dir, check=True)
    assert out.stdout == EXPECTED["classify-lora"]["classify"]


def test_a_checkpoint_copied_out_of_its_run_goes_on_as_a_new_run_and_says_so(fixture_dir):
    """`gptcli resume ckpt.pth` on a loose checkpoint (issue 21): a new run, said in one line,
    with --out to choose its directory, and no warning about a metrics log nobody lost."""
    shutil.copy(FIXTURES / "lm-stopped" / "checkpoints" / "step-00000003.pth", fixture_dir / "loose.pth")
    env = {"OMP_NUM_THREADS": "1"}
    res = run_gptcli("resume", "loose.pth", "--max-steps", "5", "-o", "runs/new", cwd=fixture_dir, env=env)
    assert res.returncode == 0, res.stderr
    assert "loose.pth is not in a run's checkpoints/: continuing it as a new run in runs/new" in res.stderr
    assert "missing" not in res.stderr and "warning" not in res.stderr
    assert (fixture_dir / "runs/new/checkpoints/step-00000005.pth").is_file()
    shutil.copytree(FIXTURES / "lm-stopped", fixture_dir / "runs/lm")
    res = run_gptcli("resume", "runs/lm", "--max-steps", "5", "-o", "elsewhere", cwd=fixture_dir, env=env)
    assert res.returncode == 2 and res.stderr.startswith("error: invalid --out:") and len(res.stderr.splitlines()) == 1
