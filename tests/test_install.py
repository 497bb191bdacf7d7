"""The README's wheel route for a machine without the network: in the clone, build wheels of gptcli
and its dependencies with the CPU torch; install them into a fresh virtual environment from that
folder alone; then run the installed `gptcli` outside the repository (so nothing is imported from
the source tree) on a tiny model.

gptcli is not on a package index, so this is how it gets anywhere but a clone. About 1.5 to 2
minutes on 2 loaded cores, most of it pip unpacking torch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import ROOT, VERDICT

# The Makefile's torch: the local CPU wheel where this machine has one (TORCH_SPEC overrides it).
TORCH_SPEC = os.environ.get("TORCH_SPEC", "torch==2.13.0")


def _run(
    cmd: list[str], cwd: Path, timings: dict[str, float], what: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    env = {**(env if env is not None else os.environ), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
    timings[what] = round(time.perf_counter() - t0, 1)
    assert proc.returncode == 0, (
        f"{what}: {' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


@pytest.mark.slow
def test_wheels_install_offline_into_a_fresh_venv_and_train(tmp_path):
    timings: dict[str, float] = {}
    # On the connected machine, in the clone: gptcli and every dependency as wheels.
    wheels = tmp_path / "wheels"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", "-v", str(ROOT), TORCH_SPEC, "-w", str(wheels)],
        tmp_path,
        timings,
        "wheels",
    )
    assert "deprecated" not in built.stdout + built.stderr  # e.g. setuptools on a TOML-table project.license
    assert not list(wheels.glob("nvidia_*")), "the CPU torch must not pull the CUDA libraries"
    # On the offline machine: a fresh environment, and nothing but that folder (no index, no pip
    # configuration). pip from outside drives the new environment (pip >= 22.3), which saves
    # installing a copy of pip into it.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, timings, "venv")
    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")} | {"PIP_CONFIG_FILE": os.devnull}
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-compile"]
    _run([*pip, "--no-index", "--find-links", str(wheels), "gptcli"], tmp_path, timings, "install", env=offline)

    where = _run(
        [str(venv / "bin" / "python"), "-c", "import gptcli; print(gptcli.__file__)"], tmp_path, timings, "import"
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout  # the wheel's copy, not the clone's
    gptcli = str(venv / "bin" / "gptcli")
    assert "Usage: gptcli" in _run([gptcli, "--help"], tmp_path, timings, "help").stdout
    tiny = ["--n-layers", "2", "--emb-dim", "32", "--n-heads", "4", "--context-length", "12", "--epochs", "1"]
    quick = ["--batch-size", "4", "--stride", "100", "--eval-freq", "5", "--eval-iter", "1", "--quiet"]
    _run([gptcli, "train", str(VERDICT), *tiny, *quick, "--out", "run"], tmp_path, timings, "train")
    assert list((tmp_path / "run" / "checkpoints").glob("step-*.pth"))
    print("wheel route timings (s):", timings)
