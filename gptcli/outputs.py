"""Where an output flag may write: the one check that ``convert -o``, ``sample --responses -o``
and the like make before any work.

Nothing already saved is ever lost: a file in a run's ``checkpoints/`` (a step checkpoint,
``best.pth``, one a finetune run stands on) is never written over, ``--force`` or not; any other
file or non-empty folder that exists is replaced only with ``--force``. Plain file-system work,
and one look inside a ``.pth`` zip, so the check is instant.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from gptcli import rundir
from gptcli.errors import UsageError
from gptcli.paths import display_path


def _named(path: Path, flag: str | None) -> str:
    return f"{flag} {path}" if flag else str(path)


def _run_checkpoint(path: Path) -> Path | None:
    """The run whose ``checkpoints/`` holds ``path``, if it does and ``path`` is (or would be
    taken for) one of its checkpoints: any file there, or a new name that looks like one."""
    run = rundir.run_dir_of(path)
    if run is None:
        return None
    if path.is_file() or path.is_symlink() or path.suffix in (".pth", ".pt"):
        return run
    return None


def is_gptcli_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a file torch saved as a zip, as every gptcli checkpoint is: cheap (no
    unpickling), and enough to word the refusal."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def check_output_file(path: str | Path, *, flag: str | None = "-o", force: bool = False) -> None:
    """Refuse to write ``path`` over a run's checkpoint (always), or over any existing file unless
    ``force``; a UsageError that names ``flag`` (None: a default output, named by its path)."""
    path = Path(path)
    run = _run_checkpoint(path)
    if run is not None:
        raise UsageError(
            f"{_named(path, flag)}: is {'a checkpoint' if path.exists() else 'in the checkpoints folder'} of run "
            f"{display_path(run)}; refusing to overwrite it (choose another path)"
        )
    if force or not (path.is_file() or path.is_symlink()):
        return
    what = " (a checkpoint)" if is_gptcli_checkpoint(path) else ""
    raise UsageError(f"{_named(path, flag)}: exists{what}; pass --force to overwrite it")


def check_output_dir(path: str | Path, *, flag: str | None = "-o", force: bool = False) -> None:
    """Refuse to write files into a run directory or its ``checkpoints/`` (always), or into a
    folder that already holds files unless ``force``."""
    path = Path(path)
    if path.is_dir() and (rundir.is_run_dir(path) or rundir.run_dir_of(path / "x") is not None):
        run = path if rundir.is_run_dir(path) else path.parent
        raise UsageError(
            f"{_named(path, flag)}: is {'the run directory' if run == path else 'the checkpoints folder of run'} "
            f"{display_path(run)}; refusing to write into it (choose another path)"
        )
    if force or not path.is_dir():
        return
    try:
        empty = not any(path.iterdir())
    except OSError:
        return  # the write itself will say why it cannot
    if not empty:
        raise UsageError(f"{_named(path, flag)}: exists; pass --force to overwrite it")
