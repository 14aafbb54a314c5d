"""Signals only record what was asked; the supervisor's loop does the work.

SIGTERM/SIGINT: ordered shutdown (a second one cuts every wait). SIGHUP: reload the config file (reload.py).
SIGUSR1: the status table is written to the log (the same as ``supervisor ctl status``). SIGUSR2: ignored
(logged), rather than Python's default of ending the process without a drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator

LOGGER = logging.getLogger("supervisor")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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

    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_stop, sig.name)
            installed.append(sig)
        for sig, handler in ((signal.SIGHUP, on_reload), (signal.SIGUSR1, usr1), (signal.SIGUSR2, usr2)):
            loop.add_signal_handler(sig, handler)
            installed.append(sig)
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
