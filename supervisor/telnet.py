"""The telnet bytes ``ctl``'s client speaks: what it offers up front, the commands it drops from the stream (one
split across two reads is kept for the next), the terminal query it answers, and terminal escapes removed."""

from __future__ import annotations

import re

IAC, SE, SB, WILL = 255, 240, 250, 251
TTYPE, NAWS = 24, 31
# WILL TTYPE, TTYPE IS "xterm", WILL NAWS, NAWS 500x50 (wide, so the typed command never wraps)
NEGOTIATION = (
    bytes([IAC, WILL, TTYPE, IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, SE])
    + bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0x01, 0xF4, 0x00, 0x32, IAC, SE])
)  # fmt: skip
CPR_QUERY = b"\x1b[6n"  # prompt_toolkit asks where the cursor is: unanswered, each command waits ~1 s (P5)
CPR_ANSWER = b"\x1b[1;1R"
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|[@-Z\\^_=>])")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def split_telnet(buf: bytes) -> tuple[bytes, bytes]:
    """``(payload, pending)``: the data in ``buf`` without telnet commands (the options we offered up front are
    all the session needs), and an incomplete command at its end, to put before the next read."""
    data = bytearray()
    i = 0
    while i < len(buf):
        j = buf.find(IAC, i)
        if j < 0:
            data += buf[i:]
            break
        data += buf[i:j]
        if j + 1 >= len(buf):
            return bytes(data), buf[j:]
        cmd = buf[j + 1]
        if cmd == IAC:  # an escaped 0xff data byte
            data.append(IAC)
            i = j + 2
        elif cmd == SB:
            end = buf.find(bytes([IAC, SE]), j + 2)
            if end < 0:
                return bytes(data), buf[j:]
            i = end + 2
        elif 251 <= cmd <= 254:  # WILL, WONT, DO, DONT + option
            if j + 2 >= len(buf):
                return bytes(data), buf[j:]
            i = j + 3
        else:
            i = j + 2
    return bytes(data), b""
