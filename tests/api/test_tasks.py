"""Uploads, versions, routing and deletion through the HTTP API."""

from __future__ import annotations

import struct
from collections import Counter

from tests.api.conftest import make_settings, running_client, upload


def _blob_files(data_dir):
    return sorted(p for p in (data_dir / "blobs").rglob("*") if p.is_file()) if (data_dir / "blobs").exists() else []


def test_upload_creates_versions_and_latest_becomes_active(client, artifact_bytes):
    first = upload(client, "intent", artifact_bytes(prefix_len=3, num_labels=2, seed=1))
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["task"] == "intent" and body["version"] == 1 and body["prefix_len"] == 3
    assert body["problem_type"] == "single_label_classification" and body["labels"] == ["label_0", "label_1"]
    assert len(body["sha256"]) == 64
    second = upload(client, "intent", artifact_bytes(prefix_len=6, num_labels=2, seed=2)).json()
    assert second["version"] == 2
    shown = client.get("/v1/tasks/intent").json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    assert shown["route"] == {"version": 2}
    assert shown["versions"][0]["metadata"] == {"author": "tests"}
    assert client.post("/v1/classify", json={"task": "intent", "inputs": ["x"]}).json()["version"] == 2
    listed = client.get("/v1/tasks").json()["tasks"]
    assert [t["task"] for t in listed] == ["intent"]


def test_pin_and_canary_routes(client, artifact_bytes):
    for seed in (1, 2):
        upload(client, "canary", artifact_bytes(seed=seed))
    pinned = client.put("/v1/tasks/canary/route", json={"version": 1})
    assert pinned.status_code == 200 and pinned.json()["route"] == {"version": 1}
    versions = {client.post("/v1/classify", json={"task": "canary", "inputs": ["x"]}).json()["version"] for _ in range(5)}
    assert versions == {1}
    split = client.put("/v1/tasks/canary/route", json={"weights": {"1": 0.5, "2": 0.5}})
    assert split.status_code == 200 and split.json()["route"] == {"weights": {"1": 0.5, "2": 0.5}}
    seen = Counter(
        client.post("/v1/classify", json={"task": "canary", "inputs": ["x"]}).json()["version"] for _ in range(60)
    )
    assert seen[1] > 10 and seen[2] > 10, seen


def test_bad_routes_are_refused(client, artifact_bytes):
    upload(client, "r", artifact_bytes())
    cases = [
        ({"version": 7}, 422),
        ({"weights": {"1": 0.5}}, 422),
        ({"weights": {"x": 1.0}}, 422),
        ({}, 422),
        ({"version": 1, "weights": {"1": 1.0}}, 422),
    ]
    for body, status in cases:
        response = client.put("/v1/tasks/r/route", json=body)
        assert response.status_code == status, (body, response.text)
        assert response.json()["error"]["message"]
    assert client.put("/v1/tasks/ghost/route", json={"version": 1}).status_code == 404


def test_delete_task(client, artifact_bytes):
    upload(client, "gone", artifact_bytes())
    assert client.delete("/v1/tasks/gone").status_code == 204
    assert client.get("/v1/tasks/gone").status_code == 404
    assert client.post("/v1/classify", json={"task": "gone", "inputs": ["x"]}).status_code == 404
    assert client.delete("/v1/tasks/gone").status_code == 404


def test_bad_artifacts_are_refused_and_store_nothing(tmp_path, tiny_backbone_dir, artifact_bytes):
    data_dir = tmp_path / "data"
    good = artifact_bytes()
    bad_files = {
        "empty": b"",
        "pickle": b"\x80\x04\x95" + b"\x00" * 40,
        "truncated": good[: len(good) // 2],
        "absurd header": struct.pack("<Q", 2**62) + b"{}",
        "not json": struct.pack("<Q", 4) + b"nope",
        "wrong layers": None,
    }
    with running_client(make_settings(data_dir, tiny_backbone_dir)) as client:
        from server.artifact import BackboneShape, artifact_to_bytes
        from tests.helpers import make_artifact

        shape = BackboneShape(3, 4, 8, 128, "x")  # one layer too many for the tiny backbone
        bad_files["wrong layers"] = artifact_to_bytes(make_artifact(shape))
        for name, data in bad_files.items():
            response = upload(client, "task", data)
            assert response.status_code == 422, (name, response.text)
            assert response.json()["error"]["message"], name
        assert client.get("/v1/tasks").json()["tasks"] == []
        assert client.get("/v1/tasks/task").status_code == 404
        assert client.get("/healthz").status_code == 200
        missing_field = client.put("/v1/tasks/task", files={"other": ("x", b"abc")})
        assert missing_field.status_code == 422
    assert _blob_files(data_dir) == []


def test_oversized_upload_is_413_before_reading(tmp_path, tiny_backbone_dir, artifact_bytes):
    settings = make_settings(tmp_path / "data", tiny_backbone_dir, max_upload_bytes=1000)
    with running_client(settings) as client:
        response = upload(client, "big", b"\0" * 5000)
        assert response.status_code == 413
        assert "at most 1000 bytes" in response.json()["error"]["message"]
        assert client.get("/v1/tasks").json()["tasks"] == []


def test_state_survives_a_restart(tmp_path, tiny_backbone_dir, artifact_bytes):
    settings = make_settings(tmp_path / "data", tiny_backbone_dir)
    with running_client(settings) as client:
        upload(client, "keep", artifact_bytes(seed=1))
        upload(client, "keep", artifact_bytes(seed=2))
        client.put("/v1/tasks/keep/route", json={"version": 1})
        before = client.post("/v1/classify", json={"task": "keep", "inputs": ["same text"]}).json()
    with running_client(settings) as client:
        shown = client.get("/v1/tasks/keep").json()
        assert [v["version"] for v in shown["versions"]] == [1, 2] and shown["route"] == {"version": 1}
        after = client.post("/v1/classify", json={"task": "keep", "inputs": ["same text"]}).json()
    assert after == before


def test_a_new_version_serves_as_soon_as_its_upload_returned(client, artifact_bytes):
    upload(client, "fresh", artifact_bytes(seed=1))
    assert client.post("/v1/classify", json={"task": "fresh", "inputs": ["x"]}).json()["version"] == 1
    upload(client, "fresh", artifact_bytes(seed=2))
    assert client.post("/v1/classify", json={"task": "fresh", "inputs": ["x"]}).json()["version"] == 2
    client.delete("/v1/tasks/fresh")
    assert client.post("/v1/classify", json={"task": "fresh", "inputs": ["x"]}).status_code == 404


def test_a_peft_folder_uploads_as_a_zip(client, tiny_engine):
    import torch

    from tests.importers.builders import peft_adapter_config, peft_files, random_encoder, random_head, zip_bytes

    shape = tiny_engine.shape
    with torch.no_grad():
        output = random_encoder(shape, 5, projection=False)(torch.arange(5)[None])
    files = peft_files(output[0], random_head(shape, 2), peft_adapter_config(shape, 5))
    response = client.put(
        "/v1/tasks/from-peft", files={"file": ("adapter.zip", zip_bytes(files))}, data={"labels": "neg,pos"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["labels"] == ["neg", "pos"] and response.json()["prefix_len"] == 5
    answer = client.post("/v1/classify", json={"task": "from-peft", "inputs": ["fine"]}).json()
    assert set(answer["results"][0]["scores"]) == {"neg", "pos"}
    bad = client.put("/v1/tasks/bad-zip", files={"file": ("a.zip", b"PK\x03\x04garbage")})
    assert bad.status_code == 422 and bad.json()["error"]["message"]
    assert client.get("/v1/tasks/bad-zip").status_code == 404
