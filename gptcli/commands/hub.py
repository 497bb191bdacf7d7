"""The Hugging Face Hub parts of ``gptcli download`` (``--source hf``, ``REPO``) and of
``gptcli convert --to hf --push``: how they report. The work is ``gptcli.weights.hub``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gptcli import console
from gptcli.paths import shell_path
from gptcli.settings.weights import ConvertSettings, DownloadSettings
from gptcli.weights import CONVERTED_NAME, gpt2_dir, hub_dir


def _target(s: DownloadSettings, repo_id: str) -> tuple[Path, str]:
    """Where the converted model goes, and the ``--model`` name that finds it there."""
    default = hub_dir(repo_id) if s.repo is not None else gpt2_dir(s.size)
    name = s.repo if s.repo is not None else f"gpt2-{s.size}"
    directory = Path(s.directory) if s.directory is not None else default
    if directory.resolve() != default.resolve():
        name = shell_path(directory / CONVERTED_NAME)
    return directory / CONVERTED_NAME, name


def hub_download_command(
    s: DownloadSettings, *, display: Callable[[Any], Any], convert_bar: Callable[[str], tuple[Any, Any]]
) -> Path:
    """``gptcli download REPO`` and ``gptcli download --size S --source hf``, drawn with
    ``download``'s own progress display (``display(progress)``) and conversion bar."""
    from gptcli.weights import hub

    console.set_quiet(s.quiet)
    repo_id = hub.check_repo_id(s.repo) if s.repo is not None else hub.repo_for_size(s.size)
    target, name = _target(s, repo_id)
    if target.is_file() and not s.no_convert:
        origin = hub.recorded_origin(target)
        if origin and origin.get("repo_id") == repo_id and s.revision in (None, origin.get("commit")):
            console.info(
                f"already downloaded: {repo_id} at commit {str(origin.get('commit'))[:12]} ({target}); "
                "pass --revision main to fetch a newer commit"
            )
            console.info(f"sample with: gptcli sample --model {name}")
            return target
    with console.byte_progress(2) as prog:
        snapshot = hub.fetch_repo(repo_id, revision=s.revision, callbacks=display(prog))
    console.info(f"downloaded {repo_id} (commit {snapshot.commit[:12]}) to {snapshot.weights.parent}")
    if s.no_convert:
        folder = shell_path(snapshot.weights.parent)
        console.info(f"use it as it is with --model {folder}, or convert it with: gptcli convert {folder}")
        return snapshot.weights.parent
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from gptcli.errors import SaveError, os_error_reason

        raise SaveError(f"{target.parent}: cannot create the folder ({os_error_reason(e)})") from None
    prog, on_progress = convert_bar("converting")
    with prog:
        hub.convert_snapshot(snapshot, target, on_progress=on_progress)
    console.info(f"wrote {target}")
    console.info(f"sample with: gptcli sample --model {name}")
    return target


def push_export(s: ConvertSettings, export_dir: Path) -> str:
    """``convert --to hf --push REPO``: the model card into the export, then the upload. A
    failed push is one error line; the export stays on disk, and the line says so."""
    from gptcli.errors import GptCliError
    from gptcli.modelcard import write_card
    from gptcli.weights import hub

    assert s.push is not None
    repo_id = hub.check_repo_id(s.push, "--push")
    for note in write_card(export_dir, s.src, repo_id):
        console.info(note)
    console.info(f"pushing {export_dir} to {repo_id} on {hub.endpoint()}" + (" (private)" if s.private else ""))
    try:
        url = hub.push_folder(export_dir, repo_id, private=s.private)
    except GptCliError as e:
        e.args = (f"{e.args[0]}; the export is kept in {shell_path(export_dir)}",)
        raise
    console.info(f"pushed: {url}")
    return url
