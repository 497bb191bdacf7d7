"""Run by tests/test_gpu_paths.py under torchrun (2 gloo processes): FSDP2-sharded training steps
equal single-process steps on the whole batch, and the gathered state dicts resume elsewhere."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from gptcli import distributed, fsdp
from gptcli.config import ModelConfig
from gptcli.model import GPT

CFG = dict(context_length=12, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0)


def steps(model, opt, x, y, n):
    for _ in range(n):
        model(x, targets=y).backward()
        opt.step()
        opt.zero_grad()


def main(out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    sharded = GPT(ModelConfig(**CFG))
    ref = GPT(ModelConfig(**CFG))
    ref.load_state_dict(sharded.state_dict())
    fsdp.shard(sharded)
    assert type(next(sharded.parameters())).__name__ == "DTensor"
    opt = torch.optim.AdamW(sharded.parameters(), lr=1e-3)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-3)
    torch.manual_seed(1)
    x, y = torch.randint(0, 50257, (2 * world, 12)), torch.randint(0, 50257, (2 * world, 12))
    mine = slice(2 * rank, 2 * rank + 2)
    steps(sharded, opt, x[mine], y[mine], 3)  # the gradient is averaged across ranks: the whole batch's
    steps(ref, ref_opt, x, y, 3)
    msd, osd = fsdp.full_state_dict(sharded, opt)
    after3 = {k: v.clone() for k, v in msd.items()}  # loading below replaces msd's values by shards
    # resume: the gathered state into a fresh sharded model, then 2 more steps on both
    torch.manual_seed(5)
    again = fsdp.shard(GPT(ModelConfig(**CFG)))
    again_opt = torch.optim.AdamW(again.parameters(), lr=1e-3)
    fsdp.load_full_state_dict(again, msd, again_opt, osd)
    steps(again, again_opt, x[mine], y[mine], 2)
    steps(ref, ref_opt, x, y, 2)
    resumed, _ = fsdp.full_state_dict(again)
    if rank == 0:
        torch.save({"after3": after3, "after5": resumed, "ref5": ref.state_dict()}, out)
    # Leave together: a rank that tears gloo down while its peer still talks to it aborts the peer
    # ("terminate called without an active exception").
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
