"""Load shapes (Locust ``LoadTestShape``): offered load over time, bounded and scaled by env.

- ``LunchHour``: a steady lunch hour: ramp to the base users within a few seconds, hold.
- ``TenfoldSpike``: the base users, then 10x the base within 10 seconds, a short hold, back to
  the base within 10 seconds, the base again to the end.
- ``EnrolmentRush``: a program's opening minute: the whole crowd arrives within ~2 seconds
  and registers, signs in and enrols against the quota; after 60 % of the run it thins out to
  a fifth.
- ``PingSteady``: steady users without think time, for R_ping (``GET /healthz``).

Every shape stops by itself after ``GWALLET_LOAD_SECONDS`` (default 60) and is scaled by
``GWALLET_LOAD_USERS`` (the base users, default 50), so a CI smoke is seconds long. Which
users run is chosen on Locust's command line (``loadtests.run`` does it per scenario); a
shape only says how many.

This module imports Locust: import it only from a locustfile (never inside the service or the
pytest process: Locust monkey-patches with gevent on import).
"""

from __future__ import annotations

import os

from locust import LoadTestShape

USERS_ENV = "GWALLET_LOAD_USERS"
SECONDS_ENV = "GWALLET_LOAD_SECONDS"
SPIKE_FACTOR = 10
SPIKE_RAMP_SECONDS_MAX = 10.0  # "within 10 seconds, and back"


def _positive(name: str, default: float) -> float:
    value = float(os.environ.get(name, default))
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


class _Bounded(LoadTestShape):
    """A shape that ends after ``seconds`` and whose sizes are multiples of ``users``."""

    abstract = True

    def __init__(self) -> None:
        super().__init__()
        self.users = max(1, int(_positive(USERS_ENV, 50)))
        self.seconds = _positive(SECONDS_ENV, 60)

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.seconds:
            return None
        return self.at(elapsed)

    def at(self, elapsed: float) -> tuple[int, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def ramp_seconds(self) -> float:
        """How long the first users take to arrive: 10 % of the run, 5 seconds at most."""
        return max(0.5, min(5.0, self.seconds * 0.1))


class LunchHour(_Bounded):
    """Steady: the base users, reached within ``ramp_seconds``, until the end."""

    def at(self, elapsed: float) -> tuple[int, float]:
        return self.users, max(1.0, self.users / self.ramp_seconds())


class TenfoldSpike(_Bounded):
    """Base, then 10x within 10 s (at 30 % of the run), hold, back within 10 s, base."""

    def phases(self) -> tuple[float, float, float, float]:
        """(spike starts, peak reached, peak ends, back at base), in seconds into the run."""
        ramp = min(SPIKE_RAMP_SECONDS_MAX, self.seconds / 6)
        start = self.seconds * 0.3
        hold = min(10.0, self.seconds * 0.15)
        return start, start + ramp, start + ramp + hold, start + 2 * ramp + hold

    def at(self, elapsed: float) -> tuple[int, float]:
        start, peak, peak_end, _ = self.phases()
        ramp = peak - start
        peak_users = self.users * SPIKE_FACTOR
        rate = max(1.0, (peak_users - self.users) / ramp)  # reach the peak within `ramp`
        if elapsed < start:
            return self.users, max(1.0, self.users / self.ramp_seconds())
        if elapsed < peak_end:
            return peak_users, rate
        return self.users, rate  # users stop at the spawn rate too: back within `ramp`


class EnrolmentRush(_Bounded):
    """The opening minute: everybody at once, then a fifth of them."""

    def at(self, elapsed: float) -> tuple[int, float]:
        arrive = max(0.5, min(2.0, self.seconds * 0.1))
        if elapsed < self.seconds * 0.6:
            return self.users, max(1.0, self.users / arrive)
        return max(1, self.users // 5), max(1.0, self.users / arrive)


class PingSteady(_Bounded):
    """R_ping: steady users, all started within half a second."""

    def at(self, elapsed: float) -> tuple[int, float]:
        return self.users, max(1.0, self.users * 2.0)


SHAPES: dict[str, type[_Bounded]] = {
    "lunch": LunchHour,
    "spike": TenfoldSpike,
    "rush": EnrolmentRush,
    "ping": PingSteady,
}


def shape_for(scenario: str) -> type[_Bounded]:
    try:
        return SHAPES[scenario]
    except KeyError:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SHAPES)}") from None
