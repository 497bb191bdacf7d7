"""``lm``: pretraining, the book's chapter 5. Windows of a corpus, the next-token loss, and a
greedy sample from the start context at each epoch's end."""

from __future__ import annotations

from typing import Any

import torch

from gptcli import checkpoint as ckpt
from gptcli import rundir
from gptcli.config import ModelConfig, dump_yaml_config
from gptcli.data import prepare_data
from gptcli.errors import CheckpointError, DataError
from gptcli.model import GPT
from gptcli.tasks.base import Task


class LMTask(Task):
    kind = "lm"
    batch_is_global = False  # --batch-size is each process's micro-batch (nanoGPT's, llm.c's)

    def __init__(self, model_cfg: ModelConfig, *, init_state_dict: dict[str, torch.Tensor] | None = None):
        self.model_cfg = model_cfg
        self.init_state_dict = init_state_dict
        self.data: Any = None

    def build(self, engine: Any, resume_from: dict[str, Any] | None) -> tuple[GPT, ModelConfig]:
        cfg = engine.cfg
        self.data = prepare_data(self.model_cfg, cfg, on_progress=engine.cb.on_tokenize)
        self.train, self.val = self.data.train, self.data.val
        # Every rank seeds alike: identical initial weights, and identical CPU RNG streams, so
        # all ranks draw the same shuffling order (each then takes its own slice of it).
        torch.manual_seed(cfg.seed)
        model = GPT(self.model_cfg)
        if self.init_state_dict is not None:
            ckpt.load_weights(model, self.init_state_dict, source=f"--init {cfg.init}")
            self.init_state_dict = None
        return model, self.model_cfg

    def too_little_data(self, engine: Any) -> Exception:
        return DataError(
            f"training text has {len(self.train)} windows, fewer than one step needs "
            f"({engine.global_batch()} = batch size x grad accum x world size)"
        )

    def start_info(self, engine: Any) -> dict[str, Any]:
        d = self.data
        return {
            "train_tokens": d.train_tokens,
            "val_tokens": d.val_tokens,
            "train_windows": len(d.train),
            "val_windows": len(d.val),
        }

    def write_config(self, engine: Any) -> None:
        rundir.write_config(engine.run_dir, dump_yaml_config(self.model_cfg, engine.cfg))

    def micro_batches(self, data: Any, rows: list[int], accum: int, rank: int, world: int) -> list[tuple]:
        """This rank's share of the windows, in micro-batches of --batch-size: windows are all one
        length, so no rank needs the others' rows."""
        share = -(-len(rows) // world)
        mine = rows[rank * share : (rank + 1) * share]
        bs = -(-share // accum)
        return [data.batch(mine[i : i + bs]) for i in range(0, len(mine), bs)]

    def loss_mean(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return batch_loss(model, x, y)

    def count(self, y: torch.Tensor) -> int:
        return y.numel()

    def step_tokens(self, engine: Any, rows: list[int]) -> int:
        return len(rows) * self.model_cfg.context_length

    def max_step_tokens(self, engine: Any) -> int:
        return engine.global_batch() * self.model_cfg.context_length

    def epoch_end(self, engine: Any) -> list[dict[str, Any]]:
        st = engine.state
        text = engine.sample_text()
        return [{"type": "sample", "epoch": st.epoch, "step": st.step - 1, "tokens_seen": st.tokens_seen, "text": text}]

    def load_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
        ckpt.load_weights(model, state, source=source)

    def checkpoint_extra(self, engine: Any) -> dict[str, Any]:
        return {"data_fingerprint": self.data.fingerprint}

    def check_resume(self, engine: Any, obj: dict[str, Any]) -> None:
        if obj.get("data_fingerprint") not in (None, self.data.fingerprint, *self.data.also_accepted):
            raise CheckpointError(
                "the training text differs from the one this checkpoint was trained on; "
                "exact resumption needs the same data (start a new run with --init instead)"
            )


def batch_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The book's ``calc_loss_batch``: mean next-token cross-entropy (computed inside the model,
    over its padded logits, so no sliced copy of the (B, T, vocab) logits is made)."""
    return model(x, targets=y)
