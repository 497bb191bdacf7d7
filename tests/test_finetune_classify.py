"""Classification finetuning against the book's chapter 6 code (``llms_from_scratch.ch06``)."""

from __future__ import annotations

import csv
import random

import pytest
import torch

from gptcli import checkpoint as ckpt
from gptcli.errors import UsageError
from gptcli.finetune import classify as cls_
from gptcli.finetune.trainer import FinetuneConfig, FinetuneTrainer, model_from_finetune_checkpoint
from gptcli.training import Interrupted

from .finetune_helpers import book_model, book_tokenizer, save_base

ch06 = pytest.importorskip("llms_from_scratch.ch06", reason="make install provides llms-from-scratch")
pd = pytest.importorskip("pandas")

WORDS = "free prize win call now claim cash meeting lunch tomorrow see you later thanks mom ok".split()


def write_csv(path, n=44, seed=0):
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["Label", "Text"])
        for i in range(n):
            label = "spam" if i % 3 == 0 else "ham"
            words = WORDS[:7] if label == "spam" else WORDS[7:]
            w.writerow([label, " ".join(rng.choice(words) for _ in range(rng.randint(2, 9)))])
    return path


def test_balance_and_split_equal_the_books(tmp_path):
    path = write_csv(tmp_path / "d.csv", n=50)
    df = pd.read_csv(path)
    texts, labels = cls_.read_table(path, text_field="Text", label_field="Label")
    rows = cls_.balance(labels)
    book = ch06.create_balanced_dataset(df)
    assert [texts[i] for i in rows] == list(book["Text"])
    book_tr, book_va, book_te = ch06.random_split(book, 0.7, 0.1)
    tr, va, te = cls_.random_split(rows, (0.7, 0.1, 0.2))
    assert [texts[i] for i in tr] == list(book_tr["Text"])
    assert [texts[i] for i in va] == list(book_va["Text"])
    assert [texts[i] for i in te] == list(book_te["Text"])
    assert cls_.label_names(labels) == ["ham", "spam"]  # the book's {"ham": 0, "spam": 1}


def test_padding_equals_spam_dataset(tmp_path):
    path = write_csv(tmp_path / "d.csv")
    texts, labels = cls_.read_table(path, text_field="Text", label_field="Label")
    df = pd.read_csv(path)
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    df.to_csv(tmp_path / "m.csv", index=None)
    for m in (None, 4):
        book = ch06.SpamDataset(tmp_path / "m.csv", book_tokenizer(), max_length=m)
        ours = cls_.ClassifyData.build(texts, [int(lab == "spam") for lab in labels], max_length=m)
        assert ours.max_length == book.max_length
        for i in (0, 5, len(book) - 1):
            x, y = ours.batch([i])
            bx, by = book[i]
            assert torch.equal(x[0], bx) and torch.equal(y[0], by)


def test_missing_field_is_one_usage_error(tmp_path):
    path = write_csv(tmp_path / "d.csv")
    with pytest.raises(UsageError, match="--text-field: .* has no field 'Message'"):
        cls_.read_table(path, text_field="Message", label_field="Label")


def _book_run(tmp_path, *, epochs, lora=None):
    from torch.utils.data import DataLoader

    path = write_csv(tmp_path / "d.csv")
    df = pd.read_csv(path)
    df["Label"] = df["Label"].map({"ham": 0, "spam": 1})
    tr, va, te = ch06.random_split(df, 0.7, 0.1)
    for name, part in (("train", tr), ("val", va), ("test", te)):
        part.to_csv(tmp_path / f"{name}.csv", index=None)
    tok = book_tokenizer()
    train_ds = ch06.SpamDataset(tmp_path / "train.csv", tok)
    val_ds = ch06.SpamDataset(tmp_path / "val.csv", tok, max_length=train_ds.max_length)
    torch.manual_seed(123)
    train_loader = DataLoader(train_ds, batch_size=8, shuffle=True, drop_last=True)
    val_loader = DataLoader(val_ds, batch_size=8, shuffle=False, drop_last=False)
    model = book_model()
    save_base(model, tmp_path / "base.pth")
    for p in model.parameters():
        p.requires_grad = False
    torch.manual_seed(123)
    model.out_head = torch.nn.Linear(32, 2)
    if lora is None:
        for p in list(model.trf_blocks[-1].parameters()) + list(model.final_norm.parameters()):
            p.requires_grad = True
    else:
        from llms_from_scratch.appendix_e import replace_linear_with_lora

        for p in model.parameters():
            p.requires_grad = False
        torch.manual_seed(123)
        replace_linear_with_lora(model, rank=lora[0], alpha=lora[1])
    torch.manual_seed(123)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    result = ch06.train_classifier_simple(
        model, train_loader, val_loader, optimizer, "cpu", epochs, eval_freq=1, eval_iter=5
    )
    return model, result, path


def _ours(tmp_path, path, **kw):
    cfg = FinetuneConfig(kind="classify", data=str(path), init=str(tmp_path / "base.pth"), eval_freq=1, lr=1e-3, **kw)
    events = []
    trainer = FinetuneTrainer(cfg, tmp_path / "run", on_event=events.append)
    trainer.fit()
    return trainer, events


def test_losses_and_accuracy_equal_train_classifier_simple(tmp_path, capsys):
    book, (tl, vl, ta, va, examples_seen), path = _book_run(tmp_path, epochs=3)
    trainer, events = _ours(tmp_path, path, epochs=3)
    evals = [e for e in events if e["type"] == "eval"]
    accs = [e for e in events if e["type"] == "accuracy"]
    assert len(evals) == len(tl) == 9 and len(accs) == len(ta) == 3
    # The book's count is examples_seen; tokens_seen counts the padded batches' tokens, as train's.
    assert accs[-1]["examples_seen"] == examples_seen == trainer.progress.examples_seen
    width = trainer.splits.train.max_length
    assert all(e["tokens_seen"] == e["examples_seen"] * width for e in evals + accs)
    for e, t, v in zip(evals, tl, vl, strict=True):
        assert e["train_loss"] == pytest.approx(t, abs=1e-4) and e["val_loss"] == pytest.approx(v, abs=1e-4)
    for e, t, v in zip(accs, ta, va, strict=True):
        assert e["train_acc"] == pytest.approx(t, abs=1e-4) and e["val_acc"] == pytest.approx(v, abs=1e-4)
    assert abs(evals[0]["train_loss"] - evals[-1]["train_loss"]) > 1e-3
    # classify agrees with the book's classify_review
    run_ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pth"))[-1]
    model, _, info = model_from_finetune_checkpoint(ckpt.load_checkpoint(run_ckpt), run_ckpt)
    assert info["labels"] == ["ham", "spam"]
    texts = ["free prize win now", "see you at lunch tomorrow mom", "claim cash", "ok thanks"]
    probs = cls_.classify_texts(model, texts, max_length=info["max_length"])
    for t, p in zip(texts, probs, strict=True):
        ours = "spam" if info["labels"][int(p.argmax())] == "spam" else "not spam"
        assert ours == ch06.classify_review(t, book, book_tokenizer(), "cpu", max_length=info["max_length"])


def test_trainable_choices(tmp_path):
    from gptcli.config import ModelConfig
    from gptcli.model import GPT

    m = GPT(ModelConfig(vocab_size=100, context_length=8, emb_dim=16, n_heads=2, n_layers=2))
    cls_.replace_head(m, 3, seed=1)
    for which, expect in (("head", {"lm_head"}), ("last-block", {"lm_head", "h.1", "ln_f"}), ("all", None)):
        cls_.set_trainable(m, which)
        names = {
            n.rsplit(".", 2)[0] if n.startswith("h.") else n.split(".")[0]
            for n, p in m.named_parameters()
            if p.requires_grad
        }
        names = {".".join(n.split(".")[:2]) if n.startswith("h.") else n for n in names}
        if expect is None:
            assert all(p.requires_grad for p in m.parameters())
        else:
            assert names == expect


def test_resume_after_a_stop_is_exact(tmp_path):
    path = write_csv(tmp_path / "d.csv")
    save_base(book_model(), tmp_path / "base.pth")
    base = dict(
        kind="classify", data=str(path), init=str(tmp_path / "base.pth"), eval_freq=2, lr=1e-3, epochs=2, lora_rank=2
    )
    straight = FinetuneTrainer(FinetuneConfig(**base), tmp_path / "a")
    straight.fit()
    calls = iter(range(100))
    stopping = FinetuneTrainer(
        FinetuneConfig(**base), tmp_path / "b", should_stop=lambda: 2 if next(calls) == 2 else None
    )
    with pytest.raises(Interrupted):
        stopping.fit()
    saved = sorted((tmp_path / "b" / "checkpoints").glob("step-*.pth"))[-1]
    obj = ckpt.load_checkpoint(saved)
    resumed = FinetuneTrainer(FinetuneConfig.from_dict(obj["train_config"]), tmp_path / "b", resume_from=obj)
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["train_loss"] for h in straight.progress.history] == [h["train_loss"] for h in resumed.progress.history]
