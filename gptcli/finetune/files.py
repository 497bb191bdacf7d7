"""Reading the user's finetuning files: instruct's records, classify's table, a ``--template``,
``gptcli classify --file``. Each failure is one plain message naming the file ("is a directory,
not a file", "no such file"), never a Python exception's name; a JSON list or JSON Lines of
records is read here for both kinds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gptcli.errors import DataError, GptCliError, os_error_reason


def read_file(path: str | Path, *, error: type[GptCliError] = DataError, prefix: str = "") -> str:
    """A user's UTF-8 text file; ``error`` (with ``prefix``, such as "invalid --template: ")
    naming the file and what is wrong with it otherwise."""
    p = Path(path)
    try:
        if p.is_dir():
            raise error(f"{prefix}{p}: is a directory, not a file")
        return p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{prefix}{p}: no such file") from None
    except UnicodeDecodeError as e:
        raise error(f"{prefix}{p}: not UTF-8 text (byte offset {e.start})") from None
    except OSError as e:
        raise error(f"{prefix}{p}: cannot read it ({os_error_reason(e)})") from None


def json_records(path: str | Path) -> list[Any]:
    """The records of a JSON file: one JSON list (the book's ``instruction-data.json``, a pandas
    ``to_json(orient="records")``) or JSON Lines, one record a line. Records are returned as they
    are; the caller checks their fields."""
    p = Path(path)
    text = read_file(p)
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)  # a list: the text starts with "["
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: not valid JSON (line {e.lineno}: {e.msg})") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{p}: line {n} is not JSON ({e.msg})") from None
    return records
