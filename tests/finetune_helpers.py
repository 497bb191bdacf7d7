"""Shared set-up for the finetuning parity tests: one tiny book GPTModel, its weights saved as a
gptcli checkpoint, so both sides start from the same numbers."""

from __future__ import annotations

from pathlib import Path

import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.weights.book import book_to_gptcli

BOOK_CFG = dict(vocab_size=50257, context_length=64, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.0, qkv_bias=False)

RECORDS = [
    {
        "instruction": "Rewrite the sentence in passive voice.",
        "input": "The cat chased the mouse.",
        "output": "The mouse was chased by the cat.",
    },
    {"instruction": "Name the capital of France.", "input": "", "output": "The capital of France is Paris."},
    {"instruction": "Convert 5 kilometers to meters.", "input": "", "output": "5 kilometers is 5000 meters."},
    {"instruction": "Give a synonym for 'happy'.", "input": "", "output": "A synonym for 'happy' is 'joyful'."},
    {"instruction": "Sort the numbers.", "input": "3, 1, 2", "output": "1, 2, 3"},
]


def book_model(seed: int = 123):
    from llms_from_scratch.ch04 import GPTModel

    torch.manual_seed(seed)
    return GPTModel(dict(BOOK_CFG))


def save_base(model, path: Path) -> Path:
    """The book model's weights as a gptcli weights checkpoint (the finetuning base)."""
    cfg = ModelConfig(**BOOK_CFG)
    state = book_to_gptcli(model.state_dict(), cfg, source="test")
    return ckpt.atomic_save(ckpt.weights_checkpoint(cfg, state, source="book"), path)


def book_tokenizer():
    from gptcli.tokenizer import get_tokenizer

    return get_tokenizer()
