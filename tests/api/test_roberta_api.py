"""A RoBERTa-family backbone served over HTTP (in the engine process, as `serve` runs it): /v1/info
names the family, RoBERTa artifacts classify (sentence and token tasks), and an artifact made for
another family is refused saying which."""

from __future__ import annotations

import dataclasses

from harness.random_backbone import write_random_roberta_backbone
from server.artifact import HeadKind, artifact_to_bytes
from server.engine.backbone import read_backbone_folder
from tests.api.conftest import make_settings, running_client, upload
from tests.helpers import make_artifact, reference_scores

IOB = ("O", "B-LOC", "I-LOC")


def test_roberta_backbone_over_http(tmp_path):
    folder = write_random_roberta_backbone(tmp_path / "roberta")
    shape = read_backbone_folder(folder).shape()
    with running_client(make_settings(tmp_path / "data", folder, engine_process=True)) as client:
        info = client.get("/v1/info").json()
        assert info["backbone"]["family"] == "roberta" and info["limits"]["max_prefix_len"] == shape.max_prefix_len
        sentence = dataclasses.replace(make_artifact(shape, 5, 3, seed=1), backbone_family="roberta")
        assert upload(client, "topic", artifact_to_bytes(sentence)).status_code == 201
        answer = client.post("/v1/classify", json={"task": "topic", "inputs": [{"text": "a man", "text_pair": "a guitar"}]})
        assert answer.status_code == 200, answer.text
        got = list(answer.json()["results"][0]["scores"].values())
        expected = reference_scores(folder, sentence, ("a man", "a guitar"))
        assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-5
        token = make_artifact(shape, 3, len(IOB), seed=2, head=HeadKind.TOKEN, labels=IOB)
        assert upload(client, "places", artifact_to_bytes(token)).status_code == 201
        spans = client.post("/v1/classify", json={"task": "places", "inputs": ["Paris is in New York"]})
        assert spans.status_code == 200 and "entities" in spans.json()["results"][0]
        for entity in spans.json()["results"][0]["entities"]:
            assert "Paris is in New York"[entity["start"] : entity["end"]] == entity["text"]
        bert_made = dataclasses.replace(sentence, backbone_family="bert")
        refused = upload(client, "other", artifact_to_bytes(bert_made))
        assert refused.status_code == 422
        assert "expected this server's 'roberta', got 'bert'" in refused.json()["error"]["message"]
