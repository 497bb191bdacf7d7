"""One grammar for counts ("50M" tokens), durations ("90m") and intervals (steps, tokens or time),
as every flag and config key spells them: ``train``'s budgets and intervals, ``finetune``'s, and
``prepare``'s ``--shard-size``/``--val-tokens`` all parse here, so one spelling means one thing.

- A count: an integer with an optional multiplier, k/K thousand, M million, B/G billion, T
  trillion; ``1_000``, ``1.5M`` and ``1e6`` too. A lower-case ``m`` is minutes, never millions, so
  ``30m`` cannot mean two things: as a count it is refused with a hint to write ``30M``.
- A duration: seconds as a plain number, or parts with units s/m/h/d (``90s``, ``90m``, ``1h30m``).
- An interval: a plain integer is steps (``100``, ``100 steps``), a count with a multiplier or
  ``tok``/``tokens`` is tokens (``50M``, ``200k tokens``), a duration with a unit is time (``30m``).

The parsers raise ValueError saying what is wrong; a caller that knows the flag or key turns it
into its own error (``count_flag`` does it for a plain flag). Nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from typing import Any

from gptcli.errors import UsageError

MULTIPLIERS = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
INT64_MAX = 2**63 - 1
_NUMBER = r"(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_COUNT_RE = re.compile(rf"({_NUMBER})\s*([kKMBGT]?)")
_DURATION_PART = re.compile(rf"({_NUMBER})\s*([smhd])")
COUNT_EXAMPLES = "a count such as 5000, 50M or 2B"


def _count_hint(text: str) -> str:
    """What a near-miss count probably meant: ``30m`` is 30M, ``2b`` is 2B."""
    m = re.fullmatch(rf"({_NUMBER})\s*([mbgt])", text)
    if m is None:
        return ""
    meant = m.group(1) + m.group(2).upper()
    if m.group(2) == "m":
        return f" (m is minutes; M is millions): write {meant} for {m.group(1)} million"
    return f": write {meant}"


def parse_count(value: Any) -> int:
    """An integer count from an int or a string such as "5000", "10k", "50M", "2B", "1.5M", "1e6"
    or "1_000"; ValueError (saying what is wrong) otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _fits_int64(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {COUNT_EXAMPLES}")
    text = value.strip()
    m = _COUNT_RE.fullmatch(text)
    if m is None:
        raise ValueError(f"expected {COUNT_EXAMPLES}{_count_hint(text)}")
    from decimal import Decimal, InvalidOperation

    try:
        number = Decimal(m.group(1).replace("_", "")) * MULTIPLIERS[m.group(2)]
    except InvalidOperation:
        raise ValueError(f"expected {COUNT_EXAMPLES}") from None
    if number != number.to_integral_value():
        raise ValueError("not a whole number")
    return _fits_int64(int(number))


def _fits_int64(n: int) -> int:
    """A count a checkpoint and torch can hold: a 64-bit integer."""
    if n > INT64_MAX:
        raise ValueError(f"too large (at most {INT64_MAX})")
    return n


def parse_duration(value: Any) -> float:
    """Seconds from a number (seconds) or a string such as "90", "90s", "30m", "2h", "1h30m" or
    "1.5d"; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip().replace(" ", "")
        try:
            seconds = float(text.replace("_", "")) if re.fullmatch(_NUMBER, text) else math.nan
        except ValueError:
            seconds = math.nan
        if math.isnan(seconds):
            parts = _DURATION_PART.findall(text)
            if not parts or "".join(n + u for n, u in parts) != text:
                raise ValueError("expected a duration such as 90m, 2h, 1h30m or seconds")
            seconds = sum(float(n.replace("_", "")) * SECONDS[u] for n, u in parts)
    else:
        raise ValueError("expected a duration such as 90m, 2h, 1h30m or seconds")
    if not math.isfinite(seconds):
        raise ValueError("expected a finite duration")
    return seconds


def parse_interval(value: Any) -> tuple[str, float]:
    """("steps", N), ("tokens", N) or ("seconds", S) from an ``--eval-freq``/``--save-every`` value:
    a plain integer is steps ("100 steps" too), a count with a multiplier or "tok"/"tokens" is
    tokens ("50M", "200k tokens"), a duration with a unit is time ("30m", "1h")."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "steps", value
    if not isinstance(value, str):
        raise ValueError("expected N steps, N tokens (50M) or a duration (30m)")
    text = value.strip()
    word = re.fullmatch(r"(.*?)\s*(steps?|tok|tokens?)", text)
    if word is not None:
        count = parse_count(word.group(1))
        return ("steps" if word.group(2).startswith("step") else "tokens"), count
    if re.fullmatch(r"\d[\d_]*", text):
        return "steps", int(text.replace("_", ""))
    if text and text[-1] in SECONDS:
        return "seconds", parse_duration(text)
    try:
        return "tokens", parse_count(text)
    except ValueError:
        raise ValueError("expected N steps, N tokens (50M) or a duration (30m)") from None


def describe_interval(value: Any) -> str:
    """An ``--eval-freq``/``--save-every`` value in words, saying the unit it was read in:
    "1,000 tokens" for 1k, "1,000 steps" for 1000, "30m of wall time" for 30m."""
    unit, amount = parse_interval(value)
    if unit == "seconds":
        return f"{str(value).strip()} of wall time"
    n = int(amount)
    return f"{n:,} {unit[:-1] if n == 1 else unit}"


def count_flag(value: Any, flag: str) -> int:
    """``parse_count`` for a flag or key named ``flag``: a UsageError such as
    ``invalid --shard-size: '30m' (expected a count ...)`` instead of a ValueError."""
    try:
        return parse_count(value)
    except ValueError as e:
        raise UsageError(f"invalid {flag}: {value!r} ({e})") from None
