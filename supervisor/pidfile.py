"""One supervisor per config: ``run`` holds an exclusive lock on a pidfile (the config's own, under the runtime
directory, unless ``--pidfile`` names one) for its whole life. The lock is the kernel's (``flock``): a supervisor
that was killed leaves no stale lock, only a file the next one takes over."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from supervisor.errors import SupervisorError


class AlreadyRunningError(SupervisorError):
    pass


class Held(NamedTuple):
    locked: bool  # False: running without a pidfile (its default place could not be written)
    line: str


def default_path(config: str) -> Path:
    """``$RUNTIME_DIRECTORY`` (systemd), ``$XDG_RUNTIME_DIR`` or the temp dir, named for the resolved config."""
    resolved = str(Path(config).resolve())
    base = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    digest = hashlib.sha256(resolved.encode()).hexdigest()[:12]
    return Path(base.split(":")[0]) / f"supervisor-{Path(resolved).stem}-{digest}.pid"


@contextlib.contextmanager
def held(path: Path, config: str, *, required: bool) -> Iterator[Held]:
    """Hold ``path``'s lock with this pid in it, or raise AlreadyRunningError naming the pid that holds it.
    Yields what to log. A default path that cannot be opened (a read-only root filesystem in a container,
    where one process per container makes the lock moot) is a warning; a ``--pidfile`` given is ``required``."""
    try:
        fd = _locked(path)
    except OSError as exc:
        why = f"cannot open the pidfile {path}: {exc.strerror}"
        if required:
            raise AlreadyRunningError(f"{why}; pick another with --pidfile") from None
        yield Held(False, f"no pidfile ({why}): a second supervisor of this config is not prevented; give --pidfile")
        return
    if fd < 0:
        pid = _holder(path)
        raise AlreadyRunningError(
            f"another supervisor (pid {pid}) is running {config} (pidfile {path}); stop it with "
            f"`supervisor ctl -c {config} shutdown` or `kill -TERM {pid}`, or give this one another --pidfile"
        )
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield Held(True, f"pidfile {path} (pid {os.getpid()})")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)  # while still locked: a successor creates a fresh file
    finally:
        os.close(fd)


def _locked(path: Path) -> int:
    """The pidfile, opened (never through a symlink: the default name is predictable) and locked: its fd, or
    -1 when another process holds the lock. Re-checked after the lock: a predecessor that unlinked the file
    while we waited leaves us holding an inode no path names, and a third start would then lock a new one."""
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            os.close(fd)
            raise OSError(errno.EPERM, "not a regular file owned by this user")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return -1
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            now = None
        if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
            return fd
        os.close(fd)  # unlinked (or replaced) under us: take the file the path names now
    raise OSError(
        errno.EAGAIN, "the pidfile keeps being replaced; give --pidfile PATH in a directory only this user can write"
    )


def _holder(path: Path) -> str:
    """The pid written in the pidfile another process holds (``?`` if it cannot be read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return "?"
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    finally:
        os.close(fd)
    return text if text.isdigit() else "?"
