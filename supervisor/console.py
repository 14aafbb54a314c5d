"""The operator console: aiomonitor on ``console.host:port`` (telnet; its web UI on port + 1) for the supervisor's
whole life, with the supervisor's commands (console_commands.py) and our session loop (console_session.py).

aiomonitor runs its telnet server on a thread with its own event loop; the commands there read the tree only
through ``tree.TreeView`` and post control requests to the supervisor's loop.

Resource handling: the monitor is started and closed from short-lived daemon threads with a deadline. aiomonitor
blocks forever in ``start()`` if its UI thread dies before it is ready, and ``close()`` joins a thread that can wait
on an open REPL session (platform-facts P3, P4): neither may hang the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp.web_exceptions import NotAppKeyWarning

from supervisor import console_commands  # noqa: F401 - registers the commands on aiomonitor's click group
from supervisor.access import check_ports_free, console_ports, is_loopback, port_is_free, remote_console_problem
from supervisor.console_session import session
from supervisor.errors import ConfigError, ViewError
from supervisor.plan import Plan
from supervisor.tree import TreeView

with warnings.catch_warnings():  # as in console_commands.py (P10)
    warnings.filterwarnings("ignore", "Importing 'parser.split_arg_string' is deprecated", DeprecationWarning)
    import aiomonitor
    import aiomonitor.monitor

LOGGER = logging.getLogger("supervisor")

START_TIMEOUT = 5.0  # aiomonitor starts in 1-2 ms; past this its UI thread died (P4, P11)
CLOSE_TIMEOUT = 5.0  # it closes in 1-10 ms; past this a session is stuck and the thread is left behind
ANSWER_GRACE = 1.0  # before closing: for the answers being written (`ctl shutdown`'s own, a status); normally <1 ms
PROMPT = "supervisor >>> "
QUIET_LOGGERS = ("prompt_toolkit.contrib.telnet", "aiomonitor.monitor")


class SupervisorMonitor(aiomonitor.Monitor):  # type: ignore[misc]  # aiomonitor is untyped
    """The monitor, knowing which supervisor its commands act on (several may run in one test process) and
    whether its Python REPL is on (``help`` and ``console`` say so)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tree: TreeView, *, repl: bool, **kwargs: Any) -> None:
        super().__init__(loop, console_enabled=repl, **kwargs)
        self.tree = tree
        self.repl = repl
        self.prompt = PROMPT
        self._answering: set[asyncio.Task[None]] = set()  # on the UI loop only

    def answer(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a command's answer as a task on the UI loop (from a command, on that loop): the session waits for
        it before the next prompt, and the close for it before the connections go (:meth:`answered`)."""
        task = self._ui_loop.create_task(coro)
        self._termui_tasks.add(task)  # aiomonitor's record: what the session waits for, what close() cancels
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def answered(self, timeout: float) -> None:
        """Wait, from the supervisor's loop, until the answers under way are written, at most ``timeout``.

        Without it a ``ctl shutdown`` could get no reply: its request stops the supervisor, whose shutdown can take
        1 ms, and close() cancels the answer's task on the UI thread before it has written the reply (seen in CI:
        the client read a closed connection and exited 1 while the supervisor exited 0).
        """

        async def settle() -> None:  # on the UI loop, which owns the set
            if self._answering:
                await asyncio.wait(set(self._answering), timeout=timeout)

        if not self._answering:  # read from this thread: at worst stale by one answer that has just ended
            return
        waiting = settle()
        try:
            done = asyncio.run_coroutine_threadsafe(waiting, self._ui_loop)
        except RuntimeError:  # the UI loop is closed: nothing is being written
            waiting.close()
            return
        with contextlib.suppress(TimeoutError):  # a stuck UI thread: close() handles that one
            await asyncio.wait_for(asyncio.wrap_future(done), timeout)


# aiomonitor 0.7.1 starts each telnet session with its module-level `interact` (no hook on the Monitor): ours
# runs our sessions, any other Monitor in the process keeps aiomonitor's.
_AIOMONITOR_INTERACT = aiomonitor.monitor.interact


def _interact(monitor: Any, connection: Any) -> Awaitable[None]:
    if isinstance(monitor, SupervisorMonitor):
        return session(monitor, connection)
    return _AIOMONITOR_INTERACT(monitor, connection)  # type: ignore[no-any-return]  # untyped


aiomonitor.monitor.interact = _interact


# -- the view -----------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def console_view(plan: Plan, supervisor: TreeView) -> AsyncIterator[SupervisorMonitor]:
    """The view ``app.run_plan`` enters: the console for the supervisor's whole life."""
    spec = plan.console
    if (problem := remote_console_problem(spec)) is not None:  # the CLI reports it with its line, before all this
        raise ConfigError([f"{plan.source}: console.host: {problem}"])
    if spec.allow_remote and not is_loopback(spec.host):
        LOGGER.warning(
            "console on %s:%d accepts remote connections (console.allow_remote): anyone who can reach it can stop "
            "servers, and its web UI on port %d can cancel tasks; there is no authentication",
            spec.host, spec.port, spec.port + 1,
        )  # fmt: skip
    check_ports_free(spec.host, console_ports(spec), "console")
    loop = asyncio.get_running_loop()
    monitor = SupervisorMonitor(
        loop,
        supervisor,
        host=spec.host,
        termui_port=spec.port,
        webui_port=spec.port + 1,
        console_port=spec.port + 2,  # bound only while a REPL session is open
        repl=spec.repl,
        hook_task_factory=False,  # breaks every create_task under uvloop on 3.13 (P12)
        locals={"__name__": "__console__", "supervisor": supervisor, "snapshot": supervisor.snapshot},
    )
    # the web UI triggers aiohttp's NotAppKeyWarning on its thread; with -W error it would kill the thread (P11)
    warnings.filterwarnings("ignore", category=NotAppKeyWarning)
    for noisy in QUIET_LOGGERS:  # five INFO lines per telnet session; our own lines say what matters
        if logging.getLogger(noisy).level == logging.NOTSET:
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if not await _in_thread(monitor.start, START_TIMEOUT, "console-start"):
        raise ViewError(
            f"console: aiomonitor did not start within {START_TIMEOUT:g}s on {spec.host}:{spec.port}; "
            "rerun with --log-level DEBUG to see why, or set console.enabled: false to run without it"
        )
    monitor._event_loop_thread_id = threading.get_ident()  # `stacktrace` shows this thread, not the starter
    try:
        if port_is_free(spec.host, spec.port):  # aiomonitor skips a telnet port it cannot bind, silently (P4)
            raise ViewError(
                f"console: the telnet server did not start on {spec.host}:{spec.port}; "
                "another process may have taken the port just now: pick another console.port"
            )
        LOGGER.info(
            "console listening on telnet://%s:%d (web UI http://%s:%d)", spec.host, spec.port, spec.host, spec.port + 1
        )
        yield monitor
    finally:
        await monitor.answered(ANSWER_GRACE)
        if await _in_thread(monitor.close, CLOSE_TIMEOUT, "console-close"):
            LOGGER.info("console closed")
        else:
            LOGGER.warning("console did not close within %.1fs; leaving its thread behind", CLOSE_TIMEOUT)


async def _in_thread(fn: Callable[[], None], timeout: float, name: str) -> bool:
    """Run ``fn`` on a daemon thread; False if it is still running after ``timeout`` (it is then abandoned).

    Not ``asyncio.to_thread``: a stuck call would then hold up the loop's executor shutdown at exit.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(exc: BaseException | None) -> None:
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

    def target() -> None:
        error: BaseException | None = None
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the loop, which raises it
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop closed while we were stuck: nobody waits any more
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout)
    except TimeoutError:
        return False
    return True
