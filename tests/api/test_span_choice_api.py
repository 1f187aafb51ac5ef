"""Span and choice tasks over HTTP (SPEC 2d), in a real `serve` process (the engine in its own
process): /v1/classify answers as the question-answering pipeline and BertPrefixForMultipleChoice do on
transformers' own model, KServe v2 through tritonclient (binary and JSON tensors), the HF Inference
API through `InferenceClient.question_answering`; wrong shapes and misshapen heads are 422; concurrent
traffic of every head equals each request alone."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import torch
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from safetensors.torch import save as save_safetensors
from tritonclient.utils import InferenceServerException

from server.artifact import HeadKind, artifact_to_bytes
from tests.api.test_server_process import ADMIN, start_server
from tests.decoding.test_parity import BERT_CONTEXT
from tests.helpers import make_artifact
from tests.reference_heads import reference_answer, reference_choice

LONG = BERT_CONTEXT * 3
QUESTIONS = [("Who went to New York?", BERT_CONTEXT), ("What is the capital of France?", LONG)]
ITEMS = [("The fox", ["jumps.", "sleeps.", "runs away."]), ("A dog", ["barks.", "sings."])]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone_dir, tiny_engine):
    """Tasks `qa` (span), `mc` (choice, own pooler), `sent` (sequence) and `ner` (token) of tenant `heads`."""
    folder = tmp_path_factory.mktemp("heads")
    proc, base = start_server(tiny_backbone_dir, folder / "data", folder / "server.log")
    shape = tiny_engine.shape
    artifacts = {
        "qa": make_artifact(shape, 4, 2, head=HeadKind.SPAN, labels=("start", "end"), seed=11),
        "mc": make_artifact(shape, 5, 1, head=HeadKind.CHOICE, labels=("choice",), own_pooler=True, seed=12),
        "sent": make_artifact(shape, 3, 3, seed=13),
        "ner": make_artifact(shape, 6, 3, head=HeadKind.TOKEN, labels=("O", "B-X", "I-X"), seed=14),
    }
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        key = httpx.post(f"{base}/v1/admin/tenants", json={"name": "heads"}, headers=admin).json()["api_key"]
        headers = {"Authorization": f"Bearer {key}"}
        for task, artifact in artifacts.items():
            data = artifact_to_bytes(artifact)
            httpx.put(f"{base}/v1/tasks/{task}", files={"file": ("a.safetensors", data)}, headers=headers).raise_for_status()
        yield base, key, headers, artifacts
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def classify(served, body: dict) -> httpx.Response:
    base, _, headers, _ = served
    return httpx.post(f"{base}/v1/classify", json=body, headers=headers, timeout=60)


def span_body(questions=QUESTIONS, **fields) -> dict:
    return {"task": "qa", "inputs": [{"question": q, "context": c} for q, c in questions], **fields}


def choice_body(items=ITEMS) -> dict:
    return {"task": "mc", "inputs": [{"text": t, "choices": c} for t, c in items]}


def test_classify_answers_as_the_pipeline(served, tiny_backbone_dir, tiny_engine):
    artifact = served[3]["qa"]
    fit = tiny_engine.shape.max_tokens(artifact.prefix_len)  # 124: the defaults (384, 128) shrink to it
    for fields, reference in [
        ({}, {"max_seq_len": fit, "doc_stride": fit // 2}),
        ({"max_seq_len": 40, "doc_stride": 12, "max_answer_len": 4, "allow_impossible": True},
         {"max_seq_len": 40, "doc_stride": 12, "max_answer_len": 4, "allow_impossible": True}),
    ]:
        answer = classify(served, span_body(**fields))
        assert answer.status_code == 200, answer.text
        for (question, context), got in zip(QUESTIONS, answer.json()["results"]):
            expected = reference_answer(tiny_backbone_dir, artifact, question, context, **reference)
            assert (got["answer"], got["start"], got["end"]) == (expected["answer"], expected["start"], expected["end"])
            assert got["score"] == pytest.approx(expected["score"], abs=1e-4)
            assert got["answer"] == context[got["start"] : got["end"]]


def test_classify_scores_choices_as_the_reference(served, tiny_backbone_dir):
    answer = classify(served, choice_body())
    assert answer.status_code == 200, answer.text
    for (text, choices), got in zip(ITEMS, answer.json()["results"]):
        expected = reference_choice(tiny_backbone_dir, served[3]["mc"], text, choices)
        assert got["scores"] == pytest.approx(expected, abs=1e-5)
        assert got["choice"] == int(np.argmax(expected)) and got["score"] == pytest.approx(max(expected), abs=1e-5)


@pytest.mark.parametrize(
    "body, message",
    [
        ({"task": "qa", "inputs": ["a text"]}, 'expected {"question", "context"} for a question-answering (span) task, got a text'),
        ({"task": "mc", "inputs": [{"text": "a", "text_pair": "b"}]}, 'expected {"text", "choices": [2 to 16 texts]} for a multiple-choice task'),
        ({"task": "sent", "inputs": [{"question": "q", "context": "c"}]}, 'expected a text or {"text", "text_pair"} for a sequence-classification'),
        ({"task": "ner", "inputs": [{"text": "t", "choices": ["a", "b"]}]}, "expected a text for a token-classification task"),
        (span_body(max_seq_len=500), "max_seq_len: expected at most 124 tokens for this task"),
        (span_body(max_seq_len=20, doc_stride=30), "doc_stride: expected at most max_seq_len (20), got 30"),
        (span_body([("why " * 40, "short context")], max_seq_len=30), "inputs[0]: expected a question of at most"),
    ],
)
def test_wrong_shapes_are_422_naming_the_shape(served, body, message):
    answer = classify(served, body)
    assert answer.status_code == 422 and message in answer.json()["error"]["message"], answer.text


def test_a_misshapen_span_head_is_refused_at_upload(served, tiny_engine):
    base, _, headers, artifacts = served
    tensors = {
        "prefix.key_values": artifacts["qa"].key_values,
        "qa_outputs.weight": torch.zeros(3, tiny_engine.shape.hidden_size),
        "qa_outputs.bias": torch.zeros(3),
    }
    data = save_safetensors(tensors, metadata={"format": "ptv2-prefix", "format_version": "2", "head": "span"})
    answer = httpx.put(f"{base}/v1/tasks/bad-qa", files={"file": ("a.safetensors", data)}, headers=headers)
    assert answer.status_code == 422
    assert "'qa_outputs.weight': expected shape [2 (span head), hidden_size=32], got [3, 32]" in answer.json()["error"]["message"]
    assert httpx.get(f"{base}/v1/tasks/bad-qa", headers=headers).status_code == 404  # nothing stored


def test_kserve_span_and_choice_tensors(served):
    base, key, _, _ = served
    client = triton.InferenceServerClient(base.removeprefix("http://"))
    auth = {"Authorization": f"Bearer {key}"}
    metadata = client.get_model_metadata("qa", headers=dict(auth))  # tritonclient writes into the dict it is given
    assert [i["name"] for i in metadata["inputs"]] == ["question", "context"]
    assert [o["name"] for o in metadata["outputs"]] == ["answer", "score", "start", "end"]
    expected = classify(served, span_body()).json()["results"]
    for binary in (True, False):
        inputs = []
        for name, values in (("question", [q for q, _ in QUESTIONS]), ("context", [c for _, c in QUESTIONS])):
            tensor = triton.InferInput(name, [len(values)], "BYTES")
            tensor.set_data_from_numpy(np.array(values, dtype=object), binary_data=binary)
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("answer", "score", "start", "end")]
        result = client.infer("qa", inputs, outputs=outputs, headers=dict(auth))  # tritonclient writes into the dict it is given
        assert [_text(a) for a in result.as_numpy("answer")] == [e["answer"] for e in expected]
        assert result.as_numpy("start").tolist() == [e["start"] for e in expected]
        assert result.as_numpy("end").tolist() == [e["end"] for e in expected]
        assert result.as_numpy("score") == pytest.approx([e["score"] for e in expected], abs=1e-6)
    choices = classify(served, choice_body()).json()["results"]
    text = triton.InferInput("text", [len(ITEMS)], "BYTES")
    text.set_data_from_numpy(np.array([t for t, _ in ITEMS], dtype=object))
    encoded = triton.InferInput("choices", [len(ITEMS)], "BYTES")
    encoded.set_data_from_numpy(np.array([json.dumps(c) for _, c in ITEMS], dtype=object))
    result = client.infer("mc", [text, encoded], headers=dict(auth))  # tritonclient writes into the dict it is given
    assert result.as_numpy("choice").tolist() == [c["choice"] for c in choices]
    assert [json.loads(_text(s)) for s in result.as_numpy("scores")] == [pytest.approx(c["scores"], abs=1e-6) for c in choices]
    with pytest.raises(InferenceServerException) as refused:
        client.infer("qa", [text], headers=dict(auth))  # tritonclient writes into the dict it is given
    assert refused.value.status() == "422" and 'expected {"question", "context"}' in refused.value.message()


def test_huggingface_inference_client_question_answering(served):
    base, key, _, _ = served
    client = InferenceClient(model=f"{base}/models/qa", token=key)
    for question, context in QUESTIONS:
        expected = classify(served, span_body([(question, context)])).json()["results"][0]
        got = client.question_answering(question=question, context=context)
        assert (got.answer, got.start, got.end) == (expected["answer"], expected["start"], expected["end"])
        assert got.score == pytest.approx(expected["score"], abs=1e-6)
    impossible = client.question_answering(question=QUESTIONS[0][0], context=LONG, handle_impossible_answer=True, max_seq_len=40, doc_stride=12)
    reference = classify(served, span_body([(QUESTIONS[0][0], LONG)], max_seq_len=40, doc_stride=12, allow_impossible=True))
    assert impossible.answer == reference.json()["results"][0]["answer"]
    with pytest.raises(HfHubHTTPError) as refused:
        client.question_answering(question="q", context="c", top_k=2)
    assert refused.value.response.status_code == 422 and "top_k" in refused.value.response.json()["error"]


def test_concurrent_traffic_of_every_head_equals_each_request_alone(served):
    bodies = [
        span_body(), span_body(QUESTIONS[1:], max_seq_len=40, doc_stride=12), choice_body(), choice_body(ITEMS[1:]),
        {"task": "sent", "inputs": ["good movie", {"text": "is it?", "text_pair": "yes"}]},
        {"task": "ner", "inputs": ["George Washington went to New York"]},
    ]
    alone = [classify(served, body).json()["results"] for body in bodies]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda body: classify(served, body), bodies * 4))
    for index, answer in enumerate(together):
        assert answer.status_code == 200, answer.text
        expected = alone[index % len(bodies)]
        assert json.dumps(answer.json()["results"]) == json.dumps(expected) or _close(answer.json()["results"], expected)


def _text(element) -> str:
    """A BYTES element as tritonclient gives it: bytes from binary data, str from JSON."""
    return element.decode() if isinstance(element, bytes) else element


def _close(got, expected) -> bool:
    """Equal but for float rounding of scores (rows batched with others may round differently)."""
    if isinstance(got, dict):
        return got.keys() == expected.keys() and all(_close(got[k], expected[k]) for k in got)
    if isinstance(got, list):
        return len(got) == len(expected) and all(_close(a, b) for a, b in zip(got, expected))
    if isinstance(got, float):
        return abs(got - expected) <= 1e-5
    return got == expected
