"""The on-disk token cache: chunked tokenization, memmap data, reuse and invalidation."""

from __future__ import annotations

import random

import numpy as np
import pytest

from gptcli import tokencache
from gptcli.config import ModelConfig, TrainConfig
from gptcli.data import prepare_data, split_text, text_fingerprint, tokenize
from gptcli.errors import DataError
from gptcli.textfiles import read_corpus, read_text
from gptcli.tokencache import cached_corpus_tokens, encode_chunked, iter_chunks, safe_cut

# Pieces that stress GPT-2's pre-tokenizer at chunk edges: whitespace runs, CRLF, Unicode spaces
# (and \x1c, a space to Python but not to the regex), contractions, digits, the special token.
ATOMS = [
    "a",
    "b",
    "Z",
    "word",
    "1",
    "42",
    "'",
    "s",
    "'s",
    "'ll",
    " ",
    "  ",
    "\n",
    "\n\n",
    "\r\n",
    "\t",
    "\u00a0",
    "\u3000",
    "\x1c",
    "\x85",
    ".",
    ",",
    "--",
    "é",
    "日本",
    "😀",
    "<|endoftext|>",
    "<|",
    "|>",
    " \n",
    "\n ",
]


def random_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ATOMS) for _ in range(n))


@pytest.mark.parametrize(
    "text,limit,cut",
    [
        ("ab\ncd", 4, 3),  # after a newline between non-spaces
        ("ab \ncd", 5, None),  # " \n" at a string's end is one piece, two before "c": not safe
        ("ab\n\ncd", 5, None),  # blank line: no safe newline, no space
        ("ab cd", 4, 2),  # before a space between non-spaces
        ("ab  cd", 5, None),  # double space: "  c" splits as " " + " c", not safe to cut
        ("ab\ncd ef", 7, 3),  # the newline rule is preferred
        ("ab\ncd", 2, None),  # nothing at or before the limit
    ],
)
def test_safe_cut_points(text, limit, cut):
    assert safe_cut(text, limit) == cut


@pytest.mark.parametrize("chunk_chars", [1, 7, 100, 3000])
def test_chunked_tokenization_equals_whole_text_on_the_verdict(verdict, chunk_chars):
    text = verdict.read_text(encoding="utf-8")
    chunks = list(iter_chunks([text], chunk_chars))
    assert "".join(chunks) == text
    assert len(chunks) > 1  # really cut (the-verdict has no single newlines: cuts are at spaces)
    ids = encode_chunked(text, chunk_chars=chunk_chars, num_threads=2)
    assert ids.dtype == np.uint16
    assert np.array_equal(ids, tokenize(text))


def test_chunked_tokenization_equals_whole_text_on_tricky_random_texts():
    rng = random.Random(1234)
    for _ in range(400):
        text = random_text(rng, rng.randint(1, 300))
        cc = rng.choice([1, 2, 3, 5, 8, 20, 100])
        assert np.array_equal(encode_chunked(text, chunk_chars=cc), tokenize(text)), (text, cc)


def test_line_broken_text_is_cut_at_newlines():
    text = "".join(f"line {i} of some text\n" for i in range(200))
    chunks = list(iter_chunks([text], 100))
    assert all(c.endswith("\n") for c in chunks[:-1])
    assert np.array_equal(encode_chunked(text, chunk_chars=100), tokenize(text))


def _corpus(tmp_path, rng: random.Random, n_files: int):
    d = tmp_path / "corpus"
    d.mkdir()
    for j in range(n_files):
        (d / f"{j:02d}.txt").write_text(random_text(rng, rng.randint(5, 400)) + "x", encoding="utf-8")
    return d


@pytest.mark.parametrize("seed", range(6))
def test_cached_tokens_equal_the_in_memory_split(tmp_path, seed):
    """Files joined with <|endoftext|>, split by characters (even inside the joiner): same ids."""
    rng = random.Random(seed)
    d = _corpus(tmp_path, rng, rng.randint(1, 3))
    ratio = rng.choice([0.1, 0.37, 0.5, 0.9])
    ct = cached_corpus_tokens([d], val_ratio=ratio, block_bytes=rng.choice([1, 3, 64]), chunk_chars=rng.choice([1, 9]))
    train_text, val_text = split_text(read_corpus([d]), ratio)
    assert isinstance(ct.tokens, np.memmap) and ct.tokens.dtype == np.uint16
    assert np.array_equal(ct.train, tokenize(train_text))
    assert np.array_equal(ct.val, tokenize(val_text))
    assert ct.fingerprint == text_fingerprint(train_text + "\x00" + val_text)


def test_cached_tokens_with_a_validation_file(tmp_path, verdict):
    val = tmp_path / "val.txt"
    val.write_text("Some other text.\nIt validates.", encoding="utf-8")
    ct = cached_corpus_tokens([verdict], val_paths=[val], chunk_chars=50)
    text = verdict.read_text(encoding="utf-8")
    assert np.array_equal(ct.train, tokenize(text))
    assert np.array_equal(ct.val, tokenize(val.read_text(encoding="utf-8")))
    assert ct.fingerprint == text_fingerprint(text + "\x00" + val.read_text(encoding="utf-8"))


def test_undecodable_bytes_are_replaced_as_read_corpus_does(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes("café ".encode() * 50 + b"\xff\xfe ok \xe6\x97" + "日本 ".encode() * 30)
    ct = cached_corpus_tokens([p], val_ratio=0.3, errors="replace", block_bytes=5, chunk_chars=4)
    train_text, val_text = split_text(read_corpus([p], errors="replace"), 0.3)
    assert np.array_equal(ct.train, tokenize(train_text)) and np.array_equal(ct.val, tokenize(val_text))


@pytest.mark.parametrize("content", [b"", b"  \n\t ", "caf\u00e9 ".encode() * 3 + b"\xff ok", b"a\x00b"])
def test_bad_files_fail_with_read_texts_message(tmp_path, content):
    p = tmp_path / "bad.txt"
    p.write_bytes(content)
    with pytest.raises(DataError) as expected:
        read_text(p)
    with pytest.raises(DataError) as got:
        cached_corpus_tokens([p], val_ratio=0.1, block_bytes=4)
    assert str(got.value) == str(expected.value)


def test_a_file_that_decodes_to_nothing_is_empty_as_read_text_says(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(DataError, match="file is empty") as expected:
        read_text(p, errors="ignore")
    with pytest.raises(DataError) as got:
        cached_corpus_tokens([p], val_ratio=0.1, errors="ignore")
    assert str(got.value) == str(expected.value)


def test_cache_is_reused_without_tokenizing_and_invalidated_by_a_change(tmp_path, monkeypatch, _isolated_home):
    p = tmp_path / "a.txt"
    p.write_text("Hello there.\nGeneral Kenobi.\n" * 50, encoding="utf-8")
    first = cached_corpus_tokens([p], val_ratio=0.1)
    assert first.built and first.path.parent == _isolated_home / "tokens"
    assert sorted(f.suffix for f in first.path.parent.iterdir()) == [".bin", ".json", ".lock"]  # no temporaries

    def no_tokenizing(text):
        raise AssertionError("re-tokenized although the cache holds this corpus")

    with monkeypatch.context() as m:
        m.setattr(tokencache, "_encode_np", no_tokenizing)
        again = cached_corpus_tokens([p], val_ratio=0.1)
    assert not again.built and again.path == first.path
    assert np.array_equal(again.tokens, first.tokens) and again.fingerprint == first.fingerprint

    # A different split is a different entry; so is one changed byte.
    assert cached_corpus_tokens([p], val_ratio=0.2).path != first.path
    p.write_text("Hello there.\nGeneral Kenobi!\n" * 50, encoding="utf-8")
    changed = cached_corpus_tokens([p], val_ratio=0.1)
    assert changed.built and changed.path != first.path
    assert np.array_equal(changed.train, tokenize(split_text(read_corpus([p]), 0.1)[0]))


def test_a_failed_build_leaves_no_entry(tmp_path, monkeypatch, _isolated_home):
    p = tmp_path / "a.txt"
    p.write_text("Some text here.\n" * 20, encoding="utf-8")

    def boom(text):
        raise RuntimeError("disk full")

    with monkeypatch.context() as m, pytest.raises(RuntimeError):
        m.setattr(tokencache, "_encode_np", boom)
        cached_corpus_tokens([p], val_ratio=0.1)
    assert tokencache.token_cache_dir() == _isolated_home / "tokens"
    assert [f.suffix for f in tokencache.token_cache_dir().iterdir()] == [".lock"]
    assert cached_corpus_tokens([p], val_ratio=0.1).built


@pytest.mark.parametrize("use_val_file", [False, True])
def test_memmap_training_data_gives_the_same_batches(tmp_path, verdict, monkeypatch, use_val_file):
    """prepare_data through the memmap path and in memory: identical windows and fingerprint."""
    d = tmp_path / "docs"
    d.mkdir()
    text = verdict.read_text(encoding="utf-8")
    (d / "a.txt").write_text(text[:12000], encoding="utf-8")
    (d / "b.txt").write_text(text[12000:], encoding="utf-8")
    extra = {}
    if use_val_file:
        (tmp_path / "val.txt").write_text(text[:3000], encoding="utf-8")
        extra["val_file"] = str(tmp_path / "val.txt")
    mcfg = ModelConfig(context_length=32, emb_dim=32, n_heads=4, n_layers=2)
    tcfg = TrainConfig(data=[str(d)], batch_size=4, stride=20, **extra)
    in_memory = prepare_data(mcfg, tcfg)
    monkeypatch.setattr(tokencache, "MEMMAP_MIN_BYTES", 0)
    mapped = prepare_data(mcfg, tcfg)
    assert isinstance(mapped.train.tokens, np.memmap) and not isinstance(in_memory.train.tokens, np.memmap)
    assert (mapped.train_tokens, mapped.val_tokens) == (in_memory.train_tokens, in_memory.val_tokens)
    assert mapped.fingerprint == in_memory.fingerprint
    for split in ("train", "val"):
        a, b = getattr(in_memory, split), getattr(mapped, split)
        assert len(a) == len(b) > 0
        ids = list(range(len(a)))
        xa, ya = a.batch(ids)
        xb, yb = b.batch(ids)
        assert xa.dtype == xb.dtype and xa.equal(xb) and ya.equal(yb)


def test_concurrent_builders_tokenize_once(tmp_path, monkeypatch):
    """Ranks of a distributed run all call prepare_data: one tokenizes, the others reuse its file."""
    import threading

    p = tmp_path / "a.txt"
    p.write_text("Every rank reads this.\n" * 200, encoding="utf-8")
    calls = []
    real = tokencache._encode_np
    monkeypatch.setattr(tokencache, "_encode_np", lambda text: calls.append(1) or real(text))
    cached_corpus_tokens([p], val_ratio=0.1, chunk_chars=500, cache_dir=tmp_path / "alone")
    one_build, calls[:] = len(calls), []
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(cached_corpus_tokens([p], val_ratio=0.1, chunk_chars=500)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.built for r in results) == [False, False, False, True]
    assert len(calls) == one_build > 1
    assert all(np.array_equal(r.tokens, results[0].tokens) for r in results)


def test_a_run_of_text_with_no_place_to_cut_is_refused_not_held_whole(monkeypatch):
    """Issue 21: a 30 MB single-word line took 1.5 GB in prepare; past MAX_UNCUT_CHARS without a
    safe cut, tokenizing stops with one line instead of holding it all."""
    from gptcli import tokencache
    from gptcli.errors import DataError

    monkeypatch.setattr(tokencache, "MAX_UNCUT_CHARS", 4000)
    with pytest.raises(DataError, match="no line break or space between words"):
        list(tokencache.iter_chunks(["x" * 3000, "y" * 3000, "z" * 3000], chunk_chars=500))
    text = "word " * 2000  # ordinary text is cut as always, and encodes as a whole
    assert "".join(tokencache.iter_chunks([text], chunk_chars=500)) == text
