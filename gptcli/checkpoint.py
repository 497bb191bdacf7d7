"""The one owner of the checkpoint format: building, atomic save, safe load, RNG capture, and
resolving a run directory (laid out by ``gptcli.rundir``) to the checkpoint to load.

A checkpoint is a ``.pth`` that ``torch.load(path, weights_only=True)`` reads: plain dicts, lists,
numbers, strings and tensors only (RNG states are stored as tensors), so loading one never runs
code. It keeps the book's ``model_state_dict`` and ``optimizer_state_dict`` keys.

A weights-only checkpoint (``kind: weights``, or a merged classifier: no optimizer state, no
progress) may also be a ``.safetensors`` file: the state dict as its tensors, every other key as
JSON in its metadata (``gptcli``), beside ``format``, ``version`` and a CRC32 per tensor.
``load_checkpoint`` reads either into the same dict.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import random
import shutil
import stat
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gptcli import fsutil, rundir
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError, SaveError, UsageError, os_error_reason
from gptcli.model import GPT, gptcli_shapes

FORMAT = "gptcli-checkpoint"
VERSION = 1
SAFETENSORS_SUFFIX = ".safetensors"


# ---------------------------------------------------------------------------------------------
# Building: the only places that spell out a checkpoint's keys


def weights_checkpoint(model_cfg: ModelConfig, state: dict[str, torch.Tensor], **extra: Any) -> dict[str, Any]:
    """A weights-only checkpoint (``kind: weights``): what the importers write, and what
    ``--init`` and ``--model`` read. ``extra`` adds keys such as ``source``."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": "weights",
        "model_config": model_cfg.to_dict(),
        "model_state_dict": state,
        **extra,
    }


def training_checkpoint(
    model_cfg: ModelConfig,
    train_cfg: dict[str, Any],
    state: dict[str, torch.Tensor],
    *,
    optimizer_state: dict[str, Any],
    progress: dict[str, Any],
    rng: dict[str, Any] | None = None,
    scaler_state: dict[str, Any] | None = None,
    data_fingerprint: str | None = None,
    world_size: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """A training checkpoint (``kind: training``): weights plus everything ``resume`` needs."""
    obj: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kind": "training",
        "model_config": model_cfg.to_dict(),
        "train_config": dict(train_cfg),
        "model_state_dict": state,
        "optimizer_state_dict": optimizer_state,
        "progress": dict(progress),
        "world_size": world_size,
        **extra,
    }
    if scaler_state is not None:
        obj["scaler_state_dict"] = scaler_state
    if rng is not None:
        obj["rng"] = rng
    if data_fingerprint is not None:
        obj["data_fingerprint"] = data_fingerprint
    return obj


def read_model_config(obj: dict[str, Any], path: str | Path = "checkpoint") -> ModelConfig:
    """The model config a loaded checkpoint stores; a bad one is a CheckpointError naming the file."""
    raw = obj.get("model_config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: model_config is not a mapping ({type(raw).__name__})")
    try:
        return ModelConfig.from_dict(dict(raw), where=f"{path}: model_config")
    except UsageError as e:
        raise CheckpointError(str(e)) from None


# ---------------------------------------------------------------------------------------------
# Saving


def atomic_save(obj: dict[str, Any], path: str | Path) -> Path:
    """Write ``obj`` to a temporary file beside ``path``, fsync it, then rename it into place.

    A crash at any moment leaves either the old file or the complete new one, never a partial file
    under the final name. The free space is checked first (the size is known in advance). On any
    failure the temporary file is removed: a failed write is a SaveError that says what happened
    ("No space left on device"), and a Ctrl-C (KeyboardInterrupt) stays a KeyboardInterrupt.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(path.parent, with_margin(checkpoint_nbytes(obj)), f"the checkpoint {path.name}")
    out = None
    try:
        with fsutil.atomic_path(path) as tmp, open(tmp, "wb") as f:  # the temporary file goes on any failure
            out = _WriteRecorder(f)
            torch.save(obj, out)
    except BaseException as e:
        cause = _real_cause(e, out.error if out is not None else None)
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None  # a second Ctrl-C: the CLI exits 130, "interrupted"
        if not isinstance(cause, Exception):
            raise
        kept = "; the file already there is unchanged" if path.exists() else ""
        raise SaveError(f"{path}: could not save checkpoint ({_save_failure(cause)}){kept}") from e
    return path


def save_weights(obj: dict[str, Any], path: str | Path, *, safetensors: bool | None = None) -> Path:
    """Save a weights-only checkpoint: a ``.pth`` (``atomic_save``), or a ``.safetensors`` file
    (``safetensors``; None: by the name's suffix), written beside it and renamed into place as
    ``atomic_save`` does."""
    path = Path(path)
    if not (path.suffix == SAFETENSORS_SUFFIX if safetensors is None else safetensors):
        return atomic_save(obj, path)
    from safetensors.torch import save_file

    state = obj["model_state_dict"]
    tensors: dict[str, torch.Tensor] = {}
    tied: dict[str, str] = {}  # safetensors refuses shared storage: a tied head is written once
    first: dict[tuple, str] = {}
    for name, t in state.items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype)
        if key in first:
            tied[name] = first[key]
            continue
        first[key] = name
        tensors[name] = t.detach().cpu().contiguous()
    rest = {k: v for k, v in obj.items() if k != "model_state_dict"}
    metadata = {
        "format": FORMAT,
        "version": str(obj.get("version", VERSION)),
        "gptcli": json.dumps(rest),
        "tied": json.dumps(tied),
        "order": json.dumps(list(state)),
        "crc32": json.dumps({k: _crc32(t) for k, t in tensors.items()}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    check_free_space(path.parent, with_margin(checkpoint_nbytes(tensors)), f"the weights file {path.name}")
    try:
        with fsutil.atomic_path(path) as tmp:
            # safetensors writes through a private temporary file (mode 0600): the file gets the
            # mode every new file gets (0666 less the umask), as a .pth does
            tmp.touch()
            mode = stat.S_IMODE(tmp.stat().st_mode)
            save_file(tensors, str(tmp), metadata=metadata)
            os.chmod(tmp, mode)
    except OSError as e:
        raise SaveError(f"{path}: could not save the weights ({os_error_reason(e)})") from None
    return path


def _crc32(t: torch.Tensor) -> int:
    return zlib.crc32(t.contiguous().view(torch.uint8).numpy()) if t.numel() else 0


class _WriteRecorder:
    """The file torch writes a checkpoint through. torch's zip writer turns any exception raised
    while writing (a full disk, a second Ctrl-C) into its own "enforce fail ... unexpected pos";
    this keeps the real one so that the save can report what happened."""

    def __init__(self, f) -> None:
        self._f = f
        self.error: BaseException | None = None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except BaseException as e:
            self.error = self.error or e
            raise

    def flush(self) -> None:
        try:
            self._f.flush()
        except BaseException as e:
            self.error = self.error or e
            raise


def _real_cause(e: BaseException, recorded: BaseException | None) -> BaseException:
    """The exception behind a failed save: a Ctrl-C or an OSError raised while torch was writing
    (recorded by the writer, or chained to torch's error), else ``e`` itself."""
    chain, seen = [], set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        chain.append(x)
        x = x.__cause__ or x.__context__
    candidates = [recorded, *chain] if recorded is not None else chain
    for kind in (KeyboardInterrupt, OSError):
        for c in candidates:
            if isinstance(c, kind):
                return c
    return e


def _save_failure(e: BaseException) -> str:
    if isinstance(e, OSError):
        return os_error_reason(e)
    # Not torch's internal text: a bug-level failure, shown in full with GPTCLI_DEBUG=1.
    return f"writing failed: {type(e).__name__}"


def checkpoint_nbytes(obj: Any) -> int:
    """The bytes the tensors in ``obj`` take in a checkpoint: each storage once, whole, as
    torch.save writes them (a shared storage once, a view's entire storage)."""
    storages: dict[tuple, int] = {}

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            s = x.untyped_storage()
            storages[(x.device.type, s.data_ptr(), s.nbytes())] = s.nbytes()
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(obj)
    return sum(storages.values())


def with_margin(nbytes: int) -> int:
    """A checkpoint's size on disk from its tensor bytes: zip headers, alignment, the pickled
    settings and history."""
    return nbytes + nbytes // 100 + (1 << 20)


def estimate_training_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """The size of a training checkpoint before one is written: the weights, plus AdamW's two
    moments per parameter (counted from the parameters while the optimizer has no state yet)."""
    nbytes = checkpoint_nbytes(model.state_dict())
    if optimizer.state:
        nbytes += checkpoint_nbytes(optimizer.state_dict())
    else:
        nbytes += 2 * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return with_margin(nbytes)


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """A SaveError with the numbers when ``directory``'s file system has less than ``needed``
    bytes free (checked before writing, so no work is lost to a full disk halfway through)."""
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return  # cannot tell: the write itself will say
    if free < needed:
        raise SaveError(
            f"{directory}: not enough free space for {what}: it needs about {format_bytes(needed)}, "
            f"{format_bytes(free)} free"
        )


def format_bytes(n: int) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


# ---------------------------------------------------------------------------------------------
# Loading


# Files just verified by this process, keyed by identity and state, so that resolving a run
# directory and then loading the checkpoint it picked reads the archive once, not twice (~1.5 s
# per 2 GB). An entry is used once: any later load verifies again.
_verified: set[tuple] = set()


def _file_state(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path.resolve()), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _Anything:
    """Whatever a checkpoint's pickle builds besides tensors, when only its tensors' records matter."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


class _StorageKeys(pickle.Unpickler):
    """Unpickles a checkpoint's data.pkl into its structure with each tensor replaced by the key of
    the record that holds its bytes; builds nothing else and reads no tensor data."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, *args, **kwargs: storage
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        return _Anything

    def persistent_load(self, pid: Any) -> str:
        return str(pid[2])  # ('storage', storage type, key, location, numel)


def model_records(zf: zipfile.ZipFile) -> set[str] | None:
    """The names of the records holding the model's weights (``model_state_dict``), read from the
    archive's pickle alone; None when the pickle is not of the expected shape."""
    names = zf.namelist()
    pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(pkl) != 1:
        return None
    prefix = pkl[0][: -len("data.pkl")]
    try:
        obj = _StorageKeys(io.BytesIO(zf.read(pkl[0]))).load()
        keys = {v for v in obj["model_state_dict"].values() if isinstance(v, str)}
    except Exception:  # any surprise: fall back to checking every record
        return None
    data = {n for n in names if n.startswith(prefix + "data/")}
    return (set(names) - data) | {prefix + "data/" + k for k in keys}


def verify_archive(path: Path, *, remember: bool = False, model_only: bool = False) -> None:
    """Check every record of the checkpoint's zip archive against its stored CRC32; with
    ``model_only``, only those the model's weights are read from (plus every record that is not
    a tensor's): what inference reads of a training checkpoint, whose AdamW state is twice its
    weights.

    torch.save writes a CRC32 per record but torch.load does not check them (least of all with
    mmap), so a bit flipped on disk would otherwise load silently as a wrong weight. With
    ``remember``, the next check of the same file, unchanged (same inode, size and mtime), passes
    without reading it again.
    """
    state = _file_state(path)
    if state is not None and state in _verified:
        _verified.discard(state)
        return
    try:
        with zipfile.ZipFile(path) as zf:
            wanted = model_records(zf) if model_only else None
            bad = zf.testzip() if wanted is None else _first_bad_record(zf, wanted)
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise CheckpointError(
            f"{path}: not a readable gptcli checkpoint: truncated or not a checkpoint archive ({e})"
        ) from None
    if bad is not None:
        raise CheckpointError(f"{path}: checkpoint is corrupt: CRC mismatch in record {bad!r}")
    if remember and state is not None:
        _verified.add(state)


def _first_bad_record(zf: zipfile.ZipFile, names: set[str]) -> str | None:
    """The first of ``names`` whose CRC32 does not match, as ``ZipFile.testzip`` for all records."""
    for info in zf.infolist():
        if info.filename in names:
            try:
                with zf.open(info) as f:
                    while f.read(1 << 24):
                        pass
            except zipfile.BadZipFile:
                return info.filename
    return None


def load_checkpoint(
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    verify: bool = True,
    model_only: bool = False,
) -> dict[str, Any]:
    """Load and check a gptcli checkpoint (a ``.pth``, or a weights-only ``.safetensors`` file,
    told apart by their first bytes); any problem is one CheckpointError naming the file.

    The tensors are memory-mapped: only those that are used are ever read. ``model_only`` (for
    inference) checks the CRC32s of the model's records only, not those of the optimizer state."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if is_safetensors(path):
        obj = _load_safetensors(path, verify=verify)
        if map_location != "cpu":
            obj["model_state_dict"] = {k: v.to(map_location) for k, v in obj["model_state_dict"].items()}
        return _checked(obj, path)
    if verify:
        verify_archive(path, model_only=model_only)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except Exception as e:  # pickle, zip and tensor errors all mean "not a usable checkpoint"
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Weights only load failed" in str(e):
            reason = "it contains objects other than tensors and plain data, refused for safety"
        elif isinstance(e, (zipfile.BadZipFile, EOFError, RuntimeError)) or "zip" in reason.lower():
            reason = f"file is truncated or corrupt ({reason[:120]})"
        raise CheckpointError(f"{path}: not a readable gptcli checkpoint: {reason}") from None
    return _checked(obj, path)


def _checked(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gptcli checkpoint (no '{FORMAT}' format marker)")
    if obj.get("version", 0) > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj.get('version')} is newer than this gptcli")
    for key in ("model_config", "model_state_dict"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    return obj


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts as a safetensors file does: an 8-byte header length, then JSON."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
            size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def _load_safetensors(path: Path, *, verify: bool) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(
                    f"{path}: not a gptcli weights file (no '{FORMAT}' format marker); a Hugging Face model "
                    "converts with: gptcli convert FOLDER"
                )
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        obj = json.loads(meta["gptcli"])
        tied = json.loads(meta.get("tied", "{}"))
        crcs = json.loads(meta.get("crc32", "{}"))
        order = json.loads(meta.get("order", "[]"))
    except CheckpointError:
        raise
    except Exception as e:  # a cut or damaged file, bad JSON in the metadata
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable gptcli weights file ({reason})") from None
    if verify:
        bad = next((k for k, t in state.items() if k in crcs and _crc32(t) != crcs[k]), None)
        if bad is not None:
            raise CheckpointError(f"{path}: weights file is corrupt: CRC mismatch in tensor {bad!r}")
    for name, source in tied.items():
        if source in state:
            state[name] = state[source]
    # the order the state dict had (GPT.state_dict()'s), as a .pth keeps it
    obj["model_state_dict"] = {
        k: state[k] for k in [*(k for k in order if k in state), *sorted(set(state) - set(order))]
    }
    return obj


# ---------------------------------------------------------------------------------------------
# RNG states, as tensors so that weights-only loading accepts them


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    rng: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"].cpu())
    np_rng = rng["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_rng["keys"].numpy().astype(np.uint32),
            np_rng["pos"],
            np_rng["has_gauss"],
            np_rng["cached_gaussian"],
        )
    )
    py = rng["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    if "cuda" in rng and torch.cuda.is_available() and len(rng["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in rng["cuda"]])


# ---------------------------------------------------------------------------------------------
# Finding and reading checkpoints


def resolve_checkpoint(target: str | Path | None, *, runs_root: Path = rundir.RUNS_ROOT, warn=None) -> Path:
    """A checkpoint file from a file, a run directory, or (None) the most recent run.

    In a run directory the newest checkpoint that loads is taken; a broken one is skipped with a
    warning through ``warn``.
    """
    if target is None:
        run = rundir.find_latest_run(runs_root)
        if run is None:
            raise CheckpointError(
                f"no training run found under {runs_root}/; train one first with: gptcli train FILE.txt"
            )
        target = run
    p = Path(target)
    if p.is_file():
        return p
    if p.is_dir():
        candidates = rundir.list_step_checkpoints(p)
        if not candidates:
            raise CheckpointError(f"{p}: no checkpoints in this run directory")
        for cand in reversed(candidates):
            try:
                verify_archive(cand, remember=True)
                return cand
            except CheckpointError as e:
                if warn is not None:
                    warn(f"skipping unreadable checkpoint: {e}")
        raise CheckpointError(f"{p}: none of its {len(candidates)} checkpoints can be loaded")
    raise CheckpointError(f"{p}: checkpoint or run directory not found")


def check_state_fits(cfg: ModelConfig, state: Any, path: Path | str = "checkpoint") -> None:
    """Check the state dict's tensor names and shapes against what ``cfg`` builds, from shapes
    alone, so that a config inflated beyond its file fails here rather than allocating gigabytes.
    """
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: model_state_dict is not a mapping ({type(state).__name__})")
    # A block holds at least 11 tensors: a config with more layers than the file has tensors is
    # refused before its shape table (one entry per tensor) is even built.
    if cfg.n_layers * 11 > len(state):
        raise CheckpointError(
            f"{path}: model_config does not fit the weights: it has {cfg.n_layers} layers, "
            f"but the file holds only {len(state)} tensors"
        )
    expected = gptcli_shapes(cfg)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} (file {list(getattr(state[k], 'shape', ['not a tensor']))}, config {list(shape)})"
        for k, shape in expected.items()
        if k in state and tuple(getattr(state[k], "shape", ())) != shape
    ]
    problems = [
        f"{label} {', '.join(items[:4])}" + (f" and {len(items) - 4} more" if len(items) > 4 else "")
        for label, items in (("wrong shape", wrong), ("missing", missing), ("unexpected", unexpected))
        if items
    ]
    if problems:
        raise CheckpointError(f"{path}: model_config does not fit the weights: " + "; ".join(problems))


def model_from_checkpoint(obj: dict[str, Any], path: Path | str = "checkpoint"):
    """Rebuild the model from a loaded checkpoint alone (its stored config and weights); the
    shapes are checked first, so nothing is allocated for a config that does not fit."""
    cfg = read_model_config(obj, path)
    state = obj["model_state_dict"]
    check_state_fits(cfg, state, path)
    # Built without drawing a random init (1-2 s at 124M), then given the checkpoint's tensors
    # themselves (memory-mapped by load_checkpoint: nothing is copied and the pages are read when
    # first used). A tied head becomes one parameter again: load_state_dict used to copy wte then
    # lm_head into the one tensor, so lm_head's values are the ones kept.
    model = GPT(cfg, init_weights=False)
    state = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in state.items()}
    load_weights(model, state, source=str(path), assign=True)
    if cfg.tie_weights:
        model.wte.weight = model.lm_head.weight
    return model


def load_weights(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, source: str, assign: bool = False
) -> None:
    """Load a state dict, naming every missing, unexpected or mis-shaped tensor on failure."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = [
        f"{k} (checkpoint {tuple(state_dict[k].shape)}, model {tuple(own[k].shape)})"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:8]) + (" ..." if len(unexpected) > 8 else ""))
    if shapes:
        problems.append("wrong shape " + ", ".join(shapes[:8]) + (" ..." if len(shapes) > 8 else ""))
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the model: " + "; ".join(problems))
    model.load_state_dict(state_dict, assign=assign)
