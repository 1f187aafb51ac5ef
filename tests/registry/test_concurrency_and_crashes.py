"""Several writers at once, and `kill -9` at random moments: the registry must stay consistent."""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from server.registry import Route, SqlRegistry
from server.registry.blobs.local import FileBlobStore
from server.registry.database import Database, sqlite_url
from tests.registry.support import LIMITS, SHAPE, artifact_bytes, blob_files, sha256_hex, temp_files, usage_counters_and_recount

REPO_ROOT = Path(__file__).resolve().parents[2]
ROUND_TIMEOUT_S = 180.0  # for the uploader's answers: only a broken run waits this long


def test_concurrent_uploads_get_distinct_consecutive_versions(open_registry):
    # Two registries on one data dir stand for two processes; two threads on each share a registry.
    registries = [open_registry(), open_registry()]
    registries[0].create_tenant("acme")
    threads_count, uploads_each = 4, 4
    results: list[int] = []
    errors: list[BaseException] = []

    def upload(thread_index: int) -> None:
        registry = registries[thread_index % 2]
        try:
            for i in range(uploads_each):
                data = artifact_bytes(seed=100 + thread_index * uploads_each + i)
                results.append(registry.add_version("acme", "t", data).version)
        except BaseException as exc:  # noqa: BLE001 — reported below: an exception in a thread would otherwise vanish
            errors.append(exc)

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    total = threads_count * uploads_each
    assert sorted(results) == list(range(1, total + 1))
    task = registries[1].get_task("acme", "t")
    assert [v.version for v in task.versions] == list(range(1, total + 1))
    assert task.route.pinned == total  # the last committed upload is the active one


# The uploader: imports the registry once (torch makes that the slow part), then for each line on stdin
# forks a child that uploads in a loop until the test SIGKILLs it, prints the child's pid and reaps it.
# Every upload has new bytes, so each one goes through the whole blob write and commit. Task "main"
# only grows; task "scratch" is also re-routed and deleted, so kills land inside those paths too. The
# child prints how long each step of its loop took, so the test kills at a random point of a step.
UPLOADER = r"""
import dataclasses, json, os, sys, time
from pathlib import Path
from server.artifact import BackboneShape, artifact_to_bytes, read_artifact
from server.registry import Route, SqlRegistry, TenantLimits
from server.registry.blobs.local import FileBlobStore
from server.registry.database import Database

database_url, data_dir, seed_artifact = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
shape, limits = BackboneShape(**json.loads(sys.argv[4])), TenantLimits(**json.loads(sys.argv[5]))
base = read_artifact(seed_artifact.read_bytes(), shape)

def upload_forever():
    registry = SqlRegistry(Database(database_url), FileBlobStore(data_dir / "blobs"), shape, limits)
    registry.ensure_tenant("crash")
    step = int.from_bytes(os.urandom(4), "little")
    while True:
        began = time.monotonic()
        step += 1
        data = artifact_to_bytes(dataclasses.replace(base, extra_metadata={"step": str(step)}))
        registry.add_version("crash", "main", data)
        scratch = registry.add_version("crash", "scratch", data)
        if scratch.version >= 2 and step % 3 == 0:
            registry.set_route("crash", "scratch", Route(weights={scratch.version - 1: 0.5, scratch.version: 0.5}))
        if step % 5 == 0:
            registry.delete_task("crash", "scratch")
        print(f"step {time.monotonic() - began:.6f}", flush=True)

for _ in sys.stdin:
    pid = os.fork()
    if pid == 0:
        upload_forever()
    print(pid, flush=True)
    _, status = os.waitpid(pid, 0)
    print(f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}", flush=True)
"""


def assert_consistent(database_url: str, data_dir: Path) -> int:
    """Re-opens the registry (which collects garbage) and checks every invariant; returns main's size."""
    registry = SqlRegistry(Database(database_url), FileBlobStore(data_dir / "blobs"), SHAPE, LIMITS)
    try:
        registry.ensure_tenant("crash")
        referenced = set()
        for task in registry.list_tasks("crash"):
            numbers = [v.version for v in task.versions]
            assert numbers == list(range(1, len(numbers) + 1)), f"{task.task}: versions {numbers} have gaps"
            for version in task.versions:
                data = registry.read_artifact_bytes(version.sha256)  # also checks the bytes hash to the name
                assert len(data) == version.size_bytes and sha256_hex(data) == version.sha256
                referenced.add(version.sha256)
            routed = {task.route.pinned} if task.route.pinned is not None else set(task.route.weights)
            assert routed <= set(numbers), f"{task.task}: route {task.route} names missing versions"
            assert registry.resolve("crash", task.task).version in routed
        assert blob_files(data_dir) == referenced, "garbage collection left unreferenced blobs"
        assert temp_files(data_dir) == []
        kept, recount = usage_counters_and_recount(registry)
        assert kept == recount, "the tenants' usage counters drifted from their rows"
        main = [t for t in registry.list_tasks("crash") if t.task == "main"]
        if not main:
            return 0
        # "main" is only ever uploaded to, so its route must pin its newest version (SPEC: uploads go live).
        assert main[0].route == Route(pinned=len(main[0].versions)), f"main's route is {main[0].route}"
        return len(main[0].versions)
    finally:
        registry.close()


def start_uploader(database_url: str, root: Path, log_file) -> subprocess.Popen:
    seed_artifact = root / "seed.safetensors"
    seed_artifact.write_bytes(artifact_bytes(seed=5))
    shape_json = json.dumps(dataclasses.asdict(SHAPE))
    limits_json = json.dumps(dataclasses.asdict(dataclasses.replace(LIMITS, max_artifact_bytes=10**9)))
    return subprocess.Popen(
        [sys.executable, "-c", UPLOADER, database_url, str(root / "data"), str(seed_artifact), shape_json, limits_json],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log_file,  # a file, not a pipe: nobody reads it until something fails
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )


class Lines:
    """The uploader's stdout, line by line, each read with a deadline (a thread does the blocking reads)."""

    def __init__(self, stream) -> None:
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self._lines.put(line.strip())

    def next(self, what: str, log_path: Path, pid: int | None = None) -> str:
        try:
            return self._lines.get(timeout=ROUND_TIMEOUT_S)
        except queue.Empty:
            raise TimeoutError(
                f"waited {ROUND_TIMEOUT_S:g} s for {what}{process_state(pid)}: {log_path.read_text()[-2000:]}"
            ) from None


def process_state(pid: int | None) -> str:
    """What the kernel says a process is doing (state and wait channel), for a timeout's message."""
    if pid is None:
        return ""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        state = next((line for line in status if line.startswith("State:")), "State: ?")
        return f" (pid {pid} {state}, waiting in {Path(f'/proc/{pid}/wchan').read_text() or '-'})"
    except OSError as exc:
        return f" (pid {pid}: {exc})"


def kill_one_uploading_child(uploader: subprocess.Popen, lines: Lines, rng: random.Random, log_path: Path) -> None:
    """Starts a child, waits for its first step, then SIGKILLs it at a random point of a step's duration."""
    uploader.stdin.write("go\n")
    uploader.stdin.flush()
    pid, step_s = None, None
    while pid is None or step_s is None:
        line = lines.next("the uploading child's pid and its first step", log_path)
        if line.isdigit():
            pid = int(line)
        else:
            assert line.startswith("step "), f"uploader said {line!r}: {log_path.read_text()[-2000:]}"
            step_s = float(line.split()[1])
    time.sleep(rng.uniform(0, step_s))  # the scenario's random moment, scaled to this machine
    os.kill(pid, signal.SIGKILL)
    ending = lines.next("the uploader to reap its child", log_path, pid)
    while ending.startswith("step "):
        ending = lines.next("the uploader to reap its child", log_path, pid)
    # Anything but our SIGKILL means the child stopped by itself: an upload raised.
    assert ending == f"signal {signal.SIGKILL.value}", f"child ended with {ending!r}: {log_path.read_text()[-2000:]}"


@pytest.fixture
def crash_dir(tmp_path, backend):
    """The files the killed children write, on tmpfs where there is one: `kill -9` consistency is about
    the process, not the disk, and on a busy shared disk an fsync can hold a SIGKILLed child in
    uninterruptible sleep for minutes (CI once waited 180 s for a reap)."""
    shm = Path("/dev/shm")
    if backend != "sqlite" or not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="kill9-") as folder:
        yield Path(folder)


def test_kill_9_at_random_moments_leaves_a_consistent_state(crash_dir, backend, database_url):
    if backend == "sqlite":
        (crash_dir / "data").mkdir(parents=True, exist_ok=True)
        database_url = sqlite_url(crash_dir / "data" / "registry.sqlite3")
    log_path = crash_dir / "uploader.log"
    rng = random.Random(2024)
    sizes = []
    with log_path.open("w") as log_file:
        uploader = start_uploader(database_url, crash_dir, log_file)
        lines = Lines(uploader.stdout)
        try:
            for _ in range(5):
                kill_one_uploading_child(uploader, lines, rng, log_path)
                sizes.append(assert_consistent(database_url, crash_dir / "data"))
        finally:
            uploader.stdin.close()
            try:
                uploader.wait(timeout=30)
            except subprocess.TimeoutExpired:
                uploader.kill()
    # Task "main" only ever grows: each child finished a step (one upload of main) before its kill.
    assert sizes == sorted(sizes) and sizes[-1] >= 5, f"main's versions after each kill: {sizes}"
