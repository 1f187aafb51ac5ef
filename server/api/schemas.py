"""Request bodies of the HTTP API (SPEC section 2). Responses are plain dicts built by the routes."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from server.registry.names import NAME_PATTERN as _REGISTRY_NAME_PATTERN

NAME_PATTERN = f"^(?:{_REGISTRY_NAME_PATTERN})$"  # pydantic searches, so anchor the registry's rule


class TextPair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    text_pair: StrictStr | None = None


class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(pattern=NAME_PATTERN)
    inputs: list[StrictStr | TextPair] = Field(min_length=1)
    truncate: bool = True
    version: int | None = Field(None, ge=1, description="run this version for this call instead of the route's")
    raw_scores: bool = Field(False, description="the raw logits instead of probabilities")


class TenantLimitsBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_tasks: int | None = Field(None, ge=1)
    max_artifact_bytes: int | None = Field(None, ge=1)
    max_queued_inputs: int | None = Field(None, ge=1)


class CreateTenantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    limits: TenantLimitsBody | None = None


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1)
    weights: dict[str, float] | None = None
