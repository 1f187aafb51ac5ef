"""OpenTelemetry: with `opentelemetry` on, a classify records tokenize, queue-wait and forward-pass
spans (in that order, end to end); off, no tracer exists at all."""

from __future__ import annotations

from server import tracing
from tests.api.conftest import make_settings, running_client, upload


class _Span:
    def __init__(self, log, name, start_time, attributes):
        self.log, self.name, self.start, self.attributes = log, name, start_time, attributes or {}

    def end(self, end_time):
        self.log.append((self.name, self.start, end_time, self.attributes))


class _Tracer:
    def __init__(self):
        self.finished = []

    def start_span(self, name, start_time=None, attributes=None):
        return _Span(self.finished, name, start_time, attributes)


def test_spans_cover_tokenizing_the_queue_and_the_forward_pass(tmp_path, tiny_backbone_dir, artifact_bytes, monkeypatch):
    with running_client(make_settings(tmp_path / "data", tiny_backbone_dir, opentelemetry=True)) as client:
        assert tracing.TRACER is not None  # the API's tracer: spans go wherever the SDK, if any, sends them
        fake = _Tracer()
        monkeypatch.setattr(tracing, "TRACER", fake)
        assert upload(client, "t", artifact_bytes()).status_code == 201
        assert client.post("/v1/classify", json={"task": "t", "inputs": ["a", "b"]}).status_code == 200
    names = [name for name, *_ in fake.finished]
    assert names == ["tokenize", "queue wait", "forward pass"]
    (_, t0, t1, attrs), (_, q0, q1, _), (_, f0, f1, _) = fake.finished
    assert t0 <= t1 == q0 <= q1 == f0 <= f1 and attrs == {"inputs": 2}


def test_no_tracer_while_off(client):
    assert tracing.TRACER is None
