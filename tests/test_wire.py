"""How a worker's counters cross to its parent (wire.py): what the parent's /metrics and status are made of."""

from __future__ import annotations

import json
from collections import Counter

from supervisor.state import ServerStats
from supervisor.wire import add_stats, stats_from_wire, stats_to_wire


def _over_the_wire(stats: ServerStats) -> ServerStats:
    return stats_from_wire(json.loads(json.dumps(stats_to_wire(stats))))


def test_counters_sum_and_the_newest_handler_error_wins_whichever_worker_saw_it() -> None:
    w1, w2 = ServerStats(total=3, active=1), ServerStats(total=4, active=2)
    w1.handler_failed(ValueError("older"), now=10.0)
    w2.handler_failed(KeyError("newer"), now=12.5)
    w2.client_errors["reset"] += 2
    merged = ServerStats()
    for stats in (w2, w1):  # the order the parent reads them in does not matter
        add_stats(merged, _over_the_wire(stats))
    assert (merged.total, merged.active, merged.handler_errors) == (7, 3, 2)
    assert merged.client_errors == Counter(reset=2)
    assert (merged.last_handler_error, merged.last_handler_error_at) == ("KeyError: 'newer'", 12.5)


def test_a_dead_workers_totals_keep_counting_but_not_its_gauges() -> None:
    dead = ServerStats(total=5, active=4, parked=1)
    dead.handler_failed(RuntimeError("bug\n  on two lines"), now=1.0)
    totals = ServerStats()
    add_stats(totals, _over_the_wire(dead), gauges=False)
    assert (totals.total, totals.handler_errors, totals.active, totals.parked) == (5, 1, 0, 0)
    assert totals.last_handler_error == "RuntimeError: bug on two lines"  # one line, for a table cell
