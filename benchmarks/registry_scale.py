"""Do registry lookups and uploads cost the same with 10^6 tasks as with 10 (SPEC 6)?

`python -m benchmarks.registry_scale` starts a PostgreSQL server with the tests' harness
(harness/postgres.py), migrates a fresh database and opens a SqlRegistry on it (file blob store in a
temp dir). Then, for each size of `--sizes` in turn, it fills one tenant up to that many tasks (one
version each, rows written with COPY, fake sha256s: those blobs never exist) and measures
- lookup: what the API's RegistryLookups reads on a cache miss, tenant by API key then the task's
  routed version (`tenant_for_key` + `resolve`), for random existing tasks;
- upload: `add_version` of a new real artifact (the default backbone's shape) as a new task.
It reports p50/p99 per size and their ratio to the smallest size. `--quick` is a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.stats import latency_summary
from benchmarks.workload import build_tasks, make_tasks
from harness.postgres import PostgresServer, postgres_bin_dir
from server.engine.backbone import default_backbone_dir, read_backbone_folder
from server.registry import SqlRegistry, TenantLimits
from server.registry.blobs.local import FileBlobStore
from server.registry.database import Database

TENANT = "bench"
FAKE_SIZE_BYTES = 1_000  # what each bulk-inserted version claims to weigh
# Far above what the run stores, so no upload is refused.
LIMITS = TenantLimits(max_tasks=10**8, max_artifact_bytes=10**15, max_queued_inputs=64)
COPY_CHUNK = 100_000


def bulk_insert(psycopg_url: str, start: int, stop: int) -> None:
    """Tasks bulk-000000<start> .. <stop - 1> of TENANT, version 1 each, written with COPY. The tenant's
    counters (when the schema has them) grow by what was written, as add_version would have grown them."""
    import psycopg

    now = datetime.now(UTC)
    with psycopg.connect(psycopg_url) as conn:
        with conn.cursor() as cursor:
            for first in range(start, stop, COPY_CHUNK):
                names = [_task_name(i) for i in range(first, min(first + COPY_CHUNK, stop))]
                with cursor.copy("COPY tasks (tenant, name, route, pinned_version, created_at, last_version) FROM STDIN") as copy:
                    for name in names:
                        copy.write_row((TENANT, name, '{"version": 1}', 1, now, 1))
                with cursor.copy(
                    "COPY versions (tenant, task, version, sha256, size_bytes, prefix_len, problem_type, labels, "
                    "metadata, created_at) FROM STDIN"
                ) as copy:
                    for i, name in zip(range(first, stop), names, strict=False):
                        copy.write_row((TENANT, name, 1, f"{i:064x}", FAKE_SIZE_BYTES, 4, "single_label_classification",
                                        '["a", "b"]', "{}", now))
            _grow_counters(cursor, stop - start)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE tasks")  # visibility map and statistics, as a long-lived table has them
        conn.execute("VACUUM ANALYZE versions")


def _grow_counters(cursor, tasks: int) -> None:
    has_counters = cursor.execute(
        "SELECT count(*) FROM information_schema.columns WHERE table_name = 'tenants' AND column_name = 'task_count'"
    ).fetchone()[0]
    if has_counters:
        cursor.execute(
            "UPDATE tenants SET task_count = task_count + %s, artifact_bytes = artifact_bytes + %s WHERE name = %s",
            (tasks, tasks * FAKE_SIZE_BYTES, TENANT),
        )


def _task_name(index: int) -> str:
    return f"bulk-{index:08d}"


def measure_lookups(registry: SqlRegistry, api_key: str, size: int, count: int, rng: random.Random) -> dict:
    seconds = []
    for _ in range(count):
        task = _task_name(rng.randrange(size))
        began = time.perf_counter()
        tenant = registry.tenant_for_key(api_key)
        registry.resolve(tenant.name, task)
        seconds.append(time.perf_counter() - began)
    return latency_summary(seconds)


def measure_uploads(registry: SqlRegistry, artifacts: list[bytes], tag: str) -> dict:
    seconds = []
    for index, data in enumerate(artifacts):
        began = time.perf_counter()
        registry.add_version(TENANT, f"up-{tag}-{index:04d}", data)
        seconds.append(time.perf_counter() - began)
    return latency_summary(seconds)


def run(sizes: list[int], lookups: int, uploads: int, workdir: Path) -> dict:
    shape = read_backbone_folder(default_backbone_dir()).shape()
    artifacts = [task.data for task in build_tasks(shape, make_tasks(uploads, seed=3, num_tenants=1, max_prefix=8))]
    os.chmod(workdir, 0o755)  # the postgres user must reach its folder inside
    (workdir / "pg").mkdir()
    server = PostgresServer(postgres_bin_dir(), workdir / "pg")
    server.start()
    rng = random.Random(0)
    results, filled = [], 0
    try:
        url = server.fresh_database()
        with SqlRegistry(Database(url), FileBlobStore(workdir / "blobs"), shape, LIMITS) as registry:
            _, api_key = registry.create_tenant(TENANT, LIMITS)
            for size in sorted(sizes):
                began = time.perf_counter()
                bulk_insert(url.replace("postgresql+psycopg://", "postgresql://"), filled, size)
                insert_s = time.perf_counter() - began
                filled = size
                lookup = measure_lookups(registry, api_key, size, lookups, rng)
                upload = measure_uploads(registry, artifacts, str(size))
                results.append({"tasks": size, "bulk_insert_s": round(insert_s, 1), "lookup": lookup, "upload": upload})
                print(json.dumps(results[-1]), flush=True)
    finally:
        server.stop()
    base = results[0]
    for entry in results:
        entry["ratio_to_smallest"] = {
            f"{kind}_{stat}": round(entry[kind][stat] / base[kind][stat], 2)
            for kind in ("lookup", "upload") for stat in ("p50_ms", "p99_ms")
        }
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": f"{platform.node()}, {os.cpu_count()} cores",
        "lookups_per_size": lookups, "uploads_per_size": uploads, "sizes": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,10000,1000000", help="comma-separated task counts, smallest first")
    parser.add_argument("--lookups", type=int, default=2000, help="lookups measured per size")
    parser.add_argument("--uploads", type=int, default=50, help="uploads measured per size")
    parser.add_argument("--quick", action="store_true", help="sizes 10 and 1000, 200 lookups, 10 uploads")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.quick:
        sizes, args.lookups, args.uploads = [10, 1000], 200, 10
    with tempfile.TemporaryDirectory(prefix="bench-registry-", ignore_cleanup_errors=True) as workdir:
        text = json.dumps(run(sizes, args.lookups, args.uploads, Path(workdir)), indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
