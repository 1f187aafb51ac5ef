"""POST /v1/classify: parse the body, run the shared classify path (server/api/inference.py), format
the answer (SPEC section 2; token tasks' entities as SPEC 2b, grouped by server/api/entities.py)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from server.api.deps import authenticate, ready_services
from server.api.entities import entities
from server.api.inference import classify_inputs
from server.api.responses import FastJSONResponse
from server.api.schemas import ClassifyRequest
from server.batching import TokenScores
from server.engine import ScoreFunction
from server.engine.scoring import chosen_labels, top_label
from server.registry.base import VersionRecord

router = APIRouter(prefix="/v1")


@router.post("/classify")
async def classify(body: ClassifyRequest, request: Request):
    # The same checks as the ReadyServices and CallerDep dependencies, called directly: FastAPI's
    # dependency solving cost ~250 us per request here (cProfile), CPU the forward pass shares.
    services = ready_services(request)
    caller = await authenticate(request, services)
    inputs = [i if isinstance(i, str) else (i.text if i.text_pair is None else (i.text, i.text_pair)) for i in body.inputs]
    version, scores = await classify_inputs(
        request, services, caller, body.task, inputs, version=body.version, truncate=body.truncate,
        score_function=ScoreFunction.NONE if body.raw_scores else None, token_tasks=True,
    )
    results = [
        {"entities": entities(text, values.offsets, values.scores, version.labels)} if isinstance(values, TokenScores)
        else format_result(version, values, body.raw_scores)
        for text, values in zip(inputs, scores)
    ]
    return FastJSONResponse({"task": body.task, "version": version.version, "results": results})


def format_result(version: VersionRecord, scores: list[float], raw: bool = False) -> dict:
    result: dict = {"scores": dict(zip(version.labels, scores))}
    if version.problem_type == "single_label_classification":
        top = top_label(scores)
        result["label"], result["score"] = version.labels[top], scores[top]
    elif version.problem_type == "multi_label_classification":
        result["labels"] = chosen_labels(version.labels, scores, raw)
    return result
