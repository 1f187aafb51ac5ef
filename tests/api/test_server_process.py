"""`prefix-server serve` as a real process on a free port: concurrent mixed traffic shares forward
passes and matches single requests; secrets stay out of the logs; kill -9 during uploads is safe;
SIGTERM drains and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from harness.processes import ServeProcess, child_pids, free_port, process_gone, stop_process, wait_until
from server.artifact import ProblemType

ADMIN = "proc-admin-token-123"


def start_server(backbone, data_dir: Path, log_path: Path, **env_overrides) -> tuple[subprocess.Popen, str]:
    """A multi-tenant `serve` on a free port, ready; returns its process and base URL (stop it with
    harness.processes.stop_process)."""
    env = dict(os.environ)
    env.update(
        PREFIX_SERVER_BACKBONE=str(backbone),
        PREFIX_SERVER_DATA_DIR=str(data_dir),
        PREFIX_SERVER_PREFIXES_DIR="",
        PREFIX_SERVER_ADMIN_TOKEN=ADMIN,
        PREFIX_SERVER_MAX_WAIT_MS="20",
    )
    env.update(env_overrides)
    server = ServeProcess("serve", env, log_path).start()
    return server.proc, server.base


@pytest.fixture
def server(tmp_path, tiny_backbone_dir):
    proc, base = start_server(tiny_backbone_dir, tmp_path / "data", tmp_path / "server.log")
    yield base, tmp_path / "server.log"
    stop_process(proc)


def _tenant(base, name):
    response = httpx.post(f"{base}/v1/admin/tenants", json={"name": name}, headers={"Authorization": f"Bearer {ADMIN}"})
    return response.json()["api_key"]


def test_concurrent_mixed_traffic_matches_single_requests(server, artifact_bytes):
    base, log_path = server
    kinds = [ProblemType.SINGLE_LABEL, ProblemType.MULTI_LABEL, ProblemType.REGRESSION]
    tenants = {name: _tenant(base, name) for name in ("t1", "t2", "t3")}
    calls = []
    for i, key in enumerate(tenants.values()):
        for j in range(3):
            data = artifact_bytes(prefix_len=1 + 7 * (i + j), num_labels=1 + (i + j) % 4, problem_type=kinds[j], seed=10 * i + j)
            headers = {"Authorization": f"Bearer {key}"}
            assert httpx.put(f"{base}/v1/tasks/task{j}", files={"file": ("a.safetensors", data)}, headers=headers).status_code == 201
            for text in ("short", "a somewhat longer sentence about movies", "x " * 200):
                calls.append((headers, {"task": f"task{j}", "inputs": [text]}))
    alone = [httpx.post(f"{base}/v1/classify", json=body, headers=h).json() for h, body in calls]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda c: httpx.post(f"{base}/v1/classify", json=c[1], headers=c[0], timeout=30).json(), calls * 3))
    for expected, got in zip(alone * 3, together):
        for e, g in zip(expected["results"], got["results"]):
            assert max(abs(e["scores"][k] - g["scores"][k]) for k in e["scores"]) <= 1e-5
    metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
    sizes = [line for line in metrics.splitlines() if line.startswith("prefix_server_batch_size_count")]
    batches = float(sizes[0].split()[-1])
    assert batches < len(calls) * 4, "concurrent requests must share forward passes"
    log_text = log_path.read_text()
    assert ADMIN not in log_text and all(key not in log_text for key in tenants.values())
    assert "**********" in log_text  # the settings line shows the token redacted


def test_kill_9_during_uploads_leaves_a_consistent_registry(tmp_path, tiny_backbone_dir, artifact_bytes):
    data_dir, log_path = tmp_path / "data", tmp_path / "server.log"
    proc, base = start_server(tiny_backbone_dir, data_dir, log_path)
    key = _tenant(base, "crash")
    headers = {"Authorization": f"Bearer {key}"}
    payloads = [artifact_bytes(prefix_len=2 + i % 5, seed=i) for i in range(40)]

    upload_seconds: list[float] = []  # how long each acknowledged upload took

    def uploader() -> None:
        for data in payloads:
            began = time.monotonic()
            try:
                response = httpx.put(f"{base}/v1/tasks/t", files={"file": ("a.safetensors", data)}, headers=headers, timeout=60)
            except httpx.HTTPError:
                return  # killed mid-request: this upload may or may not have committed
            assert response.status_code == 201, response.text
            upload_seconds.append(time.monotonic() - began)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(uploader)
        wait_until(lambda: upload_seconds or future.done(), 120, "a first acknowledged upload")
        assert upload_seconds, future.result()  # the uploader ended before its first upload: raises its error
        time.sleep(upload_seconds[0] / 2)  # the scenario, not a wait: the kill lands about half-way through a later upload
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        future.result()
    acknowledged = len(upload_seconds)
    proc, base = start_server(tiny_backbone_dir, data_dir, log_path)
    try:
        shown = httpx.get(f"{base}/v1/tasks/t", headers=headers).json()
        versions = [v["version"] for v in shown["versions"]]
        assert versions == list(range(1, len(versions) + 1)) and len(versions) >= acknowledged
        for version in versions:
            httpx.put(f"{base}/v1/tasks/t/route", json={"version": version}, headers=headers).raise_for_status()
            answer = httpx.post(f"{base}/v1/classify", json={"task": "t", "inputs": ["x"]}, headers=headers).json()
            assert answer["version"] == version
    finally:
        stop_process(proc)


def test_a_killed_engine_process_comes_back_and_a_killed_server_takes_its_engine_along(tmp_path, tiny_backbone_dir, artifact_bytes):
    proc, base = start_server(tiny_backbone_dir, tmp_path / "data", tmp_path / "server.log")
    try:
        headers = {"Authorization": f"Bearer {_tenant(base, 'eng')}"}
        httpx.put(f"{base}/v1/tasks/t", files={"file": ("a.safetensors", artifact_bytes(prefix_len=5))}, headers=headers).raise_for_status()
        body = {"task": "t", "inputs": ["a fine film", "a dull one"]}
        expected = httpx.post(f"{base}/v1/classify", json=body, headers=headers).json()["results"]
        (engine_pid,) = child_pids(proc.pid)
        os.kill(engine_pid, signal.SIGKILL)

        def answer_of_a_new_engine() -> httpx.Response | None:
            """503 (with Retry-After) while it restarts, then 200 from a new engine process."""
            response = httpx.post(f"{base}/v1/classify", json=body, headers=headers, timeout=60)
            if response.status_code == 200 and child_pids(proc.pid) != [engine_pid]:
                return response
            assert response.status_code == 503 and response.headers["retry-after"], response.text
            return None

        response = wait_until(answer_of_a_new_engine, 120, "a 200 from a new engine process", interval_s=0.05)
        assert response.json()["results"] == expected
        assert httpx.get(f"{base}/readyz").status_code == 200
        metrics = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {ADMIN}"}).text
        assert "prefix_server_engine_restarts_total 1.0" in metrics
        (new_engine_pid,) = child_pids(proc.pid)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    wait_until(lambda: process_gone(new_engine_pid), 60, "the engine process to exit after its server was killed")


def test_sigterm_drains_the_requests_in_flight_and_exits_0(tmp_path, tiny_backbone_dir, artifact_bytes):
    """Metrics on their own port too. The load stops sending when /readyz turns 503, as a load balancer
    would; every request sent until then is answered 200, and the process exits 0."""
    metrics_port = free_port()
    proc, base = start_server(
        tiny_backbone_dir, tmp_path / "data", tmp_path / "server.log", PREFIX_SERVER_METRICS_PORT=str(metrics_port),
        PREFIX_SERVER_SHUTDOWN_DELAY_S="5", PREFIX_SERVER_MAX_WAIT_MS="200", PREFIX_SERVER_LOG_FORMAT="json",
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        httpx.put(f"{base}/v1/tasks/t", files={"file": ("a.safetensors", artifact_bytes())}, headers=admin).raise_for_status()
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert scraped.status_code == 200 and "prefix_server_build_info{" in scraped.text
        assert httpx.get(f"{base}/metrics", headers=admin).status_code == 404
        unready, outcomes = threading.Event(), []

        def load() -> None:
            while not unready.is_set():
                try:
                    outcomes.append(httpx.post(f"{base}/v1/classify", json={"task": "t", "inputs": ["x"]}, headers=admin, timeout=30).status_code)
                except httpx.HTTPError as error:
                    outcomes.append(repr(error))

        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(load) for _ in range(8)]
            wait_until(lambda: len(outcomes) >= 16, 120, "the load's first answers")  # requests in flight at SIGTERM
            proc.send_signal(signal.SIGTERM)
            readyz = httpx.get(f"{base}/readyz", timeout=60)
            unready.set()
            for future in futures:
                future.result()
            code = proc.wait(timeout=120)
        assert readyz.status_code == 503 and "shutting down" in readyz.text
        assert code == 0, (tmp_path / "server.log").read_text()[-3000:]
        assert outcomes and all(outcome == 200 for outcome in outcomes), [o for o in outcomes if o != 200][:5]
        # Every log line is JSON, the engine process's too. Triton's nanobind notes as the engine exits are
        # no log lines (and end without a newline, so a log line may follow one on the same line).
        text = (tmp_path / "server.log").read_text().replace("refleaks.html{", "refleaks.html\n{")
        lines = [line for line in text.splitlines() if not line.startswith(("nanobind", " - ", "See https://nanobind"))]
        assert lines and all(json.loads(line)["level"] for line in lines)
        assert any(json.loads(line)["message"].startswith("signal 15: unready") for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
