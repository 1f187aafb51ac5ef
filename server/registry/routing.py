"""Routes: checking a requested route against a task's versions, storing it as JSON, picking a version.

Backend-independent, so every registry implementation checks and picks the same way.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection

from server.registry.base import InvalidRoute, Route, TaskRecord, VersionRecord

WEIGHT_SUM_TOLERANCE = 1e-6


def validate_route(route: Route, existing_versions: Collection[int], task: str) -> Route:
    """Returns `route` normalised (int keys, float weights) if it fits the task; raises InvalidRoute."""
    if not isinstance(route, Route):
        raise InvalidRoute(f"route: expected a Route, got {type(route).__name__}")
    if route.pinned is not None and route.weights:
        raise InvalidRoute("route: expected either a pinned version or weights, got both")
    if route.pinned is not None:
        _check_version(route.pinned, existing_versions, task)
        return Route(pinned=int(route.pinned))
    if not route.weights:
        raise InvalidRoute("route: expected a pinned version or a non-empty weights map, got neither")
    weights: dict[int, float] = {}
    for version, weight in route.weights.items():
        _check_version(version, existing_versions, task)
        weights[int(version)] = _check_weight(version, weight)
    total = math.fsum(weights.values())
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise InvalidRoute(f"route weights: expected a sum of 1 (within {WEIGHT_SUM_TOLERANCE}), got {total:.9g}")
    return Route(weights=weights)


def route_from_json(data: dict) -> Route:
    """Reads back a stored `Route.to_json()` (JSON object keys are strings, hence the int())."""
    if "version" in data:
        return Route(pinned=int(data["version"]))
    return Route(weights={int(v): float(w) for v, w in data["weights"].items()})


def pick_version(route: Route, rng: random.Random) -> int:
    """The pinned version, or a weighted random one (each version with probability equal to its weight)."""
    if route.pinned is not None:
        return route.pinned
    draw = rng.random()
    cumulative = 0.0
    items = sorted(route.weights.items())
    for version, weight in items:
        cumulative += weight
        if draw < cumulative:
            return version
    return items[-1][0]  # weights may sum to 1 - 1e-6: the last one takes the rounding slack


def routed_versions(route: Route) -> set[int]:
    """The versions the route sends any traffic to."""
    return {route.pinned} if route.pinned is not None else set(route.weights)


def routed_records(record: TaskRecord) -> list[VersionRecord]:
    """The task's versions its route sends requests to."""
    routed = routed_versions(record.route)
    return [v for v in record.versions if v.version in routed]


def version_for(record: TaskRecord, rng: random.Random) -> VersionRecord:
    """The version one request of this task runs on: the one routing rule serving uses everywhere."""
    version = pick_version(record.route, rng)
    return next(v for v in record.versions if v.version == version)


def describe_versions(versions: Collection[int]) -> str:
    ordered = sorted(versions)
    if not ordered:
        return "none"
    if ordered == list(range(ordered[0], ordered[-1] + 1)) and len(ordered) > 2:
        return f"{ordered[0]}..{ordered[-1]}"
    return ", ".join(map(str, ordered))


def _check_version(version: object, existing_versions: Collection[int], task: str) -> None:
    if isinstance(version, bool) or not isinstance(version, int):
        raise InvalidRoute(f"route: expected an integer version, got {version!r}")
    if version not in existing_versions:
        raise InvalidRoute(
            f"route: expected an existing version of task {task!r} ({describe_versions(existing_versions)}), "
            f"got {version}"
        )


def _check_weight(version: int, weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise InvalidRoute(f"route weight of version {version}: expected a number, got {weight!r}")
    # Written as not(...) so that NaN, which compares false with everything, is refused too.
    if not 0.0 < weight <= 1.0:
        raise InvalidRoute(f"route weight of version {version}: expected a value in (0, 1], got {weight!r}")
    return float(weight)
