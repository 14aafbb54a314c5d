"""One supervisor per config: ``run`` holds an exclusive lock on a pidfile (the config's own, under the runtime
directory, unless ``--pidfile`` names one) for its whole life. The lock is the kernel's (``flock``): a supervisor
that was killed leaves no stale lock, only a file the next one takes over."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from supervisor.errors import SupervisorError


class AlreadyRunningError(SupervisorError):
    pass


def default_path(config: str) -> Path:
    """``$RUNTIME_DIRECTORY`` (systemd), ``$XDG_RUNTIME_DIR`` or the temp dir, named for the resolved config."""
    resolved = str(Path(config).resolve())
    base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return Path(base.split(":")[0]) / f"supervisor-{Path(resolved).stem}-{digest}.pid"


@contextlib.contextmanager
def held(path: Path, config: str, *, required: bool) -> Iterator[str]:
    """Hold ``path``'s lock with this pid in it, or raise AlreadyRunningError naming the pid that holds it.
    Yields the line to log. A default path that cannot be opened (a read-only root filesystem in a container,
    where one process per container makes the lock moot) is a warning; a ``--pidfile`` given is ``required``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        why = f"cannot open the pidfile {path}: {exc.strerror}"
        if required:
            raise AlreadyRunningError(f"{why}; pick another with --pidfile") from None
        yield f"no pidfile ({why}): a second supervisor of this config is not prevented; give --pidfile PATH"
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise AlreadyRunningError(
                f"another supervisor (pid {pid}) is running {config} (pidfile {path}); stop it with "
                f"`supervisor ctl -c {config} shutdown` or `kill -TERM {pid}`, or give this one another --pidfile"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield f"pidfile {path} (pid {os.getpid()})"
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still locked: a successor creates a fresh file
    finally:
        os.close(fd)
