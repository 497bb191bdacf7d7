"""Shared fixtures: tiny models, the bundled corpus, and an isolated GPTCLI_HOME and cwd."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Tiny models spend their time in thread hand-offs, not arithmetic: one thread is faster, and
# subprocesses (the installed gptcli) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reaches the Hugging Face Hub: huggingface_hub and datasets read these once, when first
# imported, so they are set here, before any test module imports them, in every worker alike. The
# tests against the fake Hub on 127.0.0.1 set huggingface_hub's constants (tests/test_hub.py), and
# the installed-CLI one passes HF_HUB_OFFLINE=0 to its subprocess.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

ROOT = Path(__file__).resolve().parents[1]
VERDICT = ROOT / "examples" / "the-verdict.txt"

# The book's unit-test shape: small enough for CPU tests, same code paths as 124M.
TINY_MODEL = dict(context_length=12, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1, qkv_bias=False)
TINY_FLAGS = ["--context-length", "12", "--emb-dim", "32", "--n-heads", "4", "--n-layers", "2"]


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("gptcli_home")
    monkeypatch.setenv("GPTCLI_HOME", str(home))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(home / "tiktoken"))
    monkeypatch.delenv("GPTCLI_DEBUG", raising=False)
    return home


@pytest.fixture
def verdict() -> Path:
    return VERDICT


@pytest.fixture
def tiny_cfg():
    from gptcli.config import ModelConfig

    return ModelConfig(**TINY_MODEL)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """A temporary current directory holding a copy of the-verdict.txt."""
    shutil.copy(VERDICT, tmp_path / "the-verdict.txt")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def gptcli_exe() -> list[str]:
    exe = Path(sys.executable).parent / "gptcli"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "gptcli"]


def run_gptcli(*args: str, cwd: Path, timeout: float = 600, env: dict | None = None, check: bool = False):
    """Run the installed gptcli as a user would, in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [*gptcli_exe(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"gptcli {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


@pytest.fixture
def two_threads():
    """PyTorch on 2 threads for one test (the suite runs on one, above): the paths that split work
    across threads (gptcli.quantize.SplitLinear) only run with several."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)
