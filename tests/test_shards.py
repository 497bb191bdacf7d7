"""gptcli.shards: llm.c and nanoGPT token files round-trip, and a damaged one is one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gptcli import shards
from gptcli.data import tokenize
from gptcli.errors import DataError
from gptcli.textfiles import read_corpus


def _llmc_reference_read(path):
    """llm.c's own Python loader (train_gpt2.py ``_load_data_shard``), written out independently."""
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(256 * 4), dtype=np.int32)
        assert header[0] == 20240520 and header[1] == 1
        ntok = int(header[2])
        tokens = np.frombuffer(f.read(), dtype=np.uint16)
    assert len(tokens) == ntok
    return tokens


def _ids(n, seed=0):
    return np.random.default_rng(seed).integers(0, 50257, size=n).astype(np.uint16)


def test_llmc_shards_round_trip_through_our_reader_and_llmc_s(tmp_path):
    ids = _ids(2500)
    written = shards.write_shards(ids, tmp_path, split="train", shard_size=1000, block=300)
    assert [p.name for p in written] == ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    assert [len(_llmc_reference_read(p)) for p in written] == [1000, 1000, 500]
    assert np.array_equal(np.concatenate([_llmc_reference_read(p) for p in written]), ids)
    ours = shards.read_tokens(written)
    assert len(ours) == len(ids)
    assert np.array_equal(ours[0 : len(ids)], ids)
    # windows that cross a shard boundary read through
    assert np.array_equal(ours[990:2010], ids[990:2010])
    assert np.array_equal(ours[2499:2600], ids[2499:])


def test_nanogpt_bin_files_read_as_raw_uint16(tmp_path):
    ids = _ids(777, seed=1)
    ids.tofile(tmp_path / "train.bin")  # nanoGPT's prepare.py: arr.tofile(filename), dtype uint16
    _ids(50, seed=2).tofile(tmp_path / "val.bin")
    train, val = shards.shard_files([tmp_path])
    assert [p.name for p in train] == ["train.bin"] and [p.name for p in val] == ["val.bin"]
    got = shards.read_shard(tmp_path / "train.bin")
    assert isinstance(got, np.memmap) and np.array_equal(got, ids)


def test_prepare_writes_a_train_val_split_equal_to_tokenizing_the_text(tmp_path, verdict):
    result = shards.prepare([verdict], tmp_path / "out", shard_size=1000, val_ratio=0.1)
    expected = tokenize(read_corpus([verdict]))
    n_val = round(0.1 * len(expected))
    assert result["tokens"] == len(expected) and result["val_tokens"] == n_val
    train, val = shards.shard_files([tmp_path / "out"])
    assert len(train) == -(-(len(expected) - n_val) // 1000)
    assert np.array_equal(shards.read_tokens(train)[0 : len(expected)], expected[:-n_val])
    assert np.array_equal(shards.read_tokens(val)[0:n_val], expected[-n_val:])
    assert not list((tmp_path / "out").glob(".tokens-*"))  # the temporary file is gone
    # nothing already written is overwritten
    with pytest.raises(DataError, match=r"out: already holds \.bin shards"):
        shards.prepare([verdict], tmp_path / "out")


def test_prepare_jsonl_equals_txt_files(tmp_path):
    docs = ["first document.", "second one\nwith two lines.", "third"]
    for i, d in enumerate(docs):
        (tmp_path / f"{i}.txt").write_text(d)
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    a = shards.prepare(sorted(tmp_path.glob("*.txt")), tmp_path / "a", val_tokens=2)
    b = shards.prepare([tmp_path / "d.jsonl"], tmp_path / "b", val_tokens=2)
    assert a["tokens"] == b["tokens"] and a["val_tokens"] == 2
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}_000000.bin").read_bytes() == (
            tmp_path / "b" / f"{split}_000000.bin"
        ).read_bytes()


def _write_llmc(path, ids, *, magic=20240520, version=1, count=None):
    header = np.zeros(256, dtype=np.int32)
    header[:3] = magic, version, len(ids) if count is None else count
    path.write_bytes(header.tobytes() + ids.astype(np.uint16).tobytes())


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("magic", r"x_train_000000\.bin: not an llm\.c shard \(magic 20240521, expected 20240520\)"),
        ("version", r"llm\.c shard version 7, expected 1 .*Llama 3"),
        ("truncated", r"truncated llm\.c shard: header says 100 tokens \(1,224 bytes\), file has 1,184 bytes"),
        ("longer", r"longer than its header says"),
        ("header", r"truncated llm\.c shard: header of 8 bytes"),
        ("ids", r"token id 60000 is not a GPT-2 id"),
    ],
)
def test_a_damaged_llmc_shard_is_one_clear_error(tmp_path, kind, message):
    p = tmp_path / "x_train_000000.bin"
    ids = _ids(100)
    if kind == "magic":
        _write_llmc(p, ids, magic=20240521)
    elif kind == "version":
        _write_llmc(p, ids, version=7)
    elif kind == "truncated":
        _write_llmc(p, ids)
        p.write_bytes(p.read_bytes()[:-40])
    elif kind == "longer":
        _write_llmc(p, ids, count=90)
    elif kind == "header":
        p.write_bytes(np.array([20240520, 1], dtype=np.int32).tobytes())
    else:
        ids[5] = 60000
        _write_llmc(p, ids)
    with pytest.raises(DataError, match=message):
        shards.read_shard(p)


def test_odd_sized_nanogpt_file_and_unnamed_shards_are_errors(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"\x01\x00\x02")
    with pytest.raises(DataError, match=r"train\.bin: 3 bytes, not a whole number of uint16"):
        shards.read_shard(tmp_path / "train.bin")
    d = tmp_path / "d"
    d.mkdir()
    shards.write_shard(d / "tokens.bin", _ids(10))
    with pytest.raises(DataError, match=r"tokens\.bin: cannot tell train from val"):
        shards.shard_files([d])


def test_prepare_command_end_to_end_from_stdin_and_errors(tmp_path):
    import gzip
    import subprocess

    from tests.conftest import gptcli_exe, run_gptcli

    docs = [f"document {i}: some words here." for i in range(40)]
    payload = gzip.compress("".join(json.dumps({"content": d}) + "\n" for d in docs).encode())
    (tmp_path / "c.jsonl.gz").write_bytes(payload)
    proc = run_gptcli(
        "prepare", "c.jsonl.gz", "-o", "a", "--text-field", "content", "--shard-size", "100", "--json", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    expected = tokenize("<|endoftext|>".join(docs))
    assert summary["tokens"] == len(expected) and len(summary["train_shards"]) > 1
    train, val = shards.shard_files([tmp_path / "a"])
    got = np.concatenate([np.asarray(shards.read_tokens(train)[0 : len(expected)]), shards.read_tokens(val)[0:]])
    assert np.array_equal(got, expected)

    proc = subprocess.run(
        [
            *gptcli_exe(),
            "prepare",
            "-",
            "--format",
            "jsonl",
            "--text-field",
            "content",
            "-o",
            "b",
            "--shard-size",
            "100",
        ],
        input=gzip.decompress(payload),
        cwd=tmp_path,
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "b" / "train_000000.bin").read_bytes() == (tmp_path / "a" / "train_000000.bin").read_bytes()

    proc = run_gptcli("prepare", "c.jsonl.gz", "-o", "c", cwd=tmp_path)  # default field "text" is missing
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: c.jsonl.gz: line 1: no field 'text' (fields: content); choose one with --text-field"
    ]
    assert not (tmp_path / "c").exists()


def test_training_data_from_shards_and_from_jsonl_equal_the_text_path(tmp_path, verdict, tiny_cfg):
    import gzip

    from gptcli.config import TrainConfig
    from gptcli.data import prepare_data

    text = verdict.read_text(encoding="utf-8")
    ref = prepare_data(tiny_cfg, TrainConfig(data=[str(verdict)], batch_size=2))
    # the same text as one JSON Lines record, gzip-compressed: the same windows, through the token cache
    (tmp_path / "v.jsonl.gz").write_bytes(gzip.compress((json.dumps({"text": text}) + "\n").encode()))
    got = prepare_data(tiny_cfg, TrainConfig(data=[str(tmp_path / "v.jsonl.gz")], batch_size=2))
    assert got.fingerprint == ref.fingerprint
    for a, b in ((got.train, ref.train), (got.val, ref.val)):
        assert len(a) == len(b) and np.array_equal(np.asarray(a.tokens), b.tokens)
    # shards made by prepare: memmaps of the same ids, split by tokens
    shards.prepare([verdict], tmp_path / "s", shard_size=1000, val_tokens=500)
    run = prepare_data(tiny_cfg, TrainConfig(data=[str(tmp_path / "s")], batch_size=2))
    ids = tokenize(text)
    assert (run.train_tokens, run.val_tokens) == (len(ids) - 500, 500)
    x, y = run.train.batch([0, len(run.train) - 1])
    T, S = tiny_cfg.context_length, run.train.stride
    last = (len(run.train) - 1) * S
    assert x[1].tolist() == ids[last : last + T].tolist() and y[0].tolist() == ids[1 : T + 1].tolist()
    with pytest.raises(DataError, match=r"mixes token shards \(\.bin\) with text files"):
        prepare_data(tiny_cfg, TrainConfig(data=[str(tmp_path / "s"), str(verdict)], batch_size=2))
    (tmp_path / "s" / "val_000000.bin").unlink()
    with pytest.raises(DataError, match=r"no val shards"):
        prepare_data(tiny_cfg, TrainConfig(data=[str(tmp_path / "s")], batch_size=2))


def test_a_tiny_nanogpt_val_bin_says_how_to_get_more_validation_tokens(tmp_path):
    """Issue 21: the error asked to "raise --val-ratio", which a run on shards refuses."""
    import numpy as np

    from gptcli.config import ModelConfig, TrainConfig
    from gptcli.data import prepare_data
    from gptcli.errors import DataError

    rng = np.random.default_rng(0)
    rng.integers(0, 50257, 500, dtype=np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(0, 50257, 5, dtype=np.uint16).tofile(tmp_path / "val.bin")  # shorter than one window
    cfg = TrainConfig(data=[str(tmp_path)], batch_size=2)
    with pytest.raises(DataError) as e:
        prepare_data(ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2), cfg)
    assert "val_*.bin shards" in str(e.value) and "--val-tokens" in str(e.value)
    assert "raise --val-ratio" not in str(e.value)
