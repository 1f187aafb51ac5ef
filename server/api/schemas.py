"""Request bodies of the HTTP API (SPEC section 2). Responses are plain dicts built by the routes."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictStr

from server.registry.names import NAME_PATTERN as _REGISTRY_NAME_PATTERN

NAME_PATTERN = f"^(?:{_REGISTRY_NAME_PATTERN})$"  # pydantic searches, so anchor the registry's rule
TASK_PATH_PATTERN = f"^(?:{_REGISTRY_NAME_PATTERN})/(?:{_REGISTRY_NAME_PATTERN})$"  # names.split_task_path's rule


class TextPair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    text_pair: StrictStr | None = None


class QuestionContext(BaseModel):
    """An input of a span (extractive question answering) task."""

    model_config = ConfigDict(extra="forbid")
    question: StrictStr = Field(min_length=1)
    context: StrictStr = Field(min_length=1)


class TextChoices(BaseModel):
    """An input of a choice (multiple choice) task."""

    model_config = ConfigDict(extra="forbid")
    text: StrictStr
    choices: list[StrictStr] = Field(min_length=2, max_length=16)


class SpanFields(BaseModel):
    """Span tasks' decoding fields (SPEC 2d), the question-answering pipeline's parameters."""

    max_seq_len: int | None = Field(
        None, ge=8, description="tokens per window of question and context (default 384, at most what fits beside the prefix)"
    )
    doc_stride: int | None = Field(None, ge=0, description="context tokens consecutive windows share (default 128)")
    max_answer_len: int = Field(15, ge=1, description="the longest answer, in tokens")
    allow_impossible: bool = Field(False, description="the empty answer (no answer in the context) may win")


class ClassifyRequest(SpanFields):
    model_config = ConfigDict(extra="forbid")
    task: str = Field(pattern=NAME_PATTERN)
    inputs: list[StrictStr | TextPair | QuestionContext | TextChoices] = Field(
        min_length=1,
        description='per the task\'s head: a text or {"text", "text_pair"} (sequence), a text (token), '
        '{"question", "context"} (span), {"text", "choices"} (choice)',
    )
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


class PinnedTasksRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[Annotated[str, Field(pattern=TASK_PATH_PATTERN)]] = Field(
        max_length=10_000, description="tenant/task names; replaces the pinned set ([] unpins all)"
    )


class RouteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int | None = Field(None, ge=1)
    weights: dict[str, float] | None = None
