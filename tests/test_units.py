"""gptcli.units: one grammar for counts, durations and intervals, the same for every command."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from gptcli import units
from gptcli.cli import app
from gptcli.errors import UsageError

SPELLINGS = [
    ("5000", 5000),
    ("10k", 10_000),
    ("10K", 10_000),
    ("50M", 50_000_000),
    ("2B", 2 * 10**9),
    ("2G", 2 * 10**9),
    ("1T", 10**12),
    ("1.5M", 1_500_000),
    ("1e6", 1_000_000),
    ("1_000", 1000),
    (" 7 ", 7),
]


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_error_line(res, code: int) -> str:
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), res.stderr
    assert "Traceback" not in res.output
    return lines[0]


@pytest.mark.parametrize(("text", "value"), SPELLINGS)
def test_counts(text, value):
    assert units.parse_count(text) == value
    assert units.count_flag(text, "--x") == value


@pytest.mark.parametrize("text", ["30m", "5q", "", "1.5", "1,000", "1e30B", "m", "-5"])
def test_bad_counts_are_value_errors(text):
    with pytest.raises(ValueError):
        units.parse_count(text)


def test_lower_case_m_is_minutes_so_a_count_of_30m_suggests_30M():
    with pytest.raises(ValueError, match=r"m is minutes; M is millions\): write 30M for 30 million"):
        units.parse_count("30m")
    with pytest.raises(ValueError, match="write 2B"):
        units.parse_count("2b")
    with pytest.raises(UsageError) as e:
        units.count_flag("30m", "--shard-size")
    assert str(e.value).startswith("invalid --shard-size: '30m' (") and "30M" in str(e.value)
    assert units.parse_duration("30m") == 1800.0
    assert units.parse_interval("30m") == ("seconds", 1800.0)


def test_counts_beyond_64_bits_are_refused():
    assert units.parse_count(str(2**63 - 1)) == 2**63 - 1
    with pytest.raises(ValueError, match="too large"):
        units.parse_count(str(2**63))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("90m", 5400.0), ("1h30m", 5400.0)])
def test_durations(text, seconds):
    assert units.parse_duration(text) == seconds


def test_intervals_and_their_words():
    assert units.parse_interval("1_000") == ("steps", 1000)
    assert units.parse_interval("1e6") == ("tokens", 1_000_000)
    assert units.parse_interval("200k tokens") == ("tokens", 200_000)
    assert units.describe_interval("10k") == "10,000 tokens"
    assert units.describe_interval("1h30m") == "1h30m of wall time"


def test_config_keeps_its_names():
    from gptcli import config

    assert config.parse_count is units.parse_count
    assert config.parse_duration is units.parse_duration
    assert config.parse_interval is units.parse_interval
    assert config.describe_interval is units.describe_interval


def test_units_imports_neither_torch_nor_more_of_ours():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(units.__file__).read_text(encoding="utf-8"))
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not any(m.startswith("torch") for m in imported if m)
    assert {m for m in imported if m and m.startswith("gptcli")} == {"gptcli.errors"}


# ---------------------------------------------------------------------------------------------
# The same spelling means the same number in train and prepare


@pytest.fixture
def text_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "t.txt"
    path.write_text("A few words to tokenize, repeated. " * 40, encoding="utf-8")
    return path


@pytest.mark.parametrize("spelling", ["1e6", "1_000"])
def test_prepare_takes_the_spellings_train_takes(text_file, spelling):
    res = cli("prepare", text_file, "-o", "out", "--shard-size", spelling, "--json", "-q")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["train_shards"] and summary["val_shards"]


@pytest.mark.parametrize("flag", ["--shard-size", "--val-tokens"])
def test_prepare_refuses_30m_naming_the_flag_and_suggesting_30M(text_file, flag):
    line = one_error_line(cli("prepare", text_file, "-o", "out", flag, "30m"), 2)
    assert f"invalid {flag}: '30m'" in line and "30M" in line and "minutes" in line
    assert not (text_file.parent / "out").exists()


def test_train_refuses_30m_as_a_count_the_same_way(text_file):
    line = one_error_line(cli("train", text_file, "--max-tokens", "30m", "--print-config"), 2)
    assert "invalid --max-tokens: '30m'" in line and "30M" in line


@pytest.mark.parametrize("spelling", [s for s, _ in SPELLINGS if s.strip() == s])
def test_train_and_prepare_read_one_spelling_as_one_number(text_file, monkeypatch, spelling):
    res = cli("train", text_file, "--max-tokens", spelling, "--max-steps", spelling, "--print-config")
    assert res.exit_code == 0, res.output
    train_cfg = yaml.safe_load(res.stdout)["train"]

    seen = {}

    def fake_prepare(inputs, out, *, shard_size, val_tokens, **kwargs):
        seen.update(shard_size=shard_size, val_tokens=val_tokens)
        return {"dir": str(out), "inputs": [], "tokens": 0, "train_tokens": 0, "val_tokens": 0}

    monkeypatch.setattr("gptcli.shards.prepare", fake_prepare)
    res = cli("prepare", text_file, "-o", "out", "--shard-size", spelling, "--val-tokens", spelling, "--json", "-q")
    assert res.exit_code == 0, res.output
    assert train_cfg["max_tokens"] == train_cfg["max_steps"] == seen["shard_size"] == seen["val_tokens"]
    assert seen["shard_size"] == units.parse_count(spelling)
