"""Helpers for tests that drive real things: free loopback ports, external tools, configs on disk.

Subprocesses of ``supervisor run`` are started with ``tests.proc.SupervisorProcess``; in-process
supervisors with views with ``tests.helpers.served``.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor.access import port_is_free

DEADLINE = 10.0
PICK_FROM = 21000  # above the demo's fixed ports (8080, 8888, 9100, 20101-20103)

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_tool(name: str) -> str:
    """The tool's path. Locally a missing tool skips the test (with the reason); in CI (CI=true) it fails it."""
    # tools installed by pip (kubernetes-validate) sit next to the interpreter, maybe not on PATH
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{name} is not installed (.ci/run installs every tool the suite needs)"
        if IN_CI:
            pytest.fail(f"{message}; CI must run this test", pytrace=False)
        pytest.skip(message)
    return path


def free_port() -> int:
    """A free port on 127.0.0.1 for a process we configure by number (Prometheus, a refused ctl)."""
    return free_port_run(1)


def free_port_run(count: int) -> int:
    """A port P with P .. P+count-1 all free on 127.0.0.1 (the console takes port and port + 1, + 2 for a REPL).

    aiomonitor cannot bind port 0 and report it, so tests pick its ports. They are picked below the
    kernel's ephemeral range: a busy machine (a benchmark opening thousands of connections) fills that
    range with client sockets, which a later listen would collide with. The window between this probe
    and the bind is milliseconds, and the console refuses a taken port with a clear error.
    """
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(PICK_FROM, low - count)
        if all(port_is_free("127.0.0.1", base + i) for i in range(count)):
            return base
    raise AssertionError(f"no run of {count} free ports found in {PICK_FROM}-{low - 1}")


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def write_config(tmp_path: Path, text: str, name: str = "supervisor.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def unblock_fifo_later(fifo: Path, after: float = 2.0) -> None:
    """If a reader of ``fifo`` does block (the bug), open it for writing after ``after`` s so the test fails
    instead of hanging. Runs on a daemon thread of its own."""

    def unblock() -> None:
        time.sleep(after)
        with contextlib.suppress(OSError):  # ENXIO: no reader is waiting, as it should be
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock, daemon=True).start()
