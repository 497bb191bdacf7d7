"""A new user's first session: the surprises reported after trying the CLI, each now either
working or one ``error:`` line that names the flag, file or value and says what to do.

One tiny run stopped by ``--max-steps`` (and a LoRA instruct finetune started from it by its run
directory) serve most tests; everything runs in-process on a 2-layer, 32-wide model.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gptcli import console, rundir
from gptcli.checkpoint import load_checkpoint
from gptcli.cli import app
from gptcli.finetune.trainer import file_sha256

from .conftest import TINY_FLAGS, VERDICT
from .finetune_helpers import RECORDS

# 3 steps of batch 2 over stride-1 windows: thousands of windows, a few seconds on one CPU.
BUDGET_RUN = [*TINY_FLAGS, "--stride", "1", "--batch-size", "2", "--eval-iter", "1", "--max-steps", "3"]


def invoke(*args: str | Path, expect: int = 0, input: bytes | str | None = None):
    console.set_quiet(False)
    res = CliRunner().invoke(app, [str(a) for a in args], input=input)
    console.set_quiet(False)
    assert res.exit_code == expect, (res.exit_code, res.output, res.exception)
    assert "Traceback" not in res.output, res.output
    return res


def one_error(*args: str | Path, expect: int = 2, input: bytes | None = None) -> str:
    res = invoke(*args, expect=expect, input=input)
    lines = [x for x in res.output.splitlines() if x.strip() and not x.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> dict:
    """A pretraining run that --max-steps 3 ends in its first of 10 epochs, evaluating by tokens."""
    root = tmp_path_factory.mktemp("first_use")
    base = root / "base"
    res = invoke("train", VERDICT, *BUDGET_RUN, "--eval-freq", "1k", "-o", base)
    return {"root": root, "base": base, "train_output": res.output}


@pytest.fixture(scope="module")
def ft_run(session) -> Path:
    """A LoRA instruct finetune whose --init is the base run's directory."""
    data = session["root"] / "instr.json"
    data.write_text(json.dumps([{**r, "output": r["output"][:10]} for r in RECORDS] * 2), encoding="utf-8")
    ft = session["root"] / "ft"
    # A short template: the base's 12-token context cannot hold the book's Alpaca prompt, and a
    # run whose responses all lie beyond the context is refused.
    template = session["root"] / "short-template.txt"
    template.write_text("{instruction} {output}", encoding="utf-8")
    invoke(
        "finetune", "instruct", data, "--init", session["base"], "-o", ft, "--max-steps", "1", "--batch-size", "2",
        "--lora-rank", "2", "--device", "cpu", "--template", template, "-q",
    )  # fmt: skip
    return ft


# ---------------------------------------------------------------------------------------------
# 1. --init RUN_DIR takes the run's newest loadable checkpoint, as -c RUN does


def test_train_init_takes_a_run_directory_as_its_newest_checkpoint(session, tmp_path):
    newest = rundir.list_step_checkpoints(session["base"])[-1]
    invoke("train", VERDICT, *BUDGET_RUN, "--max-steps", "1", "--init", session["base"], "-o", tmp_path / "cont", "-q")
    saved = yaml.safe_load((tmp_path / "cont" / "config.yaml").read_text())
    assert saved["train"]["init"] == str(newest.resolve())  # the run records the file it started from


def test_finetune_init_takes_a_run_directory_and_hashes_the_resolved_file(session, ft_run):
    newest = rundir.list_step_checkpoints(session["base"])[-1]
    obj = load_checkpoint(rundir.list_step_checkpoints(ft_run)[-1])
    assert obj["finetune"]["base"]["path"] == str(newest.resolve())
    assert obj["finetune"]["base"]["sha256"] == file_sha256(newest)


def test_init_run_directory_without_checkpoints_is_one_line(tmp_path):
    (tmp_path / "empty-run").mkdir()
    line = one_error("train", VERDICT, *TINY_FLAGS, "--init", tmp_path / "empty-run", "-o", tmp_path / "r")
    assert "empty-run" in line and "no checkpoints" in line


# ---------------------------------------------------------------------------------------------
# 2. Interval units: said in --help, and said by the run


def test_interval_help_says_which_spelling_is_which_unit():
    out = " ".join(invoke("train", "--help").output.split())
    for flag in ("--eval-freq", "--save-every"):
        row = out[out.index(flag) : out.index(flag) + 400]
        assert "a plain number is steps" in row and "(1k, 50M) is tokens" in row and "30m/2h is wall time" in row


def test_the_run_says_the_unit_its_interval_took(session):
    from gptcli.config import describe_interval

    assert "evaluating every 1,000 tokens" in session["train_output"]
    assert describe_interval("1000") == "1,000 steps" == describe_interval(1000)
    assert describe_interval("1k") == "1,000 tokens"
    assert describe_interval("1") == "1 step"
    assert describe_interval("30m") == "30m of wall time"


# ---------------------------------------------------------------------------------------------
# 3. What train takes as FILE; a directory of another format says how to read it


def test_train_help_lists_every_accepted_input():
    out = " ".join(invoke("train", "--help").output.split())
    args = out[out.index("Arguments:") : out.index("Options:")]
    for needle in (".jsonl", ".parquet", ".gz", ".zst", "glob", "shards", "- for standard input"):
        assert needle in args, (needle, args)


@pytest.mark.parametrize("name", ["a.jsonl", "a.jsonl.gz"])
def test_a_directory_of_jsonl_suggests_format_or_a_glob(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / name).write_bytes(b'{"text": "hello"}\n')
    for command in (["train", "parts", "-o", "r"], ["eval", "parts"]):
        line = one_error(*command)
        assert "parts: directory contains no .txt files" in line and "--format jsonl" in line, line
        assert f"'parts/*{name[1:]}'" in line, line


def test_a_directory_with_nothing_readable_keeps_the_short_message(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "notes").write_text("x")
    line = one_error("eval", "parts")
    assert line.endswith("parts: directory contains no .txt files"), line


# ---------------------------------------------------------------------------------------------
# 4. --val-ratio given with token shards (whose val_*.bin are the validation set) is refused


@pytest.fixture(scope="module")
def shards_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "verdict"
    invoke("prepare", VERDICT, "-o", out, "-q")
    return out


def test_val_ratio_with_shards_is_refused_whether_flag_or_config(shards_dir, tmp_path):
    line = one_error("train", shards_dir, "--val-ratio", "0.2", "--print-config")
    assert "invalid --val-ratio" in line and "val_*.bin" in line and "gptcli prepare" in line
    (tmp_path / "c.yaml").write_text("train:\n  val_ratio: 0.2\n")
    line = one_error("train", shards_dir, "--config", tmp_path / "c.yaml", "--print-config")
    assert "val_ratio (--val-ratio) in" in line and "c.yaml" in line
    invoke("train", shards_dir, "--print-config")  # not given: nothing to refuse


def test_val_ratio_beside_val_file_is_refused(tmp_path):
    line = one_error("train", VERDICT, "--val-file", VERDICT, "--val-ratio", "0.2", "--print-config")
    assert "invalid --val-ratio" in line and "--val-file" in line


# ---------------------------------------------------------------------------------------------
# 5. Compressed data on standard input is decompressed


COMPRESS = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def _jsonl() -> bytes:
    text = VERDICT.read_text(encoding="utf-8")
    return b"".join(json.dumps({"text": text[i : i + 2000]}).encode() + b"\n" for i in range(0, len(text), 2000))


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "zst"])
def test_prepare_reads_compressed_standard_input(tmp_path, kind):
    plain = json.loads(
        invoke("prepare", "-", "--format", "jsonl", "-o", tmp_path / "p", "--json", input=_jsonl()).stdout
    )
    packed = (_zstd if kind == "zst" else COMPRESS[kind])(_jsonl())
    got = json.loads(invoke("prepare", "-", "--format", "jsonl", "-o", tmp_path / kind, "--json", input=packed).stdout)
    assert got["tokens"] == plain["tokens"] and got["train_tokens"] == plain["train_tokens"]
    assert (tmp_path / kind / "train_000000.bin").read_bytes() == (tmp_path / "p" / "train_000000.bin").read_bytes()


def test_train_and_eval_read_gzipped_standard_input(session, tmp_path):
    packed = gzip.compress(_jsonl())
    invoke("train", "-", "--format", "jsonl", *BUDGET_RUN, "--max-steps", "1", "-o", tmp_path / "r", "-q", input=packed)
    res = invoke("eval", "-", "--format", "jsonl", "-c", session["base"], "--json", "-q", input=packed)
    plain = invoke("eval", "-", "--format", "jsonl", "-c", session["base"], "--json", "-q", input=_jsonl())
    assert json.loads(res.stdout)["loss"] == json.loads(plain.stdout)["loss"]


# ---------------------------------------------------------------------------------------------
# 6. resume --epochs below 1 gets the range message


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_resume_epochs_below_one_is_the_range_message(session, epochs):
    line = one_error("resume", session["base"], "--epochs", epochs)
    assert line == f"error: invalid --epochs: {epochs} (must be an integer >= 1)"


# ---------------------------------------------------------------------------------------------
# 7. An output file flag given an existing directory


def test_output_file_flags_refuse_a_directory_before_any_work(session, ft_run, tmp_path):
    adir = tmp_path / "adir"
    adir.mkdir()
    line = one_error("convert", ft_run, "--merge-lora", "-o", adir)
    assert line.startswith(f"error: {adir}: is a directory; give a file name"), line
    (tmp_path / "loss.png").mkdir()
    line = one_error("plot", session["base"], "-o", tmp_path / "loss.png")
    assert "loss.png: is a directory; give a file name" in line, line
    line = one_error("sample", "-c", ft_run, "--responses", "test", "-o", adir)
    assert f"{adir}: is a directory; give a file name" in line, line
    assert list(adir.iterdir()) == [] and list((tmp_path / "loss.png").iterdir()) == []


# ---------------------------------------------------------------------------------------------
# 8. A run a budget ended shows as done in runs and info


def test_runs_and_info_say_a_budget_ended_the_run(session, monkeypatch):
    monkeypatch.chdir(session["root"])
    rows = invoke("runs", "--root", ".").stdout.splitlines()
    assert rows[0].split()[-1] == "STOPPED"
    base_row = next(r for r in rows if r.startswith("base "))
    assert base_row.rstrip().endswith("done (--max-steps 3)") and "0/10" in base_row
    data = {r["run"]: r for r in json.loads(invoke("runs", "--root", ".", "--json").stdout)}
    assert data["base"]["stopped_by"] == "--max-steps 3"
    info = invoke("info", "base").stdout
    assert re.search(
        r"^status: +done: stopped by --max-steps 3 \(to go on: gptcli resume base --max-steps N", info, re.M
    )
    assert json.loads(invoke("info", "base", "--json").stdout)["stopped_by"] == "--max-steps 3"


# ---------------------------------------------------------------------------------------------
# 9. Small ones


def test_warmup_help_says_min_lr_alone_turns_the_decay_on():
    out = " ".join(invoke("train", "--help").output.split())
    row = out[out.index("--warmup-steps N") : out.index("--min-lr X")]
    assert "constant LR]" not in row and "--min-lr alone" in row, row


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--max-time", "0"], "error: invalid --max-time: 0 (must be > 0 seconds)"),
        (["--lr", "-1"], "error: invalid --lr: -1 (must be > 0)"),
        (["--lr", "0"], "error: invalid --lr: 0 (must be > 0)"),
        (["--drop-rate", "1"], "error: invalid --drop-rate: 1 (must be in [0, 1))"),
        (["--lr", "abc"], "error: invalid --lr: 'abc' (expected a number)"),
    ],
)
def test_range_errors_echo_the_value_as_typed(flags, expected):
    assert one_error("train", VERDICT, *flags, "--print-config") == expected


def test_config_file_numbers_are_echoed_as_written(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  lr: -1\n")
    line = one_error("train", VERDICT, "--config", tmp_path / "c.yaml", "--print-config")
    assert line.endswith("invalid lr (--lr): -1 (must be > 0)"), line


def test_val_tokens_beyond_the_corpus_says_how_many_it_has(tmp_path):
    total = json.loads(invoke("prepare", VERDICT, "-o", tmp_path / "all", "--json", "-q").stdout)["tokens"]
    line = one_error("prepare", VERDICT, "-o", tmp_path / "v", "--val-tokens", "99999", "-q")
    assert "invalid --val-tokens: 99,999" in line and f"has {total:,} tokens" in line, line
    assert not (tmp_path / "v").exists()


def test_convert_help_shows_the_merge_default_on_output():
    out = " ".join(invoke("convert", "--help").output.split())
    merge = out[out.index("--merge-lora A finetune run") :]
    merge = merge[: merge.index("always merged)") + 20]
    output = out[out.index("-o, --output") : out.index("--from")]
    assert "merged.pth" in output and "[default:" not in merge, merge


def test_prepare_format_takes_auto(tmp_path):
    assert "auto" in invoke("prepare", "--help").output
    invoke("prepare", VERDICT, "--format", "auto", "-o", tmp_path / "a", "-q")


def test_window_counts_have_thousands_separators(session):
    assert re.search(r"training tokens \(\d{1,3}(?:,\d{3})+ windows\)", session["train_output"]), session[
        "train_output"
    ]


def test_text_field_for_plain_text_only_is_refused(tmp_path, session, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs.ndjson").write_bytes(_jsonl())  # not a name gptcli knows: read as text
    for command in (
        ["train", "docs.ndjson", "--text-field", "body", "-o", "r", *BUDGET_RUN, "--max-steps", "1"],
        ["eval", "docs.ndjson", "--text-field", "body", "-c", session["base"]],
        ["prepare", "docs.ndjson", "--text-field", "body", "-o", "p"],
    ):
        line = one_error(*command)
        assert "invalid --text-field 'body'" in line and "docs.ndjson" in line and "--format jsonl" in line, line
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()
    # with records among the inputs it is used, and taken
    invoke("prepare", "docs.ndjson", "--format", "jsonl", "--text-field", "text", "-o", "p", "-q")
