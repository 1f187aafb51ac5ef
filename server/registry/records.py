"""Turning table rows into the registry's plain records (server.registry.base), for any SQL backend."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Row

from server.registry.base import Tenant, TenantLimits, VersionRecord


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    # SQLite hands back naive datetimes (it stores no offset); everything is written in UTC.
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()


def tenant_from_row(row: Row, defaults: TenantLimits) -> Tenant:
    """A NULL limit column means the server's current default, so changing a default reaches every
    tenant that was not given its own value."""
    limits = TenantLimits(
        max_tasks=_or_default(row.max_tasks, defaults.max_tasks),
        max_artifact_bytes=_or_default(row.max_artifact_bytes, defaults.max_artifact_bytes),
        max_queued_inputs=_or_default(row.max_queued_inputs, defaults.max_queued_inputs),
    )
    return Tenant(name=row.name, limits=limits)


def version_from_row(row: Row) -> VersionRecord:
    columns = row._mapping
    return VersionRecord(
        task=columns["task"],
        version=columns["version"],
        sha256=columns["sha256"],
        size_bytes=columns["size_bytes"],
        prefix_len=columns["prefix_len"],
        problem_type=columns["problem_type"],
        labels=tuple(columns["labels"]),
        metadata=dict(columns["metadata"]),
        created_at=iso_utc(columns["created_at"]),
    )


def _or_default(value: int | None, default: int) -> int:
    return default if value is None else value
