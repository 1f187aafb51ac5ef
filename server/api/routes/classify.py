"""POST /v1/classify: route the task to a version, hand the inputs to the batcher, format the answer."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request

from server import metrics
from server.api.deps import authenticate, ready_services
from server.api.errors import ApiError
from server.api.responses import FastJSONResponse
from server.api.schemas import ClassifyRequest
from server.batching import ClassifyJob, DeadlineExceeded, Overloaded
from server.registry.base import VersionRecord

router = APIRouter(prefix="/v1")


class ClientDisconnected(Exception):
    pass


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request):
    # The same checks as the ReadyServices and CallerDep dependencies, called directly: FastAPI's
    # dependency solving cost ~250 us per request here (cProfile), CPU the forward pass shares.
    services = ready_services(request)
    caller = await authenticate(request, services)
    started = time.perf_counter()
    tenant = caller.tenant
    outcome = "error"
    try:
        if len(body.inputs) > services.settings.max_inputs_per_request:
            raise ApiError(
                422, f"inputs: expected at most {services.settings.max_inputs_per_request} per request, "
                f"got {len(body.inputs)}",
            )
        version = await services.lookups.version(tenant.name, body.task)
        job = ClassifyJob(
            tenant=tenant.name,
            sha256=version.sha256,
            prefix_len=version.prefix_len,
            inputs=[i if isinstance(i, str) else (i.text if i.text_pair is None else (i.text, i.text_pair)) for i in body.inputs],
            truncate=body.truncate,
            timeout_s=services.settings.request_timeout_s,
            tenant_max_queued=tenant.limits.max_queued_inputs,
        )
        scores = await _unless_disconnected(services.runtime.batcher.classify(job), request)
        outcome = "ok"
        metrics.INPUTS.labels(tenant.name).inc(len(scores))
        results = [format_result(version, values) for values in scores]
        return FastJSONResponse({"task": body.task, "version": version.version, "results": results})
    except Overloaded:
        outcome = "overloaded"
        raise
    except DeadlineExceeded:
        outcome = "timeout"
        raise
    except ClientDisconnected:
        outcome = "disconnected"
        return FastJSONResponse({"error": {"code": "disconnected", "message": "client went away"}}, 499)
    except ApiError as exc:
        outcome = "rejected" if exc.status < 500 else "error"
        raise
    finally:
        metrics.REQUESTS.labels(tenant.name, outcome).inc()
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - started)


def format_result(version: VersionRecord, scores: list[float]) -> dict:
    result: dict = {"scores": dict(zip(version.labels, scores))}
    if version.problem_type == "single_label_classification":
        top = max(range(len(scores)), key=scores.__getitem__)
        result["label"], result["score"] = version.labels[top], scores[top]
    elif version.problem_type == "multi_label_classification":
        result["labels"] = [label for label, score in zip(version.labels, scores) if score >= 0.5]
    return result


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


async def _wait_for_disconnect(request: Request) -> None:
    # The body is already read, so the next ASGI message is the disconnect (or nothing, until the end).
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return
