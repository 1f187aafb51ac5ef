"""Demo prefixes are registered once, on both backends: a restart (another call of
register_demo_prefixes on the same database) never adds a version over a user's upload, route change
or delete, and a file changed by a release updates only a task nobody touched."""

from __future__ import annotations

import pytest

from server.registry.base import NotFound, Route
from server.registry.demo import DEMO_TENANT, register_demo_prefixes
from tests.registry.support import artifact_bytes


@pytest.fixture
def demo_dir(tmp_path):
    folder = tmp_path / "prefixes"
    folder.mkdir()
    (folder / "sentiment.safetensors").write_bytes(artifact_bytes(seed=1))
    (folder / "topic.safetensors").write_bytes(artifact_bytes(seed=2))
    return folder


def _versions(registry, task):
    record = registry.get_task(DEMO_TENANT, task)
    return [v.version for v in record.versions], record.route.pinned


def test_registered_once_across_restarts(open_registry, demo_dir):
    assert register_demo_prefixes(open_registry(), demo_dir) == ["sentiment", "topic"]
    restarted = open_registry()
    assert register_demo_prefixes(restarted, demo_dir) == []
    assert _versions(restarted, "sentiment") == ([1], 1)


def test_a_users_upload_route_and_delete_survive_a_restart(open_registry, demo_dir):
    registry = open_registry()
    register_demo_prefixes(registry, demo_dir)
    registry.add_version(DEMO_TENANT, "sentiment", artifact_bytes(seed=10))  # the user's version 2
    registry.add_version(DEMO_TENANT, "topic", artifact_bytes(seed=11))
    registry.set_route(DEMO_TENANT, "topic", Route(pinned=1))  # back to the demo's bytes, by hand
    registry.delete_task(DEMO_TENANT, "sentiment")
    registry.add_version(DEMO_TENANT, "sentiment", artifact_bytes(seed=12))  # re-created: version 1 again

    (demo_dir / "sentiment.safetensors").write_bytes(artifact_bytes(seed=3))  # a release changes both files
    (demo_dir / "topic.safetensors").write_bytes(artifact_bytes(seed=4))
    restarted = open_registry()
    assert register_demo_prefixes(restarted, demo_dir) == []
    assert _versions(restarted, "sentiment") == ([1], 1)
    assert _versions(restarted, "topic") == ([1, 2], 1)

    restarted.delete_task(DEMO_TENANT, "sentiment")
    assert register_demo_prefixes(open_registry(), demo_dir) == []
    with pytest.raises(NotFound):
        restarted.get_task(DEMO_TENANT, "sentiment")


def test_a_changed_file_updates_a_task_nobody_touched(open_registry, demo_dir):
    register_demo_prefixes(open_registry(), demo_dir)
    (demo_dir / "topic.safetensors").write_bytes(artifact_bytes(seed=5))
    restarted = open_registry()
    assert register_demo_prefixes(restarted, demo_dir) == ["topic"]
    assert _versions(restarted, "topic") == ([1, 2], 2)
    assert register_demo_prefixes(open_registry(), demo_dir) == []


def test_a_task_there_before_the_record_is_left_alone(open_registry, demo_dir):
    registry = open_registry()
    registry.ensure_tenant(DEMO_TENANT)
    registry.add_version(DEMO_TENANT, "topic", artifact_bytes(seed=20))  # a user's task of the same name
    assert register_demo_prefixes(registry, demo_dir) == ["sentiment"]
    (demo_dir / "topic.safetensors").write_bytes(artifact_bytes(seed=6))
    assert register_demo_prefixes(open_registry(), demo_dir) == []
    assert _versions(registry, "topic") == ([1], 1)
