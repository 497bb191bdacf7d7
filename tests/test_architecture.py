"""The layering rules, checked by reading the import statements (and one real import trace)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import torch

from tests.conftest import TINY_MODEL

PKG = Path(__file__).resolve().parents[1] / "gptcli"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (top level or inside functions)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _modules() -> dict[str, set[str]]:
    return {str(p.relative_to(PKG.parent)): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _uses(imports: set[str], top: str) -> bool:
    return any(name == top or name.startswith(top + ".") for name in imports)


def test_only_cli_and_console_know_the_terminal():
    offenders = [
        mod
        for mod, imports in _modules().items()
        if mod not in ("gptcli/cli.py", "gptcli/cli_options.py", "gptcli/console.py")
        and (_uses(imports, "typer") or _uses(imports, "rich"))
    ]
    assert offenders == []


def test_the_weights_library_never_imports_the_console_or_the_commands():
    offenders = [
        mod
        for mod, imports in _modules().items()
        if mod.startswith("gptcli/weights/")
        and (_uses(imports, "gptcli.console") or _uses(imports, "gptcli.commands") or _uses(imports, "gptcli.cli"))
    ]
    assert offenders == []


def test_the_library_never_imports_the_command_layer():
    """Imports point downward: only cli.py reaches the commands, and only ``python -m gptcli``
    reaches cli.py."""
    modules = _modules()
    assert [m for m, imports in modules.items() if _uses(imports, "gptcli.cli")] == ["gptcli/__main__.py"]
    below = [m for m in modules if not m.startswith(("gptcli/commands/", "gptcli/cli.py"))]
    assert [m for m in below if _uses(modules[m], "gptcli.commands")] == []


def test_sampling_imports_neither_the_trainer_nor_the_token_cache(tmp_path):
    from gptcli import checkpoint
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    cfg = ModelConfig(**TINY_MODEL)
    torch.manual_seed(0)
    path = checkpoint.atomic_save(checkpoint.weights_checkpoint(cfg, GPT(cfg).state_dict()), tmp_path / "m.pth")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gptcli", "sample", "-c", str(path), "--max-new-tokens", "1"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "gptcli.inference" in imported and "gptcli.model" in imported  # the trace is real
    assert "gptcli.training" not in imported
    assert "gptcli.tokencache" not in imported
