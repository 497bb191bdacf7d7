"""The Hugging Face Hub, both ways, through ``huggingface_hub`` (the ``export`` extra).

Downloading goes through ``hf_hub_download``, so it brings Hugging Face's cache
(``$HF_HOME/hub``), offline mode (``HF_HUB_OFFLINE=1``), mirrors (``HF_ENDPOINT``) and tokens
(``HF_TOKEN``, ``hf auth login``). A repository's config.json is fetched and checked first (a
model of another architecture is refused before any weights move), then every other file is
fetched at the very commit config.json came from, so the files are one snapshot. The weights are
converted into a gptcli checkpoint by ``weights.hf``'s name map; the checkpoint records the
repository and commit, and a re-run that finds it asks nothing of the Hub.

Uploading (``push_folder``) is ``create_repo`` and ``upload_folder`` of a ``--to hf`` export.

Nothing here prints: progress goes through ``download.DownloadCallbacks``.
"""

from __future__ import annotations

import inspect
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gptcli.errors import CheckpointError, DownloadError, GptCliError, UsageError
from gptcli.weights import SIZES
from gptcli.weights.download import DownloadCallbacks

EXPORT_EXTRA = "pip install 'gptcli[export]'"
# OpenAI's four GPT-2 models as the Hub keeps them.
OPENAI_REPOS = {
    "124M": "openai-community/gpt2",
    "355M": "openai-community/gpt2-medium",
    "774M": "openai-community/gpt2-large",
    "1558M": "openai-community/gpt2-xl",
}
CONFIG = "config.json"
# The weights, in the order they are looked for (the first a repository has is taken).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Hub repository names: an optional owner, then a name; letters, digits, "-", "_", ".".
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")


def _hub():
    """huggingface_hub, with the submodules used here imported (a package attribute only once
    imported)."""
    try:
        import huggingface_hub
    except ImportError:
        raise UsageError(f"the Hugging Face Hub needs huggingface_hub: {EXPORT_EXTRA}") from None
    try:
        import huggingface_hub.constants
        import huggingface_hub.errors
    except ImportError:
        raise UsageError(
            f"huggingface_hub {getattr(huggingface_hub, '__version__', '?')} is too old for gptcli: {EXPORT_EXTRA} -U"
        ) from None
    return huggingface_hub


def check_repo_id(repo_id: str, flag: str = "REPO") -> str:
    if not _REPO_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".git", ".")):
        raise UsageError(f"invalid {flag}: {repo_id!r} (a Hub repository: NAME or OWNER/NAME, e.g. distilgpt2)")
    return repo_id


def endpoint() -> str:
    return _hub().constants.ENDPOINT


def offline() -> bool:
    c = _hub().constants
    is_offline = getattr(c, "is_offline_mode", None)  # newer versions; older ones have the flag only
    return bool(is_offline() if is_offline is not None else c.HF_HUB_OFFLINE)


@dataclass(frozen=True)
class Snapshot:
    """A repository's files at one commit, in Hugging Face's cache."""

    repo_id: str
    commit: str
    config: Path  # config.json
    weights: Path  # beside it, in the same snapshot folder


# ---------------------------------------------------------------------------------------------
# Errors: huggingface_hub's exceptions as one line each


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _hub_error(e: BaseException, repo_id: str, name: str | None = None) -> GptCliError:
    hh = _hub()
    errors = hh.errors
    where = f"{repo_id}/{name}" if name else repo_id
    if isinstance(e, errors.GatedRepoError):
        return DownloadError(
            f"{repo_id}: a gated repository: accept its terms on the Hub, then log in (hf auth login) or set HF_TOKEN"
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return DownloadError(
            f"{repo_id}: no such model repository on {endpoint()} (or a private one that your token cannot see)",
            hint="check the name (OWNER/NAME), or log in with: hf auth login (or set HF_TOKEN)",
        )
    if isinstance(e, errors.RevisionNotFoundError):
        return DownloadError(f"{repo_id}: no such revision (branch, tag or commit) on {endpoint()}")
    if isinstance(e, errors.LocalEntryNotFoundError):
        if offline():
            return DownloadError(
                f"{where}: not in the Hugging Face cache ({hh.constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is set",
                hint="download it once while online, or unset HF_HUB_OFFLINE",
            )
        return DownloadError(
            f"{where}: cannot reach {endpoint()} and the file is not in the Hugging Face cache "
            f"({_first_line(e.__cause__ or e)})",
            hint="check the network, or set HF_ENDPOINT to a mirror of the Hub",
        )
    if isinstance(e, errors.HfHubHTTPError):
        return DownloadError(f"{where}: {_first_line(e)}")
    return DownloadError(f"{where}: {_first_line(e)}")


def _is_hub_failure(e: BaseException) -> bool:
    """A failure of the Hub, the network or the disk, as opposed to a bug: huggingface_hub's
    errors, OSError, and its HTTP client's errors (httpx, httpx2 or requests, by version)."""
    hh = _hub()
    if isinstance(e, (hh.errors.HfHubHTTPError, hh.errors.EntryNotFoundError, OSError)):
        return True
    return type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


# ---------------------------------------------------------------------------------------------
# Downloading


def _bar_class(cb: DownloadCallbacks, name: str):
    """huggingface_hub's progress bar, as our callbacks: it calls ``update(n)`` per chunk (and
    with a negative n when a server ignores a resume and the file starts over)."""

    class _Bar:
        def __init__(self, *args: Any, total: int | None = None, initial: int = 0, **kwargs: Any) -> None:
            cb.on_file_start(name, total, initial)

        def update(self, n: int = 1) -> None:
            cb.on_bytes(name, n)

        def close(self) -> None:
            pass

        def __enter__(self) -> _Bar:
            return self

        def __exit__(self, *exc: Any) -> None:
            pass

    return _Bar


def _download(repo_id: str, name: str, revision: str, cb: DownloadCallbacks) -> Path:
    hh = _hub()
    kwargs: dict[str, Any] = {}
    if "tqdm_class" in inspect.signature(hh.hf_hub_download).parameters:  # older versions draw their own bar
        kwargs["tqdm_class"] = _bar_class(cb, name)
    path = Path(hh.hf_hub_download(repo_id, name, revision=revision, **kwargs))
    cb.on_file_done(name, path, skipped=False)
    return path


def read_config(path: Path, repo_id: str) -> dict[str, Any]:
    """A repository's config.json, which must describe a GPT-2 (model_type gpt2); else one line
    naming the repository and what it is."""
    try:
        hf = json.loads(path.read_bytes().removeprefix(b"\xef\xbb\xbf"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{repo_id}: its config.json is not readable JSON ({_first_line(e)})") from None
    if not isinstance(hf, dict):
        raise CheckpointError(f"{repo_id}: its config.json is not a JSON object of model settings")
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        arch = ", ".join(hf.get("architectures") or []) or "no architectures listed"
        raise CheckpointError(
            f"{repo_id}: not a GPT-2 model (config.json model_type {model_type!r}, {arch}); "
            "gptcli takes GPT-2-architecture models only (model_type 'gpt2')"
        )
    return hf


def fetch_repo(repo_id: str, *, revision: str | None = None, callbacks: DownloadCallbacks | None = None) -> Snapshot:
    """config.json and the weights of a GPT-2 repository, into Hugging Face's cache. config.json
    is checked (``read_config``, ``hf.config_from_hf``) before the weights are fetched; the weights
    come from the commit config.json came from."""
    from gptcli.weights.hf import config_from_hf

    hh = _hub()
    cb = callbacks or DownloadCallbacks()
    check_repo_id(repo_id)
    try:  # a kilobyte: not worth a bar of its own, which would also end the overall one early
        config = _download(repo_id, CONFIG, revision or "main", DownloadCallbacks())
    except Exception as e:
        if _is_hub_failure(e):
            raise _hub_error(e, repo_id, CONFIG) from None
        raise
    commit = config.parent.name  # snapshots/<commit>/config.json
    config_from_hf(read_config(config, repo_id), where=f"{repo_id}/{CONFIG}")
    for name in WEIGHT_FILES:
        cb.on_plan([(name, None)])
        try:
            weights = _download(repo_id, name, commit, cb)
        except hh.errors.EntryNotFoundError as e:
            if isinstance(e, hh.errors.LocalEntryNotFoundError) and not offline():
                raise _hub_error(e, repo_id, name) from None
            continue  # not in this repository (or, offline, not cached): try the next kind
        except Exception as e:
            if _is_hub_failure(e):
                raise _hub_error(e, repo_id, name) from None
            raise
        if name.endswith(".index.json"):
            for shard in _shards(weights, repo_id):
                try:
                    _download(repo_id, shard, commit, cb)
                except Exception as e:
                    if _is_hub_failure(e):
                        raise _hub_error(e, repo_id, shard) from None
                    raise
        return Snapshot(repo_id, commit, config, weights)
    where = "in the Hugging Face cache (HF_HUB_OFFLINE is set)" if offline() else "in the repository"
    raise DownloadError(f"{repo_id}: no weights {where} (looked for {', '.join(WEIGHT_FILES)})")


def _shards(index: Path, repo_id: str) -> list[str]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise CheckpointError(f"{repo_id}/{index.name}: not a safetensors index (no weight_map)") from None


def recorded_origin(checkpoint: Path) -> dict[str, Any] | None:
    """The ``hub`` record (repository, commit) of a checkpoint ``convert_snapshot`` wrote, else None."""
    from gptcli.checkpoint import load_checkpoint

    try:
        origin = load_checkpoint(checkpoint, verify=False).get("hub")
    except GptCliError:
        return None
    return origin if isinstance(origin, dict) else None


def convert_snapshot(snapshot: Snapshot, out: Path, *, on_progress=None) -> Path:
    """The snapshot's weights as a gptcli checkpoint at ``out``, recording where they came from."""
    from gptcli import checkpoint as ckpt
    from gptcli.weights.common import save_checkpoint
    from gptcli.weights.hf import load_hf

    cfg, state = load_hf(snapshot.weights, on_progress=on_progress)
    origin = {"repo_id": snapshot.repo_id, "commit": snapshot.commit, "endpoint": endpoint()}
    return save_checkpoint(ckpt.weights_checkpoint(cfg, state, source="huggingface", hub=origin), out)


def repo_for_size(size: str) -> str:
    if size not in SIZES:
        raise UsageError(f"invalid --size: {size!r} (choose from {', '.join(SIZES)})")
    return OPENAI_REPOS[size]


# ---------------------------------------------------------------------------------------------
# Uploading


def push_folder(folder: Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Create ``repo_id`` (kept if it exists) and upload every file of ``folder`` in one commit;
    returns the repository's URL. The token is huggingface_hub's (HF_TOKEN, or the cached login).
    Any failure is one DownloadError-like line; the folder is left as it is."""
    hh = _hub()
    check_repo_id(repo_id, "--push")
    api = hh.HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            commit_message=message or "Upload a GPT-2 model trained with gptcli",
            repo_type="model",
        )
    except Exception as e:
        if not _is_hub_failure(e) and not isinstance(e, ValueError):
            raise
        raise PushError(f"{repo_id}: push to {endpoint()} failed: {_push_reason(e)}", hint=_push_hint(e)) from None
    return str(url)


class PushError(DownloadError):
    """An upload to the Hub that failed (the export on disk is kept)."""


def _push_reason(e: BaseException) -> str:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    if status in (401, 403):
        return f"HTTP {status}: not authorised"
    return _first_line(e)


def _push_hint(e: BaseException) -> str | None:
    response = getattr(e, "response", None)
    if getattr(response, "status_code", None) in (401, 403) or isinstance(e, _hub().errors.RepositoryNotFoundError):
        token = "HF_TOKEN is set" if os.environ.get("HF_TOKEN") else "no HF_TOKEN"
        return f"log in with: hf auth login (or set HF_TOKEN to a token with write access; {token})"
    return None
