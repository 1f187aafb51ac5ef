"""Cross-check of the HTTP level with a load generator written outside the team: wrk.

Against the same servers, with the same request bodies (64 tasks over 8 tenants, real texts, one or
more inputs per request) and the same number of requests in flight, wrk (C, one connection per
request in flight, closed loop) and the bench's own closed loop (http_client.py) each measure
throughput and latency percentiles, alternating, `rounds` times. If the two agree, the HTTP tables
are not an artifact of the bench's client. wrk's client costs less CPU than ours, and it shares the
two cores with the server, so it may see a slightly faster server.

wrk is `apt install wrk`; without it this level stops with a message. Its Lua script cycles through
the bodies (a different start per thread) and prints a JSON summary that is parsed here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks import http_servers
from benchmarks.http_client import run_closed_loop
from benchmarks.http_level import request_calls
from benchmarks.stats import latency_summary
from benchmarks.workload import TextPools, build_tasks, generate_requests, make_tasks
from server.engine import read_backbone_folder

WRK_SCRIPT = r"""
local bodies, index, thread_count = {}, 0, 0
local threads = {}
function setup(thread)
  thread_count = thread_count + 1
  thread:set("offset", thread_count * 7919)
  table.insert(threads, thread)
end
function init(args)
  for line in io.lines(args[1]) do
    local auth, body = line:match("^([^\t]*)\t(.*)$")
    local headers = {["Content-Type"] = "application/json"}
    if auth ~= "" then headers["Authorization"] = auth end
    table.insert(bodies, wrk.format("POST", "/v1/classify", headers, body))
  end
  index = offset % #bodies
end
function request()
  index = index % #bodies + 1
  return bodies[index]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "non_2xx": %d, "connect_errors": %d, "read_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d}\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
"""


class WrkMissing(RuntimeError):
    pass


@dataclass
class ExternalBenchConfig:
    backbone: str
    tasks: int = 64
    inputs_per_request: int = 1
    concurrency: int = 64
    seconds: float = 15.0  # per wrk run
    rounds: int = 2
    requests: int = 8000  # bodies in the cycle (and the most the bench client sends in a run)
    num_tenants: int = 8
    seed: int = 0
    dtype: str = "float32"

    def describe(self) -> dict:
        return asdict(self)


def wrk_path() -> str:
    path = shutil.which("wrk")
    if path is None:
        raise WrkMissing("the external check needs wrk on the PATH (Debian/Ubuntu: apt install wrk)")
    return path


def run_external_bench(config: ExternalBenchConfig, pools: TextPools, progress=print) -> dict:
    wrk = wrk_path()
    shape = read_backbone_folder(config.backbone).shape()
    tasks = build_tasks(shape, make_tasks(config.tasks, config.seed, config.num_tenants, shape.max_prefix_len))
    requests = generate_requests(pools, config.tasks, config.requests, config.inputs_per_request, config.seed)
    rounds = []
    with tempfile.TemporaryDirectory(prefix="prefix-bench-wrk-") as tmp:
        server = http_servers.launch_server("prefix-server", config.backbone, Path(tmp), Path(tmp) / "tasks",
                                            serve_flags=("--dtype", config.dtype))
        try:
            http_servers.wait_ready(server)
            http_servers.install_tasks(server, tasks)
            calls = request_calls(server, tasks, requests)
            bodies = Path(tmp) / "bodies.tsv"
            bodies.write_text("".join(f"{c.headers.removeprefix('Authorization: ').strip()}\t{c.body.decode()}\n" for c in calls))
            script = Path(tmp) / "classify.lua"
            script.write_text(WRK_SCRIPT)
            _run_wrk(wrk, server, script, bodies, config, 3.0)  # warm-up: prefixes loaded, server hot
            for index in range(config.rounds):
                pair = {}
                for tool in (("wrk", "ours") if index % 2 == 0 else ("ours", "wrk")):
                    pair[tool] = (_run_wrk(wrk, server, script, bodies, config, config.seconds) if tool == "wrk"
                                  else _run_ours(server, calls, config))
                rounds.append(pair)
                progress(f"external round {index + 1}: wrk {pair['wrk']['inputs_per_s']} inputs/s p99 {pair['wrk']['p99_ms']} ms; "
                         f"bench client {pair['ours']['inputs_per_s']} inputs/s p99 {pair['ours']['p99_ms']} ms")
        finally:
            server.stop()
    return {"level": "external", "config": config.describe(), "texts": pools.describe(), "rounds": rounds,
            "wrk_version": _wrk_version(wrk), "summary": summarize(rounds)}


def _run_wrk(wrk: str, server, script: Path, bodies: Path, config: ExternalBenchConfig, seconds: float) -> dict:
    threads = min(2, config.concurrency)
    command = [wrk, "-t", str(threads), "-c", str(config.concurrency), "-d", f"{seconds:g}s", "--timeout", "30s",
               "-s", str(script), server.base, "--", str(bodies)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return parse_wrk(output, inputs_per_request=config.inputs_per_request)


def parse_wrk(output: str, inputs_per_request: int) -> dict:
    """The JSON line the Lua `done` hook prints, in the bench's units."""
    line = next(text for text in output.splitlines() if text.startswith("{"))
    raw = json.loads(line)
    seconds = raw["duration_us"] / 1e6
    ok = raw["requests"] - raw["non_2xx"]
    return {
        "tool": "wrk", "requests": raw["requests"], "non_2xx": raw["non_2xx"],
        "errors": raw["connect_errors"] + raw["read_errors"] + raw["timeouts"],
        "inputs_per_s": round(ok * inputs_per_request / seconds, 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2), "p90_ms": round(raw["p90_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2), "mean_ms": round(raw["mean_us"] / 1000, 2),
    }


def _run_ours(server, calls, config: ExternalBenchConfig) -> dict:
    warm = calls[: config.concurrency]
    result = run_closed_loop(server.port, warm + calls, config.concurrency, max_seconds=config.seconds, warmup=len(warm))
    latency = latency_summary(result.latencies)
    return {"tool": "bench client", "requests": result.requests, "statuses": result.statuses,
            "inputs_per_s": round(result.inputs_ok / result.wall_s, 1) if result.wall_s else 0.0,
            "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"], "mean_ms": latency["mean_ms"]}


def summarize(rounds: list[dict]) -> dict:
    """wrk over the bench client, per round and as a median: throughput, p50, p99."""
    out = {}
    for key in ("inputs_per_s", "p50_ms", "p99_ms"):
        values = sorted(round(r["wrk"][key] / r["ours"][key], 3) for r in rounds if r["ours"][key])
        out[f"wrk_over_ours_{key}"] = values[len(values) // 2] if values else None
        out[f"wrk_over_ours_{key}_rounds"] = values
    return out


def _wrk_version(wrk: str) -> str:
    result = subprocess.run([wrk, "-v"], capture_output=True, text=True)
    return (result.stdout or result.stderr).splitlines()[0].strip() if (result.stdout or result.stderr) else "unknown"
