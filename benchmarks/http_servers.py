"""The servers under test of the HTTP benchmark, each a subprocess on a free port:

- `prefix-server`: `python -m server serve` (multi-tenant: an admin token, a registry in a temporary
  folder, no demo prefixes);
- `per-task`: the same with `--per-task-batches` (one prefix per forward pass);
- `seed`: benchmarks/seed_server.py (transformers, one request at a time).

Also owns putting the benchmark's tenants and tasks into a server through the API, and reading the
server's Prometheus counters (batch sizes, tokens per forward) before and after a run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks.stats import BATCH_SIZE_BUCKETS, proc_cpu_seconds, proc_tree_memory
from benchmarks.workload import BuiltTask
from harness.processes import answers_ready, child_pids, free_port, stop_process, wait_until

SOURCE_ROOT = Path(__file__).resolve().parent.parent  # where `benchmarks` imports from, for the seed server

ADMIN_TOKEN = "bench-admin-token"
MODES = ("prefix-server", "per-task", "seed")


@dataclass
class ServerProcess:
    mode: str
    proc: subprocess.Popen
    port: int
    log_path: Path
    keys: dict[str, str] = field(default_factory=dict)  # tenant -> API key

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def auth_header(self, tenant: str) -> str:
        key = self.keys.get(tenant)
        return f"Authorization: Bearer {key}\r\n" if key else ""

    def memory(self) -> dict:
        return proc_tree_memory(self.proc.pid)  # the server and its engine process

    def cpu_seconds(self) -> dict:
        """CPU time used so far (user + system) by the server process and by its children (the engine)."""
        return {"cpu_server_seconds": proc_cpu_seconds(self.proc.pid),
                "cpu_children_seconds": sum(proc_cpu_seconds(child) for child in child_pids(self.proc.pid))}

    def stop(self) -> None:
        stop_process(self.proc)


def launch_server(mode: str, backbone: str, workdir: Path, tasks_dir: Path, torch_threads: int = 0,
                 serve_flags: tuple[str, ...] = (), cwd: Path | None = None) -> ServerProcess:
    """`cwd`: the source tree to serve from (`python -m` runs the `server` package found there first)."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{mode}.log"
    env = dict(os.environ)
    threads = ["--torch-threads", str(torch_threads)] if torch_threads else []
    if mode == "seed":
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE_ROOT), env.get("PYTHONPATH")]))
        command = [sys.executable, "-m", "benchmarks.seed_server", "--port", str(port), "--backbone", backbone,
                   "--tasks-dir", str(tasks_dir), *threads]
    else:
        env.update(
            PREFIX_SERVER_BACKBONE=backbone, PREFIX_SERVER_DATA_DIR=str(workdir / f"{mode}-data"),
            PREFIX_SERVER_PREFIXES_DIR="", PREFIX_SERVER_ADMIN_TOKEN=ADMIN_TOKEN, PREFIX_SERVER_LOG_LEVEL="WARNING",
        )
        extra = ["--per-task-batches"] if mode == "per-task" else []
        command = [sys.executable, "-m", "server", "serve", "--port", str(port), *threads, *extra, *serve_flags]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=cwd)
    return ServerProcess(mode, proc, port, log_path)


def wait_ready(server: ServerProcess, timeout_s: float = 180.0) -> None:
    try:
        wait_until(lambda: _ready(server), timeout_s, f"the {server.mode} server to be ready", 0.2)
    except TimeoutError:
        server.stop()
        raise RuntimeError(f"{server.mode} server not ready within {timeout_s:.0f} s; log: {server.log_path}") from None


def _ready(server: ServerProcess) -> bool:
    return answers_ready(server.proc, server.base,
                         lambda _: f"{server.mode} server exited at start-up:\n{server.log_path.read_text()[-3000:]}", timeout_s=2)


def write_task_files(tasks: list[BuiltTask], folder: Path) -> None:
    """The seed server's tasks: one artifact file per task name."""
    folder.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        (folder / f"{task.spec.name}.safetensors").write_bytes(task.data)


def install_tasks(server: ServerProcess, tasks: list[BuiltTask], parallel: int = 8) -> None:
    """Creates the tasks' tenants (admin API) and uploads every task to its tenant."""
    if server.mode == "seed":
        return
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for tenant in sorted({task.spec.tenant for task in tasks} - set(server.keys)):
        response = httpx.post(f"{server.base}/v1/admin/tenants", json={"name": tenant}, headers=admin, timeout=30)
        response.raise_for_status()
        server.keys[tenant] = response.json()["api_key"]

    async def upload_all():
        slots = asyncio.Semaphore(parallel)
        async with httpx.AsyncClient(base_url=server.base, timeout=60) as client:

            async def upload(task: BuiltTask):
                async with slots:
                    response = await client.put(
                        f"/v1/tasks/{task.spec.name}", files={"file": ("prefix.safetensors", task.data)},
                        headers={"Authorization": f"Bearer {server.keys[task.spec.tenant]}"},
                    )
                if response.status_code != 201:
                    raise RuntimeError(f"upload of {task.spec.name} to {server.mode}: {response.status_code} {response.text}")

            await asyncio.gather(*(upload(task) for task in tasks))

    asyncio.run(upload_all())


def scrape(server: ServerProcess) -> dict | None:
    """The batch counters of prefix-server's /metrics (None for the seed server, which has none)."""
    if server.mode == "seed":
        return None
    text = httpx.get(f"{server.base}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("prefix_server_batch_size", "prefix_server_batch_tokens", "prefix_server_inference_seconds")):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def counter_delta(before: dict | None, after: dict | None) -> dict:
    if before is None or after is None:
        return {}
    return {name: value - before.get(name, 0.0) for name, value in after.items()}


def cpu_per_request(delta: dict, requests: int) -> dict:
    """Server-side CPU per request over the window: the HTTP/batching process, and its engine process."""
    if not requests or "cpu_server_seconds" not in delta:
        return {}
    return {"server_cpu_us_per_request": round(delta["cpu_server_seconds"] / requests * 1e6),
            "engine_cpu_us_per_request": round(delta["cpu_children_seconds"] / requests * 1e6)}


def batch_stats(delta: dict) -> dict:
    """Forwards, batch-size histogram and tokens (inputs' plus prefixes') per forward from counter
    deltas (counter_delta)."""
    forwards = delta.get("prefix_server_batch_size_count", 0.0)
    if not forwards:
        return {"forwards": 0}
    histogram, below = {}, 0.0
    for bound in BATCH_SIZE_BUCKETS:
        cumulative = delta.get(f'prefix_server_batch_size_bucket{{le="{float(bound)}"}}', 0.0)
        if cumulative - below:
            histogram[str(bound)] = int(cumulative - below)
        below = cumulative
    tokens = delta.get("prefix_server_batch_tokens_sum", 0.0)
    return {
        "forwards": int(forwards),
        "tokens_per_forward": round(tokens / forwards, 1),
        "batch_size": {"mean": round(delta.get("prefix_server_batch_size_sum", 0.0) / forwards, 2), "histogram": histogram},
        "compute_s": round(delta.get("prefix_server_inference_seconds_sum", 0.0), 3),
    }
