"""Lint and strict typing are part of the suite, so the README's one test command checks them too."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.proc import REPO


@pytest.mark.parametrize(
    "args",
    [
        ["ruff", "check", "supervisor", "tests", "examples"],
        ["ruff", "format", "--check", "supervisor", "tests", "examples"],
        ["mypy"],  # strict, the files listed in pyproject.toml
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
@pytest.mark.timeout(300)
def test_tool_passes(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout + result.stderr
