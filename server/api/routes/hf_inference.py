"""The Hugging Face Inference API's text classification (SPEC section 5): `POST /models/{task}` over the
shared classify path (server/api/inference.py), so that
`huggingface_hub.InferenceClient(model="http://HOST:PORT/models/TASK", token=KEY).text_classification(text)`
works unchanged.

Body: `{"inputs": text | {"text", "text_pair"} | [either, ...], "parameters": {"top_k", "function_to_apply"}}`.
The answer is one list of `{"label", "score"}` per input, highest score first (all labels unless
`top_k`), inside an outer list even for one input, as that API answers. `function_to_apply`
(`softmax`, `sigmoid`, `none`) replaces the task's own; errors are that API's `{"error": "<message>"}`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field, StrictStr

from server.api.deps import authenticate, ready_services
from server.api.errors import protocol_route
from server.api.inference import classify_inputs, ranked
from server.api.responses import FastJSONResponse
from server.api.schemas import NAME_PATTERN, TextPair
from server.engine import ScoreFunction

router = APIRouter(route_class=protocol_route(lambda code, message: {"error": message}))
FUNCTIONS = {"softmax": ScoreFunction.SOFTMAX, "sigmoid": ScoreFunction.SIGMOID, "none": ScoreFunction.NONE}


class Parameters(BaseModel):
    top_k: int | None = Field(None, ge=1)
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = None


class TextClassificationRequest(BaseModel):
    inputs: StrictStr | TextPair | list[StrictStr | TextPair]
    parameters: Parameters = Field(default_factory=Parameters)


@router.post("/models/{task}")
async def text_classification(
    task: Annotated[str, Path(pattern=NAME_PATTERN)], body: TextClassificationRequest, request: Request
):
    services = ready_services(request)
    caller = await authenticate(request, services)
    items = body.inputs if isinstance(body.inputs, list) else [body.inputs]
    inputs = [i if isinstance(i, str) else (i.text if i.text_pair is None else (i.text, i.text_pair)) for i in items]
    function = body.parameters.function_to_apply
    version, scores = await classify_inputs(
        request, services, caller, task, inputs, score_function=FUNCTIONS[function] if function else None
    )
    return FastJSONResponse([ranked(version.labels, row, body.parameters.top_k) for row in scores])
