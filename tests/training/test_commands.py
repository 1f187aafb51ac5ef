"""`prefix-server train` as a command: the artifact file, the upload to a real server (its target checked
before training starts), and error exits."""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from server.artifact import read_artifact_file
from server.client import Client
from server.commands import train as train_command
from tests.api.test_server_process import ADMIN, start_server
from tests.training.tiny_data import single_label_rows, write_rows
from training import UploadError, upload_artifact
from training.upload import check_upload_target


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


@pytest.fixture(scope="module")
def real_server(tmp_path_factory, tiny_backbone_dir):
    """A real `serve` on the tiny backbone, multi-tenant, with tenant `trainer`: (base URL, its key)."""
    folder = tmp_path_factory.mktemp("upload-server")
    proc, base = start_server(tiny_backbone_dir, folder / "data", folder / "server.log")
    try:
        with Client(base, api_key=ADMIN) as admin:
            yield base, admin.create_tenant("trainer").api_key
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_train_writes_and_uploads(tiny_engine, tiny_backbone_dir, tmp_path, real_server, capsys):
    base, key = real_server
    argv, out = _train_argv(tmp_path, tiny_backbone_dir, "--labels", "negative,positive", "--upload",
                            base, "--task", "demo", "--api-key", key)
    args = _parse(argv)
    assert args.func(args) == 0
    artifact = read_artifact_file(out, tiny_engine.shape)
    assert artifact.labels == ("negative", "positive")
    with Client(base, api_key=key) as client:
        stored = client.get_task("demo").versions[-1]
    assert stored.sha256 == hashlib.sha256(out.read_bytes()).hexdigest() and stored.labels == artifact.labels
    assert f"uploaded demo version {stored.version}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "target, message",
    [
        (lambda base, key: [base, "wrong-key"], "HTTP 401: unauthorized: unknown API key (the key: --api-key or $PREFIX_SERVER_API_KEY)"),
        (lambda base, key: [base, None], "HTTP 401: unauthorized: expected"),
        (lambda base, key: ["http://127.0.0.1:9", key], "could not reach the server"),
    ],
    ids=["wrong-key", "no-key", "unreachable"],
)
def test_the_upload_target_is_checked_before_training(tiny_backbone_dir, tmp_path, real_server, capsys, monkeypatch, target, message):
    url, key = target(*real_server)
    monkeypatch.delenv("PREFIX_SERVER_API_KEY", raising=False)
    argv, out = _train_argv(tmp_path, tiny_backbone_dir, "--upload", url, "--task", "demo", *(["--api-key", key] if key else []))
    argv[argv.index("--train") + 1] = str(tmp_path / "absent.jsonl")  # training would fail on its data: it never starts
    args = _parse(argv)
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert message in err and "checked before training, nothing was trained" in err, err
    assert not out.exists()


def test_the_upload_target_must_run_the_training_backbone(real_server, tiny_engine):
    base, key = real_server
    check_upload_target(base, "demo", key, tiny_engine.shape.fingerprint)  # the same backbone: no complaint
    with pytest.raises(UploadError, match=r"expected a server on the backbone to train on \(sha256:other\), got one on sha256:"):
        check_upload_target(base, "demo", key, "sha256:other")
    with pytest.raises(ValueError, match="--task: task name: expected"):
        check_upload_target(base, "Demo", key, None)


def test_upload_refusal_shows_the_server_message(tmp_path, stub_server):
    stub_server["reply"] = (422, {"error": {"code": "invalid_artifact", "message": "expected P <= 510, got 600"}})
    with pytest.raises(UploadError, match="HTTP 422: invalid_artifact: expected P <= 510, got 600"):
        upload_artifact(stub_server["url"], "demo", b"bytes")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--upload", "http://127.0.0.1:9", "--task", "Bad Name"], "--task: task name: expected"),
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
