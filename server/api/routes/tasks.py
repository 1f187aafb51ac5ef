"""Tasks of the calling tenant: upload a version, list, show, route, delete a version or the task."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, UploadFile
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from server.api.deps import CallerDep, ReadyServices
from server.api.errors import ApiError
from server.api.responses import FastJSONResponse
from server.api.schemas import NAME_PATTERN, RouteRequest
from server.importers import convert_peft_zip
from server.registry.base import Route, TaskRecord, VersionRecord
from server.registry.routing import routed_records

router = APIRouter(prefix="/v1/tasks")
TaskName = Annotated[str, Path(pattern=NAME_PATTERN, description="task name")]


def version_json(v: VersionRecord) -> dict:
    return {
        "task": v.task,
        "version": v.version,
        "sha256": v.sha256,
        "size_bytes": v.size_bytes,
        "prefix_len": v.prefix_len,
        "problem_type": v.problem_type,
        "labels": list(v.labels),
        "metadata": v.metadata,
        "created_at": v.created_at,
    }


def task_json(record: TaskRecord, with_versions: bool = True) -> dict:
    active = {v.version for v in record.versions if v.version == record.route.pinned} or set(record.route.weights)
    body = {"task": record.task, "route": record.route.to_json(), "latest_version": record.versions[-1].version}
    body["active_versions"] = sorted(active)
    if with_versions:
        body["versions"] = [version_json(v) for v in record.versions]
    return body


ZIP_MAGIC = b"PK\x03\x04"


@router.put("/{task}", status_code=201)
async def upload_version(
    task: TaskName,
    caller: CallerDep,
    services: ReadyServices,
    file: UploadFile = File(..., description="a .safetensors artifact, or a PEFT PREFIX_TUNING or LORA folder as .zip"),
    labels: str | None = Form(None, description="for a .zip: label names, comma-separated or a JSON list"),
    problem_type: str | None = Form(None, description="for a .zip: overrides the adapter's problem type"),
):
    data = await file.read()
    if not data:
        raise ApiError(422, "field 'file': expected a .safetensors prefix artifact, got an empty file")
    if data.startswith(ZIP_MAGIC):  # a PEFT adapter folder: converted with the importer's own code
        label_names = _parse_labels_field(labels)
        data = await run_in_threadpool(convert_peft_zip, data, services.runtime.shape, label_names, problem_type)
    record = await run_in_threadpool(services.registry.add_version, caller.tenant.name, task, data)
    services.lookups.invalidate_task(caller.tenant.name, task)
    return FastJSONResponse(version_json(record), status_code=201)  # the version as GET /v1/tasks/{task} shows it


@router.get("")
async def list_tasks(caller: CallerDep, services: ReadyServices) -> dict:
    records = await run_in_threadpool(services.registry.list_tasks, caller.tenant.name)
    return {"tenant": caller.tenant.name, "tasks": [task_json(r, with_versions=False) for r in records]}


@router.get("/{task}")
async def show_task(task: TaskName, caller: CallerDep, services: ReadyServices) -> dict:
    return task_json(await run_in_threadpool(services.registry.get_task, caller.tenant.name, task))


@router.get("/{task}/residency")
async def show_residency(task: TaskName, caller: CallerDep, services: ReadyServices) -> dict:
    """Where this replica holds the task's routed version(s) (SPEC 6), for routers that send a task
    where it is warm: `device` (loaded in the engine), `host` (its bytes in memory), else neither."""
    record = await run_in_threadpool(services.registry.get_task, caller.tenant.name, task)
    versions = routed_records(record)
    return {
        "task": task,
        "versions": [{"version": v.version, "sha256": v.sha256, **services.runtime.residency(v.sha256)} for v in versions],
    }


@router.put("/{task}/route")
async def set_route(task: TaskName, body: RouteRequest, caller: CallerDep, services: ReadyServices) -> dict:
    route = _parse_route(body)
    new_route = await run_in_threadpool(services.registry.set_route, caller.tenant.name, task, route)
    services.lookups.invalidate_task(caller.tenant.name, task)
    return {"task": task, "route": new_route.to_json()}


@router.delete("/{task}", status_code=204)
async def delete_task(task: TaskName, caller: CallerDep, services: ReadyServices) -> Response:
    await run_in_threadpool(services.registry.delete_task, caller.tenant.name, task)
    services.lookups.invalidate_task(caller.tenant.name, task)
    return Response(status_code=204)


@router.delete("/{task}/versions/{version}", status_code=204)
async def delete_version(
    task: TaskName, version: Annotated[int, Path(ge=1, description="version number")], caller: CallerDep, services: ReadyServices
) -> Response:
    await run_in_threadpool(services.registry.delete_version, caller.tenant.name, task, version)
    services.lookups.invalidate_task(caller.tenant.name, task)
    return Response(status_code=204)


def _parse_route(body: RouteRequest) -> Route:
    if (body.version is None) == (body.weights is None):
        raise ApiError(422, 'expected exactly one of {"version": n} or {"weights": {"n": fraction, ...}}')
    if body.version is not None:
        return Route(pinned=body.version)
    weights = {}
    for key, weight in body.weights.items():
        if not key.isdigit() or int(key) < 1:
            raise ApiError(422, f"weights: expected version numbers as keys, got {key!r}")
        weights[int(key)] = weight
    return Route(weights=weights)


def _parse_labels_field(raw: str | None) -> list[str] | None:
    if raw is None or not raw.strip():
        return None
    if raw.lstrip().startswith("["):
        try:
            names = json.loads(raw)
        except ValueError:
            raise ApiError(422, f"field 'labels': expected a JSON list or comma-separated names, got {raw[:80]!r}") from None
        if isinstance(names, list) and all(isinstance(n, str) for n in names):
            return names
        raise ApiError(422, f"field 'labels': expected a JSON list of strings, got {raw[:80]!r}")
    return [name.strip() for name in raw.split(",")]
