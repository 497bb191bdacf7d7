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
