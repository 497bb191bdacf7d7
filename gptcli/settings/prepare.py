"""``gptcli prepare``'s settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gptcli import settings as shared
from gptcli.settings import flag, invalid
from gptcli.units import count_flag


def parse_count(value: str | int, flag_name: str) -> int:
    """A token count as every flag reads one (``gptcli.units``: 100M, 2B, 1e6, 1_000)."""
    return count_flag(value, flag_name)


@dataclass
class PrepareSettings:
    """``gptcli prepare``: inputs tokenized once into llm.c-format shards. ``shard_size`` and
    ``val_tokens`` are read into token counts (100M: 100,000,000)."""

    inputs: list[str] = flag(
        argument=True,
        metavar="INPUT",
        help="Files (.txt .md .jsonl .json .csv .tsv .parquet, optionally .gz .bz2 .xz .zst), globs, "
        "directories of .txt files, or - for standard input.",
        show_default=False,
    )
    out: Path = flag(flags=("--out", "-o"), metavar="DIR", help="Directory to write the shards to.")
    format: str = shared.format_flag()
    text_field: str | None = shared.text_field_flag(
        "The JSON field or CSV/TSV/Parquet column holding the text [default: text]."
    )
    shard_size: int | str = flag("100M", type=str, metavar="N", help="Tokens per shard (100M, 2B accepted).")
    val_ratio: float = flag(0.1, metavar="R", help="Fraction of the tokens, at the end, written as val shards.")
    val_tokens: int | str | None = flag(
        None, type=str, metavar="N", help="Exactly this many val tokens instead of --val-ratio."
    )
    encoding_errors: str = shared.encoding_errors_flag()
    threads: int | None = shared.threads_flag("Tokenizer threads [default: one per core].")
    json_out: bool = shared.json_flag()
    quiet: bool = shared.quiet_flag("No progress output on stderr.")

    def __post_init__(self) -> None:
        shared.check_flags(self)  # --format, --text-field, --encoding-errors, --threads
        self.inputs = [str(i) for i in self.inputs]
        size = parse_count(self.shard_size, "--shard-size")
        if size < 1:
            raise invalid("--shard-size", f"{self.shard_size!r} (must be at least 1)")
        self.shard_size = size
        if not 0.0 <= self.val_ratio < 1.0:
            raise invalid("--val-ratio", f"{self.val_ratio} (must be at least 0 and below 1)")
        if self.val_tokens is not None:
            self.val_tokens = parse_count(self.val_tokens, "--val-tokens")
