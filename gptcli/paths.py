"""Where gptcli keeps per-user files, and how a path is shown to the user.

Owns ``$GPTCLI_HOME`` (downloaded weights, the token cache). Imports nothing of ours.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path


def gptcli_home() -> Path:
    """Per-user cache: $GPTCLI_HOME, else ~/.cache/gptcli."""
    env = os.environ.get("GPTCLI_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gptcli"


def display_path(p: str | Path) -> str:
    """A path relative to the current directory when it lies below it (as the user typed it)."""
    try:
        return str(Path(p).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(p)


def shell_path(p: str | Path) -> str:
    """A path for a command the user may paste: relative where possible, and shell-quoted, so
    ``gptcli resume 'runs/my run'`` works as printed."""
    return shlex.quote(display_path(p))
