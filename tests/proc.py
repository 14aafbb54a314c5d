"""Run ``supervisor run CONFIG`` as a real subprocess and follow its log lines with deadlines."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import TracebackType

REPO = Path(__file__).resolve().parent.parent
# The commands started during the current test (conftest checks them against the e2e marker).
STARTED: list[str] = []
LISTENING = re.compile(r"server (\S+) listening on (\S+):(\d+) \(generation (\d+)\)")


class SupervisorProcess:
    """``with SupervisorProcess(config) as sp:`` starts it; leaving the block kills what is still running."""

    def __init__(
        self, config: Path | str, *args: str, env: dict[str, str] | None = None, open_files: int | None = None
    ) -> None:
        self.cmd = [sys.executable, "-m", "supervisor", "run", str(config), *args]
        self.open_files = open_files  # RLIMIT_NOFILE (soft and hard) for the child
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", **(env or {})}
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> SupervisorProcess:
        STARTED.append(" ".join(self.cmd[2:]))
        self.proc = subprocess.Popen(
            self.cmd, cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, preexec_fn=self._limit if self.open_files else None,
        )  # fmt: skip
        threading.Thread(target=self._follow, daemon=True).start()
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        with self._cond:  # the reader thread closes the pipe at EOF
            self._cond.wait_for(lambda: self.lines[-1:] == ["<EOF>"], timeout=10)
        if et is not None:  # show what the supervisor said next to the failure
            sys.stderr.write("---- supervisor output ----\n" + self.output + "\n")

    def _limit(self) -> None:  # in the child, before exec
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    def _follow(self) -> None:
        assert self.proc is not None
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        self.proc.stdout.close()
        with self._cond:
            self.lines.append("<EOF>")
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(line for line in self.lines if line != "<EOF>")

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """The first log line matching ``pattern``; fails at the deadline or when the process ends first."""
        regex = re.compile(pattern)
        with self._cond:
            seen = 0
            while True:
                for line in self.lines[seen:]:
                    if m := regex.search(line):
                        return m
                    if line == "<EOF>":
                        raise AssertionError(f"exited before {pattern!r}:\n{self.output_unlocked()}")
                seen = len(self.lines)
                if not self._cond.wait(timeout):
                    raise AssertionError(f"no line matching {pattern!r} within {timeout}s:\n{self.output_unlocked()}")

    def output_unlocked(self) -> str:
        return "\n".join(self.lines)

    def ready(self, timeout: float = 20.0) -> dict[str, int]:
        """Wait for the ready line; return each server's bound port."""
        self.wait_for(r"supervisor ready: ", timeout)
        with self._cond:
            return {m[1]: int(m[3]) for line in self.lines if (m := LISTENING.search(line))}

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        rc = self.proc.wait(timeout)
        with self._cond:  # the reader thread drains the pipe up to EOF
            self._cond.wait_for(lambda: self.lines[-1:] == ["<EOF>"], timeout=5)
        return rc
