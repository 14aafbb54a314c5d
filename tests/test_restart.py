"""Restart policy without sleeping: injected randomness for the backoff, an injected clock for the intensity."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.config import BackoffSpec
from supervisor.restart import Backoff, Intensity, should_restart

NO_JITTER: Callable[[], float] = lambda: 0.5  # noqa: E731 - 2 * 0.5 - 1 == 0: the delay is the base exactly


class FakeClock:
    """A clock that reads the last of the times it was set to; ``advance`` moves it on."""

    def __init__(self, start: float = 0.0) -> None:
        self.times: list[float] = [start]

    def __call__(self) -> float:
        return self.times[-1]

    def set(self, now: float) -> None:
        self.times.append(now)

    def advance(self, seconds: float) -> None:
        self.times.append(self.times[-1] + seconds)


def delays(backoff: Backoff, n: int, uptime: float = 0.0) -> list[float]:
    return [backoff.next_delay(uptime) for _ in range(n)]


# -- should_restart -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart_type", "failed", "expected"),
    [
        ("permanent", True, True),
        ("permanent", False, True),
        ("transient", True, True),
        ("transient", False, False),
        ("temporary", True, False),
        ("temporary", False, False),
    ],
)
def test_should_restart(restart_type: str, failed: bool, expected: bool) -> None:
    assert should_restart(restart_type, failed) is expected


# -- Backoff ---------------------------------------------------------------------------------------------------------


def test_schedule_doubles_up_to_max() -> None:
    backoff = Backoff(BackoffSpec(initial=1.0, factor=2.0, max=10.0, jitter=0.1, reset_after=60.0), rand=NO_JITTER)
    assert delays(backoff, 7) == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert backoff.failures == 7


def test_default_schedule() -> None:
    backoff = Backoff(BackoffSpec(), rand=NO_JITTER)
    assert delays(backoff, 10) == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0], rel=1e-12)


def test_other_factor() -> None:
    backoff = Backoff(BackoffSpec(initial=0.5, factor=3.0, max=100.0, jitter=0.0), rand=NO_JITTER)
    assert delays(backoff, 6) == [0.5, 1.5, 4.5, 13.5, 40.5, 100.0]


def test_factor_one_is_a_constant_delay() -> None:
    backoff = Backoff(BackoffSpec(initial=2.0, factor=1.0, max=30.0), rand=NO_JITTER)
    assert delays(backoff, 5) == [2.0] * 5


def test_initial_zero_restarts_at_once() -> None:
    backoff = Backoff(BackoffSpec(initial=0.0, factor=2.0, max=30.0, jitter=1.0), rand=lambda: 0.99)
    assert delays(backoff, 5) == [0.0] * 5
    assert backoff.failures == 5


def test_initial_equal_to_max() -> None:
    backoff = Backoff(BackoffSpec(initial=3.0, max=3.0), rand=NO_JITTER)
    assert delays(backoff, 3) == [3.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("r", "expected"),
    [(0.0, 3.0), (0.25, 3.5), (0.5, 4.0), (0.75, 4.5)],
)
def test_jitter_is_symmetric_around_the_base(r: float, expected: float) -> None:
    # base 4s (third failure), jitter 0.25: from 4 * 0.75 to 4 * 1.25
    backoff = Backoff(BackoffSpec(initial=1.0, factor=2.0, max=100.0, jitter=0.25), rand=lambda: r)
    assert delays(backoff, 3)[-1] == expected


def test_jitter_never_goes_beyond_max() -> None:
    spec = BackoffSpec(initial=1.0, factor=2.0, max=10.0, jitter=0.5)
    high = Backoff(spec, rand=lambda: 0.999)
    low = Backoff(spec, rand=lambda: 0.0)
    assert delays(high, 6)[-2:] == [10.0, 10.0]  # base 10 * 1.4995 is cut to max
    assert delays(low, 6)[-2:] == [5.0, 5.0]  # at max, jitter can only shorten the wait


def test_full_jitter_can_reach_zero() -> None:
    backoff = Backoff(BackoffSpec(initial=1.0, jitter=1.0), rand=lambda: 0.0)
    assert delays(backoff, 2) == [0.0, 0.0]


def test_jitter_bounds_with_real_randomness() -> None:
    spec = BackoffSpec(initial=1.0, factor=2.0, max=1000.0, jitter=0.2)
    for n in range(1, 9):
        base = 2.0 ** (n - 1)
        for _ in range(50):
            backoff = Backoff(spec)
            delay = delays(backoff, n)[-1]
            assert base * 0.8 <= delay <= base * 1.2


def test_reset_after_a_long_enough_uptime() -> None:
    backoff = Backoff(BackoffSpec(initial=1.0, factor=2.0, max=100.0, reset_after=10.0), rand=NO_JITTER)
    assert delays(backoff, 4, uptime=1.0) == [1.0, 2.0, 4.0, 8.0]
    assert backoff.next_delay(9.999) == 16.0  # not quite long enough: still consecutive
    assert backoff.next_delay(10.0) == 1.0  # up for reset_after: a fresh start
    assert backoff.failures == 1
    assert backoff.next_delay(0.0) == 2.0
    assert backoff.next_delay(3600.0) == 1.0


def test_reset_after_zero_always_starts_over() -> None:
    backoff = Backoff(BackoffSpec(initial=1.0, reset_after=0.0), rand=NO_JITTER)
    assert delays(backoff, 4) == [1.0, 1.0, 1.0, 1.0]


def test_thousands_of_consecutive_failures_stay_at_max() -> None:
    # factor ** failures used to overflow a float after 1024 doublings and raise OverflowError
    backoff = Backoff(BackoffSpec(initial=0.1, factor=2.0, max=30.0, jitter=0.1), rand=NO_JITTER)
    assert delays(backoff, 5000)[-3:] == [30.0, 30.0, 30.0]
    steep = Backoff(BackoffSpec(initial=0.001, factor=100.0, max=60.0), rand=lambda: 0.0)
    assert delays(steep, 500)[-1] == 54.0


spec_strategy = st.builds(
    BackoffSpec,
    initial=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
    factor=st.floats(min_value=1.0, max_value=100.0, allow_nan=False),
    max=st.floats(min_value=0.0, max_value=1e9, allow_nan=False),
    jitter=st.floats(min_value=0.0, max_value=1.0, allow_nan=False),
    reset_after=st.floats(min_value=0.0, max_value=1e6, allow_nan=False),
).filter(lambda s: s.max >= s.initial)


@given(
    spec=spec_strategy,
    rands=st.lists(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1, max_size=60),
    uptimes=st.lists(st.floats(min_value=0.0, max_value=1e7, allow_nan=False), min_size=1, max_size=60),
)
def test_delays_stay_between_zero_and_max(spec: BackoffSpec, rands: list[float], uptimes: list[float]) -> None:
    values = itertools.cycle(rands)
    backoff = Backoff(spec, rand=lambda: next(values))
    for uptime in uptimes * 20:
        delay = backoff.next_delay(uptime)
        assert 0.0 <= delay <= spec.max


@given(spec=spec_strategy, n=st.integers(min_value=1, max_value=2000))
def test_without_jitter_the_delay_never_shrinks(spec: BackoffSpec, n: int) -> None:
    backoff = Backoff(spec, rand=NO_JITTER)
    schedule = delays(backoff, n)
    assert schedule == sorted(schedule)
    assert all(0.0 <= d <= spec.max for d in schedule)


# -- Intensity -------------------------------------------------------------------------------------------------------


def test_fake_clock() -> None:
    clock = FakeClock(5.0)
    assert clock() == 5.0
    clock.advance(1.5)
    clock.set(10.0)
    assert clock() == 10.0
    assert clock.times == [5.0, 6.5, 10.0]


def test_gives_up_on_the_restart_past_the_limit() -> None:
    clock = FakeClock()
    intensity = Intensity(max_restarts=3, window=10.0, clock=clock)
    results = []
    for _ in range(4):
        results.append(intensity.record())
        clock.advance(1.0)
    assert results == [True, True, True, False]


def test_zero_restarts_allowed_gives_up_at_once() -> None:
    intensity = Intensity(max_restarts=0, window=60.0, clock=FakeClock())
    assert intensity.record() is False


def test_window_slides() -> None:
    clock = FakeClock()
    intensity = Intensity(max_restarts=2, window=10.0, clock=clock)
    assert intensity.record()  # t=0
    clock.set(5.0)
    assert intensity.record()  # t=5: 2 in the window
    assert intensity.recent == 2
    clock.set(10.0)
    assert intensity.recent == 1  # t=0 is exactly one window old: out
    assert intensity.record()  # t=10: {5, 10}
    clock.set(14.0)
    assert not intensity.record()  # t=14: {5, 10, 14} is 3 > 2
    clock.set(100.0)
    assert intensity.recent == 0
    assert intensity.record()  # long after: all forgotten
    assert intensity.recent == 1


def test_restarts_spaced_wider_than_the_window_never_give_up() -> None:
    clock = FakeClock()
    intensity = Intensity(max_restarts=1, window=5.0, clock=clock)
    for _ in range(100):
        assert intensity.record()
        clock.advance(5.0)


def test_a_burst_inside_the_window_gives_up() -> None:
    clock = FakeClock()
    intensity = Intensity(max_restarts=10, window=60.0, clock=clock)
    assert all(intensity.record() for _ in range(10))
    clock.advance(59.9)
    assert intensity.recent == 10
    assert intensity.record() is False


def test_recent_does_not_record() -> None:
    clock = FakeClock()
    intensity = Intensity(max_restarts=5, window=1.0, clock=clock)
    assert intensity.recent == 0
    intensity.record()
    assert intensity.recent == 1
    assert intensity.recent == 1


@given(
    max_restarts=st.integers(min_value=0, max_value=20),
    window=st.floats(min_value=0.1, max_value=100.0),
    gaps=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=100),
)
def test_intensity_matches_a_count_over_the_window(max_restarts: int, window: float, gaps: list[float]) -> None:
    clock = FakeClock()
    intensity = Intensity(max_restarts=max_restarts, window=window, clock=clock)
    history: list[float] = []
    for gap in gaps:
        clock.advance(gap)
        now = clock()
        history.append(now)
        in_window = [t for t in history if t > now - window]
        assert intensity.record() is (len(in_window) <= max_restarts)
        assert intensity.recent == len(in_window)
