"""Listing, routes (pinned and weighted canaries), deletion, and tenant isolation."""

from __future__ import annotations

import math
import random

import pytest

from server.registry import InvalidName, InvalidRoute, NotFound, Route
from server.registry.routing import pick_version
from tests.registry.support import artifact_bytes, blob_files


@pytest.fixture
def three_versions(registry, tenant) -> str:
    for seed in range(3):
        registry.add_version(tenant, "t", artifact_bytes(seed=seed))
    return "t"


def test_list_tasks_gives_each_task_with_versions_and_route(registry, tenant):
    assert registry.list_tasks(tenant) == []
    registry.add_version(tenant, "b", artifact_bytes(seed=1))
    registry.add_version(tenant, "a", artifact_bytes(seed=2))
    registry.add_version(tenant, "a", artifact_bytes(seed=3))
    listed = registry.list_tasks(tenant)
    assert [(t.tenant, t.task) for t in listed] == [(tenant, "a"), (tenant, "b")]
    assert [v.version for v in listed[0].versions] == [1, 2] and listed[0].route == Route(pinned=2)
    assert listed == [registry.get_task(tenant, "a"), registry.get_task(tenant, "b")]


def test_list_tasks_of_unknown_tenant_is_not_found(registry):
    with pytest.raises(NotFound, match="tenant 'ghost'"):
        registry.list_tasks("ghost")


@pytest.mark.parametrize("method", ["get_task", "delete_task", "resolve"])
def test_unknown_task_is_not_found(registry, tenant, method):
    with pytest.raises(NotFound, match="task 'nope' not found"):
        getattr(registry, method)(tenant, "nope")
    with pytest.raises(NotFound, match="task 'nope' not found"):
        getattr(registry, method)("ghost-tenant", "nope")


def test_set_route_unknown_task_is_not_found(registry, tenant):
    with pytest.raises(NotFound):
        registry.set_route(tenant, "nope", Route(pinned=1))


def test_set_route_pins_an_existing_version(registry, tenant, three_versions):
    assert registry.set_route(tenant, "t", Route(pinned=2)) == Route(pinned=2)
    assert registry.get_task(tenant, "t").route == Route(pinned=2)
    assert registry.resolve(tenant, "t").version == 2


def test_set_route_weights_are_stored_normalised(registry, tenant, three_versions):
    stored = registry.set_route(tenant, "t", Route(weights={1: 0.7, 3: 0.3}))
    assert stored == Route(weights={1: 0.7, 3: 0.3}) == registry.get_task(tenant, "t").route
    assert stored.to_json() == {"weights": {"1": 0.7, "3": 0.3}}


INVALID_ROUTES = {
    "missing pinned": (Route(pinned=9), r"expected an existing version of task 't' \(1..3\), got 9"),
    "neither": (Route(), "expected a pinned version or a non-empty weights map, got neither"),
    "both": (Route(pinned=1, weights={1: 1.0}), "got both"),
    "missing weighted": (Route(weights={1: 0.5, 4: 0.5}), "got 4"),
    "sum below 1": (Route(weights={1: 0.5, 2: 0.4}), "expected a sum of 1 .* got 0.9"),
    "sum above 1": (Route(weights={1: 0.7, 2: 0.4}), "got 1.1"),
    "zero weight": (Route(weights={1: 1.0, 2: 0.0}), r"expected a value in \(0, 1\], got 0.0"),
    "negative": (Route(weights={1: 1.5, 2: -0.5}), r"in \(0, 1\], got 1.5"),
    "nan": (Route(weights={1: math.nan}), r"in \(0, 1\], got nan"),
    "string weight": (Route(weights={1: "1"}), "expected a number, got '1'"),
    "string version": (Route(weights={"1": 1.0}), "expected an integer version, got '1'"),
    "bool version": (Route(pinned=True), "expected an integer version, got True"),
}


@pytest.mark.parametrize("route, message", INVALID_ROUTES.values(), ids=INVALID_ROUTES.keys())
def test_set_route_refuses_invalid_routes_and_keeps_the_old_one(registry, tenant, three_versions, route, message):
    with pytest.raises(InvalidRoute, match=message):
        registry.set_route(tenant, "t", route)
    assert registry.get_task(tenant, "t").route == Route(pinned=3)


def test_weights_within_tolerance_are_accepted(registry, tenant, three_versions):
    registry.set_route(tenant, "t", Route(weights={1: 0.1, 2: 0.2, 3: 0.7 - 5e-7}))
    stored = registry.get_task(tenant, "t").route.weights
    assert stored.keys() == {1, 2, 3} and abs(sum(stored.values()) - 1) < 1e-6


def test_canary_split_follows_the_weights(open_registry):
    registry = open_registry(seed=42)
    registry.create_tenant("acme")
    for seed in range(2):
        registry.add_version("acme", "t", artifact_bytes(seed=seed))
    registry.set_route("acme", "t", Route(weights={1: 0.8, 2: 0.2}))
    canary = sum(registry.resolve("acme", "t").version == 2 for _ in range(1000))
    # Binomial(1000, 0.2): mean 200, sd 12.6; 5 sd either side never fails by chance (and the seed is fixed).
    assert 137 <= canary <= 263


def test_seeded_registries_draw_the_same_versions(open_registry):
    first, second = open_registry(seed=7), open_registry(seed=7)
    first.create_tenant("acme")
    for seed in range(3):
        first.add_version("acme", "t", artifact_bytes(seed=seed))
    first.set_route("acme", "t", Route(weights={1: 0.2, 2: 0.3, 3: 0.5}))
    picks = [[r.resolve("acme", "t").version for _ in range(50)] for r in (first, second)]
    assert picks[0] == picks[1] and set(picks[0]) == {1, 2, 3}


def test_pick_version_maps_draws_to_cumulative_weights():
    class FixedDraw(random.Random):
        def __init__(self, value: float) -> None:
            super().__init__()
            self.value = value

        def random(self) -> float:
            return self.value

    route = Route(weights={2: 0.25, 1: 0.5, 3: 0.25 - 1e-7})
    assert [pick_version(route, FixedDraw(d)) for d in (0.0, 0.49, 0.5, 0.74, 0.75, 0.9999999)] == [1, 1, 2, 2, 3, 3]
    assert pick_version(Route(pinned=5), FixedDraw(0.3)) == 5


def test_delete_task_removes_rows_and_unshared_blobs(registry, tenant, data_dir):
    shared = registry.add_version(tenant, "keep", artifact_bytes(seed=1))
    registry.add_version(tenant, "gone", artifact_bytes(seed=1))
    only_gone = registry.add_version(tenant, "gone", artifact_bytes(seed=2))
    registry.delete_task(tenant, "gone")
    with pytest.raises(NotFound):
        registry.get_task(tenant, "gone")
    assert [t.task for t in registry.list_tasks(tenant)] == ["keep"]
    assert blob_files(data_dir) == {shared.sha256}
    with pytest.raises(NotFound):
        registry.read_artifact_bytes(only_gone.sha256)
    assert registry.read_artifact_bytes(shared.sha256) == artifact_bytes(seed=1)


def test_tenants_are_isolated(registry, data_dir):
    registry.create_tenant("a")
    registry.create_tenant("b")
    record = registry.add_version("a", "secret", artifact_bytes(seed=1))
    for attempt in (
        lambda: registry.get_task("b", "secret"),
        lambda: registry.resolve("b", "secret"),
        lambda: registry.delete_task("b", "secret"),
        lambda: registry.set_route("b", "secret", Route(pinned=1)),
    ):
        with pytest.raises(NotFound, match="task 'secret' not found"):
            attempt()
    assert registry.list_tasks("b") == []
    # b's own task of the same name is a separate task, and deleting it leaves a's blob alone
    assert registry.add_version("b", "secret", artifact_bytes(seed=1)).version == 1
    registry.delete_task("b", "secret")
    assert registry.resolve("a", "secret") == record
    assert blob_files(data_dir) == {record.sha256}


@pytest.mark.parametrize("method", ["get_task", "delete_task", "resolve"])
def test_task_methods_refuse_invalid_names(registry, tenant, method):
    with pytest.raises(InvalidName, match="task name: expected"):
        getattr(registry, method)(tenant, "../etc")
