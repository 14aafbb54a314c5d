"""Shared fixtures. Every async test runs twice: on asyncio's loop and on uvloop.

The ``e2e`` marker means exactly "starts ``supervisor run`` as a subprocess": a test that passes with the
marker but started none, or started one without it, fails, so ``-m e2e`` / ``-m 'not e2e'`` select honestly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator
from typing import Any

import pytest
import uvloop

from tests import proc


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Callable[[], Any]]:
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    proc.STARTED.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    result = yield  # a failing test fails as it is; only a passing one is checked
    marked = item.get_closest_marker("e2e") is not None
    if marked and not proc.STARTED:
        raise AssertionError("marked e2e but started no `supervisor run`: remove the marker")
    if proc.STARTED and not marked:
        raise AssertionError(f"started `supervisor run` ({proc.STARTED[0]}) without the e2e marker: add it")
    return result
