"""The run model: one object answers what a run is, where it stands and why it stopped, for
every kind (the committed compatibility runs: a pretraining, an instruct and a LoRA classify run,
each stopped by --max-steps 3)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from gptcli.run import Run

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "compat"
RUNS = {"lm-stopped": "training", "instruct-stopped": "instruct", "classify-lora-stopped": "classify"}


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for i, name in enumerate(RUNS):
        shutil.copytree(FIXTURES / name, root / name)
        stamp = time.time() - 100 + i  # touched in this order: classify the newest
        for f in (root / name).rglob("*"):
            os.utime(f, (stamp, stamp))
    return root


@pytest.mark.parametrize("name", list(RUNS))
def test_a_run_says_what_it_is_and_why_it_stopped(runs, name):
    run = Run(runs / name)
    assert run.kind == RUNS[name]
    assert run.planned_epochs == 2 and run.run_settings["max_steps"] == 3
    assert run.newest is not None and run.newest[0].name == "step-00000003.pth"
    assert run.epochs() == (run.newest[1]["progress"]["epoch"], 2)
    assert run.stopped_by() == "--max-steps 3" == run.ended_by_a_budget()
    assert run.finished()  # its budget is reached
    assert not run.finished(length={"max_steps": 100})  # a larger one leaves work to do
    assert run.stopped_by({"max_steps": 100}) is None


def test_a_run_without_its_config_still_has_its_checkpoint(runs):
    (runs / "lm-stopped" / "config.yaml").unlink()
    run = Run(runs / "lm-stopped")
    assert run.kind is None and run.planned_epochs is None and run.ended_by_a_budget() is None
    assert run.stopped_by() == "--max-steps 3"  # the checkpoint still knows


def test_the_latest_run_of_a_kind_and_the_latest_unfinished(runs):
    assert Run.latest(runs).path.name == "classify-lora-stopped"
    assert Run.latest(runs, kinds=("training", "instruct")).path.name == "instruct-stopped"
    assert Run.latest(runs, kinds=("nothing",)) is None
    assert Run.latest_unfinished(runs) is None  # every one reached its budget
    assert Run.latest_unfinished(runs, length={"max_steps": 9}).path.name == "classify-lora-stopped"
    assert [r.path.name for r in Run.all(runs)] == list(RUNS)


def test_runs_and_info_agree_on_an_interrupted_runs_step_and_tokens(runs, monkeypatch):
    """An interrupted run saves between evaluations: `runs` shows where `resume` goes on from,
    the newest checkpoint's step and tokens, as `info` does (issue 21)."""
    import json

    from typer.testing import CliRunner

    from gptcli.cli import app

    run = runs / "lm-stopped"
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("max_steps: 3", "max_steps: null"))  # no budget: interrupted
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # the last evaluation was not logged
    monkeypatch.chdir(runs.parent)
    listed = json.loads(CliRunner().invoke(app, ["runs", "--json"]).stdout)
    row = next(r for r in listed if r["run"].endswith("lm-stopped"))
    info = json.loads(CliRunner().invoke(app, ["info", str(run), "--json"]).stdout)
    assert row["status"] == "interrupted"
    assert (row["step"], row["tokens_seen"]) == (info["step"], info["tokens_seen"]) == (3, 96)
