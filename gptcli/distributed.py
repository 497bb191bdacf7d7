"""torch.distributed glue for runs launched by torchrun (gptcli does no process management).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them everything here is a no-op for a
single process. NCCL on CUDA, gloo on CPU (so multi-process runs can be tested anywhere).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gptcli.errors import UsageError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    enabled: bool = False  # launched by torchrun and in a process group (even a world of one)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def require_torchrun(flag: str) -> None:
    """Refuse ``flag`` (a setting that splits work across processes) in a process on its own."""
    if not launched_by_torchrun():
        raise UsageError(
            f"invalid {flag}: it shards the run across processes that torchrun starts; launch with: "
            f"torchrun --nproc_per_node=N -m gptcli train ... {flag}"
        )


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a process on its own: the one that reports and logs.
    Read from torchrun's environment, so it holds before (and without) the process group."""
    return os.environ.get("RANK", "0") == "0"


def world_size() -> int:
    """Processes in this run: torchrun's WORLD_SIZE, or 1 for a process on its own."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1


def init(device_type: str) -> DistInfo:
    """Join the process group if torchrun launched us; pin each rank to its own GPU."""
    if not launched_by_torchrun():
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]), True)
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
    return info


def shutdown() -> None:
    """Leave the process group together: a rank that tears gloo down while its peer is still
    talking to it can abort the peer ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        except RuntimeError as e:  # a peer is gone: the error that said so is the one to report
            if not peer_lost(e):
                raise
        finally:
            dist.destroy_process_group()


def all_reduce_max_int(value: int, device: torch.device) -> int:
    """The largest value across ranks (e.g. a stop signal seen by any rank)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], device=device, dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum_int(value: int, device: torch.device) -> int:
    """The sum of ``value`` over every rank (collective: every rank must call it)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t)
    return int(t.item())


# What gloo and NCCL say when a collective fails because another process of the run is gone.
_PEER_LOST = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "communicator was aborted")


def peer_lost(e: BaseException) -> bool:
    """Whether ``e`` is a collective that failed because another torchrun process stopped."""
    return isinstance(e, RuntimeError) and any(s in str(e) for s in _PEER_LOST)
