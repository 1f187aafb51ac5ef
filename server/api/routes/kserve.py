"""KServe v2 / Open Inference Protocol REST (SPEC section 5): a model is one of the caller's tasks, a
model version one of its versions. Health, server and model metadata, readiness, and infer over the
shared classify path (server/api/inference.py) with JSON tensors or binary tensor data (kserve_codec).

Inputs: `text` (BYTES, [N]) and optional `text_pair` (BYTES, [N]; an empty element means no pair, as a
tensor has no null). Outputs: `scores` (FP32, [N, num_labels], columns in label order) and, for
single-label tasks, `label` (BYTES, [N]). Label names are in the model metadata, as the extension field
`labels` of the `scores` output. Request parameters `truncate` and `raw_scores` (booleans) mean what
they mean in /v1/classify. Span and choice tasks take and give the tensors of kserve_heads.py; a
model's metadata names its own. Errors are the protocol's `{"error": "<message>"}`; a request that does
not follow the protocol is 400, the other statuses are those of /v1 (SPEC section 2).

A token-classification task (SPEC 1b: entity spans, not a score row per input) is no model of this
protocol: its metadata, readiness and infer all answer 404 naming the reason (not ready, for
tritonclient), rather than advertising outputs that infer would then refuse.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from server import __version__
from server.api.deps import authenticate, ready_services
from server.api.errors import ApiError, allowed_methods, protocol_route
from server.api.inference import classify_inputs
from server.api.kserve_codec import (
    HEADER_LENGTH,
    InferRequest,
    OutputTensor,
    decompress,
    parse_infer_request,
    render_infer_response,
)
from server.api.kserve_heads import TEXT_INPUTS, metadata_io, output_tensors, parsed_inputs, span_options
from server.api.lookups import version_of
from server.api.responses import FastJSONResponse
from server.api.state import Services
from server.artifact import HeadKind, read_head
from server.engine import ScoreFunction
from server.engine.scoring import top_label
from server.registry.base import TaskRecord, VersionRecord

router = APIRouter(prefix="/v2", route_class=protocol_route(lambda code, message: {"error": message}))
SINGLE_LABEL = "single_label_classification"
PLATFORM = "prefix-server"
OUTPUTS = ("scores", "label")
HEADS = frozenset({HeadKind.SEQUENCE, HeadKind.SPAN, HeadKind.CHOICE})
EVERY_OUTPUT = {"scores", "label", "answer", "score", "start", "end", "choice"}
_HEADS: dict[str, HeadKind] = {}  # artifact sha256 -> its head: the content decides it, so it never goes stale
_HEADS_KEPT = 65_536


@router.get("/health/live")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request):
    services = request.app.state.services
    if services.ready and services.runtime.healthy:
        return {"ready": True}
    return FastJSONResponse({"ready": False, "error": "the server is not ready (see /readyz)"}, 503)


@router.get("")
async def server_metadata() -> dict:
    return {"name": PLATFORM, "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/models/{task}")
@router.get("/models/{task}/versions/{version}")
async def model_metadata(task: str, request: Request, version: str | None = None) -> dict:
    services, record = await _task(request, task)
    chosen = _chosen_version(record, version)
    head = await _served_here(services, chosen)
    labels = list(chosen.labels)
    inputs = TEXT_INPUTS
    outputs = [{"name": "scores", "datatype": "FP32", "shape": [-1, len(labels)], "labels": labels}]
    if chosen.problem_type == SINGLE_LABEL:
        outputs.append({"name": "label", "datatype": "BYTES", "shape": [-1]})
    other_head = metadata_io(head)
    if other_head is not None:
        inputs, outputs = other_head
    return {
        "name": task,
        "versions": [str(v.version) for v in record.versions] if version is None else [str(chosen.version)],
        "platform": PLATFORM,
        "inputs": inputs,
        "outputs": outputs,
        "parameters": {"version": chosen.version, "problem_type": chosen.problem_type, "prefix_len": chosen.prefix_len},
    }


@router.get("/models/{task}/ready")
@router.get("/models/{task}/versions/{version}/ready")
async def model_ready(task: str, request: Request, version: str | None = None) -> dict:
    services, record = await _task(request, task)
    await _served_here(services, _chosen_version(record, version))  # 404 unless it exists and is served here
    return {"name": task, "ready": True}


@router.post("/models/{task}/infer")
@router.post("/models/{task}/versions/{version}/infer")
async def infer(task: str, request: Request, version: str | None = None):
    services = ready_services(request)
    caller = await authenticate(request, services)
    pinned = _version_number(version)
    body = decompress(await request.body(), request.headers.get("content-encoding"), services.settings.max_request_bytes)
    parsed = parse_infer_request(body, request.headers.get(HEADER_LENGTH))
    if parsed.outputs is not None and (unknown := set(parsed.outputs) - EVERY_OUTPUT):
        raise ApiError(400, f"outputs: expected names among {sorted(EVERY_OUTPUT)}, got {sorted(unknown)}")
    raw = _flag(parsed.parameters, "raw_scores", False)
    other_inputs = parsed_inputs(parsed)
    record, results = await classify_inputs(
        request, services, caller, task, _text_inputs(parsed) if other_inputs is None else other_inputs, version=pinned,
        truncate=_flag(parsed.parameters, "truncate", True), score_function=ScoreFunction.NONE if raw else None,
        heads=HEADS, span=span_options(parsed.parameters), accept=lambda chosen: _served_here(services, chosen),
    )
    header = {"model_name": task, "model_version": str(record.version)}
    if parsed.id is not None:
        header["id"] = parsed.id
    head_tensors = output_tensors(results)
    outputs = _outputs(record, results, parsed) if head_tensors is None else _chosen_outputs(head_tensors, parsed)
    body, json_size = render_infer_response(header, outputs)
    if json_size is None:
        return Response(body, media_type="application/json")
    return Response(body, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_size)})


@router.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"], include_in_schema=False)
async def unknown_endpoint(path: str, request: Request):
    # Starlette picks this full match over a KServe route that has the path but not the method: 405 it.
    allowed = allowed_methods(request)
    if allowed:
        raise ApiError(405, f"/v2/{path}: expected {' or '.join(allowed)}, got {request.method}", headers={"Allow": ", ".join(allowed)})
    raise ApiError(404, f"expected a KServe v2 endpoint (/v2/health/*, /v2/models/...), got {request.method} /v2/{path}")


async def _task(request: Request, task: str) -> tuple[Services, TaskRecord]:
    services = ready_services(request)
    caller = await authenticate(request, services)
    return services, await services.lookups.task(caller.tenant.name, task)


async def _served_here(services: Services, version: VersionRecord) -> HeadKind:
    """The version's head, read from the artifact's header once; 404 for a token-classification one."""
    head = _HEADS.get(version.sha256)
    if head is None:
        data = await run_in_threadpool(services.registry.read_artifact_bytes, version.sha256)
        head = read_head(data, services.runtime.shape)
        if len(_HEADS) >= _HEADS_KEPT:
            _HEADS.clear()
        _HEADS[version.sha256] = head
    if head is HeadKind.TOKEN:
        raise ApiError(
            404, f"model {version.task!r} version {version.version}: expected a sequence-classification task (KServe v2 "
            "answers a row of scores per input), got a token-classification one; its entity spans are on POST /v1/classify",
        )
    return head


def _chosen_version(record: TaskRecord, version: str | None) -> VersionRecord:
    """The named version; unnamed, the one the route sends most traffic to (the latest among equals)."""
    number = _version_number(version)
    if number is None:
        route = record.route
        number = route.pinned if route.pinned is not None else max(route.weights, key=lambda v: (route.weights[v], v))
    return version_of(record, number)


def _version_number(version: str | None) -> int | None:
    if version is None:
        return None
    if not version.isdigit() or int(version) < 1:
        raise ApiError(404, f"model version: expected a version number such as 1, got {version!r}")
    return int(version)


def _text_inputs(parsed: InferRequest) -> list[str | tuple[str, str]]:
    unknown = set(parsed.texts) - {"text", "text_pair"}
    if "text" not in parsed.texts or unknown:
        raise ApiError(400, f"inputs: expected 'text' and optionally 'text_pair', got {sorted(parsed.texts)}")
    texts, pairs = parsed.texts["text"], parsed.texts.get("text_pair")
    if pairs is None:
        return texts
    if len(pairs) != len(texts):
        raise ApiError(400, f"input 'text_pair': expected one element per text ({len(texts)}), got {len(pairs)}")
    return [(text, pair) if pair else text for text, pair in zip(texts, pairs)]


def _flag(parameters: dict, name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(400, f"parameters.{name}: expected true or false, got {value!r}")
    return value


def _chosen_outputs(tensors: dict[str, OutputTensor], parsed: InferRequest) -> list[tuple[OutputTensor, bool]]:
    """A span or choice model's outputs the request asked for (all by default), each binary or not."""
    names = list(tensors) if parsed.outputs is None else list(parsed.outputs)
    if unknown := [n for n in names if n not in tensors]:
        raise ApiError(400, f"outputs: this model gives {list(tensors)}, got {unknown}")
    binary_default = _flag(parsed.parameters, "binary_data_output", False)
    requested = parsed.outputs or {}
    return [(tensors[n], binary_default if requested.get(n) is None else requested[n]) for n in names]


def _outputs(record: VersionRecord, scores: list[list[float]], parsed: InferRequest) -> list[tuple[OutputTensor, bool]]:
    names = list(OUTPUTS) if parsed.outputs is None else list(parsed.outputs)
    if unknown := [n for n in names if n not in OUTPUTS]:
        raise ApiError(400, f"outputs: this model gives {list(OUTPUTS)}, got {unknown}")
    if record.problem_type != SINGLE_LABEL:
        if parsed.outputs is not None and "label" in names:
            raise ApiError(400, f"output 'label': only single-label tasks have it, this one is {record.problem_type}")
        names = [n for n in names if n != "label"]
    binary_default = _flag(parsed.parameters, "binary_data_output", False)
    tensors = []
    for name in names:
        if name == "scores":
            flat = [value for row in scores for value in row]
            tensor = OutputTensor("scores", "FP32", [len(scores), len(record.labels)], flat)
        else:
            top = [record.labels[top_label(row)] for row in scores]
            tensor = OutputTensor("label", "BYTES", [len(scores)], top)
        binary = parsed.outputs.get(name) if parsed.outputs is not None else None
        tensors.append((tensor, binary_default if binary is None else binary))
    return tensors
