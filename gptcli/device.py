"""Devices and dtypes: the one owner of ``--device``, ``--dtype`` and ``--precision``.

``resolve_device`` turns a flag into a ``torch.device`` (refusing one that is not there),
``resolve_dtype`` picks the weights' dtype for inference, ``autocast_for`` the mixed-precision
context for training and evaluation. Training, sampling and evaluation all come here.
"""

from __future__ import annotations

import contextlib

import torch

from gptcli.errors import UsageError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"invalid --device: {name!r} (CUDA is not available on this machine)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("invalid --device: 'mps' (MPS is not available on this machine)")
    return torch.device(name)


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


DTYPES = ("auto", "fp32", "bf16")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The weights' dtype for ``--dtype``. ``auto`` is bf16 on CPUs with native bf16, where
    benchmarks/bench_sample_cpu.py measured greedy decoding faster than fp32 with the first tokens
    the same, and fp32 everywhere else, GPUs included, until sampling is measured there."""
    if dtype not in DTYPES:
        raise UsageError(f"invalid --dtype: {dtype!r} (choose from {', '.join(DTYPES)})")
    if dtype == "bf16" or (dtype == "auto" and device.type == "cpu" and native_bf16(device)):
        return torch.bfloat16
    return torch.float32


def autocast_for(device: torch.device, precision: str):
    """The autocast context of ``--precision``: none for fp32, bf16 or fp16 autocast otherwise."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
