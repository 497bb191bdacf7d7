"""LoRA against the book's appendix E (``llms_from_scratch.appendix_e``)."""

from __future__ import annotations

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli.config import ModelConfig
from gptcli.errors import CheckpointError
from gptcli.finetune.lora import apply_lora, merge_lora
from gptcli.finetune.trainer import FinetuneConfig, FinetuneTrainer, model_from_finetune_checkpoint
from gptcli.model import GPT

from .finetune_helpers import BOOK_CFG, book_model, save_base
from .test_finetune_classify import _book_run, write_csv

appendix_e = pytest.importorskip("llms_from_scratch.appendix_e", reason="make install provides llms-from-scratch")


def _tiny(seed=0):
    torch.manual_seed(seed)
    return GPT(ModelConfig(**BOOK_CFG))


def test_untrained_lora_model_equals_the_base_exactly():
    base = _tiny()
    model = _tiny()
    apply_lora(model, rank=4, alpha=8.0)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.endswith((".A", ".B")))
    x = torch.randint(0, 50257, (2, 20))
    assert torch.equal(model(x), base(x))


def test_adapters_are_drawn_as_replace_linear_with_lora_draws_them():
    book = book_model()
    torch.manual_seed(7)
    appendix_e.replace_linear_with_lora(book, rank=3, alpha=2)
    ours = _tiny()
    torch.manual_seed(7)
    apply_lora(ours, rank=3, alpha=2)
    blk, bb = ours.h[0].attn.c_attn, book.trf_blocks[0].att
    for i, w in enumerate(("W_query", "W_key", "W_value")):
        assert torch.equal(blk.A[i], getattr(bb, w).lora.A)
    assert torch.equal(ours.h[1].mlp.c_proj.A[0], book.trf_blocks[1].ff.layers[2].lora.A)
    assert torch.equal(ours.lm_head.A[0], book.out_head.lora.A)


def test_trained_lora_equals_the_books_and_merges(tmp_path, capsys):
    book, _, path = _book_run(tmp_path, epochs=1, lora=(4, 8.0))
    cfg = FinetuneConfig(
        kind="classify",
        data=str(path),
        init=str(tmp_path / "base.pth"),
        eval_freq=1,
        lr=1e-3,
        epochs=1,
        lora_rank=4,
        lora_alpha=8.0,
    )
    trainer = FinetuneTrainer(cfg, tmp_path / "run")
    trainer.fit()
    x = torch.randint(0, 50257, (3, 17))
    book.eval()
    with torch.no_grad():
        ref = book(x)
        ours = trainer.model.eval()(x)
        assert not torch.allclose(ref, _untrained_logits(tmp_path, x), atol=1e-4)  # training moved it
        assert torch.allclose(ours, ref, atol=1e-5, rtol=0)
        merged = merge_lora(trainer.model)(x)
    assert torch.allclose(merged, ours, atol=1e-5, rtol=0)
    assert not any(".A" in n for n in trainer.model.state_dict())


def _untrained_logits(tmp_path, x):
    book = book_model()
    torch.manual_seed(123)
    book.out_head = torch.nn.Linear(32, 2)
    return book.eval()(x)


def test_lora_checkpoint_is_small_and_checks_its_base(tmp_path):
    path = write_csv(tmp_path / "d.csv")
    save_base(book_model(), tmp_path / "base.pth")
    common = dict(kind="classify", data=str(path), init=str(tmp_path / "base.pth"), epochs=1, eval_freq=5)
    FinetuneTrainer(FinetuneConfig(**common, trainable="all"), tmp_path / "full").fit()
    lora = FinetuneTrainer(FinetuneConfig(**common, lora_rank=4), tmp_path / "lora")
    lora.fit()
    full_file = sorted((tmp_path / "full" / "checkpoints").glob("*.pth"))[-1]
    lora_file = sorted((tmp_path / "lora" / "checkpoints").glob("*.pth"))[-1]
    assert lora_file.stat().st_size < 0.05 * full_file.stat().st_size
    obj = ckpt.load_checkpoint(lora_file)
    assert obj["kind"] == "classify" and obj["finetune"]["lora"]["rank"] == 4
    model, _, _ = model_from_finetune_checkpoint(obj, lora_file)
    x = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(x), lora.model.eval()(x))
    save_base(book_model(seed=5), tmp_path / "base.pth")  # the base changes under the checkpoint
    with pytest.raises(CheckpointError, match="base model .* has changed"):
        model_from_finetune_checkpoint(obj, lora_file)
