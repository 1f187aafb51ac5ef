"""Prometheus metrics, defined once for the process. Label values are bounded: tenants (a managed,
finite set) and fixed outcome names; task names never become labels."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

REQUESTS = Counter(
    "prefix_server_requests_total", "Classify requests by tenant and outcome", ["tenant", "outcome"]
)
INPUTS = Counter("prefix_server_inputs_total", "Classified inputs by tenant", ["tenant"])
REQUEST_SECONDS = Histogram(
    "prefix_server_request_seconds", "Classify request duration, admission to answer, by tenant", ["tenant"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_SECONDS = Histogram(
    "prefix_server_queue_seconds", "Time an input waited in the queue before its batch ran", buckets=_LATENCY_BUCKETS
)
INFERENCE_SECONDS = Histogram(
    "prefix_server_inference_seconds", "Duration of one batched forward pass", buckets=_LATENCY_BUCKETS
)
BATCH_SIZE = Histogram(
    "prefix_server_batch_size", "Rows per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
BATCH_TOKENS = Histogram(
    "prefix_server_batch_tokens",
    "Tokens per forward pass: each input's tokens plus its prefix length (what max_batch_tokens bounds)",
    buckets=(64, 256, 1024, 2048, 4096, 8192, 16384, 32768),
)
BATCH_TASKS = Histogram(
    "prefix_server_batch_tasks", "Distinct prefixes per forward pass", buckets=(1, 2, 4, 8, 16, 32, 64)
)
QUEUED_INPUTS = Gauge("prefix_server_queued_inputs", "Inputs waiting for a batch")
# Residency per tier (SPEC 6): "device" is the engine's prefix cache, "host" the artifact bytes kept in
# this process's memory. Series per tier, never per task, so /metrics stays the same size at 10^6 tasks.
TIER_ENTRIES = Gauge("prefix_server_tier_entries", "Tasks resident in the tier", ["tier"])
TIER_BYTES = Gauge("prefix_server_tier_bytes", "Bytes resident in the tier", ["tier"])
TIER_BUDGET_BYTES = Gauge("prefix_server_tier_budget_bytes", "The tier's budget in bytes", ["tier"])
TIER_HITS = Counter("prefix_server_tier_hits_total", "Lookups the tier answered", ["tier"])
TIER_MISSES = Counter("prefix_server_tier_misses_total", "Lookups that went to the tier below", ["tier"])
TIER_EVICTIONS = Counter("prefix_server_tier_evictions_total", "Tasks evicted from the tier to fit its budget", ["tier"])


def touch_tier(tier: str) -> None:
    """Creates the tier's counters at zero, so no series appears later (and rates start from 0)."""
    for counter in (TIER_HITS, TIER_MISSES, TIER_EVICTIONS):
        counter.labels(tier)


STORE_FETCH_SECONDS = Histogram(
    "prefix_server_store_fetch_seconds",
    "A miss of every tier: reading the artifact from the blob store (its disk cache included)",
    buckets=_LATENCY_BUCKETS,
)
REGISTRY_UP = Gauge(
    "prefix_server_registry_up",
    "1 while the registry's component (database, blobs) answers its probe, 0 while it is unreachable",
    ["component"],
)
REGISTRY_CHANGES = Counter(
    "prefix_server_registry_changes_total", "Registry writes heard (this replica's and, on PostgreSQL, others')", ["kind"]
)
ENGINE_RESTARTS = Counter(
    "prefix_server_engine_restarts_total", "Engine processes started again after the previous one exited"
)
BUILD_INFO = Info("prefix_server_build", "The server's version and the backbone it serves (its weights' fingerprint)")
