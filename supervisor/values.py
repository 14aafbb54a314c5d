"""One config value at a time: the checkers (durations, sizes, choices, names, hosts, handler paths), how a
value is shown in a message -- clipped, whatever it is -- and the cap on how many problems are listed."""

from __future__ import annotations

import difflib
import re
import reprlib
from collections.abc import Callable
from typing import Final

from yaml.nodes import MappingNode, ScalarNode, SequenceNode

from supervisor import cpus

SHOWN: Final = 80  # characters of a user's value echoed in a message
MAX_PROBLEMS: Final = 100  # lines reported; the rest are counted

# every pattern is used with fullmatch: "$" would also accept a trailing newline
_DURATION_RE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*")
# ``250ms`` is 250 / 1000 (not 250 * 0.001, which is off by one ulp for many values)
_DURATION_DIVISORS: Final = {"ms": 1000.0}
_DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_DOTTED: Final = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_HANDLER_RE: Final = re.compile(f"{_DOTTED}:{_DOTTED}")


class Unreadable:
    """Stands for a value YAML could compose but not construct (bad tag, impossible date, ...)."""

    def __init__(self, shown: str, reason: str) -> None:
        self.shown = clip(shown)
        self.reason = clip(reason)

    def __repr__(self) -> str:
        return f"{self.shown}, which YAML cannot read ({self.reason})"


def parse_duration(value: object) -> float:
    """``1.5`` / ``250ms`` / ``10s`` / ``2m`` / ``1h`` -> seconds. Raises ValueError with the reason."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms, 10s, 2m or a number of seconds")
    try:
        if isinstance(value, int | float):
            seconds = float(value)
        elif isinstance(value, str) and (m := _DURATION_RE.fullmatch(value)):
            unit = m.group(2)
            if unit in _DURATION_DIVISORS:
                seconds = float(m.group(1)) / _DURATION_DIVISORS[unit]
            else:
                seconds = float(m.group(1)) * _DURATION_UNITS[unit]
        else:
            raise ValueError("expected a duration like 250ms, 10s, 2m or a number of seconds")
    except OverflowError:  # an integer too large for a float
        raise ValueError("expected a finite duration") from None
    if seconds < 0:
        raise ValueError("expected a duration >= 0")
    if seconds != seconds or seconds == float("inf"):
        raise ValueError("expected a finite duration")
    return seconds


def capped(lines: list[str]) -> list[str]:
    """At most MAX_PROBLEMS lines (each ``file:line: ...``), the last one counting the lines left out."""
    if len(lines) <= MAX_PROBLEMS:
        return lines
    first_left_out = _LOCATED.match(lines[MAX_PROBLEMS - 1])
    where = first_left_out.group(1) if first_left_out else lines[0].partition(": ")[0]
    return [*lines[: MAX_PROBLEMS - 1], f"{where}: and {len(lines) - MAX_PROBLEMS + 1} more; fix these and check again"]


_LOCATED: Final = re.compile(r"(.*?:\d+): ")


class _Brief(reprlib.Repr):
    """repr() bounded whatever it is given (10,000 aliases of one long string; an integer of 20,000 hex digits,
    which int's repr refuses)."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict = 4, 12, 12
        self.maxstring = self.maxlong = self.maxother = SHOWN + 20

    def repr_str(self, x: str, level: int) -> str:
        return repr(x) if len(x) <= SHOWN else repr(x[:SHOWN]) + "…"

    def repr_int(self, x: int, level: int) -> str:
        return f"an integer of {x.bit_length()} bits" if x.bit_length() > 10_000 else repr(x)


_BRIEF: Final = _Brief()


def clip(text: str, limit: int = SHOWN) -> str:
    """User text safe to echo in a one-line message: control characters escaped, at most ``limit`` characters."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def show(value: object) -> str:
    """A value as the user wrote it in YAML terms (``null``, ``true``, ``'http'``, a list), at most ~80 chars."""
    if isinstance(value, SequenceNode):
        return "a list"
    if isinstance(value, MappingNode):
        return "a mapping"
    if isinstance(value, Unreadable):
        return repr(value)  # its parts are clipped already
    if isinstance(value, ScalarNode):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return clip(_BRIEF.repr(value))


def as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    raise ValueError("expected true or false")


def int_in(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise ValueError(f"expected an integer {lo}-{hi}")

    return check


MAX_WORKERS = 256


def workers(value: object) -> int:
    """``workers: N`` (1-256) or ``auto``: one per CPU this process may run on, at most its cgroup CPU quota."""
    if value == "auto":
        return cpus.auto()[0]
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_WORKERS:
        return value
    raise ValueError(f"expected an integer 1-{MAX_WORKERS} or 'auto' (one worker process per CPU)")


def float_in(lo: float, hi: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, int | float) and not isinstance(value, bool) and lo <= value <= hi:
            return float(value)
        raise ValueError(f"expected a number from {lo:g} to {hi:g}")

    return check


def duration(*, positive: bool = False) -> Callable[[object], float]:
    def check(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError("expected a duration > 0")
        return seconds

    return check


_SIZE_RE: Final = re.compile(r"\s*(\d{1,30})\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*")
_SIZE_UNITS: Final = {
    None: 1,
    "B": 1,
    "KB": 1000,
    "KiB": 1024,
    "MB": 10**6,
    "MiB": 1 << 20,
    "GB": 10**9,
    "GiB": 1 << 30,
}


def parse_size(value: object) -> int:
    """``65536`` / ``64KiB`` / ``8MiB`` / ``1MB`` -> bytes. Raises ValueError with the reason."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (m := _SIZE_RE.fullmatch(value)):
        return int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    raise ValueError("expected a size like 65536, 64KiB or 8MiB")


def size_in(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        size = parse_size(value)
        if not lo <= size <= hi and not (size == 0 and lo == 0):
            raise ValueError(f"expected a size from {lo} to {hi} bytes")
        return size

    return check


def choice(options: tuple[str, ...]) -> Callable[[object], str]:
    def check(value: object) -> str:
        if isinstance(value, str) and value in options:
            return value
        close = difflib.get_close_matches(str(value), options, n=1) if isinstance(value, str) else []
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise ValueError(f"expected one of {' | '.join(options)}{hint}")

    return check


def host(value: object) -> str:
    # resolving it is the plan's job; here: one printable word, at most a DNS name long
    if isinstance(value, str) and value and len(value) <= 253 and value.isprintable() and not _SPACE.search(value):
        return value
    raise ValueError("expected a host name or IP address such as 127.0.0.1")


_SPACE: Final = re.compile(r"\s")


def file_mode(value: object) -> int:
    """Permission bits, written in octal: ``0660`` (YAML reads it as octal already), ``"660"`` or ``"0o660"``."""
    if isinstance(value, str) and re.fullmatch(r"(0o?)?[0-7]{3,4}", value):
        value = int(value.removeprefix("0o"), 8)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0o7777:
        return value
    raise ValueError('expected permission bits in octal, such as "0660"')


def socket_path(value: object) -> str:
    # a unix socket's address is at most 107 bytes on Linux (sun_path)
    if isinstance(value, str) and value and value.isprintable() and len(value.encode()) <= 107:
        return value
    raise ValueError("expected a unix socket path of at most 107 bytes, e.g. /run/app/app.sock")


def file_path(value: object) -> str:
    if isinstance(value, str) and value and value.isprintable() and len(value) <= 4096:
        return value
    raise ValueError("expected a file path (relative paths are read next to the config file)")


def name(value: object) -> str:
    if isinstance(value, str) and _NAME_RE.fullmatch(value):
        return value
    raise ValueError("expected a name of letters, digits, '_', '.', '-' (at most 63)")


def handler_path(value: object) -> str:
    if isinstance(value, str) and len(value) <= 200 and _HANDLER_RE.fullmatch(value):
        return value
    raise ValueError("expected 'module:attribute', e.g. supervisor.handlers.echo:handle")
