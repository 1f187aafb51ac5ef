"""POST /v1/classify against the real app: results equal the engine's, in input order, per SPEC."""

from __future__ import annotations

import pytest

from server.artifact import ProblemType, read_artifact
from tests.api.conftest import upload


def engine_scores(tiny_engine, data, texts):
    artifact = read_artifact(data, tiny_engine.shape)
    handle = tiny_engine.load(artifact)
    encoded = tiny_engine.encode(texts, artifact.prefix_len)
    return tiny_engine.score_encoded([(e, handle) for e in encoded])


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
    truncated = b'{"task": "sentiment", "inputs": ["a gorgeous movie"'
    bad = client.post("/v1/classify", content=truncated, headers={"content-type": "application/json"})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_input"
    # Said as the KServe route says it: what was expected, and where the parser stopped.
    message = bad.json()["error"]["message"]
    assert message.startswith("expected a JSON request body, got invalid JSON (") and f": character {len(truncated)} of {len(truncated)})" in message
    kserve = client.post("/v2/models/sentiment/infer", content=truncated, headers={"content-type": "application/json"})
    assert kserve.status_code == 400 and kserve.json()["error"].startswith("expected a JSON inference request, got invalid JSON (")
    assert f"(char {len(truncated)})" in kserve.json()["error"]
    missing = client.post("/v1/classify", json={"task": "nope", "inputs": ["a"]})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]


def test_too_many_inputs_and_oversized_body(client, artifact_bytes):
    upload(client, "t", artifact_bytes())
    too_many = client.post("/v1/classify", json={"task": "t", "inputs": ["a"] * 257})
    assert too_many.status_code == 422 and "at most 256" in too_many.json()["error"]["message"]
    huge = client.post("/v1/classify", json={"task": "t", "inputs": ["a" * (5 * 1024 * 1024)]})
    assert huge.status_code == 413 and huge.json()["error"]["code"] == "payload_too_large"
    assert client.get("/healthz").status_code == 200


IOB = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


def test_token_task_answers_entity_spans(client, tiny_engine):
    from server.artifact import HeadKind, artifact_to_bytes
    from server.engine.scoring import top_label
    from tests.helpers import make_artifact

    seqeval = pytest.importorskip("seqeval.metrics.sequence_labeling")
    artifact = make_artifact(tiny_engine.shape, 6, len(IOB), seed=5, head=HeadKind.TOKEN, labels=IOB)
    assert upload(client, "ner", artifact_to_bytes(artifact)).status_code == 201
    text = "John Smithson went to New York with Mary Ann Lee yesterday"
    answer = client.post("/v1/classify", json={"task": "ner", "inputs": [text]})
    assert answer.status_code == 200, answer.text
    found = answer.json()["results"][0]["entities"]
    # Independently: word tags from the first sub-token (the tokenizer's word ids), grouped by seqeval.
    enc = tiny_engine.encoder.tokenizer(text, return_offsets_mapping=True)
    handle = tiny_engine.load(artifact)
    token_scores = tiny_engine.score_encoded([(tiny_engine.encode([text], 6)[0], handle)])[0]
    words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
    tags, probs = [], []
    for start, end in words:
        first = next(i for i, (a, b) in enumerate(enc["offset_mapping"]) if a < b and start <= a < end)
        best = top_label(token_scores[first])
        tags.append(IOB[best])
        probs.append(token_scores[first][best])
    expected = []
    for kind, first, last in seqeval.get_entities(tags):
        start, end = words[first][0], words[last][1]
        score = sum(probs[first : last + 1]) / (last - first + 1)
        expected.append({"label": kind, "start": start, "end": end, "text": text[start:end], "score": pytest.approx(score, abs=1e-6)})
    assert expected and found == expected


def test_token_task_refuses_text_pairs_and_other_protocols(client, tiny_engine):
    from server.artifact import HeadKind, artifact_to_bytes
    from tests.helpers import make_artifact

    artifact = make_artifact(tiny_engine.shape, 3, len(IOB), seed=6, head=HeadKind.TOKEN, labels=IOB)
    upload(client, "ner2", artifact_to_bytes(artifact))
    pair = client.post("/v1/classify", json={"task": "ner2", "inputs": ["ok", {"text": "a", "text_pair": "b"}]})
    assert pair.status_code == 422
    assert "inputs[1]: expected a text for a token-classification task, got a text pair" in pair.json()["error"]["message"]
