"""gptcli.formats: the same documents give the same token stream in every format; bad records
are one DataError naming the file, the line or row and the field."""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import json
import lzma

import numpy as np
import pytest

from gptcli import formats
from gptcli.data import tokenize
from gptcli.errors import DataError, UsageError
from gptcli.textfiles import read_corpus

# Documents with what tends to break readers: unicode, quotes, commas, tabs, newlines, CRLF.
DOCS = [
    "I HAD always thought Jack Gisburn rather a cheap genius.\nThough a good fellow enough.",
    'She said, "the tab\there and a comma, too" \u2014 caf\u00e9, na\u00efve, \u65e5\u672c.',
    "Line one\r\nline two\n\nA third paragraph ends with a space ",
    "x",
]


def _txt_files(tmp_path):
    paths = []
    for i, d in enumerate(DOCS):
        p = tmp_path / "txt" / f"doc{i}.txt"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(d.encode("utf-8"))
        paths.append(p)
    return paths


def _jsonl_bytes(docs, field="text"):
    return "".join(json.dumps({"id": i, field: d}) + "\n" for i, d in enumerate(docs)).encode()


def _write_parquet(path, docs, *, row_group_size=2, field="text"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": list(range(len(docs))), field: docs})
    pq.write_table(table, path, row_group_size=row_group_size)


def _ids(paths, **kw):
    return tokenize(formats.read_documents_text(paths, **kw))


def test_detect_format_and_compression_from_the_name():
    assert formats.detect("a/b.jsonl.zst") == ("jsonl", "zstd")
    assert formats.detect("x.CSV.GZ") == ("csv", "gzip")
    assert formats.detect("notes.md") == ("txt", None)
    assert formats.detect("corpus.bz2") == ("txt", "bzip2")
    assert formats.detect("Makefile") == ("txt", None)  # unknown: plain text, as before
    assert formats.detect("x.parquet") == ("parquet", None)


def test_same_documents_same_tokens_in_every_format(tmp_path):
    expected = tokenize("<|endoftext|>".join(DOCS))
    txt = _txt_files(tmp_path)
    # .txt files read through gptcli.formats equal the existing .txt path exactly
    assert np.array_equal(_ids(txt), tokenize(read_corpus(txt)))
    assert np.array_equal(_ids(txt), expected)

    raw = _jsonl_bytes(DOCS)
    (tmp_path / "d.jsonl").write_bytes(raw)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "d.jsonl.bz2").write_bytes(bz2.compress(raw))
    (tmp_path / "d.jsonl.xz").write_bytes(lzma.compress(raw))
    import zstandard

    (tmp_path / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    (tmp_path / "d.json").write_text(json.dumps([{"text": d} for d in DOCS]))
    _write_parquet(tmp_path / "d.parquet", DOCS)
    for name in ("d.jsonl", "d.jsonl.gz", "d.jsonl.bz2", "d.jsonl.xz", "d.jsonl.zst", "d.json", "d.parquet"):
        assert np.array_equal(_ids([tmp_path / name]), expected), name

    for fmt, delim in (("csv", ","), ("tsv", "\t")):
        buf = io.StringIO(newline="")
        w = csv.writer(buf, delimiter=delim)
        w.writerow(["id", "text"])
        w.writerows([i, d] for i, d in enumerate(DOCS))
        (tmp_path / f"d.{fmt}").write_bytes(buf.getvalue().encode())
        assert np.array_equal(_ids([tmp_path / f"d.{fmt}"]), expected), fmt


def test_documents_across_files_globs_and_text_field(tmp_path):
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(DOCS[:2], field="content")))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(DOCS[2:], field="content")))
    ids = _ids([str(tmp_path / "*.jsonl.gz")], text_field="content")
    assert np.array_equal(ids, tokenize("<|endoftext|>".join(DOCS)))
    with pytest.raises(DataError, match=r"no files match"):
        formats.resolve_inputs([str(tmp_path / "*.parquet")])


def test_parquet_streams_row_groups_and_reads_only_the_text_column(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    docs = [f"document number {i}" for i in range(10)]
    _write_parquet(tmp_path / "d.parquet", docs, row_group_size=3)
    calls = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *a, **kw):
        calls.append(kw)
        return real(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert formats.read_documents_text([tmp_path / "d.parquet"]) == "<|endoftext|>".join(docs)
    assert calls and calls[0]["columns"] == ["text"]


def test_format_override_and_stdin(tmp_path, monkeypatch):
    (tmp_path / "data.dump").write_bytes(_jsonl_bytes(DOCS))
    assert formats.read_documents_text([tmp_path / "data.dump"], format="jsonl") == "<|endoftext|>".join(DOCS)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(_jsonl_bytes(DOCS))))
    assert formats.read_documents_text(["-"], format="jsonl") == "<|endoftext|>".join(DOCS)
    with pytest.raises(UsageError, match=r"--format: 'yaml'"):
        formats.resolve_inputs(["-"], format="yaml")


def test_empty_records_are_skipped_but_an_input_without_documents_is_an_error(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "a"}\n\n{"text": ""}\n{"text": null}\n{"text": "b"}\n')
    assert formats.read_documents_text([p]) == "a<|endoftext|>b"
    p.write_text('{"text": ""}\n')
    with pytest.raises(DataError, match=r"d\.jsonl: no documents"):
        formats.read_documents_text([p])


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("d.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', r"d\.jsonl: line 2: no field 'text' \(fields: body\)"),
        ("d.jsonl", b'{"text": "ok"}\n{"text": 3}\n', r"d\.jsonl: line 2: field 'text' is int, not a string"),
        ("d.jsonl", b'{"text": "ok"}\n{"text": "x"\n', r"d\.jsonl: line 2: not valid JSON"),
        ("d.jsonl", b'{"text": "ok"}\n{"text": "\xff"}\n', r"d\.jsonl: line 2: not valid UTF-8"),
        ("d.csv", b"id,body\n1,x\n", r"d\.csv: no column 'text' in the header \(columns: id, body\)"),
        ("d.csv", b"id,text\n1,x\n2\n", r"d\.csv: row 2 \(line 3\): has no 'text' column"),
        ("d.jsonl.gz", b"\x1f\x8bnot really gzip", r"d\.jsonl\.gz: cannot read gzip data"),
        ("d.txt.xz", b"garbage", r"d\.txt\.xz: cannot read xz data"),
        ("d.txt.gz", gzip.compress(b"", mtime=0), r"d\.txt\.gz: file is empty"),
    ],
)
def test_bad_inputs_are_one_clear_error(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        formats.read_documents_text([tmp_path / name])


def test_parquet_errors_name_the_column(tmp_path):
    _write_parquet(tmp_path / "d.parquet", ["a"], field="body")
    with pytest.raises(DataError, match=r"d\.parquet: no column 'text' \(columns: id, body\)"):
        formats.read_documents_text([tmp_path / "d.parquet"])
    with pytest.raises(DataError, match=r"d\.parquet: column 'id' is int64, not a string"):
        formats.read_documents_text([tmp_path / "d.parquet"], text_field="id")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        formats.read_documents_text([tmp_path / "bad.parquet"])


# ---------------------------------------------------------------------------------------------
# Train and eval take --format, --text-field, globs and - (standard input)

MANY_DOCS = [f"{d} (copy {k})" for k in range(6) for d in DOCS]  # enough tokens for tiny windows


def _train_cfg(data, **kw):
    from gptcli.config import TrainConfig

    return TrainConfig(data=[str(d) for d in data], epochs=1, **kw)


def test_prepare_data_reads_globs_text_field_and_format_like_txt(tmp_path, monkeypatch, tiny_cfg):
    from gptcli.data import prepare_data

    txt = tmp_path / "txt"
    txt.mkdir()
    for i, d in enumerate(MANY_DOCS):
        (txt / f"doc{i:02d}.txt").write_text(d, encoding="utf-8")
    half = len(MANY_DOCS) // 2
    (tmp_path / "part-0.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(MANY_DOCS[:half], field="body")))
    (tmp_path / "part-1.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(MANY_DOCS[half:], field="body")))
    (tmp_path / "records.dump").write_bytes(_jsonl_bytes(MANY_DOCS))

    want = prepare_data(tiny_cfg, _train_cfg([txt]))
    runs = {
        "glob + text_field": _train_cfg([tmp_path / "part-*.jsonl.gz"], text_field="body"),
        "format override": _train_cfg([tmp_path / "records.dump"], format="jsonl"),
    }
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(_jsonl_bytes(MANY_DOCS))))
    runs["stdin"] = _train_cfg(["-"], format="jsonl")
    for name, cfg in runs.items():
        got = prepare_data(tiny_cfg, cfg)
        assert np.array_equal(got.train.tokens, want.train.tokens), name
        assert np.array_equal(got.val.tokens, want.val.tokens), name
        assert got.fingerprint == want.fingerprint, name
    # the stdin copy is gone once its tokens are cached
    from gptcli.tokencache import token_cache_dir

    assert not list(token_cache_dir().glob("stdin-*"))
    # a record format without the field is one error that says which flag chooses it
    with pytest.raises(DataError, match=r"part-0\.jsonl\.gz: line 1: no field 'text'.*--text-field"):
        prepare_data(tiny_cfg, _train_cfg([tmp_path / "part-*.jsonl.gz"]))


def test_format_choices_match_the_readers():
    from gptcli.config import INPUT_FORMATS

    assert INPUT_FORMATS == ("auto", *formats.FORMATS)


def _gptcli(*args, cwd, stdin: bytes | None = None):
    import subprocess

    from .conftest import gptcli_exe

    return subprocess.run([*gptcli_exe(), *args], cwd=cwd, input=stdin, capture_output=True, timeout=600)


@pytest.mark.slow
def test_cli_train_and_eval_take_format_text_field_globs_and_stdin(tmp_path):
    from .conftest import TINY_FLAGS

    records = _jsonl_bytes(MANY_DOCS, field="body")
    (tmp_path / "txt").mkdir()
    for i, d in enumerate(MANY_DOCS):
        (tmp_path / "txt" / f"doc{i:02d}.txt").write_text(d, encoding="utf-8")
    half = len(MANY_DOCS) // 2
    (tmp_path / "a.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(MANY_DOCS[:half], field="body")))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_jsonl_bytes(MANY_DOCS[half:], field="body")))

    train = ["train", "-", "--format", "jsonl", "--text-field", "body", "--epochs", "1", *TINY_FLAGS]
    proc = _gptcli(*train, "--device", "cpu", "--out", "runs/s", "-q", cwd=tmp_path, stdin=records)
    assert proc.returncode == 0, proc.stderr.decode()

    def loss(*inputs, stdin=None):
        p = _gptcli("eval", *inputs, "--checkpoint", "runs/s", "--device", "cpu", "--json", cwd=tmp_path, stdin=stdin)
        assert p.returncode == 0, p.stderr.decode()
        out = json.loads(p.stdout)
        return out["tokens"], out["loss"]

    want = loss("txt")
    assert loss("*.jsonl.gz", "--text-field", "body") == want  # the glob, as a quoted shell argument
    assert loss("-", "--format", "jsonl", "--text-field", "body", stdin=records) == want

    for args, code, message in (
        (["eval", "a.jsonl.gz", "--checkpoint", "runs/s"], 2, "a.jsonl.gz: line 1: no field 'text'"),
        (["eval", "a.jsonl.gz", "--format", "xml", "--checkpoint", "runs/s"], 2, "--format"),
        (["train", "a.jsonl.gz", "--format", "xml", *TINY_FLAGS], 2, "--format"),
        (["train", "*.parquet", *TINY_FLAGS], 2, "*.parquet: no files match"),
    ):
        p = _gptcli(*args, cwd=tmp_path)
        err = p.stderr.decode()
        assert p.returncode == code, (args, err)
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1 and message in err, (args, err)
