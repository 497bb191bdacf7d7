"""Sharding a GPT with PyTorch's FSDP2 (``torch.distributed.fsdp.fully_shard``) under torchrun.

Each block is its own FSDP unit (its parameters are gathered just before it runs and freed after),
and the root unit holds the embeddings, the final norm and the head (tied or not). Parameters,
gradients and AdamW state are then DTensors sharded across the ranks; the optimizer needs no
change. ``full_state_dict`` gathers the ordinary gptcli state dict (plain tensors on CPU, the
names of the unsharded model), so a checkpoint saved from it loads into any world size, and
``load_full_state_dict`` puts one back into a sharded model.

Works with gloo on CPU as with NCCL on GPUs (tests/test_gpu_paths.py runs 2 gloo processes).
"""

from __future__ import annotations

import torch

from gptcli.model import GPT


def shard(model: GPT, *, reshard_after_forward: bool = True) -> GPT:
    """Shard ``model`` in place across the default process group; returns it (now also an FSDPModule).

    The device mesh is of the model's device type (FSDP's default would pick CUDA whenever a GPU
    is visible, even for a gloo run on CPU)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(next(model.parameters()).device.type, (dist.get_world_size(),))
    for block in model.h:
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return model


def full_state_dict(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """The unsharded model (and optimizer) state dicts, gathered onto rank 0's CPU (the other ranks
    get empty dicts: a full copy per rank would not fit for the largest models).

    Collective: every rank must call it; rank 0 writes the result."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts) if optimizer is not None else None
    return msd, osd


def load_full_state_dict(
    model: torch.nn.Module,
    model_sd: dict,
    optimizer: torch.optim.Optimizer | None = None,
    optim_sd: dict | None = None,
    *,
    strict: bool = True,
) -> None:
    """Load an unsharded state dict (from ``full_state_dict`` or an ordinary checkpoint, saved at
    any world size) into a sharded model and its optimizer. Collective: rank 0 passes the dicts
    and broadcasts them, the other ranks may pass empty ones (only rank 0 reads the file). PyTorch's
    broadcast replaces the dicts' values by this rank's shards: pass copies to keep the originals."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict

    opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True, strict=strict)
    set_model_state_dict(model, model_sd, options=opts)
    if optimizer is not None and optim_sd is not None:
        set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)


# ``full_state_dict`` keys the optimizer state by parameter name ("h.0.attn.c_attn.weight"), torch's
# own ``Optimizer.state_dict`` by position (0, 1, ... over the param groups in order). A gptcli
# checkpoint holds the latter, whatever wrote it, so these two convert between them.


def optimizer_state_by_position(named: dict) -> dict:
    """A name-keyed optimizer state dict (from ``full_state_dict``) in ``Optimizer.state_dict``'s
    layout, which a plain AdamW of the same parameters loads."""
    position: dict[str, int] = {}
    groups = []
    for group in named["param_groups"]:
        ids = [position.setdefault(name, len(position)) for name in group["params"]]
        groups.append({**group, "params": ids})
    return {"state": {position[name]: s for name, s in named["state"].items()}, "param_groups": groups}


def optimizer_state_by_name(model: torch.nn.Module, optimizer: torch.optim.Optimizer, positional: dict) -> dict:
    """``Optimizer.state_dict``'s layout (saved by any gptcli run) keyed by the names of
    ``optimizer``'s parameters in ``model``, as ``load_full_state_dict`` takes it."""
    names = {id(p): name for name, p in model.named_parameters()}
    order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
    sizes = [len(g["params"]) for g in positional["param_groups"]]
    if sizes != [len(g["params"]) for g in optimizer.param_groups]:  # as Optimizer.load_state_dict says it
        raise ValueError(
            "loaded state dict contains a parameter group that doesn't match the size of optimizer's group"
        )
    groups, start = [], 0
    for group in positional["param_groups"]:
        groups.append({**group, "params": order[start : start + len(group["params"])]})
        start += len(group["params"])
    return {"state": {order[i]: s for i, s in positional["state"].items()}, "param_groups": groups}
