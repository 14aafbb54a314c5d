"""Smoke tests of the benchmarks of issue #7 (tests/bench/): each measure runs, small, and measures what it
claims. The figures are the benchmarks' own (``python -m tests.bench``), never asserted here as speeds."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest

from tests.bench import bench_alloc, bench_hotpath, bench_workers
from tests.bench.bench_hotpath import Contender
from tests.e2e_util import require_tool

pytestmark = pytest.mark.e2e


def test_bench_hotpath_measures_throughput_cpu_and_rss_of_ours_and_the_bare_server(tmp_path: Path) -> None:
    require_tool("wrk")
    args = argparse.Namespace(python=sys.executable, duration=1, idle=200)
    contenders = [Contender(who, "stream", "asyncio") for who in ("bare", "ours")]
    got = {c.label: [bench_hotpath.one(c, args, tmp_path, None)] for c in contenders}
    for label, [figures] in got.items():
        assert figures["errors"] == 0, (label, figures)
        assert min(figures["rps"], figures["cpu_us"], figures["rss_kb"]) > 0, (label, figures)
    ours = bench_hotpath.table(got, contenders)[3]
    assert re.match(r"\| ours stream asyncio \| [\d,]+ \| [\d.]+ \([\d.]+-[\d.]+\) \|", ours), ours  # a ratio per round


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_bench_alloc_counts_what_a_protocol_connection_costs_us_beyond_a_bare_one(tmp_path: Path, loop: str) -> None:
    """Counted, not sampled: ours is within a few percent of the bare server (the live list's 4 slots and the
    accepted-at float: 56 B of ~1.3-1.6 kB, 1.04x in the benchmark's 2,000). With 500 connections on a loaded
    machine one run in a few came out at 1.17x (how the selector's tables grow with the batches accepted), so the
    bound is 1.3x: a task per connection (~1 kB, the stream kind's) would be far above it."""
    args = argparse.Namespace(python=sys.executable, idle=500, warm=50)
    bare, ours = (bench_alloc.one(Contender(w, "protocol", loop), args, tmp_path) for w in ("bare", "ours"))
    assert 500 < bare < 4000, bare
    assert ours / bare < 1.3, (ours, bare)


def test_bench_workers_kill_and_rolling_reload_under_load_refuse_nothing(tmp_path: Path) -> None:
    kill = bench_workers.kill_under_load(tmp_path)
    assert (kill["refused"], kill["ok"] > 0, kill["replaced_ms"] > 0) == (0, True, True), kill
    roll = bench_workers.reload_under_load(tmp_path)
    assert (roll["refused"], roll["failed"], roll["ok"] > 0) == (0, 0, True), roll
