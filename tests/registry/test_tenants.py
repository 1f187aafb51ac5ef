"""Tenants and API keys, and the name rule shared with the API."""

from __future__ import annotations

import re

import pytest

from server.registry import Conflict, InvalidName, NotFound, TenantLimits, validate_name
from tests.registry.support import LIMITS

VALID_NAMES = ["a", "0", "acme", "my-task_2", "a" * 63]
INVALID_NAMES = ["", "A", "Acme", "-a", "_a", "a" * 64, "a b", "a/b", "../x", "a\n", "é", None, 3]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_validate_name_accepts_the_spec_pattern(name):
    assert validate_name("task", name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_validate_name_refuses_with_expected_and_got(name):
    with pytest.raises(InvalidName) as refused:
        validate_name("task", name)
    assert isinstance(refused.value, ValueError)
    message = str(refused.value)
    assert message.startswith("task name: expected") and f"got {name!r}" in message


def test_create_tenant_returns_a_high_entropy_key_and_default_limits(registry):
    tenant, key = registry.create_tenant("acme")
    assert tenant.name == "acme" and tenant.limits == LIMITS
    assert re.fullmatch(r"psk_[A-Za-z0-9_-]{43}", key)
    _, other_key = registry.create_tenant("other")
    assert other_key != key


def test_tenant_for_key_finds_the_owner_and_nothing_else(registry):
    _, key_a = registry.create_tenant("a")
    _, key_b = registry.create_tenant("b")
    assert registry.tenant_for_key(key_a).name == "a"
    assert registry.tenant_for_key(key_b).name == "b"
    for wrong in ["", "psk_", key_a + "x", key_a[:-1], key_a.upper(), None]:
        assert registry.tenant_for_key(wrong) is None


def test_only_the_key_hash_is_stored(registry, data_dir, backend):
    _, key = registry.create_tenant("acme")
    with registry.database.read() as conn:
        rows = [tuple(row) for row in conn.exec_driver_sql("SELECT * FROM tenants").all()]
        (key_hash,) = conn.exec_driver_sql("SELECT api_key_hash FROM tenants WHERE name = 'acme'").one()
    assert not any(key in str(value) for row in rows for value in row)
    assert re.fullmatch(r"[0-9a-f]{64}", key_hash)
    if backend == "sqlite":  # nor anywhere in the file, the journal included
        registry.close()
        assert key.encode() not in b"".join(p.read_bytes() for p in data_dir.glob("registry.sqlite3*"))


def test_create_tenant_conflicts_on_an_existing_name(registry):
    registry.create_tenant("acme")
    registry.ensure_tenant("default")
    for name in ("acme", "default"):
        with pytest.raises(Conflict, match=f"tenant '{name}'"):
            registry.create_tenant(name)


def test_ensure_tenant_creates_a_keyless_tenant_once(registry):
    first = registry.ensure_tenant("default")
    assert first.name == "default" and first.limits == LIMITS
    assert registry.ensure_tenant("default") == first
    assert registry.get_tenant("default") == first


def test_ensure_tenant_keeps_an_existing_tenant_and_its_key(registry):
    _, key = registry.create_tenant("acme")
    registry.ensure_tenant("acme")
    assert registry.tenant_for_key(key).name == "acme"


def test_get_tenant_unknown_is_not_found(registry):
    with pytest.raises(NotFound, match="tenant 'ghost'"):
        registry.get_tenant("ghost")


@pytest.mark.parametrize("method", ["create_tenant", "ensure_tenant", "get_tenant"])
def test_tenant_methods_refuse_invalid_names(registry, method):
    with pytest.raises(InvalidName, match="tenant name: expected"):
        getattr(registry, method)("Not Valid")


def test_custom_limits_are_kept_and_defaults_follow_the_server(open_registry):
    registry = open_registry()
    custom = TenantLimits(max_tasks=2, max_artifact_bytes=10, max_queued_inputs=3)
    registry.create_tenant("custom", custom)
    registry.create_tenant("plain")
    registry.close()
    new_defaults = TenantLimits(max_tasks=9, max_artifact_bytes=99, max_queued_inputs=999)
    reopened = open_registry(limits=new_defaults)
    assert reopened.get_tenant("custom").limits == custom
    assert reopened.get_tenant("plain").limits == new_defaults


@pytest.mark.parametrize("bad", [0, -1, True, 1.5])
def test_create_tenant_refuses_non_positive_limits(registry, bad):
    with pytest.raises(ValueError, match="max_tasks: expected a positive integer"):
        registry.create_tenant("acme", TenantLimits(max_tasks=bad, max_artifact_bytes=1, max_queued_inputs=1))
    with pytest.raises(NotFound):
        registry.get_tenant("acme")
