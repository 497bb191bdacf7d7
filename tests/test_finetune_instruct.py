"""Instruction finetuning against the book's chapter 7 code (``llms_from_scratch.ch07``)."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from gptcli.errors import UsageError
from gptcli.finetune import instruct as ins
from gptcli.finetune.trainer import FinetuneConfig, FinetuneTrainer

from .finetune_helpers import RECORDS, book_model, book_tokenizer, save_base

ch07 = pytest.importorskip("llms_from_scratch.ch07", reason="make install provides llms-from-scratch")


def test_prompt_equals_format_input_byte_for_byte():
    for r in RECORDS + [{"instruction": "Ünïcode ✓", "input": "tabs\tand\nnewlines", "output": "x"}]:
        assert ins.format_input(r).encode() == ch07.format_input(r).encode()
        book_full = ch07.format_input(r) + f"\n\n### Response:\n{r['output']}"
        assert ins.Template().full(r).encode() == book_full.encode()


def test_template_file_is_a_format_string(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("Q: {instruction} {input}\nA: {output}", encoding="utf-8")
    t = ins.Template.from_file(p)
    r = RECORDS[0]
    assert t.full(r) == f"Q: {r['instruction']} {r['input']}\nA: {r['output']}"
    assert t.prompt(r) == f"Q: {r['instruction']} {r['input']}\nA: "
    p.write_text("Q: {instruction} {answer}", encoding="utf-8")
    with pytest.raises(UsageError, match="unknown field"):
        ins.Template.from_file(p)


def test_split_is_the_books():
    data = [{"i": k} for k in range(100)]
    train, val, test = ins.split_records(data, (0.85, 0.05, 0.1))
    # the book: train = data[:85], test = data[85:95], val = data[95:]
    assert train == data[:85] and test == data[85:95] and val == data[95:]
    shuffled = ins.split_records(data, (0.85, 0.05, 0.1), seed=1)
    assert shuffled == ins.split_records(data, (0.85, 0.05, 0.1), seed=1) and shuffled[0] != train


@pytest.mark.parametrize("max_length", [None, 5, 40])
def test_batches_equal_custom_collate_fn(max_length):
    tok = book_tokenizer()
    ids = ch07.InstructionDataset(RECORDS, tok).encoded_texts
    ours = ins.InstructData.build(RECORDS, ins.Template(), max_length=max_length, mask_prompt=False)
    assert ours.ids == ids
    for rows in ([0, 1, 2], [3], [4, 1], [0, 1, 2, 3, 4]):
        bx, by = ch07.custom_collate_fn([ids[i] for i in rows], allowed_max_length=max_length)
        x, y = ours.batch(rows)
        assert torch.equal(x, bx) and torch.equal(y, by)
        if max_length is None and len(rows) > 1:
            assert (y == -100).any()  # the padding past the first end-of-text is ignored


def test_mask_prompt_ignores_the_instruction_tokens():
    data = ins.InstructData.build(RECORDS, ins.Template(), max_length=None, mask_prompt=True)
    plain = ins.InstructData.build(RECORDS, ins.Template(), max_length=None, mask_prompt=False)
    x, y = data.batch([0, 1])
    _, y0 = plain.batch([0, 1])
    for row, r in enumerate(RECORDS[:2]):
        n = len(book_tokenizer().encode(ins.format_input(r)))
        assert (y[row, : n - 1] == -100).all()
        assert torch.equal(y[row, n - 1 :], y0[row, n - 1 :])  # the response and first EOT still count
        assert (y0[row, : n - 1] != -100).all()


def _book_losses(tmp_path, *, epochs, lr):
    from llms_from_scratch.ch05 import train_model_simple
    from torch.utils.data import DataLoader

    tok = book_tokenizer()
    train, val, _ = ins.split_records(RECORDS, (0.85, 0.05, 0.1))
    collate = partial(ch07.custom_collate_fn, allowed_max_length=64)
    model = book_model()
    save_base(model, tmp_path / "base.pth")
    torch.manual_seed(123)
    train_loader = DataLoader(
        ch07.InstructionDataset(train, tok), batch_size=2, collate_fn=collate, shuffle=True, drop_last=True
    )
    val_loader = DataLoader(
        ch07.InstructionDataset(val, tok), batch_size=2, collate_fn=collate, shuffle=False, drop_last=False
    )
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    tr, va, _ = train_model_simple(
        model,
        train_loader,
        val_loader,
        optimizer,
        "cpu",
        num_epochs=epochs,
        eval_freq=1,
        eval_iter=5,
        start_context=ch07.format_input(val[0]),
        tokenizer=tok,
    )
    return tr, va


@pytest.mark.slow  # ~25 s: two 5-epoch runs with the full 50257-token vocabulary
def test_first_ten_losses_equal_train_model_simple(tmp_path, capsys):
    book_tr, book_va = _book_losses(tmp_path, epochs=5, lr=1e-3)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(RECORDS), encoding="utf-8")
    cfg = FinetuneConfig(
        kind="instruct", data=str(data), init=str(tmp_path / "base.pth"), epochs=5, batch_size=2, eval_freq=1, lr=1e-3
    )
    events = []
    FinetuneTrainer(cfg, tmp_path / "run", on_event=events.append).fit()
    evals = [e for e in events if e["type"] == "eval"]
    assert len(evals) == len(book_tr) == 10
    for e, t, v in zip(evals, book_tr, book_va, strict=True):
        assert e["train_loss"] == pytest.approx(t, abs=1e-4)
        assert e["val_loss"] == pytest.approx(v, abs=1e-4)
    assert evals[0]["train_loss"] - evals[-1]["train_loss"] > 0.1  # it did learn: the check has teeth
    samples = [e for e in events if e["type"] == "sample"]
    assert len(samples) == 5 and samples[0]["text"].startswith(ch07.format_input(RECORDS[4]))
