"""Signals only record what was asked; the supervisor's loop does the work.

SIGTERM/SIGINT: ordered shutdown (a second one cuts every wait; in a worker, SIGINT is its parent's FLEET_STOP).
SIGHUP: reload the config file (reload.py). SIGUSR1: the status table is written to the log (the same as
``supervisor ctl status``). SIGUSR2: ignored (logged), rather than Python's default of ending the process without
a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

from supervisor import sockets

LOGGER = logging.getLogger("supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# What a parent sends every worker when the whole fleet stops; a worker retired by a rolling reload gets SIGTERM.
# The signal itself says which, so no message can arrive after it: a retiring worker spares the connections it
# just accepted (the others serve on), the fleet's last drain need not (sockets.served_after_drain).
FLEET_STOP = signal.SIGINT


@contextlib.contextmanager
def handle_signals(
    loop: asyncio.AbstractEventLoop,
    on_stop: Callable[[str], None],
    status: Callable[[], list[str]],
    on_reload: Callable[[], None] = lambda: None,
) -> Iterator[None]:
    """Install loop signal handlers for the block; remove them after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed: list[signal.Signals] = []

    def usr1() -> None:
        LOGGER.info("SIGUSR1 received: status follows\n%s", "\n".join(status()))

    def usr2() -> None:
        LOGGER.warning("SIGUSR2 received: it has no meaning here; ignoring")

    def stop(sig: signal.Signals) -> None:
        if sig is FLEET_STOP and sockets.shared():  # a worker, told by its parent: every worker stops
            sockets.fleet_stops()
            on_stop(f"{sig.name}: every worker stops")
        else:
            on_stop(sig.name)

    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop, sig)
            installed.append(sig)
        for sig, handler in ((signal.SIGHUP, on_reload), (signal.SIGUSR1, usr1), (signal.SIGUSR2, usr2)):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
