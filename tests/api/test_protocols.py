"""The other protocols (SPEC section 5) with their real clients against a real `serve` process:
tritonclient.http (binary and JSON tensors, metadata, readiness), huggingface_hub's InferenceClient,
TEI-shaped requests; each answers the scores /v1/classify gives for the same inputs. Also
/v1/classify's `version` and `raw_scores`."""

from __future__ import annotations

import math

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from tritonclient.utils import InferenceServerException

from harness.processes import stop_process
from server.artifact import HeadKind, ProblemType, artifact_to_bytes
from tests.api.test_server_process import ADMIN, start_server
from tests.helpers import make_artifact

TEXTS = ["a gorgeous, witty, seductive movie.", "the plot is a mess", "fine"]
PAIRS = [("A man plays a guitar.", "Someone plays an instrument."), ("one", "two")]
IOB = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
TOLERANCE = 1e-6  # same inputs, same batch shape: the answers agree to float32 rounding at most


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_backbone_dir, tiny_engine):
    """One server for the module: tenant `proto` with a 3-label task `sent` (versions 1 and 2), a
    multi-label task `tags`, a regression task `score`, and `spans`: a sequence task's version 1, then
    a token (NER) head as version 2."""
    folder = tmp_path_factory.mktemp("protocols")
    proc, base = start_server(tiny_backbone_dir, folder / "data", folder / "server.log")
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        key = httpx.post(f"{base}/v1/admin/tenants", json={"name": "proto"}, headers=admin).json()["api_key"]
        headers = {"Authorization": f"Bearer {key}"}
        tasks = [("sent", 3, ProblemType.SINGLE_LABEL, 1), ("sent", 3, ProblemType.SINGLE_LABEL, 2),
                 ("tags", 4, ProblemType.MULTI_LABEL, 3), ("score", 1, ProblemType.REGRESSION, 4),
                 ("spans", 3, ProblemType.SINGLE_LABEL, 5)]
        artifacts = [(task, make_artifact(tiny_engine.shape, 3 + seed, labels, kind, seed=seed)) for task, labels, kind, seed in tasks]
        artifacts.append(("spans", make_artifact(tiny_engine.shape, 4, len(IOB), seed=6, head=HeadKind.TOKEN, labels=IOB)))
        for task, artifact in artifacts:
            data = artifact_to_bytes(artifact)
            httpx.put(f"{base}/v1/tasks/{task}", files={"file": ("a.safetensors", data)}, headers=dict(headers)).raise_for_status()
        yield base, key, headers
    finally:
        stop_process(proc)


def classify(served, task, inputs, **extra) -> dict:
    base, _, headers = served
    body = {"task": task, "inputs": [i if isinstance(i, str) else {"text": i[0], "text_pair": i[1]} for i in inputs], **extra}
    response = httpx.post(f"{base}/v1/classify", json=body, headers=dict(headers))
    assert response.status_code == 200, response.text
    return response.json()


def score_rows(answer: dict) -> list[list[float]]:
    return [list(result["scores"].values()) for result in answer["results"]]


def assert_close(got, expected):
    assert np.asarray(got).shape == np.asarray(expected).shape
    assert np.max(np.abs(np.asarray(got, dtype=np.float64) - np.asarray(expected, dtype=np.float64))) <= TOLERANCE


@pytest.fixture(scope="module")
def triton_client(served):
    # Calls below pass dict(headers): tritonclient adds Inference-Header-Content-Length to the dict it gets.
    base, _, _ = served
    client = triton.InferenceServerClient(url=base.removeprefix("http://"))
    yield client
    client.close()


def _text_inputs(texts, pairs=None, binary=True):
    tensors = [triton.InferInput("text", [len(texts)], "BYTES")]
    tensors[0].set_data_from_numpy(np.array(texts, dtype=object), binary_data=binary)
    if pairs is not None:
        tensors.append(triton.InferInput("text_pair", [len(pairs)], "BYTES"))
        tensors[1].set_data_from_numpy(np.array(pairs, dtype=object), binary_data=binary)
    return tensors


def test_tritonclient_health_metadata_and_readiness(served, triton_client):
    _, _, headers = served
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.get_server_metadata()["extensions"] == ["binary_tensor_data"]
    assert triton_client.is_model_ready("sent", headers=dict(headers))
    assert triton_client.is_model_ready("sent", "1", headers=dict(headers))
    assert not triton_client.is_model_ready("sent", "7", headers=dict(headers))
    assert not triton_client.is_model_ready("nope", headers=dict(headers))
    assert not triton_client.is_model_ready("sent")  # no key: 401
    meta = triton_client.get_model_metadata("sent", headers=dict(headers))
    assert meta["name"] == "sent" and meta["versions"] == ["1", "2"]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("text", "BYTES", [-1]), ("text_pair", "BYTES", [-1])]
    scores, label = meta["outputs"]
    assert (scores["datatype"], scores["shape"], scores["labels"]) == ("FP32", [-1, 3], ["label_0", "label_1", "label_2"])
    assert (label["name"], label["datatype"]) == ("label", "BYTES")
    assert triton_client.get_model_metadata("sent", "1", headers=dict(headers))["versions"] == ["1"]
    tags = triton_client.get_model_metadata("tags", headers=dict(headers))
    assert [o["name"] for o in tags["outputs"]] == ["scores"]  # no single label for a multi-label task
    with pytest.raises(InferenceServerException) as refused:
        triton_client.get_model_metadata("nope", headers=dict(headers))
    assert refused.value.status() == "404" and "task 'nope' not found" in refused.value.message()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_equals_v1_classify(served, triton_client, binary):
    _, _, headers = served
    expected = classify(served, "sent", TEXTS)
    outputs = None if binary else [triton.InferRequestedOutput(n, binary_data=False) for n in ("scores", "label")]
    result = triton_client.infer("sent", _text_inputs(TEXTS, binary=binary), outputs=outputs, headers=dict(headers))
    assert_close(result.as_numpy("scores"), score_rows(expected))
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()]
    assert labels == [r["label"] for r in expected["results"]]
    response = result.get_response()
    assert response["model_version"] == "2" and response["outputs"][0]["shape"] == [3, 3]
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary


def test_tritonclient_pairs_versions_and_regression(served, triton_client):
    _, _, headers = served
    texts, pairs = [p[0] for p in PAIRS] + ["alone"], [p[1] for p in PAIRS] + [""]  # "": no pair
    expected = classify(served, "sent", PAIRS + ["alone"], version=1)
    result = triton_client.infer("sent", _text_inputs(texts, pairs), model_version="1", headers=dict(headers))
    assert result.get_response()["model_version"] == "1"
    assert_close(result.as_numpy("scores"), score_rows(expected))
    regression = triton_client.infer("score", _text_inputs(TEXTS), headers=dict(headers))
    assert_close(regression.as_numpy("scores"), score_rows(classify(served, "score", TEXTS)))
    for algorithm in ("gzip", "deflate"):
        compressed = triton_client.infer("score", _text_inputs(TEXTS), headers=dict(headers), request_compression_algorithm=algorithm)
        assert_close(compressed.as_numpy("scores"), regression.as_numpy("scores"))
    mixed = [triton.InferRequestedOutput("scores", binary_data=False)]
    raw = triton_client.infer("tags", _text_inputs(TEXTS), outputs=mixed, headers=dict(headers), parameters={"raw_scores": True})
    assert_close(raw.as_numpy("scores"), score_rows(classify(served, "tags", TEXTS, raw_scores=True)))


def test_kserve_errors_have_the_protocols_shape(served, triton_client):
    base, _, headers = served
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer("tags", _text_inputs(TEXTS), outputs=[triton.InferRequestedOutput("label")], headers=dict(headers))
    assert refused.value.status() == "400" and "only single-label tasks" in refused.value.message()
    with pytest.raises(InferenceServerException) as refused:
        triton_client.infer("sent", _text_inputs(TEXTS))
    assert refused.value.status() == "401"
    bad = {"inputs": [{"name": "text", "datatype": "FP32", "shape": [1], "data": [1.0]}]}
    response = httpx.post(f"{base}/v2/models/sent/infer", json=bad, headers=dict(headers))
    assert response.status_code == 400 and response.json() == {"error": "input 'text': expected datatype BYTES, got 'FP32'"}
    short = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": ["one"]}]}
    response = httpx.post(f"{base}/v2/models/sent/infer", json=short, headers=dict(headers))
    assert response.status_code == 400 and "shape [2] holds 2 elements, got 1" in response.json()["error"]
    long = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["word " * 300]}], "parameters": {"truncate": False}}
    response = httpx.post(f"{base}/v2/models/sent/infer", json=long, headers=dict(headers))
    assert response.status_code == 422 and isinstance(response.json()["error"], str)
    assert httpx.get(f"{base}/v2/models/sent/versions/x", headers=dict(headers)).status_code == 404


def test_a_token_task_is_no_kserve_model_and_every_call_says_why(served, triton_client):
    _, _, headers = served
    why = "expected a sequence-classification task (KServe v2 answers a row of scores per input), got a token-classification one"
    assert not triton_client.is_model_ready("spans", headers=dict(headers))  # the route serves version 2, the token head
    assert not triton_client.is_model_ready("spans", "2", headers=dict(headers))
    assert triton_client.is_model_ready("spans", "1", headers=dict(headers))
    refusals = [
        lambda: triton_client.get_model_metadata("spans", headers=dict(headers)),
        lambda: triton_client.get_model_metadata("spans", "2", headers=dict(headers)),
        lambda: triton_client.infer("spans", _text_inputs(TEXTS), headers=dict(headers)),
    ]
    for call in refusals:
        with pytest.raises(InferenceServerException) as refused:
            call()
        assert refused.value.status() == "404" and "'spans' version 2" in refused.value.message()
        assert why in refused.value.message() and "POST /v1/classify" in refused.value.message()
    sequence = triton_client.get_model_metadata("spans", "1", headers=dict(headers))
    assert [o["name"] for o in sequence["outputs"]] == ["scores", "label"]
    result = triton_client.infer("spans", _text_inputs(TEXTS), model_version="1", headers=dict(headers))
    assert_close(result.as_numpy("scores"), score_rows(classify(served, "spans", TEXTS, version=1)))
    assert all("entities" in r for r in classify(served, "spans", TEXTS)["results"])  # /v1/classify serves version 2


def test_huggingface_inference_client_text_classification(served):
    base, key, _ = served
    client = InferenceClient(model=f"{base}/models/sent", token=key)
    expected = classify(served, "sent", TEXTS[:1])["results"][0]["scores"]
    got = client.text_classification(TEXTS[0])
    assert [e.label for e in got] == sorted(expected, key=expected.get, reverse=True)
    assert_close([e.score for e in got], [expected[e.label] for e in got])
    top = client.text_classification(TEXTS[0], top_k=1, function_to_apply="none")
    raw = classify(served, "sent", TEXTS[:1], raw_scores=True)["results"][0]
    assert [e.label for e in top] == [raw["label"]] and abs(top[0].score - raw["score"]) <= TOLERANCE
    with pytest.raises(HfHubHTTPError) as refused:
        InferenceClient(model=f"{base}/models/nope", token=key).text_classification("x")
    assert refused.value.response.status_code == 404 and refused.value.response.json() == {"error": "task 'nope' not found"}


def test_tei_predict_shapes_and_scores(served):
    base, _, headers = served
    url = f"{base}/v1/tasks/sent/predict"

    def predict(body):
        response = httpx.post(url, json=body, headers=dict(headers))
        assert response.status_code == 200, response.text
        return response.json()

    def ranked(scores: dict):
        return sorted(scores.items(), key=lambda kv: kv[1], reverse=True)

    one = predict({"inputs": TEXTS[0]})
    expected = classify(served, "sent", TEXTS[:1])["results"][0]["scores"]
    assert [e["label"] for e in one] == [label for label, _ in ranked(expected)]
    assert_close([e["score"] for e in one], [score for _, score in ranked(expected)])
    pair = predict({"inputs": list(PAIRS[0])})  # two strings are one pair, as in TEI
    assert_close([e["score"] for e in pair], [s for _, s in ranked(classify(served, "sent", PAIRS[:1])["results"][0]["scores"])])
    batch = predict({"inputs": [TEXTS[0], list(PAIRS[1]), TEXTS[2]], "raw_scores": True})
    raw = classify(served, "sent", [TEXTS[0], PAIRS[1], TEXTS[2]], raw_scores=True)
    assert len(batch) == 3
    for got, want in zip(batch, raw["results"]):
        assert_close([e["score"] for e in got], [s for _, s in ranked(want["scores"])])
    too_long = httpx.post(url, json={"inputs": "word " * 300}, headers=dict(headers))  # TEI's default: truncate false
    assert too_long.status_code == 422 and too_long.json()["error_type"] == "invalid_input"
    assert len(predict({"inputs": "word " * 300, "truncate": True})) == 3
    missing = httpx.post(f"{base}/v1/tasks/nope/predict", json={"inputs": "x"}, headers=dict(headers))
    assert missing.status_code == 404 and missing.json() == {"error": "task 'nope' not found", "error_type": "not_found"}


def test_v1_classify_pins_a_version_and_gives_raw_scores(served):
    active = classify(served, "sent", TEXTS)
    pinned = classify(served, "sent", TEXTS, version=1)
    assert (active["version"], pinned["version"]) == (2, 1) and score_rows(active) != score_rows(pinned)
    base, _, headers = served
    missing = httpx.post(f"{base}/v1/classify", json={"task": "sent", "inputs": ["x"], "version": 9}, headers=dict(headers))
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "task 'sent' has no version 9: expected one of 1, 2"
    raw = classify(served, "sent", TEXTS, raw_scores=True)
    for logits, probabilities in zip(score_rows(raw), score_rows(active)):
        exp = [math.exp(x) for x in logits]
        assert_close([e / sum(exp) for e in exp], probabilities)
    tags_raw, tags = classify(served, "tags", TEXTS, raw_scores=True), classify(served, "tags", TEXTS)
    for raw_result, result in zip(tags_raw["results"], tags["results"]):
        assert raw_result["labels"] == result["labels"]  # logit >= 0 exactly when sigmoid >= 0.5
        assert_close([1 / (1 + math.exp(-x)) for x in raw_result["scores"].values()], list(result["scores"].values()))
