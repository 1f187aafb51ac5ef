"""Shared pieces of the registry tests: a small backbone shape, artifact bytes, blobs for the blob-store
tests, and on-disk inspection."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from server.artifact import BackboneShape, ProblemType, artifact_to_bytes
from server.registry import TenantLimits
from tests.helpers import make_artifact

# The registry only checks artifacts against a shape, so its tests need no engine: a fixed small shape
# keeps them independent of (and faster than) building a backbone.
SHAPE = BackboneShape(
    num_layers=2, num_heads=4, head_dim=8, max_position_embeddings=128, fingerprint="sha256:" + "ab" * 32
)
LIMITS = TenantLimits(max_tasks=5, max_artifact_bytes=1_000_000, max_queued_inputs=64)


@functools.cache
def artifact_bytes(
    seed: int = 0,
    prefix_len: int = 4,
    num_labels: int = 2,
    problem_type: ProblemType = ProblemType.SINGLE_LABEL,
) -> bytes:
    return artifact_to_bytes(make_artifact(SHAPE, prefix_len, num_labels, problem_type, seed))


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(n: int, size: int = 100) -> tuple[str, bytes]:
    data = bytes([n % 256]) * size
    return sha256_hex(data), data


def blob_files(data_dir: Path) -> set[str]:
    """Names of the complete blobs under data_dir/blobs."""
    return {p.name for p in (data_dir / "blobs").glob("*/*") if not p.name.endswith(".tmp")}


def temp_files(data_dir: Path) -> list[Path]:
    return list((data_dir / "blobs").glob("*/*.tmp"))


def usage_counters_and_recount(registry) -> tuple[dict, dict]:
    """Per tenant, (task_count, artifact_bytes) as the tenant row keeps them, and as counted from the rows."""
    with registry.database.read() as conn:
        kept = {row[0]: (row[1], row[2]) for row in conn.exec_driver_sql(
            "SELECT name, task_count, artifact_bytes FROM tenants"
        )}
        recount = {row[0]: (row[1], row[2]) for row in conn.exec_driver_sql(
            "SELECT name, (SELECT count(*) FROM tasks t WHERE t.tenant = tenants.name), "
            "COALESCE((SELECT sum(v.size_bytes) FROM versions v WHERE v.tenant = tenants.name), 0) FROM tenants"
        )}
    return kept, recount
