"""The telnet client behind ``supervisor ctl`` (what it prints and its exit codes: ctl_cli.py).

Why the console and not an HTTP control endpoint: the console is already *the* control surface, with one
security rule (loopback unless ``console.allow_remote``), while the metrics port stays read-only and may be
bound wide for Prometheus. A browser can POST to a loopback HTTP port from any web page; it cannot speak
telnet's negotiation, and aiomonitor shows nothing before it (platform-facts P5).

A raw socket: it offers a terminal type and size, answers the cursor-position queries (``ESC[6n``) that would
otherwise cost a second each, waits for the prompt and sends the hidden ``ctl NONCE [--json] [--width N] --
ACTION [NAME ...]``. The console answers one line, ``ctl-result NONCE {json}``: nothing depends on the screen.
"""

from __future__ import annotations

import json
import re
import secrets
import shlex
import socket
import time
from types import TracebackType

from supervisor.commands import ALL, RELOAD_TIMEOUT, Command, Result, answer_timeout
from supervisor.errors import SupervisorError
from supervisor.telnet import CPR_ANSWER, CPR_QUERY, NEGOTIATION, split_telnet, strip_ansi

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 20101
DEFAULT_TIMEOUT = 20.0  # connecting, and the commands answered at once (status, tail, shutdown)
ANSWER_SLACK = 5.0  # beyond what the console itself may wait (commands.answer_timeout): its answer's way back
GOODBYE_TIMEOUT = 2.0
PROMPT = "supervisor >>> "  # console.PROMPT, repeated so `ctl` does not import aiomonitor
CTL_RESULT = "ctl-result"


class ConsoleUnavailable(SupervisorError):  # noqa: N818 - reads as the condition the operator sees
    """No console answered at the address (not running, console disabled, another service, timed out)."""


Reply = Result  # what one request answered (ok, text)


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
        """Type ``line`` and Enter (``\\r`` alone: ``\\r\\n`` would be a second, empty line). Returns the
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

    def request(
        self, action: str, *names: str, as_json: bool = False, width: int = 0, lines: int | None = None,
        after: int = 0,
    ) -> Reply:  # fmt: skip
        """Run one action through the hidden ``ctl`` command and return the console's framed answer. ``width``:
        cut the status table's last errors to it (0: never). What was received before is forgotten (a long
        ``--watch`` would keep it all): offsets from earlier calls no longer apply."""
        self.forget()
        nonce = secrets.token_hex(8)
        options = [*(["--json"] if as_json else []), *(["--width", str(width)] if width else [])]
        options += [
            *(["--lines", str(lines)] if lines is not None else []),
            *(["--after", str(after)] if after else []),
        ]
        start = self.send_line(shlex.join(["ctl", nonce, *options, "--", action, *names]))
        m = self.wait_for(rf"{CTL_RESULT} {nonce} (\{{[^\r\n]*\}})\r?\n", start)
        body = json.loads(m.group(1))
        steps = tuple(Result(bool(s["ok"]), str(s["text"]), server=str(s["server"])) for s in body.get("steps", ()))
        invalid, cursor = bool(body.get("invalid", False)), int(body.get("cursor", 0))
        return Reply(bool(body["ok"]), str(body["text"]), invalid, steps=steps, cursor=cursor)

    def answer_time(self, action: str, names: tuple[str, ...]) -> float:
        """How long the console may take to answer ``action`` on ``names``: what it waits for each server
        (commands.answer_timeout), plus ANSWER_SLACK. That grows with the supervisor's workers (``restart`` runs in
        one worker after the other), which ctl cannot know in advance: for a server command it asks (a ``status
        --json`` first, answered from the snapshot at once). Asking is simpler than a console answering
        progressively, and the console keeps the one bound that matters: it always answers within its own wait."""
        command = Command(action)
        if command is Command.RELOAD:
            return RELOAD_TIMEOUT + ANSWER_SLACK
        if not command.needs_name:
            return DEFAULT_TIMEOUT
        status = self.request(Command.STATUS, as_json=True)
        tree = json.loads(status.text) if status.ok else {}
        servers = len(tree.get("servers", ())) if names == (ALL,) else len(names)
        return max(servers, 1) * answer_timeout(command, len(tree.get("workers", ()))) + ANSWER_SLACK

    def forget(self) -> None:
        keep = len(CPR_QUERY) - 1  # the start of a query split across two reads is still answered
        del self.data[:-keep]
        self._cpr_scanned = 0

    def pump(self, seconds: float) -> None:
        """Keep reading (and answering the console's queries) for ``seconds``, expecting nothing in particular."""
        until = time.monotonic() + seconds
        while not self.closed and time.monotonic() < until:
            self._receive(until)
        if self.closed:
            raise ConsoleUnavailable(f"the console at {self.where} closed the connection")

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

    def _receive(self, until: float | None = None) -> None:
        """Receive once; at the deadline ConsoleUnavailable, or quietly at ``until`` (a time.monotonic())."""
        assert self._sock is not None, "connect() first"
        try:
            self._sock.settimeout(self._remaining() if until is None else max(until - time.monotonic(), 0.001))
            chunk = self._sock.recv(65536)
        except TimeoutError:
            if until is not None:
                return
            raise ConsoleUnavailable(f"no answer from the console at {self.where} in time") from None
        except OSError as exc:
            raise ConsoleUnavailable(f"lost the console at {self.where}: {exc.strerror or exc}") from None
        if not chunk:
            self.closed = True
            return
        self._feed(chunk)

    def _feed(self, chunk: bytes) -> None:
        data, self._pending = split_telnet(self._pending + chunk)
        self.data += data
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
    *names: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    as_json: bool = False,
    timeout: float | None = None,
    width: int = 0,
) -> Reply:
    """Connect, run one action, leave. Raises ConsoleUnavailable when no console answers in time: within
    ``timeout`` seconds in all, or by default within DEFAULT_TIMEOUT to connect and then as long as the console may
    take to answer (:meth:`ConsoleClient.answer_time`)."""
    with ConsoleClient(host, port, DEFAULT_TIMEOUT if timeout is None else timeout) as client:
        client.wait_prompt()
        if timeout is None:
            client.deadline = time.monotonic() + client.answer_time(action, names)
        return client.request(action, *names, as_json=as_json, width=width)
