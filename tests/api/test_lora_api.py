"""LoRA tasks over HTTP (SPEC 1c): PEFT adapters made with save_pretrained and uploaded as zips answer
what `PeftModel` computes; what cannot be served is refused with 422 and nothing is stored; concurrent
traffic mixing prefix, LoRA and LoRA+prefix tasks of both heads equals each request alone (a real
`serve` process, its engine in its own process)."""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from transformers import AutoTokenizer

from harness.random_backbone import write_random_backbone
from server.api.entities import entities
from server.artifact import HeadKind, artifact_to_bytes
from server.importers import import_checkpoint
from tests.api.conftest import make_settings, running_client
from tests.api.test_server_process import ADMIN, start_server
from tests.helpers import make_artifact
from tests.lora_helpers import ALL_LINEAR, make_peft_adapter, peft_scores, zip_folder

IOB = ("O", "B-LOC", "I-LOC")
TEXTS = ["Paris is in France and Berlin in Germany", "a gorgeous, witty, seductive movie", "short"]


def upload_zip(client, task, adapter, **form):
    return client.put(f"/v1/tasks/{task}", files={"file": ("adapter.zip", zip_folder(adapter))}, data=form)


def test_peft_lora_zips_answer_what_peft_computes(tmp_path, tiny_backbone_dir):
    sequence = make_peft_adapter(tiny_backbone_dir, tmp_path / "sentiment", r=8, target_modules=ALL_LINEAR)
    token = make_peft_adapter(tiny_backbone_dir, tmp_path / "places", HeadKind.TOKEN, r=4, lora_alpha=16)
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_dir)
    with running_client(make_settings(tmp_path / "data", tiny_backbone_dir, engine_process=True)) as client:
        created = upload_zip(client, "sentiment", sequence, labels="neg,neutral,pos")
        assert created.status_code == 201, created.text
        assert created.json()["prefix_len"] == 0 and created.json()["labels"] == ["neg", "neutral", "pos"]
        assert upload_zip(client, "places", token, labels=",".join(IOB)).status_code == 201
        answer = client.post("/v1/classify", json={"task": "sentiment", "inputs": TEXTS})
        assert answer.status_code == 200, answer.text
        for text, result in zip(TEXTS, answer.json()["results"]):
            expected = peft_scores(tiny_backbone_dir, sequence, HeadKind.SEQUENCE, 3, text)
            assert max(abs(a - b) for a, b in zip(result["scores"].values(), expected)) <= 1e-5
        answer = client.post("/v1/classify", json={"task": "places", "inputs": TEXTS})
        assert answer.status_code == 200, answer.text
        found = 0
        for text, result in zip(TEXTS, answer.json()["results"]):
            offsets = [tuple(o) for o in tokenizer(text, return_offsets_mapping=True)["offset_mapping"]]
            expected = entities(text, offsets, peft_scores(tiny_backbone_dir, token, HeadKind.TOKEN, 3, text), IOB)
            got = result["entities"]
            assert [(e["label"], e["start"], e["end"]) for e in got] == [(e["label"], e["start"], e["end"]) for e in expected]
            assert all(abs(g["score"] - e["score"]) <= 1e-5 for g, e in zip(got, expected))
            found += len(got)
        assert found, "the random head tags some words"


REFUSED = [
    (dict(use_dora=True), "use_dora expected false"),
    (dict(bias="all"), "bias expected 'none'"),
    (dict(target_modules=["word_embeddings"]), "LoRA on an embedding"),
    (dict(target_modules=["dense"]), "LoRA on 'pooler.dense'"),
    (dict(r=65), "rank r expected 1..64, got 65"),
]


def test_what_cannot_be_served_is_refused_and_nothing_stored(client, tmp_path, tiny_backbone_dir, tiny_engine):
    for index, (options, message) in enumerate(REFUSED):
        adapter = make_peft_adapter(tiny_backbone_dir, tmp_path / f"adapter{index}", **options)
        response = upload_zip(client, f"bad{index}", adapter)
        assert response.status_code == 422 and message in response.json()["error"]["message"], response.text
        assert client.get(f"/v1/tasks/bad{index}").status_code == 404
    wider = write_random_backbone(tmp_path / "wider", hidden_size=48, num_heads=4, intermediate_size=96)
    misfit = upload_zip(client, "misfit", make_peft_adapter(wider, tmp_path / "misfit"))
    assert misfit.status_code == 422 and "expected shape [r, 32] for this backbone" in misfit.json()["error"]["message"]
    assert client.get("/v1/tasks/misfit").status_code == 404
    assert client.get("/v1/tasks").json()["tasks"] == []


@pytest.fixture
def server(tmp_path, tiny_backbone_dir):
    proc, base = start_server(tiny_backbone_dir, tmp_path / "data", tmp_path / "server.log")
    yield base
    proc.terminate()
    proc.wait(timeout=10)


def test_concurrent_mixed_traffic_equals_each_request_alone(server, tmp_path, tiny_backbone_dir, tiny_engine):
    base, shape = server, tiny_engine.shape
    key = httpx.post(f"{base}/v1/admin/tenants", json={"name": "mix"}, headers={"Authorization": f"Bearer {ADMIN}"}).json()["api_key"]
    headers = {"Authorization": f"Bearer {key}"}
    with_prefix = make_artifact(shape, 6, 3, seed=7)
    lora_token = import_checkpoint(make_peft_adapter(tiny_backbone_dir, tmp_path / "t", HeadKind.TOKEN, r=2), shape, labels=IOB)
    tasks = {
        "prefix": artifact_to_bytes(make_artifact(shape, 4, 3, seed=5)),
        "prefix-tokens": artifact_to_bytes(make_artifact(shape, 3, 3, seed=6, head=HeadKind.TOKEN, labels=IOB)),
        "lora": artifact_to_bytes(import_checkpoint(make_peft_adapter(tiny_backbone_dir, tmp_path / "s", r=8), shape)),
        "lora-tokens": artifact_to_bytes(lora_token),
        "lora-prefix": artifact_to_bytes(dataclasses.replace(
            import_checkpoint(make_peft_adapter(tiny_backbone_dir, tmp_path / "b", r=3, target_modules=ALL_LINEAR), shape),
            key_values=with_prefix.key_values)),
        "lora-prefix-tokens": artifact_to_bytes(dataclasses.replace(lora_token, key_values=with_prefix.key_values)),
    }
    for task, data in tasks.items():
        response = httpx.put(f"{base}/v1/tasks/{task}", files={"file": ("a.safetensors", data)}, headers=headers)
        assert response.status_code == 201, response.text
    calls = [{"task": task, "inputs": [text]} for task in tasks for text in TEXTS]
    alone = [httpx.post(f"{base}/v1/classify", json=body, headers=headers).json() for body in calls]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda b: httpx.post(f"{base}/v1/classify", json=b, headers=headers, timeout=30).json(), calls * 3))
    for expected, got in zip(alone * 3, together):
        assert _numbers(got) == pytest.approx(_numbers(expected), abs=1e-5, rel=0)
        assert _labels(got) == _labels(expected)
    metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    batches = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("prefix_server_batch_size_count"))
    assert batches < len(calls) * 4, "concurrent requests must share forward passes"


def _numbers(answer: dict) -> list[float]:
    result = answer["results"][0]
    if "entities" in result:
        return [e["score"] for e in result["entities"]]
    return list(result["scores"].values())


def _labels(answer: dict) -> list:
    result = answer["results"][0]
    return [(e["label"], e["start"], e["end"]) for e in result["entities"]] if "entities" in result else list(result["scores"])
