"""text-embeddings-inference's `/predict`, per task (SPEC section 5): `POST /v1/tasks/{task}/predict`
over the shared classify path (server/api/inference.py).

`inputs` follows TEI's grammar: a text, a `[text, text_pair]` pair, or a list of either; so a list of
exactly two strings is one pair, as in TEI (a one-element list `[text]` is also taken as a text, which
lets a batch of two texts be written `[[a], [b]]`). `truncate` defaults to false, as in TEI: an
over-long input is refused with 422. Errors are TEI's `{"error", "error_type"}`, the type being the
code /v1 would give.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, StrictStr

from server.api.deps import authenticate, ready_services
from server.api.errors import ApiError, protocol_route
from server.api.inference import classify_inputs, ranked
from server.api.responses import FastJSONResponse
from server.api.schemas import NAME_PATTERN
from server.engine import ScoreFunction

router = APIRouter(
    prefix="/v1/tasks", route_class=protocol_route(lambda code, message: {"error": message, "error_type": code})
)


class PredictRequest(BaseModel):
    inputs: StrictStr | list[StrictStr | list[StrictStr]]
    raw_scores: bool = False
    truncate: bool = False
    truncation_direction: Literal["Right", "right"] = "Right"  # TEI's Left is not offered


@router.post("/{task}/predict")
async def predict(task: Annotated[str, Path(pattern=NAME_PATTERN)], body: PredictRequest, request: Request):
    services = ready_services(request)
    caller = await authenticate(request, services)
    inputs, batch = tei_inputs(body.inputs)
    version, scores = await classify_inputs(
        request, services, caller, task, inputs, truncate=body.truncate,
        score_function=ScoreFunction.NONE if body.raw_scores else None,
    )
    results = [ranked(version.labels, row) for row in scores]
    return FastJSONResponse(results if batch else results[0])


def tei_inputs(inputs: str | list) -> tuple[list[str | tuple[str, str]], bool]:
    """The inputs as texts and pairs, and whether they came as a batch (a list of answers goes back)."""
    if isinstance(inputs, str):
        return [inputs], False
    if len(inputs) == 2 and all(isinstance(item, str) for item in inputs):
        return [(inputs[0], inputs[1])], False
    return [_sequence(item, index) for index, item in enumerate(inputs)], True


def _sequence(item: str | list[str], index: int) -> str | tuple[str, str]:
    if isinstance(item, str):
        return item
    if len(item) == 1:
        return item[0]
    if len(item) == 2:
        return item[0], item[1]
    raise ApiError(422, f"inputs[{index}]: expected a text or a [text, text_pair] pair, got a list of {len(item)}")
