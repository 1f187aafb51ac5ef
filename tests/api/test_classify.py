"""POST /v1/classify against the real app: results equal the engine's, in input order, per SPEC."""

from __future__ import annotations

import pytest

from server.artifact import ProblemType, read_artifact
from server.engine import Row
from tests.api.conftest import upload


def engine_scores(tiny_engine, data, texts):
    artifact = read_artifact(data, tiny_engine.shape)
    prefix = tiny_engine.load_prefix(artifact)
    encoded = tiny_engine.encode(texts, artifact.prefix_len)
    return tiny_engine.score([Row(e, prefix) for e in encoded])


def test_single_label_results_in_input_order(client, artifact_bytes, tiny_engine):
    data = artifact_bytes(prefix_len=5, num_labels=3, seed=1)
    assert upload(client, "sentiment", data).status_code == 201
    texts = ["great", "awful and slow", ("a premise", "a hypothesis")]
    body = {"task": "sentiment", "inputs": ["great", "awful and slow", {"text": "a premise", "text_pair": "a hypothesis"}]}
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["task"] == "sentiment" and answer["version"] == 1
    expected = engine_scores(tiny_engine, data, texts)
    for result, scores in zip(answer["results"], expected):
        assert list(result["scores"]) == ["label_0", "label_1", "label_2"]
        assert max(abs(a - b) for a, b in zip(result["scores"].values(), scores)) <= 1e-5
        top = max(result["scores"], key=result["scores"].get)
        assert result["label"] == top and result["score"] == result["scores"][top]


def test_multi_label_and_regression_shapes(client, artifact_bytes):
    upload(client, "tags", artifact_bytes(num_labels=4, problem_type=ProblemType.MULTI_LABEL, seed=2))
    upload(client, "score", artifact_bytes(num_labels=1, problem_type=ProblemType.REGRESSION, seed=3))
    tags = client.post("/v1/classify", json={"task": "tags", "inputs": ["x"]}).json()["results"][0]
    assert set(tags) == {"scores", "labels"}
    assert tags["labels"] == [k for k, v in tags["scores"].items() if v >= 0.5]
    score = client.post("/v1/classify", json={"task": "score", "inputs": ["x"]}).json()["results"][0]
    assert set(score) == {"scores"} and list(score["scores"]) == ["label_0"]


def test_truncate_false_refuses_over_long_input(client, artifact_bytes):
    upload(client, "t", artifact_bytes(prefix_len=100))  # tiny backbone: 128 positions, so 28 tokens fit
    long_text = "word " * 40
    cut = client.post("/v1/classify", json={"task": "t", "inputs": [long_text]})
    assert cut.status_code == 200
    refused = client.post("/v1/classify", json={"task": "t", "inputs": ["ok", long_text], "truncate": False})
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert "inputs[1]" in message and "at most 28 tokens" in message and "got 42" in message


@pytest.mark.parametrize(
    "body, expected",
    [
        ({"task": "t", "inputs": []}, "at least 1"),
        ({"task": "t", "inputs": [3]}, "inputs.0"),
        ({"task": "t", "inputs": [{"txt": "a"}]}, "inputs.0"),
        ({"task": "Bad Name!", "inputs": ["a"]}, "task"),
        ({"inputs": ["a"]}, "task: Field required"),
        ({"task": "t", "inputs": "not a list"}, "inputs"),
        ({"task": "t", "inputs": ["a"], "truncate": "maybe"}, "truncate"),
        ({"task": "t", "inputs": ["a"], "surprise": 1}, "surprise"),
    ],
)
def test_invalid_bodies_are_422_with_a_message(client, artifact_bytes, body, expected):
    upload(client, "t", artifact_bytes())
    response = client.post("/v1/classify", json=body)
    assert response.status_code == 422
    assert expected in response.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200


def test_malformed_json_and_unknown_task(client):
    bad = client.post("/v1/classify", content=b'{"task": "t", "inputs": [', headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    missing = client.post("/v1/classify", json={"task": "nope", "inputs": ["a"]})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


def test_too_many_inputs_and_oversized_body(client, artifact_bytes):
    upload(client, "t", artifact_bytes())
    too_many = client.post("/v1/classify", json={"task": "t", "inputs": ["a"] * 257})
    assert too_many.status_code == 422 and "at most 256" in too_many.json()["error"]["message"]
    huge = client.post("/v1/classify", json={"task": "t", "inputs": ["a" * (5 * 1024 * 1024)]})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    assert client.get("/healthz").status_code == 200
