"""A circuit breaker for one remote dependency of the registry: the PostgreSQL server or the S3 store.

Every call to either is bounded (server.registry.database, server.registry.blobs.s3), but a bound alone
lets a hung dependency cost every request its full timeout, and each of those requests holds a thread
and a connection meanwhile. So once a call finds the dependency not answering (a connect or a round trip
ran past its bound, the connection was refused or lost) the circuit opens: new calls fail at once with
`CircuitOpen`, which the owner turns into its "unavailable" error (503 with Retry-After).

While it is open, health probes still ask (the API server probes each dependency every second:
server.api.upkeep), and the first answer to any call closes the circuit, so a server is whole about a
second after the dependency comes back. A process that does not probe (a command-line tool) lets one
ordinary call through as a trial every `trial_every_s`; that call waits its bound as before the outage.

Only "no answer" opens the circuit: an error the dependency reported (a lock timeout, a 5xx, a missing
key) proves it is up. New connections are opened only while the circuit is closed, or by a probe or
trial that has not failed yet, so a call that found the dependency hung does not wait out a connect
timeout as well.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

TRIAL_EVERY_S = 5.0  # rare: in a server the health probe, every second, finds the return first


class CircuitOpen(Exception):
    """A call refused without trying: the dependency did not answer a recent call."""


class Circuit:
    def __init__(self, name: str, trial_every_s: float = TRIAL_EVERY_S) -> None:
        self.name = name
        self.trial_every_s = trial_every_s
        self._lock = threading.Lock()
        self._opened_at: float | None = None  # monotonic; None while closed
        self._reason = ""
        self._next_trial = 0.0
        self._trials: set[int] = set()  # threads asking the dependency while the circuit is open

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    @property
    def reason(self) -> str:
        """Why it opened: the first unanswered call's error."""
        return self._reason

    def admit(self, probe: bool = False) -> None:
        """Returns when a call may go to the dependency now; CircuitOpen when it is known not to answer
        and the call is neither a `probe` (a health check) nor due as a trial. Every admitted call ends
        with `release()`."""
        with self._lock:
            if self._opened_at is None:
                return
            now = time.monotonic()
            if not probe:
                if now < self._next_trial:
                    raise CircuitOpen(
                        f"{self.name} did not answer {now - self._opened_at:.1f} s ago ({self._reason}); "
                        "calls fail at once until it answers again"
                    )
                self._next_trial = now + self.trial_every_s
            self._trials.add(threading.get_ident())

    def release(self) -> None:
        with self._lock:
            self._trials.discard(threading.get_ident())

    def answered(self) -> None:
        """The dependency answered (a result, or an error of its own): the circuit closes."""
        if self._opened_at is None:
            return
        with self._lock:
            if self._opened_at is not None:
                log.warning("%s answers again after %.1f s; calls go through", self.name, time.monotonic() - self._opened_at)
            self._opened_at = None
            self._trials.clear()

    def unanswered(self, reason: str) -> None:
        """A call got no answer in time: the circuit opens (if it was closed), and this thread's probe or
        trial, if it was one, has failed."""
        with self._lock:
            self._trials.discard(threading.get_ident())
            if self._opened_at is None:
                now = time.monotonic()
                self._opened_at, self._reason, self._next_trial = now, reason[:200], now + self.trial_every_s
                log.warning("%s did not answer (%s); calls fail at once until it answers again", self.name, self._reason)

    def may_connect(self) -> bool:
        """Whether this thread may open a new connection: while closed, or as a probe or trial that has
        not failed."""
        return self._opened_at is None or threading.get_ident() in self._trials
