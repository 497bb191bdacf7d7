"""Hostile data files (issue 21): each must give one ``error:`` line naming the file (and the
line, flag or field), never a traceback and never a silently different result. Truncated
``.zst``, unbalanced CSV quotes, line separators inside fields, byte order marks, JSON that
breaks Python's decoder, non-ASCII digits as labels, malformed weights files, format specs in
``--template``, a literal ``<|endoftext|>`` inside a document, and shard ids out of range."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gptcli import formats, hellaswag, shards, tokencache
from gptcli.cli import app
from gptcli.config import ModelConfig
from gptcli.data import tokenize
from gptcli.errors import CheckpointError, DataError, UsageError
from gptcli.finetune import classify, instruct
from gptcli.finetune.files import json_records
from gptcli.textfiles import read_corpus
from gptcli.tokenizer import EOT_ID, get_tokenizer
from gptcli.weights.book import book_shapes, convert_book
from gptcli.weights.hf import load_hf

from ..conftest import TINY_FLAGS

zstandard = pytest.importorskip("zstandard")


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error(res, code: int = 2) -> str:
    """The single ``error:`` line of a failed command (and nothing like a traceback)."""
    assert "Traceback" not in res.output, res.output
    assert res.exit_code == code, (res.output, res.exception)
    lines = [x for x in res.output.splitlines() if x.startswith("error:")]
    assert len(lines) == 1, res.output
    return lines[0]


def _docs(n: int) -> list[str]:
    return [f"Document {i}: the quick brown fox jumps over the lazy dog, {i} times over." * 5 for i in range(n)]


# ---------------------------------------------------------------------------------------------
# 1. A truncated .zst is an error, as a truncated .gz is


@pytest.fixture
def truncated_zst(tmp_path) -> Path:
    text = "".join(json.dumps({"text": d}) + "\n" for d in _docs(3000)).encode()
    whole = zstandard.ZstdCompressor().compress(text)
    p = tmp_path / "corpus.jsonl.zst"
    p.write_bytes(whole[: len(whole) // 2])
    return p


def test_truncated_zst_is_refused_by_the_reader(truncated_zst):
    with pytest.raises(DataError, match=r"corpus\.jsonl\.zst: cannot read zstd data \(truncated"):
        formats.read_documents_text([truncated_zst])


def test_truncated_zst_is_refused_by_the_token_cache(truncated_zst, tmp_path):
    with pytest.raises(DataError, match=r"corpus\.jsonl\.zst: cannot read zstd data \(truncated"):
        tokencache.cached_corpus_tokens([truncated_zst], cache_dir=tmp_path / "cache")


def test_truncated_zst_fails_prepare(tmp_path):
    """The report: half of a plain-text .zst gave prepare fewer tokens and exit 0."""
    whole = zstandard.ZstdCompressor().compress("\n".join(_docs(3000)).encode())
    p = tmp_path / "corpus.txt.zst"
    p.write_bytes(whole[: len(whole) // 2])
    line = one_error(invoke("prepare", p, "-o", tmp_path / "out", "-q"))
    assert "corpus.txt.zst: cannot read zstd data (truncated: the file ends inside a frame)" in line
    assert not list(tmp_path.glob("out/*.bin"))


@pytest.mark.parametrize("cut", [1, 7, 1000])
def test_zst_cut_anywhere_is_refused_and_whole_or_multi_frame_is_read(tmp_path, cut):
    data = "".join(f"line {i} of a text file\n" for i in range(20000)).encode()
    one = zstandard.ZstdCompressor(write_checksum=True).compress(data)
    two = zstandard.ZstdCompressor(level=19).compress(data[:100]) + zstandard.ZstdCompressor().compress(data[100:])
    for name, blob in (("one", one), ("two", two)):
        (tmp_path / f"{name}.txt.zst").write_bytes(blob)
        assert formats.read_documents_text([tmp_path / f"{name}.txt.zst"]) == data.decode()
        (tmp_path / f"{name}-cut.txt.zst").write_bytes(blob[:-cut])
        with pytest.raises(DataError, match=rf"{name}-cut\.txt\.zst: cannot read zstd data \(truncated"):
            formats.read_documents_text([tmp_path / f"{name}-cut.txt.zst"])


# ---------------------------------------------------------------------------------------------
# 2. One unbalanced quote in a CSV/TSV does not swallow the rest of the file


def _csv_with_unbalanced_quote(path: Path, *, later_quotes: bool, delimiter: str = ",") -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    w.writerow(["id", "text", "label"])
    for i in range(60):
        text = f'she said "hi" ({i})' if later_quotes and i > 20 else f"plain text {i}"
        w.writerow([i, text, "spam" if i % 2 else "ham"])
    lines = buf.getvalue().split("\n")
    lines[10] = lines[10].replace("plain text", '"plain text')  # line 11: a quote opened, never closed
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("later_quotes", [False, True])
def test_unbalanced_csv_quote_names_the_line_it_opened(tmp_path, later_quotes):
    p = _csv_with_unbalanced_quote(tmp_path / "d.csv", later_quotes=later_quotes)
    with pytest.raises(DataError, match=r"d\.csv: line 11: .*quote"):
        formats.read_documents_text([p])
    with pytest.raises(DataError, match=r"d\.csv: line 11: .*quote"):
        classify.read_table(p, text_field="text", label_field="label")


def test_unbalanced_tsv_quote_fails_prepare(tmp_path):
    p = _csv_with_unbalanced_quote(tmp_path / "d.tsv", later_quotes=True, delimiter="\t")
    line = one_error(invoke("prepare", p, "-o", tmp_path / "out", "-q"))
    assert "d.tsv: line 11" in line and "quote" in line


def test_balanced_quotes_still_read_every_row(tmp_path):
    p = tmp_path / "ok.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(60):
            w.writerow([f'a "quoted" word, and\na second line {i}', "x"])
    texts, _ = classify.read_table(p, text_field="text", label_field="label")
    assert len(texts) == 60 and texts[5] == 'a "quoted" word, and\na second line 5'
    assert formats.read_documents_text([p]).count("<|endoftext|>") == 59


# ---------------------------------------------------------------------------------------------
# 3. Finetune readers: a field may hold any line separator; JSON Lines end at "\n" only

SEPARATORS = ["\n", "\r\n", "\r", "\x0c", "\x1c", "\x1d", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("sep", SEPARATORS)
def test_classify_csv_field_keeps_its_line_separator(tmp_path, sep):
    p = tmp_path / "d.csv"
    with open(p, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerow([f"first{sep}second", "spam"])
        w.writerow(["third", "ham"])
    texts, labels = classify.read_table(p, text_field="text", label_field="label")
    assert texts == [f"first{sep}second", "third"] and labels == ["spam", "ham"]


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85"])
def test_json_lines_with_raw_unicode_line_separators_are_read(tmp_path, sep):
    records = [{"instruction": f"say{sep}this", "input": "", "output": f"ok{sep}done"}] * 3
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records), encoding="utf-8")
    assert instruct.load_records(p) == records
    t = tmp_path / "c.jsonl"
    t.write_text(
        "".join(json.dumps({"text": f"a{sep}b", "label": "x"}, ensure_ascii=False) + "\n" for _ in range(2)),
        encoding="utf-8",
    )
    assert classify.read_table(t, text_field="text", label_field="label")[0] == [f"a{sep}b"] * 2


# ---------------------------------------------------------------------------------------------
# 4. A UTF-8 byte order mark is not part of the first column's name, and not bad JSON

BOM = "\ufeff"


def test_bom_csv_and_tsv_columns(tmp_path):
    (tmp_path / "d.csv").write_text(BOM + "text,id\nhello,1\nworld,2\n", encoding="utf-8")
    (tmp_path / "d.tsv").write_text(BOM + "text\tlabel\nhello\ta\nworld\tb\n", encoding="utf-8")
    assert formats.read_documents_text([tmp_path / "d.csv"]) == "hello<|endoftext|>world"
    assert formats.read_documents_text([tmp_path / "d.tsv"]) == "hello<|endoftext|>world"
    assert classify.read_table(tmp_path / "d.tsv", text_field="text", label_field="label") == (
        ["hello", "world"],
        ["a", "b"],
    )


@pytest.mark.parametrize("name", ["d.json", "d.jsonl"])
def test_bom_json(tmp_path, name):
    recs = [{"text": "hello", "label": "a", "instruction": "i", "output": "o"}] * 2
    body = json.dumps(recs) if name == "d.json" else "".join(json.dumps(r) + "\n" for r in recs)
    p = tmp_path / name
    p.write_text(BOM + body, encoding="utf-8")
    assert formats.read_documents_text([p]) == "hello<|endoftext|>hello"
    assert json_records(p) == recs
    assert classify.read_table(p, text_field="text", label_field="label") == (["hello"] * 2, ["a"] * 2)


# ---------------------------------------------------------------------------------------------
# 5. JSON that breaks Python's decoder: one error naming the file (and line)

HOSTILE_JSON = {
    "surrogate": '{"text": "a\\ud800b", "instruction": "i", "output": "o", "label": "x"}',
    "deep": "[" * 100_000 + "]" * 100_000,
    "bigint": '{"text": "a", "n": ' + "9" * 5000 + "}",
}


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_lines_name_file_and_line(tmp_path, case):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "fine", "instruction": "i", "output": "o", "label": "y"}\n' + HOSTILE_JSON[case] + "\n")
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: not valid JSON"):
        formats.read_documents_text([p])
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: not valid JSON"):
        tokencache.cached_corpus_tokens([p], cache_dir=tmp_path / "cache")
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: not valid JSON"):
        instruct.load_records(p)
    with pytest.raises(DataError, match=r"d\.jsonl: line 2: not valid JSON"):
        classify.read_table(p, text_field="text", label_field="label")


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_array_names_the_file(tmp_path, case):
    p = tmp_path / "d.json"
    p.write_text("[" + HOSTILE_JSON[case] + "]")
    with pytest.raises(DataError, match=r"d\.json: not valid JSON"):
        formats.read_documents_text([p])
    with pytest.raises(DataError, match=r"d\.json: not valid JSON"):
        instruct.load_records(p)


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_json_in_hellaswag(tmp_path, case):
    p = tmp_path / "h.jsonl"
    p.write_text('{"ctx": "a", "endings": ["b", "c"], "label": 0}\n' + HOSTILE_JSON[case] + "\n")
    with pytest.raises(DataError, match=r"h\.jsonl: line 2: not a valid JSON line"):
        hellaswag.read_examples(p)


@pytest.mark.parametrize("case", list(HOSTILE_JSON))
def test_hostile_hf_config_json(tmp_path, case):
    (tmp_path / "config.json").write_text(HOSTILE_JSON[case])
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"config\.json: not readable JSON"):
        load_hf(tmp_path)


def test_hostile_json_fails_prepare_with_one_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"text": "fine"}\n{"text": "a\\udfffb"}\n')
    line = one_error(invoke("prepare", p, "-o", tmp_path / "out", "-q"))
    assert "d.jsonl: line 2: not valid JSON" in line


# ---------------------------------------------------------------------------------------------
# 6. Labels of non-ASCII digits; a table whose texts are all empty


def test_superscript_label_is_a_name_not_a_number():
    assert classify.label_names(["²", "1", "10"]) == sorted(["²", "1", "10"])
    assert classify.label_names(["-1", "10", "2"]) == ["-1", "2", "10"]


def test_superscript_hellaswag_label_is_refused(tmp_path):
    p = tmp_path / "h.jsonl"
    p.write_text(json.dumps({"ctx": "a", "endings": ["b", "c"], "label": "²"}) + "\n")
    with pytest.raises(DataError, match=r"h\.jsonl: line 1: field 'label'"):
        hellaswag.read_examples(p)


def test_classify_table_of_empty_texts_is_refused(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\n" + "".join(f",{'ab'[i % 2]}\n" for i in range(20)))
    with pytest.raises(DataError, match=r"d\.csv: every 'text' is empty"):
        classify.read_table(p, text_field="text", label_field="label")
    data = classify.ClassifyData.build(["", ""], [0, 1], max_length=None)
    assert data.max_length == 1  # never a (N, 0) batch whose last position does not exist


# ---------------------------------------------------------------------------------------------
# 7. Weights files of the wrong shape


@pytest.mark.parametrize("body", ["[1, 2]", "null", '"gpt2"', "3"])
def test_hf_config_that_is_not_an_object(tmp_path, body):
    (tmp_path / "config.json").write_text(body)
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"config\.json: expected a JSON object"):
        load_hf(tmp_path)


def _book_model_state() -> dict[str, torch.Tensor]:
    cfg = ModelConfig(context_length=12, emb_dim=32, n_heads=4, n_layers=2, qkv_bias=False)
    torch.manual_seed(0)
    return {k: torch.randn(shape) * 0.02 for k, shape in book_shapes(cfg).items()}


@pytest.mark.parametrize("opt", ["adamw", [1, 2], {"state": "x", "param_groups": [{"params": [0]}]}])
def test_book_file_with_a_malformed_optimizer_state(tmp_path, opt):
    src = tmp_path / "model_and_optimizer.pth"
    torch.save({"model_state_dict": _book_model_state(), "optimizer_state_dict": opt}, src)
    with pytest.raises(CheckpointError, match=r"model_and_optimizer\.pth: optimizer_state_dict is not"):
        convert_book(src, tmp_path / "out.pth", n_heads=4)
    line = one_error(invoke("convert", src, "--n-heads", "4", "-o", tmp_path / "out2.pth"))
    assert "optimizer_state_dict is not" in line


def test_book_file_whose_model_state_is_not_a_dict(tmp_path):
    src = tmp_path / "m.pth"
    torch.save({"model_state_dict": "weights"}, src)
    with pytest.raises(CheckpointError, match=r"m\.pth: model_state_dict is not a state dict"):
        convert_book(src, tmp_path / "out.pth", n_heads=4)


# ---------------------------------------------------------------------------------------------
# 8. --template: plain fields only


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("{instruction}\n{output:d}", "{output:d} has a format spec"),
        ("{instruction}\n{output:>99999999999999999999}", "{output:>99999999999999999999} has a format spec"),
        ("{instruction}\n{output!r}", "{output!r} has a format spec or conversion"),
        ("{instruction}\n{{output}}", "{{output}} is the literal text {output}"),
        ("{instruction}\n{{output}} {output}", "{{output}} is the literal text {output}"),
    ],
)
def test_template_with_format_spec_or_escaped_field_is_refused(tmp_path, template, needle):
    p = tmp_path / "tpl.txt"
    p.write_text(template)
    with pytest.raises(UsageError, match=r"invalid --template .*tpl\.txt: ") as e:
        instruct.Template.from_file(p)
    assert needle in str(e.value)


def test_template_renders_braces_in_data_and_escaped_literals():
    t = instruct.Template.from_text("Q {{x}}: {instruction}{input}\nA: {output} {{end}}")
    e = {"instruction": "why {output}?", "input": "", "output": "{because}"}
    assert t.prompt(e) == "Q {x}: why {output}?\nA: "
    assert t.full(e) == "Q {x}: why {output}?\nA: {because} {end}"


# ---------------------------------------------------------------------------------------------
# 9. A literal <|endoftext|> inside a document is text; only the separators are id 50256

LITERAL = "the token <|endoftext|> is written like this"


def encode_ordinary(text: str) -> list[int]:
    return get_tokenizer().encode_ordinary(text)


def _expected(*docs: str) -> list[int]:
    ids: list[int] = []
    for i, d in enumerate(docs):
        ids += ([EOT_ID] if i else []) + encode_ordinary(d)
    return ids


def test_literal_endoftext_in_text_files_is_ordinary_text(tmp_path):
    (tmp_path / "a.txt").write_text(LITERAL)
    (tmp_path / "b.txt").write_text("next document")
    files = [tmp_path / "a.txt", tmp_path / "b.txt"]
    expected = _expected(LITERAL, "next document")
    assert tokenize(read_corpus(files)).tolist() == expected
    assert tokenize(read_corpus(files)).tolist().count(EOT_ID) == 1
    for block in (3, 11, 1 << 20):  # the literal cut across read blocks
        ct = tokencache.cached_corpus_tokens(files, cache_dir=tmp_path / f"c{block}", block_bytes=block)
        assert ct.train.tolist() == expected


def test_literal_endoftext_in_records_is_ordinary_text(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"text": LITERAL}) + "\n" + json.dumps({"text": "next"}) + "\n")
    expected = _expected(LITERAL, "next")
    assert tokenize(formats.read_documents_text([p])).tolist() == expected
    assert tokencache.cached_corpus_tokens([p], cache_dir=tmp_path / "c").train.tolist() == expected
    info = shards.prepare([p], tmp_path / "out", val_tokens=1)
    assert info["tokens"] == len(expected)
    got = np.concatenate([shards.read_shard(tmp_path / "out" / n) for n in info["train_shards"] + info["val_shards"]])
    assert got.tolist() == expected


def test_literal_endoftext_split_between_train_and_val(tmp_path):
    """The book's split by characters may cut the literal: each side encodes its half as text."""
    p = tmp_path / "a.txt"
    p.write_text("x" * 20 + " <|endoftext|>")
    ct = tokencache.cached_corpus_tokens([p], val_ratio=(14 - 5) / 34, cache_dir=tmp_path / "c")
    text = "x" * 20 + " <|endoftext|>"
    cut = int((1 - (14 - 5) / 34) * len(text))
    assert ct.train.tolist() == encode_ordinary(text[:cut]) and ct.val.tolist() == encode_ordinary(text[cut:])


def test_literal_endoftext_in_finetune_records_is_ordinary_text():
    r = {"instruction": "say <|endoftext|>", "input": "", "output": "<|endoftext|> done"}
    data = instruct.InstructData.build([r], instruct.Template(), max_length=None, mask_prompt=False)
    assert EOT_ID not in data.ids[0]
    c = classify.ClassifyData.build(["<|endoftext|> spam"], [0], max_length=None)
    assert EOT_ID not in c.ids[0].tolist()


# ---------------------------------------------------------------------------------------------
# 10. Every id of a shard is checked, not only the first MiB of ids


def _shard_with_bad_id(path: Path, *, n: int = 3 * 2**20, at: int = 2**21 + 5, bad: int = 50257) -> Path:
    ids = np.arange(n, dtype=np.int64) % 50000
    ids[at] = bad
    shards.write_shard(path, ids.astype(np.uint16))
    return path


def test_shard_id_past_the_first_mebitoken_is_refused(tmp_path):
    p = _shard_with_bad_id(tmp_path / "x_train_000000.bin")
    with pytest.raises(DataError, match=r"x_train_000000\.bin: token id 50257 is not a GPT-2 id .*at token 2,097,157"):
        shards.read_shard(p)


def test_training_on_a_shard_with_a_bad_id_is_one_error(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    _shard_with_bad_id(d / "d_train_000000.bin", n=2**20 + 100, at=2**20 + 50, bad=65535)
    shards.write_shard(d / "d_val_000000.bin", np.arange(200, dtype=np.uint16))
    line = one_error(invoke("train", d, *TINY_FLAGS, "--max-steps", "1", "--device", "cpu", "-q"))
    assert "d_train_000000.bin: token id 65535 is not a GPT-2 id" in line
