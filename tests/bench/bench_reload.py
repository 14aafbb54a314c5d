"""Reload benchmark: a real ``supervisor run`` of 200 servers on 127.0.0.1, one of which changes per reload.

Measures (1) SIGHUP -> the ``reload (SIGHUP) applied`` log line, and SIGHUP -> a fresh connection to the changed
server answered by its new generation, while one client keeps talking to an unchanged server (its errors and
whether its generation ever changes); (2) refused / failed requests on the changed server under load (4 threads,
a connection per request) during 20 reloads. Prints medians and maxima. Every loop is bounded in count and time.

    .venv/bin/python -m tests.bench.bench_reload [--quick] [--rounds N] [--servers N]
"""

from __future__ import annotations

import argparse
import hashlib
import signal
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tests.proc import SupervisorProcess


def config(servers: int, v: int) -> str:
    rows = [f'  - {{name: s{i}, handler: "tests.apps:lines", port: 0}}' for i in range(servers - 1)]
    rows.append(f'  - {{name: edit, handler: "tests.apps:journaled", port: 0, options: {{v: {v}}}}}')
    return "metrics: {enabled: false}\nconsole: {enabled: false}\nservers:\n" + "\n".join(rows) + "\n"


def who(port: int, sock: socket.socket | None = None) -> str:
    s = sock or socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        s.sendall(b"who\n")
        answer = b""
        while not answer.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                raise ConnectionError(f"EOF after {answer!r}")
            answer += chunk
        return answer.decode().strip()
    finally:
        if sock is None:
            s.close()


def reload(sp: SupervisorProcess, path: Path, servers: int, v: int) -> float:
    path.write_text(config(servers, v))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    sent = time.monotonic()
    sp.signal(signal.SIGHUP)
    sp.wait_for(rf"reload \(SIGHUP\) applied in \d+ ms; config sha256 {digest}", timeout=30)
    return time.monotonic() - sent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=0)
    parser.add_argument("--servers", type=int, default=200)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 10)
    loaded_reloads = 5 if args.quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(config(args.servers, 0))
        with SupervisorProcess(path) as sp:
            ports = sp.ready(timeout=60)
            edit, keep = ports["edit"], ports["s0"]
            kept = socket.create_connection(("127.0.0.1", keep), timeout=5)
            stop, errors, generations, talks = threading.Event(), [], set(), [0]

            def talk() -> None:  # one connection to an unchanged server, all the time
                deadline = time.monotonic() + 300
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        generations.add(who(0, kept))
                        talks[0] += 1
                    except OSError as exc:
                        errors.append(repr(exc))
                        return

            talker = threading.Thread(target=talk, daemon=True)
            talker.start()
            applied, served = [], []
            v = 0
            for _ in range(rounds):
                v += 1
                sent = time.monotonic()
                applied.append(reload(sp, path, args.servers, v))
                deadline = time.monotonic() + 10
                while who(edit) != f"edit#{v + 1}" and time.monotonic() < deadline:
                    pass
                served.append(time.monotonic() - sent)
            answered, problems = [0], []
            lock = threading.Lock()

            def load() -> None:  # a new connection per request to the changed server
                deadline = time.monotonic() + 300
                while not stop.is_set() and time.monotonic() < deadline:
                    try:
                        ok, why = who(edit).startswith("edit#"), "wrong answer"
                    except OSError as exc:
                        ok, why = False, repr(exc)
                    with lock:
                        answered[0] += ok
                        if not ok:
                            problems.append(why)

            loaders = [threading.Thread(target=load, daemon=True) for _ in range(4)]
            for t in loaders:
                t.start()
            for _ in range(loaded_reloads):
                v += 1
                reload(sp, path, args.servers, v)
                mark, deadline = answered[0], time.monotonic() + 10
                while answered[0] < mark + 50 and time.monotonic() < deadline:
                    time.sleep(0.001)
            stop.set()
            for t in (*loaders, talker):
                t.join(10)
            kept.close()
            sp.signal(signal.SIGTERM)
            code = sp.wait(60)
    refused = sum("Refused" in p for p in problems)
    ms = [x * 1000 for x in applied]
    ms_served = [x * 1000 for x in served]
    print(f"{args.servers} servers, 1 changed per reload, {rounds} rounds")
    print(f"{'measure':<52} {'median':>8} {'max':>8} {'target':>8}")
    print(f"{'SIGHUP -> reload applied (log line), ms':<52} {statistics.median(ms):8.1f} {max(ms):8.1f} {'<= 100':>8}")
    print(
        f"{'SIGHUP -> new generation answers, ms':<52} {statistics.median(ms_served):8.1f} {max(ms_served):8.1f} "
        f"{'<= 100':>8}"
    )
    unchanged = f"{talks[0]} answers on one connection, {len(errors)} errors, generations {sorted(generations)}"
    print(f"unchanged server: {unchanged}")
    print(
        f"changed server under load, {loaded_reloads} reloads: {answered[0]} answered, {refused} refused, "
        f"{len(problems) - refused} failed (target 0/0)"
    )
    print(f"exit code {code}")


if __name__ == "__main__":
    main()
