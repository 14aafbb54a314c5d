"""``supervisor ctl``: run one console command from a shell, through the telnet console.

Why the console and not an HTTP control endpoint: the console is already *the* control surface, with one
security rule (loopback unless ``console.allow_remote``), while the metrics port stays read-only and may be
bound wide for Prometheus. A browser can also POST to a loopback HTTP port from any web page; it cannot
speak telnet's negotiation, and aiomonitor shows nothing before it (platform-facts P5).

The client is a raw socket: it offers a terminal type and size, answers the cursor-position queries
(``ESC[6n``) that would otherwise cost a second each, waits for the prompt, and sends the hidden
``ctl NONCE ACTION [NAME]`` command. The console answers with one line, ``ctl-result NONCE {json}``, so
nothing depends on how prompt_toolkit draws the screen.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import socket
import time
from types import TracebackType

from supervisor.commands import Result
from supervisor.errors import SupervisorError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 20101
DEFAULT_TIMEOUT = 20.0  # a restart may wait up to the supervisor's CONTROL_TIMEOUT (10 s)
RELOAD_TIMEOUT = 125.0  # a reload may take the console's RELOAD_TIMEOUT (120 s): new generations start in it
GOODBYE_TIMEOUT = 2.0
PROMPT = "supervisor >>> "  # console.PROMPT, repeated so `ctl` does not import aiomonitor
CTL_RESULT = "ctl-result"

IAC, SE, SB, WILL = 255, 240, 250, 251
TTYPE, NAWS = 24, 31
# WILL TTYPE, TTYPE IS "xterm", WILL NAWS, NAWS 500x50 (wide, so the typed command never wraps)
NEGOTIATION = (
    bytes([IAC, WILL, TTYPE, IAC, SB, TTYPE, 0]) + b"xterm" + bytes([IAC, SE])
    + bytes([IAC, WILL, NAWS, IAC, SB, NAWS, 0x01, 0xF4, 0x00, 0x32, IAC, SE])
)  # fmt: skip
CPR_QUERY = b"\x1b[6n"
CPR_ANSWER = b"\x1b[1;1R"
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[()][0-9A-Za-z]|[@-Z\\^_=>])")


class ConsoleUnavailable(SupervisorError):  # noqa: N818 - reads as the condition the operator sees
    """No console answered at the address (not running, console disabled, another service, timed out)."""


Reply = Result  # what one request answered (ok, text)


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


class ConsoleClient:
    """A minimal telnet client for the supervisor console. Blocking; every wait has a deadline.

    ``with ConsoleClient(host, port) as c: c.wait_prompt(); c.send_line("status"); c.wait_for(r"supervisor: ")``
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.host = host
        self.port = port
        self.deadline = time.monotonic() + timeout
        self.data = bytearray()  # everything received, telnet commands removed
        self.closed = False
        self._sock: socket.socket | None = None
        self._pending = b""  # an incomplete telnet command left at the end of the last recv
        self._cpr_scanned = 0

    def __enter__(self) -> ConsoleClient:
        self.connect()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if et is None:
            self.leave()
        self.close()

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self) -> None:
        try:
            self._sock = socket.create_connection((self.host, self.port), timeout=self._remaining())
            self._sock.sendall(NEGOTIATION)
        except OSError as exc:
            raise ConsoleUnavailable(
                f"cannot connect to the console at {self.where}: {exc.strerror or exc}; "
                "is `supervisor run` running, with console.enabled, on this host and port?"
            ) from None

    def leave(self) -> None:
        """Type ``exit`` and wait (briefly) for the console to hang up, so it never writes to a closed socket."""
        if self._sock is None or self.closed:
            return
        self.deadline = min(self.deadline, time.monotonic() + GOODBYE_TIMEOUT)
        try:
            self.send_line("exit")
            self.wait_closed()
        except ConsoleUnavailable:
            pass  # it is going away either way
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def text(self, start: int = 0) -> str:
        """What the console printed from byte offset ``start``, with terminal escapes removed."""
        return strip_ansi(self.data[start:].decode("utf-8", "replace"))

    def send_line(self, line: str) -> int:
        """Type ``line`` and Enter (``\\r`` alone: an empty line would repeat the last command). Returns the
        offset in :attr:`data` from which the answer will be."""
        if "\r" in line or "\n" in line:
            raise ValueError("one line at a time")
        mark = len(self.data)
        self._send(line.encode() + b"\r")
        return mark

    def wait_for(self, pattern: str | re.Pattern[str], start: int = 0) -> re.Match[str]:
        """Receive until ``pattern`` matches the text from offset ``start``; ConsoleUnavailable at the deadline."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        while True:
            if m := regex.search(self.text(start)):
                return m
            if self.closed:
                raise ConsoleUnavailable(f"the console at {self.where} closed the connection")
            self._receive()

    def wait_prompt(self, start: int = 0) -> None:
        try:
            self.wait_for(re.escape(PROMPT), start)
        except ConsoleUnavailable as exc:
            tail = self.text(start)[-200:].strip()
            seen = f"; it sent: {tail!r}" if tail else ""
            raise ConsoleUnavailable(f"{exc} (no supervisor console prompt){seen}") from None

    def wait_closed(self) -> None:
        while not self.closed:
            self._receive()

    def request(self, action: str, name: str | None = None, *, as_json: bool = False) -> Reply:
        """Run one action through the hidden ``ctl`` command and return the console's framed answer."""
        nonce = secrets.token_hex(8)
        words = ["ctl", nonce, action, *([name] if name else []), *(["--json"] if as_json else [])]
        start = self.send_line(shlex.join(words))
        m = self.wait_for(rf"{CTL_RESULT} {nonce} (\{{[^\r\n]*\}})\r?\n", start)
        body = json.loads(m.group(1))
        return Reply(bool(body["ok"]), str(body["text"]), bool(body.get("invalid", False)))

    # -- socket ---------------------------------------------------------------------------------------------------

    def _remaining(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise ConsoleUnavailable(f"no answer from the console at {self.where} in time")
        return left

    def _send(self, data: bytes) -> None:
        assert self._sock is not None, "connect() first"
        try:
            self._sock.settimeout(self._remaining())
            self._sock.sendall(data)
        except OSError as exc:
            raise ConsoleUnavailable(f"lost the console at {self.where}: {exc.strerror or exc}") from None

    def _receive(self) -> None:
        assert self._sock is not None, "connect() first"
        try:
            self._sock.settimeout(self._remaining())
            chunk = self._sock.recv(65536)
        except TimeoutError:
            raise ConsoleUnavailable(f"no answer from the console at {self.where} in time") from None
        except OSError as exc:
            raise ConsoleUnavailable(f"lost the console at {self.where}: {exc.strerror or exc}") from None
        if not chunk:
            self.closed = True
            return
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        """Keep the payload; drop telnet commands (the options we offered up front are all it needs)."""
        buf = self._pending + chunk
        self._pending = b""
        i = 0
        while i < len(buf):
            j = buf.find(IAC, i)
            if j < 0:
                self.data += buf[i:]
                break
            self.data += buf[i:j]
            if j + 1 >= len(buf):
                self._pending = buf[j:]
                break
            cmd = buf[j + 1]
            if cmd == IAC:  # an escaped 0xff data byte
                self.data.append(IAC)
                i = j + 2
            elif cmd == SB:
                end = buf.find(bytes([IAC, SE]), j + 2)
                if end < 0:
                    self._pending = buf[j:]
                    break
                i = end + 2
            elif 251 <= cmd <= 254:  # WILL, WONT, DO, DONT + option
                if j + 2 >= len(buf):
                    self._pending = buf[j:]
                    break
                i = j + 3
            else:
                i = j + 2
        self._answer_cpr()

    def _answer_cpr(self) -> None:
        # prompt_toolkit asks where the cursor is; unanswered, each command waits ~1 s for the reply (P5)
        start = max(0, self._cpr_scanned - len(CPR_QUERY) + 1)
        count = self.data.count(CPR_QUERY, start)
        self._cpr_scanned = len(self.data)
        if count:
            self._send(CPR_ANSWER * count)


def run(
    action: str,
    name: str | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    as_json: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> Reply:
    """Connect, run one action, leave. Raises ConsoleUnavailable when no console answers in time."""
    with ConsoleClient(host, port, timeout) as client:
        client.wait_prompt()
        return client.request(action, name, as_json=as_json)
