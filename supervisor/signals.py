"""Signals only record what was asked; the supervisor's loop does the work.

SIGTERM/SIGINT: ordered shutdown (a second one skips the drain wait). SIGHUP: logged, reserved for reload.
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
def handle_signals(loop: asyncio.AbstractEventLoop, on_stop: Callable[[str], None]) -> Iterator[None]:
    """Install loop signal handlers for the block; remove them after (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    installed: list[signal.Signals] = []

    def hup() -> None:
        LOGGER.warning("SIGHUP received: config reload is not supported yet; ignoring")

    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_stop, sig.name)
            installed.append(sig)
        loop.add_signal_handler(signal.SIGHUP, hup)
        installed.append(signal.SIGHUP)
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
