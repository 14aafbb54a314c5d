"""Run a module as ``__main__`` with tracemalloc on, and answer "how many bytes are allocated now?" on request:
bench_alloc's counted (not sampled) memory per connection, which RSS only estimates.

``python -m tests.bench.traced -m MODULE ARGS...`` with ``TRACED_ASK`` and ``TRACED_REPLY`` naming two FIFOs: each
line written to the first gets, after a full collection, the traced total in bytes on the second. A thread
answers, so it works whatever the served module does with signals and whichever loop it runs.
"""

from __future__ import annotations

import gc
import os
import runpy
import sys
import threading
import tracemalloc


def answer(ask: str, reply: str) -> None:
    while True:
        with open(ask, encoding="ascii") as requests:  # blocks until the driver opens its end
            for _ in requests:
                gc.collect()
                with open(reply, "w", encoding="ascii") as out:
                    out.write(f"{tracemalloc.get_traced_memory()[0]}\n")


def main() -> None:
    ask, reply = os.environ["TRACED_ASK"], os.environ["TRACED_REPLY"]
    tracemalloc.start()
    threading.Thread(target=answer, args=(ask, reply), name="traced", daemon=True).start()
    del sys.argv[:2]  # this file and -m: the served module's argv[0] is set by run_module
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
