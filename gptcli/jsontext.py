"""Decoding a user's JSON: the one place that turns every way ``json.loads`` can fail into one
error naming the file (and the line, for JSON Lines).

Besides malformed text, valid-looking JSON can break Python's decoder or what comes after it:
nesting thousands of levels deep (``RecursionError``), an integer of more than 4,300 digits
(``ValueError``, CPython's limit on int-from-string conversion), and a ``\\ud800`` escape, which
decodes to a lone surrogate that no UTF-8 encoder (tiktoken, a hash, a file write) accepts later.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gptcli.errors import DataError, GptCliError

BOM = "\ufeff"
# A \uD800-\uDFFF escape: only these can put a surrogate in the decoded strings.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def strip_bom(text: str) -> str:
    """``text`` without a leading UTF-8 byte order mark (Windows tools write one)."""
    return text[1:] if text.startswith(BOM) else text


def loads(text: str | bytes, where: str, *, error: type[GptCliError] = DataError, what: str = "not valid JSON") -> Any:
    """``json.loads(text)``; any failure is one ``error`` "``where``: ``what`` (reason)"."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        place = f"line {e.lineno}, column {e.colno}" if "\n" in e.doc.rstrip() else f"column {e.colno}"
        raise error(f"{where}: {what} ({e.msg} at {place})") from None
    except RecursionError:
        raise error(f"{where}: {what} (nested too deeply for Python's JSON decoder)") from None
    except UnicodeDecodeError as e:
        raise error(f"{where}: {what} (not UTF-8 at byte {e.start})") from None
    except ValueError as e:  # an integer literal of more than sys.get_int_max_str_digits() digits
        reason = "an integer of too many digits" if "digits" in str(e) else str(e)
        raise error(f"{where}: {what} ({reason})") from None
    raw = text if isinstance(text, str) else text.decode("utf-8", errors="replace")
    if _SURROGATE_ESCAPE.search(raw) and _has_surrogate(obj):
        raise error(f"{where}: {what} (a \\ud800-\\udfff escape without its pair is not a Unicode character)")
    return obj


def _has_surrogate(obj: Any) -> bool:
    """Whether any string (or key) in the decoded ``obj`` holds a lone surrogate (no recursion:
    the decoder already bounded the depth, but a list of lists is walked with a stack anyway)."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if _SURROGATE.search(x):
                return True
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False
