"""Read a YAML config into frozen dataclasses, with every problem located at file:line: key.path.

No asyncio and no imports of runtime modules: this is the first step of config -> plan -> running tree.
Handlers are only checked for shape here (``module:attr``); importing them is the plan's job. The file is
bounded before it is parsed (a regular file, 1 MiB), and the YAML while it is (yamlbounds.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path
from typing import Final

import yaml
from yaml.nodes import Node

from supervisor.config_reader import ConfigReader
from supervisor.errors import ConfigError
from supervisor.spec import (
    HANDLER_ERROR_POLICIES,
    LOOPS,
    RESTART_TYPES,
    STRATEGIES,
    BackoffSpec,
    Config,
    ConsoleSpec,
    Location,
    MetricsSpec,
    ServerSpec,
    SupervisorSpec,
)
from supervisor.values import clip, parse_duration, parse_size
from supervisor.yamlbounds import BoundedLoader, Refused, compose_fast

__all__ = [
    "HANDLER_ERROR_POLICIES", "LOOPS", "RESTART_TYPES", "STRATEGIES", "BackoffSpec", "Config", "ConsoleSpec",
    "Location", "MetricsSpec", "ServerSpec", "SupervisorSpec", "load_config", "parse_config", "parse_duration",
    "parse_size", "read_config",
]  # fmt: skip

MAX_FILE_BYTES: Final = 1 << 20


_KINDS: Final = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device"}


def load_config(path: str | Path) -> Config:
    """Read and validate ``path``. Raises ConfigError listing every problem found."""
    text, digest = read_config(path)
    return dataclasses.replace(parse_config(text, Path(path)), digest=digest)


def read_config(path: str | Path) -> tuple[str, str]:
    """The config file's text (newlines normalized) and its bytes' sha256. Raises ConfigError if unreadable."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a named pipe must not wait for a writer (it is refused just below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            mode = os.fstat(fd).st_mode
            if not stat.S_ISREG(mode):  # /dev/zero never ends, a pipe may never be written
                kind = _KINDS.get(stat.S_IFMT(mode), "not a regular file")
                raise ConfigError([f"{path}: cannot read the config file: it is {kind}; name a regular file"])
            data = b""
            while len(data) <= MAX_FILE_BYTES and (chunk := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
                data += chunk
        finally:
            os.close(fd)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file: {exc.strerror or exc}; check the path"]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError([f"{path}: the config file is larger than 1 MiB; check the path (a config is a few KiB)"])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: the config file is not UTF-8 text ({exc.reason})"]) from None
    return text.replace("\r\n", "\n").replace("\r", "\n"), hashlib.sha256(data).hexdigest()


def parse_config(text: str, path: Path) -> Config:
    root = compose_fast(text)
    if root is None:  # not plainly fine (or empty): the bounded pure-Python composer says exactly why
        root = _compose_bounded(text, path)
    reader = ConfigReader(str(path))
    config = reader.config(root, path)
    if reader.problems or config is None:
        raise ConfigError(reader.problems or [f"{path}:1: the config is empty"], partial=config)
    return config


def _compose_bounded(text: str, path: Path) -> Node | None:
    loader: BoundedLoader | None = None
    try:
        loader = BoundedLoader(text)  # checks every character first: may raise ReaderError
        return loader.get_single_node()
    except Refused as exc:
        raise ConfigError([f"{path}:{exc.line}: {exc.args[0]}"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        reason = clip(str(exc.problem or exc.context), 200)
        raise ConfigError([f"{path}:{line}: invalid YAML: {reason}; fix the syntax"]) from None
    except yaml.reader.ReaderError as exc:  # a control character: located by offset, not by a mark
        line = text.count("\n", 0, exc.position) + 1
        reason = str(exc).splitlines()[0]
        raise ConfigError([f"{path}:{line}: invalid YAML: {reason}; remove that character"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}:1: invalid YAML: {clip(str(exc), 200)}"]) from None
    except RecursionError:  # MAX_DEPTH keeps PyYAML well inside the stack; this only if the caller's is nearly full
        line = loader.get_mark().line + 1 if loader else 1
        raise ConfigError([f"{path}:{line}: nested too deeply for the YAML reader; flatten this value"]) from None
    finally:
        if loader is not None:
            loader.dispose()
