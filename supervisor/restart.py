"""Pure restart policy: should a stopped server come back, after how long, and when to give up.

:func:`decide` is the whole rule for one ended generation; :class:`Backoff` and :class:`Intensity` keep the
history it needs. Clock and randomness are injected, so the whole schedule is tested without sleeping.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor.plan import ServerPlan
from supervisor.spec import BackoffSpec

Clock = Callable[[], float]


def should_restart(restart_type: str, failed: bool) -> bool:
    """Erlang/OTP meanings: permanent always, transient only after a failure, temporary never."""
    if restart_type == "permanent":
        return True
    if restart_type == "transient":
        return failed
    return False


@dataclass(slots=True)
class Backoff:
    """Exponential delay between *consecutive* failures of one server, with jitter.

    A server that stayed up for ``reset_after`` seconds starts again from ``initial``
    (systemd never resets its delay: systemd/systemd#43813).
    """

    spec: BackoffSpec
    rand: Callable[[], float] = random.random
    failures: int = 0  # consecutive failures so far

    def next_delay(self, uptime: float) -> float:
        """Record a failure after ``uptime`` seconds of running; return how long to wait before restarting."""
        if uptime >= self.spec.reset_after:
            self.failures = 0
        self.failures += 1
        s = self.spec
        if s.initial <= 0:
            return 0.0
        try:
            base = min(s.max, s.initial * s.factor ** (self.failures - 1))
        except OverflowError:  # factor ** failures outgrew a float long after reaching max (2.0 ** 1024)
            base = s.max
        # symmetric jitter spreads restarts of servers that fail together, never beyond max
        jittered = base * (1.0 + s.jitter * (2.0 * self.rand() - 1.0))
        return max(0.0, min(s.max, jittered))


@dataclass(slots=True)
class Intensity:
    """At most ``max_restarts`` restarts within any ``window`` seconds (Erlang's intensity/period)."""

    max_restarts: int
    window: float
    clock: Clock
    _times: deque[float] = field(default_factory=deque)

    def record(self) -> bool:
        """Record one restart. False means the limit is exceeded: give up."""
        now = self.clock()
        self._times.append(now)
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times) <= self.max_restarts

    @property
    def recent(self) -> int:
        now = self.clock()
        return sum(1 for t in self._times if t > now - self.window)


class Next(enum.Enum):
    RESTART = "restart"  # after Decision.delay
    STAY_STOPPED = "stay stopped"  # its restart type says so
    NEVER_STARTED = "never started"  # failed start_retries + 1 starts in a row without ever serving
    GIVE_UP = "give up"  # the restart intensity was exceeded


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    delay: float = 0.0


def decide(
    plan: ServerPlan,
    *,
    failed: bool,
    served: bool,
    start_failures: int,
    uptime: float,
    intensity: Intensity,
    backoff: Backoff,
) -> Decision:
    """What happens to a server whose generation ended: ``failed`` (else it stopped itself), ``served`` (it
    became ready at least once since it was last started by hand), after ``start_failures`` failed starts in a
    row and ``uptime`` seconds of serving. Records the restart in ``intensity`` and ``backoff`` when there is one.
    """
    if failed and not served and start_failures > plan.start_retries:
        return Decision(Next.NEVER_STARTED)
    if not should_restart(plan.restart, failed):
        return Decision(Next.STAY_STOPPED)
    if not intensity.record():
        return Decision(Next.GIVE_UP)
    return Decision(Next.RESTART, backoff.next_delay(uptime))
