"""The engine process: it answers exactly as the engine in this process does, frees what the server
lets go, and survives its own death: in-flight calls fail with EngineUnavailable, a new process
comes up, the tasks loaded before are stale and the cache loads them again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.processes import process_gone, wait_until
from server.artifact import ProblemType, artifact_to_bytes
from server.batching import PrefixCache
from server.engine import EngineProcess, EngineUnavailable, ScoreFunction, TokenBatch
from tests.helpers import load_task, make_artifact, score_rows

TEXTS = ["a fine film", ("is it good?", "yes it is"), "the plot is a mess and the actors look bored", "ok"]


@pytest.fixture(scope="module")
def engine_process(tiny_backbone_dir):
    process = EngineProcess(str(tiny_backbone_dir), max_restarts=3)
    yield process
    process.close()


def _tasks(shape):
    kinds = [ProblemType.SINGLE_LABEL, ProblemType.MULTI_LABEL, ProblemType.REGRESSION, ProblemType.SINGLE_LABEL]
    return [make_artifact(shape, p, n, kind, seed=p) for p, n, kind in zip((1, 9, 30, 64), (2, 3, 1, 5), kinds)]


def test_scores_equal_the_engine_in_this_process(engine_process, tiny_engine):
    tasks = _tasks(tiny_engine.shape)
    remote = [load_task(engine_process, t) for t in tasks]
    local = [load_task(tiny_engine, t) for t in tasks]
    encoded = [tiny_engine.encode([x], t.prefix_len)[0] for x, t in zip(TEXTS, tasks)]
    # float32 on both sides: bit for bit
    assert score_rows(engine_process, list(zip(encoded, remote))) == score_rows(tiny_engine, list(zip(encoded, local)))
    bare = TokenBatch.of(encoded)
    assert engine_process.pooled(bare).tolist() == tiny_engine.pooled(bare).tolist()
    assert engine_process.info()["fingerprint"] == tiny_engine.files.fingerprint
    assert engine_process.shape == tiny_engine.shape
    assert [t.facts.prefix_len for t in remote] == [1, 9, 30, 64] and remote[1].facts.num_labels == 3
    assert [t.facts for t in remote] == [t.facts for t in local]  # nbytes included: it reports what it holds


def test_released_prefixes_free_the_engine_side(engine_process, tiny_engine):
    before = engine_process.stats()["resident_prefixes"]
    loaded = [load_task(engine_process, make_artifact(tiny_engine.shape, 8, 2, seed=s)) for s in range(5)]
    assert engine_process.stats()["resident_prefixes"] == before + 5
    for task in loaded:
        engine_process.release_task(task.handle)
    assert engine_process.stats()["resident_prefixes"] == before  # the releases rode on this call


def test_a_failed_load_says_why(engine_process, tiny_engine):
    with pytest.raises(RuntimeError, match="engine process: ArtifactError"):
        engine_process.load_task(7, b"not a safetensors file")
    assert load_task(engine_process, make_artifact(tiny_engine.shape, 4, 2)).facts.prefix_len == 4  # still serving


def test_a_killed_engine_process_is_replaced(engine_process, tiny_engine):
    artifact = make_artifact(tiny_engine.shape, 6, 2, seed=11)
    blobs = {"sha": artifact_to_bytes(artifact)}
    cache = PrefixCache(engine_process, blobs.__getitem__, max_bytes=1 << 30)
    task = cache.get("sha")
    encoded = tiny_engine.encode(["before the crash"], 6)[0]

    def batch(task):
        return TokenBatch.of([encoded], [task.handle], [task.facts.head], [0])

    expected = engine_process.score(batch(task)).rows.tolist()
    old_pid, generation = engine_process.pid, engine_process.generation

    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: not engine_process.alive or engine_process.generation != generation, 60,
               "the server to notice its engine died")
    with pytest.raises((EngineUnavailable, RuntimeError)):
        engine_process.score(batch(task))  # down, or up again without this task
    wait_until(lambda: engine_process.alive, 120, "a new engine process")
    assert engine_process.pid != old_pid and engine_process.restarts >= 1
    assert task.stale  # the batcher refuses its rows with EngineUnavailable (tests/batching)
    with pytest.raises(RuntimeError, match=f"task handle {task.handle} is not loaded"):
        engine_process.score(batch(task))
    reloaded = cache.get("sha")
    assert reloaded is not task and not reloaded.stale
    assert engine_process.score(batch(reloaded)).rows.tolist() == expected


_SERVER = """
import sys
from server.engine import EngineProcess
process = EngineProcess(sys.argv[1])
print(process.pid, flush=True)
sys.stdin.read()  # until killed
"""


def test_the_engine_process_exits_when_the_server_is_killed(tiny_backbone_dir):
    server = subprocess.Popen([sys.executable, "-c", _SERVER, str(tiny_backbone_dir)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        engine_pid = int(server.stdout.readline())
        assert not process_gone(engine_pid)
        server.kill()  # SIGKILL: no close(), no finalizers, only the kernel closing its end of the pipe
        server.wait(timeout=30)
        wait_until(lambda: process_gone(engine_pid), 60, "the engine process to exit after its server")
    finally:
        server.kill()


def test_close_stops_the_engine_process_even_when_it_does_not_answer(tiny_backbone_dir):
    process = EngineProcess(str(tiny_backbone_dir))
    os.kill(process.pid, signal.SIGSTOP)  # hung: it cannot answer "stop"
    started = time.monotonic()
    process.close(timeout_s=1)
    assert process._process.returncode is not None and not process.alive
    assert time.monotonic() - started < 20


def test_a_backbone_the_engine_cannot_load_fails_start_up_with_its_reason(tmp_path, tiny_backbone_dir):
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in os.listdir(tiny_backbone_dir):
        if not name.endswith(".safetensors"):
            (folder / name).write_bytes((tiny_backbone_dir / name).read_bytes())
    with pytest.raises(RuntimeError, match=r"the engine process failed to start on .*broken: BackboneError"):
        EngineProcess(str(folder))


def test_score_functions_cross_the_pipe(engine_process, tiny_engine):
    tasks = _tasks(tiny_engine.shape)
    remote = [load_task(engine_process, t) for t in tasks]
    local = [load_task(tiny_engine, t) for t in tasks]
    functions = [ScoreFunction.NONE, None, ScoreFunction.SOFTMAX, ScoreFunction.SIGMOID]
    encoded = [tiny_engine.encode([x], t.prefix_len)[0] for x, t in zip(TEXTS, tasks)]
    got = score_rows(engine_process, list(zip(encoded, remote)), functions)
    assert got == score_rows(tiny_engine, list(zip(encoded, local)), functions)
    assert got != score_rows(tiny_engine, list(zip(encoded, local)))  # the functions made a difference


def test_the_child_gets_the_engine_environment_defaults_and_the_server_can_override_them(engine_process, tiny_backbone_dir, monkeypatch):
    def child_env(process) -> dict[str, str]:
        raw = Path(f"/proc/{process.pid}/environ").read_bytes().split(b"\0")
        return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)

    assert child_env(engine_process)["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "0"  # see CHILD_ENV_DEFAULTS
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    own = EngineProcess(str(tiny_backbone_dir))
    try:
        assert child_env(own)["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "64"
    finally:
        own.close()
