"""The one classify path every protocol shares: route a task to a version (or the one the caller
pinned), submit the inputs to the batcher, await their scores (dropped if the client goes away),
count the outcome. The adapters (/v1/classify, KServe v2, TEI's /predict, the Hugging Face Inference
API) only parse their bodies into `classify_inputs` and format what it returns.

Called directly, never through FastAPI's dependency solving: that cost ~250 us per request on
/v1/classify (cProfile), CPU the forward pass shares.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request

from server import metrics
from server.api.deps import Caller
from server.api.errors import ApiError, ClientDisconnected
from server.api.state import Services
from server.artifact import HeadKind
from server.batching import ClassifyJob, DeadlineExceeded, Input, Overloaded, SpanOptions
from server.engine import ScoreFunction
from server.registry.base import VersionRecord

SEQUENCE_ONLY = frozenset({HeadKind.SEQUENCE})
# SPEC 6: the task's name where a load balancer can hash on it (nginx `hash $http_x_prefix_task`).
TASK_HEADER = "x-prefix-task"


async def classify_inputs(
    request: Request,
    services: Services,
    caller: Caller,
    task: str,
    inputs: list[Input],
    *,
    version: int | None = None,
    truncate: bool = True,
    score_function: ScoreFunction | None = None,
    heads: frozenset[HeadKind] = SEQUENCE_ONLY,
    span: SpanOptions | None = None,
    accept: Callable[[VersionRecord], Awaitable[None]] | None = None,
) -> tuple[VersionRecord, list]:
    """The version that answered and the result per input, in input order: scores (columns in label
    order), or a TokenScores, SpanAnswer or ChoiceScores for those heads.

    `version` runs that version for this call (NotFound if it does not exist) instead of the route's;
    `score_function` None gives the task's own (probabilities, raw values for regression).
    `heads`: the task heads the caller formats; a task of another head is refused with 422, as is an
    input of another shape than its task's head takes. `span`: a span task's request fields.
    `accept`: the adapter's own check of the chosen version, awaited before its inputs are queued
    (it raises to refuse).
    Raises ApiError, NotFound, Overloaded, DeadlineExceeded, InputRefused, ClientDisconnected.
    """
    started = time.perf_counter()
    tenant = caller.tenant
    outcome = "error"
    try:
        limit = services.settings.max_inputs_per_request
        if len(inputs) > limit:
            raise ApiError(422, f"inputs: expected at most {limit} per request, got {len(inputs)}")
        if not inputs:
            raise ApiError(422, "inputs: expected at least one input, got none")
        named = request.headers.get(TASK_HEADER)
        if named is not None and named != task:
            raise ApiError(422, f"header X-Prefix-Task: expected the request's task {task!r}, got {named!r}")
        record = await services.lookups.version(tenant.name, task, version)
        if accept is not None:
            await accept(record)
        job = ClassifyJob(
            tenant=tenant.name,
            sha256=record.sha256,
            prefix_len=record.prefix_len,
            inputs=inputs,
            truncate=truncate,
            timeout_s=services.settings.request_timeout_s,
            tenant_max_queued=tenant.limits.max_queued_inputs,
            score_function=score_function,
            heads=heads,
            span=span or SpanOptions(),
        )
        scores = await _unless_disconnected(services.runtime.batcher.classify(job), request)
        outcome = "ok"
        metrics.INPUTS.labels(tenant.name).inc(len(scores))
        return record, scores
    except Overloaded:
        outcome = "overloaded"
        raise
    except DeadlineExceeded:
        outcome = "timeout"
        raise
    except ClientDisconnected:
        outcome = "disconnected"
        raise
    except ApiError as exc:
        outcome = "rejected" if exc.status < 500 else "error"
        raise
    finally:
        metrics.REQUESTS.labels(tenant.name, outcome).inc()
        metrics.REQUEST_SECONDS.labels(tenant.name).observe(time.perf_counter() - started)


async def _unless_disconnected(work, request: Request):
    """Awaits `work`; if the client disconnects first, cancels it so its queued inputs are dropped."""
    work_task = asyncio.ensure_future(work)
    disconnect = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work_task, disconnect}, return_when=asyncio.FIRST_COMPLETED)
        if work_task.done():
            return work_task.result()
        work_task.cancel()
        await asyncio.gather(work_task, return_exceptions=True)
        raise ClientDisconnected()
    finally:
        disconnect.cancel()
        work_task.cancel()  # when this handler is cancelled itself (shutdown): nothing is left unawaited


async def _wait_for_disconnect(request: Request) -> None:
    # The body is already read, so the next ASGI message is the disconnect (or nothing, until the end).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def ranked(labels: tuple[str, ...], scores: list[float], top_k: int | None = None) -> list[dict]:
    """[{"label", "score"}] highest score first: the answer shape of TEI and the HF Inference API."""
    order = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)[:top_k]
    return [{"label": labels[i], "score": scores[i]} for i in order]
