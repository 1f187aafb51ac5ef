"""`prefix-server train` as a command: the artifact file, the upload client, and error exits."""

from __future__ import annotations

import argparse
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server.artifact import read_artifact_file
from server.commands import train as train_command
from server.training import UploadError, upload_artifact
from tests.training.tiny_data import single_label_rows, write_rows


@pytest.fixture
def stub_server():
    """A local stand-in for PUT /v1/tasks/{task}: records each request, answers with `reply`."""
    state = {"requests": [], "reply": (201, {"task": "demo", "version": 1, "sha256": "abc"})}

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state["requests"].append((self.path, dict(self.headers), body))
            status, answer = state["reply"]
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


def _parse(argv):
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    return parser.parse_args(argv)


def _train_argv(tmp_path, backbone, *extra):
    data = write_rows(tmp_path / "train.jsonl", single_label_rows(16))
    out = tmp_path / "out.safetensors"
    argv = ["train", "--train", str(data), "--eval", str(data), "--out", str(out), "--backbone", str(backbone)]
    return [*argv, "--steps", "2", "--batch-size", "8", "--prefix-len", "3", "--quiet", *extra], out


def test_train_writes_and_uploads(tiny_engine, tiny_backbone_dir, tmp_path, stub_server, capsys):
    argv, out = _train_argv(tmp_path, tiny_backbone_dir, "--labels", "negative,positive", "--upload",
                            stub_server["url"], "--task", "demo", "--api-key", "k-123")
    args = _parse(argv)
    assert args.func(args) == 0
    artifact = read_artifact_file(out, tiny_engine.shape)
    assert artifact.labels == ("negative", "positive")
    path, headers, body = stub_server["requests"][0]
    assert path == "/v1/tasks/demo"
    assert headers["Authorization"] == "Bearer k-123"
    assert headers["Content-Type"].startswith("multipart/form-data; boundary=")
    assert b'name="file"; filename="demo.safetensors"' in body and out.read_bytes() in body
    assert "uploaded demo version 1" in capsys.readouterr().out


def test_upload_refusal_shows_the_server_message(tmp_path, stub_server):
    stub_server["reply"] = (422, {"error": {"code": "invalid_artifact", "message": "expected P <= 510, got 600"}})
    with pytest.raises(UploadError, match="HTTP 422: invalid_artifact: expected P <= 510, got 600"):
        upload_artifact(stub_server["url"], "demo", b"bytes")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--upload", "http://127.0.0.1:9", "--task", "Bad Name"], "--task: expected a name matching"),
        (["--task", "demo"], "--task: given without --upload"),
        (["--labels", "negative,neutral"], "unknown label 'positive'"),
    ],
)
def test_train_errors_exit_2_with_a_message(tiny_backbone_dir, tmp_path, capsys, extra, message):
    argv, out = _train_argv(tmp_path, tiny_backbone_dir, *extra)
    args = _parse(argv)
    assert args.func(args) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_upload_url_must_be_http():
    with pytest.raises(ValueError, match="expected an http\\(s\\) URL"):
        upload_artifact("file:///etc/passwd", "demo", b"x")
