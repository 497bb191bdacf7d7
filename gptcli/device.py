"""Devices and dtypes: the one owner of ``--device``, ``--dtype`` and ``--precision``.

``resolve_device`` turns a flag into a ``torch.device`` (refusing one that is not there),
``resolve_dtype`` picks the weights' dtype for inference, ``autocast_for`` the mixed-precision
context for training and evaluation. Training, sampling and evaluation all come here.
"""

from __future__ import annotations

import contextlib

import torch

from gptcli.config import DEVICE_CHOICES, DTYPES, is_device_name
from gptcli.errors import UsageError


def resolve_device(name: str) -> torch.device:
    """The device ``--device name`` asks for: auto, cpu, cuda, cuda:N or mps, and only one this
    machine has. Anything else torch would accept (meta, xla, ...) is refused here, by name."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not is_device_name(name):
        raise UsageError(f"invalid --device: {name!r} (choose from {DEVICE_CHOICES})")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"invalid --device: {name!r} (CUDA is not available on this machine)")
        count = torch.cuda.device_count()
        if name != "cuda" and int(name.removeprefix("cuda:")) >= count:
            raise UsageError(
                f"invalid --device: {name!r} (this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1})"
            )
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("invalid --device: 'mps' (MPS is not available on this machine)")
    return torch.device(name)


def set_threads(n: int | None) -> None:
    """``--threads N``: the CPU threads PyTorch's operators use (None keeps PyTorch's choice, one
    per core). One is often faster on a machine other work keeps busy (see the README's speed
    section)."""
    global _requested
    _requested = None
    if n is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UsageError(f"invalid --threads: {n!r} (must be an integer >= 1)")
    torch.set_num_threads(n)
    _requested = n


_requested: int | None = None  # the last --threads given, None when PyTorch's choice stands


def threads_requested() -> int | None:
    """The ``--threads`` this command was given (None: not given)."""
    return _requested


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls run natively here: a CUDA GPU of compute capability 8.0 or newer, or a
    CPU with AVX512-BF16 or AMX (x86) or the BF16 extension (Arm). Elsewhere bf16 is emulated."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    if device.type != "cpu":
        return False
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(line.split(":", 1)[1].split()))
    except OSError:
        pass
    return False


# fp32, the default of every command, computes what the book's code and transformers compute,
# token for token; bf16 is the opt-in fast path (benchmarks/bench_sample_cpu.py: 1.5x fp32's speed
# on a CPU with native bf16, greedy text departing from fp32's after a while).
def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for ``--dtype`` (default fp32; int8's int8 matrices work on bf16
    activations, so bf16 is the dtype of the rest of its model). ``auto``, an explicit
    choice, is bf16 on CPUs with native bf16, where benchmarks/bench_sample_cpu.py measured greedy
    decoding faster than fp32, and fp32 everywhere else, GPUs included, until sampling is measured
    there."""
    if dtype not in DTYPES:
        raise UsageError(f"invalid --dtype: {dtype!r} (choose from {', '.join(DTYPES)})")
    if dtype in ("bf16", "int8") or (dtype == "auto" and device.type == "cpu" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``--precision``: none for fp32, bf16 or fp16 autocast otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
