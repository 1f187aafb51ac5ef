"""SIGTERM under load, with real processes: every request accepted before the signal is answered 200
with its real answer or 503 with Retry-After (never 500, never dropped), uploads in flight commit or
fail whole, and the process exits 0 within its drain deadline."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from server.api.shutdown import ANSWER_SLACK_S
from server.engine.backbone import default_backbone_dir
from tests.api.test_server_process import ADMIN, start_server

PREFIXES = Path(__file__).resolve().parents[2] / "prefixes"
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
LONG = "the film is long and winding, with many scenes that go nowhere and a few that land " * 6
GRACE_S = 3.0
# Exit comes at the latest at the deadline, plus the slack for the last answers, plus the engine's stop.
EXIT_BOUND_S = GRACE_S + ANSWER_SLACK_S + 15


def _classify(base: str, inputs: list[str], timeout: float = 120) -> httpx.Response:
    return httpx.post(f"{base}/v1/classify", json={"task": "sentiment", "inputs": inputs}, headers=ADMIN_HEADERS, timeout=timeout)


@pytest.mark.slow
@pytest.mark.minilm
def test_sigterm_under_load_answers_every_request_200_or_503_and_exits_0(tmp_path):
    """32 clients x 128 long inputs on MiniLM (far more work than the grace allows), on connections
    opened beforehand; SIGTERM once the first answer is back."""
    proc, base = start_server(
        default_backbone_dir(), tmp_path / "data", tmp_path / "server.log", PREFIX_SERVER_PREFIXES_DIR=str(PREFIXES),
        PREFIX_SERVER_SHUTDOWN_GRACE_S=str(GRACE_S), PREFIX_SERVER_TENANT_MAX_QUEUED_INPUTS="4096",
        PREFIX_SERVER_MAX_WAIT_MS="2",
    )
    requests = [[f"{LONG} {client}-{i}" for i in range(128)] for client in range(32)]
    try:
        # The real answer of each request's first input, alone, before the load.
        alone = [_classify(base, inputs[:1]).json()["results"][0]["scores"] for inputs in requests]
        clients = [httpx.Client(base_url=base, headers=ADMIN_HEADERS, timeout=120) for _ in requests]
        for client in clients:
            client.get("/healthz").raise_for_status()  # the connection is open before the signal
        first_answer = threading.Event()

        def send(client: httpx.Client, inputs: list[str]) -> httpx.Response | str:
            try:
                response = client.post("/v1/classify", json={"task": "sentiment", "inputs": inputs})
            except httpx.HTTPError as error:
                return repr(error)
            first_answer.set()
            return response

        with ThreadPoolExecutor(len(requests)) as pool:
            futures = [pool.submit(send, client, inputs) for client, inputs in zip(clients, requests)]
            assert first_answer.wait(timeout=300), "no answer came back"
            signalled = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            answers = [future.result() for future in futures]
            code = proc.wait(timeout=EXIT_BOUND_S + 60)
            exited_after = time.monotonic() - signalled
        for client in clients:
            client.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = (tmp_path / "server.log").read_text()
    statuses = [a.status_code if isinstance(a, httpx.Response) else a for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses  # both paths were taken
    for answer, expected in zip(answers, alone):
        if answer.status_code == 503:
            assert answer.headers["retry-after"] == "1" and "shutting down" in answer.json()["error"]["message"]
        else:
            scores = answer.json()["results"][0]["scores"]
            assert scores.keys() == expected.keys()
            assert all(abs(scores[label] - expected[label]) < 1e-4 for label in scores)
    assert code == 0, log[-3000:]
    assert exited_after < EXIT_BOUND_S, f"exited {exited_after:.1f} s after SIGTERM"
    assert "Traceback" not in log and "never retrieved" not in log, log[-3000:]


@pytest.mark.slow
def test_sigterm_during_uploads_commits_or_refuses_each_whole(tmp_path, tiny_backbone_dir, artifact_bytes):
    data_dir, log_path = tmp_path / "data", tmp_path / "server.log"
    proc, base = start_server(tiny_backbone_dir, data_dir, log_path, PREFIX_SERVER_SHUTDOWN_GRACE_S="2")
    acknowledged: list[tuple[int, str]] = []
    enough = threading.Event()

    def upload_until_refused() -> None:
        with httpx.Client(base_url=base, headers=ADMIN_HEADERS, timeout=30) as client:
            for seed in range(10_000):
                try:
                    response = client.put("/v1/tasks/t", files={"file": ("p.safetensors", artifact_bytes(seed=seed))})
                except httpx.HTTPError:
                    return  # the listener closed: this upload never reached the server, or was cut
                if response.status_code != 201:
                    assert response.status_code == 503 and response.headers["retry-after"], response.text
                    return
                acknowledged.append((response.json()["version"], response.json()["sha256"]))
                if len(acknowledged) >= 5:
                    enough.set()

    try:
        loaders = [threading.Thread(target=upload_until_refused) for _ in range(3)]
        for loader in loaders:
            loader.start()
        assert enough.wait(timeout=120), log_path.read_text()[-3000:]
        proc.send_signal(signal.SIGTERM)
        for loader in loaders:
            loader.join(timeout=120)
        assert proc.wait(timeout=60) == 0, log_path.read_text()[-3000:]
        proc, base = start_server(tiny_backbone_dir, data_dir, log_path)  # the registry as it was left
        task = httpx.get(f"{base}/v1/tasks/t", headers=ADMIN_HEADERS).json()
        stored = {v["version"]: v["sha256"] for v in task["versions"]}
        assert sorted(stored) == list(range(1, len(stored) + 1)), "versions have gaps"
        assert all(stored.get(version) == sha for version, sha in acknowledged), "an acknowledged upload was lost"
        for version in stored:  # each version's blob is whole: it loads and answers
            answer = httpx.post(f"{base}/v1/classify", json={"task": "t", "version": version, "inputs": ["x"]},
                                headers=ADMIN_HEADERS, timeout=30)
            assert answer.status_code == 200, answer.text
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
