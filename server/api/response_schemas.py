"""The answers of the HTTP API as pydantic models, for the OpenAPI document only (server/api/openapi.py).

The routes build plain dicts and encode them with orjson (server/api/responses.py); nothing here runs
on a request. Extra fields are allowed, so that adding a field to an answer never makes the document
reject it; every field a route always sends is required.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable: unauthorized, not_found, conflict, invalid_input, overloaded, ...")
    message: str = Field(description="what was expected and what came")


class ErrorBody(BaseModel):
    """Every error of the v1 API (SPEC section 2)."""

    error: ErrorDetail


class ProtocolError(BaseModel):
    """KServe v2 and the Hugging Face Inference API: their clients read the message from `error`."""

    error: str


class TeiError(BaseModel):
    """text-embeddings-inference's error body; `error_type` is the code the v1 API would give."""

    error: str
    error_type: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]


class Backbone(BaseModel):
    name: str
    fingerprint: str = Field(description="sha256: + the SHA-256 over the backbone's tensors (SPEC section 1)")
    num_layers: int
    num_heads: int
    hidden_size: int
    max_position_embeddings: int


class Info(BaseModel):
    backbone: Backbone
    limits: dict[str, int | float]
    multi_tenant: bool
    registry: dict[str, dict] = Field(description="per component: its URL (secrets redacted) and whether it is up")


class TenantLimits(BaseModel):
    max_tasks: int
    max_artifact_bytes: int
    max_queued_inputs: int


class TenantCreated(BaseModel):
    name: str
    api_key: str = Field(description="shown once")
    limits: TenantLimits


class TenantSummary(BaseModel):
    name: str
    limits: TenantLimits
    tasks: int


class TenantList(BaseModel):
    tenants: list[TenantSummary]


class KeyRotated(BaseModel):
    name: str
    api_key: str = Field(description="shown once; the old key stops working")


class Version(BaseModel):
    """A stored version: what an upload answers, and each of GET /v1/tasks/{task}'s versions."""

    task: str
    version: int
    sha256: str
    prefix_len: int
    problem_type: str
    labels: list[str]
    size_bytes: int
    metadata: dict[str, str]
    created_at: str = Field(description="ISO 8601, UTC")


class PinnedRoute(BaseModel):
    version: int


class WeightedRoute(BaseModel):
    weights: dict[str, float] = Field(description="version number -> share of the traffic")


class TaskSummary(BaseModel):
    task: str
    route: PinnedRoute | WeightedRoute
    latest_version: int
    active_versions: list[int]


class TaskDetail(TaskSummary):
    versions: list[Version]


class TaskList(BaseModel):
    tenant: str
    tasks: list[TaskSummary]


class RouteSet(BaseModel):
    task: str
    route: PinnedRoute | WeightedRoute


class VersionResidency(BaseModel):
    version: int
    sha256: str
    device: bool = Field(description="loaded in the engine (the device tier)")
    host: bool = Field(description="its artifact's bytes in this replica's memory (the host tier)")
    pinned: bool = Field(description="pinned on the device (never evicted): PUT /v1/admin/pinned-tasks")


class Residency(BaseModel):
    task: str
    versions: list[VersionResidency] = Field(description="the versions the route sends traffic to")


class PinnedTask(BaseModel):
    name: str = Field(description="tenant/task")
    versions: list[VersionResidency] = Field(description="the versions its route sends traffic to, each pinned")


class PinnedTasks(BaseModel):
    tasks: list[PinnedTask]
    device_budget_bytes: int = Field(description="PREFIX_SERVER_DEVICE_CACHE_BYTES: pinned tasks count against it")


class ClassifyResult(BaseModel):
    scores: dict[str, float] = Field(description="every label: probabilities, raw values for regression or raw_scores")
    label: str | None = Field(None, description="single-label tasks: the top label")
    score: float | None = Field(None, description="single-label tasks: its score")
    labels: list[str] | None = Field(None, description="multi-label tasks: those with score >= 0.5")


class Entity(BaseModel):
    label: str
    score: float = Field(description="the mean of its words' scores")
    start: int = Field(description="character offset into the input")
    end: int = Field(description="exclusive")
    text: str


class EntitiesResult(BaseModel):
    """A token task's result (SPEC 2b)."""

    entities: list[Entity] = Field(description="in order of start")


class SpanResult(BaseModel):
    """A span task's result (SPEC 2d): the answer as transformers' question-answering pipeline gives it."""

    answer: str = Field(description="context[start:end]; empty for no answer (allow_impossible)")
    score: float
    start: int = Field(description="character offset into the context")
    end: int = Field(description="exclusive")


class ChoiceResult(BaseModel):
    """A choice task's result (SPEC 2d)."""

    choice: int = Field(description="index of the best choice")
    score: float = Field(description="its probability")
    scores: list[float] = Field(description="every choice's probability, in choice order")


class ClassifyResponse(BaseModel):
    task: str
    version: int = Field(description="the version that answered")
    results: list[ClassifyResult | EntitiesResult | SpanResult | ChoiceResult] = Field(
        description="in input order, in the shape of the task's head"
    )


class Ranked(BaseModel):
    label: str
    score: float


class KServeLive(BaseModel):
    live: bool


class KServeReady(BaseModel):
    ready: bool
    error: str | None = None


class KServeServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class KServeModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata] = Field(description="`scores` carries the label names as `labels`")
    parameters: dict


class KServeModelReady(BaseModel):
    name: str
    ready: bool


class InferTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list | None = Field(None, description="absent when the tensor travels as binary data")
    parameters: dict | None = None


class InferRequestedOutput(BaseModel):
    name: str
    parameters: dict | None = None


class KServeInferRequest(BaseModel):
    """JSON form; with the binary tensor extension the body is this JSON followed by the tensors'
    bytes, and Inference-Header-Content-Length gives the JSON's length."""

    id: str | None = None
    parameters: dict | None = None
    inputs: list[InferTensor]
    outputs: list[InferRequestedOutput] | None = None


class KServeInferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferTensor]
