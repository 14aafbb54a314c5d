"""One supervisor per config: a second ``supervisor run`` of the same config exits 2 at once, naming the pid
that runs it (even with metrics off, where nothing else would stop it retrying its ports); the pidfile goes
away at exit, and one left by a killed supervisor is taken over."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from supervisor import pidfile
from tests.e2e_util import write_config
from tests.proc import REPO, SupervisorProcess

CONFIG = """
metrics: {enabled: false}
console: {enabled: false}
servers:
  - {name: only, handler: "supervisor.handlers.echo:handle", port: 0}
"""


@pytest.mark.e2e
def test_a_second_run_of_the_same_config_exits_2_naming_the_first(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    lock = pidfile.default_path(str(config))
    with SupervisorProcess(config) as first:
        first.ready()
        assert first.proc is not None
        assert lock.read_text() == f"{first.proc.pid}\n"
        started = time.monotonic()
        second = subprocess.run(
            [sys.executable, "-m", "supervisor", "run", str(config)], cwd=REPO, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert second.returncode == 2
        assert time.monotonic() - started < 10
        assert f"another supervisor (pid {first.proc.pid}) is running {config}" in second.stderr
        assert f"supervisor ctl -c {config} shutdown" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.proc.poll() is None  # the first one is untouched
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
    assert not lock.exists()


@pytest.mark.e2e
def test_a_killed_supervisors_pidfile_is_taken_over(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    lock = tmp_path / "run" / "sup.pid"
    lock.parent.mkdir()
    with SupervisorProcess(config, "--pidfile", str(lock)) as first:
        first.ready()
        assert first.proc is not None
        first.proc.kill()  # SIGKILL: no cleanup; the kernel drops the lock, the file stays
        first.proc.wait(10)
    assert lock.exists()
    with SupervisorProcess(config, "--pidfile", str(lock)) as second:
        second.ready()
        assert second.proc is not None
        assert lock.read_text() == f"{second.proc.pid}\n"
        second.signal(signal.SIGTERM)
        assert second.wait() == 0
    assert not lock.exists()


@pytest.mark.e2e
def test_an_unusable_pidfile_is_a_clear_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG)
    with SupervisorProcess(config, "--pidfile", str(tmp_path / "missing" / "x.pid")) as sp:
        assert sp.wait() == 2
    assert f"supervisor: cannot open the pidfile {tmp_path}/missing/x.pid: No such file or directory" in sp.output
    assert "Traceback" not in sp.output


@pytest.mark.e2e
def test_an_unwritable_default_location_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    """A container with a read-only root filesystem: the default pidfile cannot be made; run anyway."""
    config = write_config(tmp_path, CONFIG)
    with SupervisorProcess(config, env={"RUNTIME_DIRECTORY": str(tmp_path / "absent")}) as sp:
        sp.ready()
        sp.signal(signal.SIGTERM)
        assert sp.wait() == 0
    assert "WARNING supervisor: no pidfile (cannot open the pidfile " in sp.output
    assert "a second supervisor of this config is not prevented" in sp.output


@pytest.mark.e2e
def test_a_symlinked_pidfile_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    """Found in review: the default name is predictable, so a symlink planted there must not be followed."""
    config = write_config(tmp_path, CONFIG)
    victim = tmp_path / "important"
    victim.write_text("important data\n")
    (tmp_path / "x.pid").symlink_to(victim)
    with SupervisorProcess(config, "--pidfile", str(tmp_path / "x.pid")) as sp:
        assert sp.wait() == 2
    assert f"supervisor: cannot open the pidfile {tmp_path}/x.pid: " in sp.output
    assert victim.read_text() == "important data\n"
