"""Reading the user's finetuning files: instruct's records, classify's table, a ``--template``,
``gptcli classify --file``. Each failure is one plain message naming the file ("is a directory,
not a file", "no such file"), never a Python exception's name; a JSON list or JSON Lines of
records is read here for both kinds.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from gptcli import jsontext
from gptcli.fsutil import read_file

__all__ = ["json_records", "read_file", "table_rows"]


def json_records(path: str | Path) -> list[Any]:
    """The records of a JSON file: one JSON list (the book's ``instruction-data.json``, a pandas
    ``to_json(orient="records")``) or JSON Lines, one record a line. Records are returned as they
    are; the caller checks their fields."""
    p = Path(path)
    text = read_file(p, newline="")
    if text.lstrip().startswith("["):
        return jsontext.loads(text, str(p))  # a list: the text starts with "["
    records = []
    # JSON Lines end at "\n" only: str.splitlines() would also cut at "\x0c", "\x1c" or U+2028,
    # which JSON allows raw inside a string (json.dumps(ensure_ascii=False) writes them so).
    for n, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        if line.strip():
            records.append(jsontext.loads(line, f"{p}: line {n}"))
    return records


def table_rows(text: str, path: str | Path, *, delimiter: str) -> tuple[list[str], list[dict[str, str | None]]]:
    """(column names, rows as dicts) of CSV/TSV text, parsed as one text with the csv module's
    rules (a quoted field may hold newlines, form feeds, U+2028...); an unbalanced quote is a
    DataError naming the line where it opened (``formats.csv_rows``). A short row's missing
    columns are None, as in ``csv.DictReader``."""
    from gptcli.formats import csv_rows

    rows = csv_rows(io.StringIO(text, newline=""), str(path), delimiter)
    header = next(rows, (0, []))[1]
    out = []
    for _, row in rows:
        out.append({name: (row[i] if i < len(row) else None) for i, name in enumerate(header)})
    return header, out
