"""The replica tests' cluster: real `serve` replicas (harness.replicas, also used by the replica
benchmark), and `wait_until`, which times how long a change took to reach a replica."""

from __future__ import annotations

import time

from harness.processes import wait_until as _wait_until
from harness.replicas import ADMIN, ADMIN_HEADERS, Replica, create_tenant, replica_env, start_replicas

__all__ = ["ADMIN", "ADMIN_HEADERS", "Replica", "create_tenant", "replica_env", "start_replicas", "wait_until"]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.01):
    """Polls `predicate` until it returns a truthy value; returns (value, seconds it took), or (a falsy
    value, `timeout_s`) if it never did: the caller asserts on both, saying what it waited for."""
    started = time.monotonic()
    try:
        value = _wait_until(predicate, timeout_s, "a replica to see a change", interval_s)
    except TimeoutError:
        return None, timeout_s
    return value, time.monotonic() - started
