"""`python -m benchmarks protocols`: what each protocol adapter costs over /v1/classify (SPEC section 5).

One server, the same tasks and the same texts; each round runs the same closed loop once per protocol
(/v1/classify, KServe v2 infer with JSON tensors and with binary tensor data, TEI's /predict, the HF
Inference API's /models/{task}), in an order that rotates every round, so drift in the machine's load
falls on every protocol alike, after a pass over every protocol that is not measured (prefix loads,
first calls). The figure is the median over rounds of each protocol's throughput over
/v1/classify's in the same round (target: within 5%).
"""

from __future__ import annotations

import statistics
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from benchmarks import http_servers
from benchmarks.http_client import Call, run_closed_loop
from benchmarks.stats import latency_summary
from benchmarks.workload import TextPools, build_tasks, generate_requests, make_tasks

PROTOCOLS = ("v1", "kserve-json", "kserve-binary", "tei", "hf")


@dataclass
class ProtocolBenchConfig:
    backbone: str
    tasks: int = 8
    tenants: int = 2
    requests: int = 400  # per protocol and round
    concurrency: int = 16
    rounds: int = 3
    seed: int = 0


def _body(protocol: str, task: str, inputs: tuple) -> tuple[str, bytes, str]:
    """(path, body, extra header lines) of one request of `inputs` in `protocol`."""
    texts = [i if isinstance(i, str) else i[0] for i in inputs]
    pairs = [("" if isinstance(i, str) else i[1]) for i in inputs]
    has_pairs = any(not isinstance(i, str) for i in inputs)
    if protocol == "v1":
        items = [i if isinstance(i, str) else {"text": i[0], "text_pair": i[1]} for i in inputs]
        return "/v1/classify", orjson.dumps({"task": task, "inputs": items}), ""
    if protocol == "tei":
        items = [i if isinstance(i, str) else list(i) for i in inputs]
        return f"/v1/tasks/{task}/predict", orjson.dumps({"inputs": items[0] if len(items) == 1 else items, "truncate": True}), ""
    if protocol == "hf":
        items = [i if isinstance(i, str) else {"text": i[0], "text_pair": i[1]} for i in inputs]
        return f"/models/{task}", orjson.dumps({"inputs": items if len(items) > 1 else items[0]}), ""
    columns = [("text", texts)] + ([("text_pair", pairs)] if has_pairs else [])
    path = f"/v2/models/{task}/infer"
    if protocol == "kserve-json":
        tensors = [{"name": n, "datatype": "BYTES", "shape": [len(v)], "data": v} for n, v in columns]
        return path, orjson.dumps({"inputs": tensors}), ""
    blobs = [b"".join(struct.pack("<I", len(e.encode())) + e.encode() for e in v) for _, v in columns]
    tensors = [{"name": n, "datatype": "BYTES", "shape": [len(v)], "parameters": {"binary_data_size": len(b)}}
               for (n, v), b in zip(columns, blobs)]
    header = orjson.dumps({"inputs": tensors, "parameters": {"binary_data_output": True}})
    return path, header + b"".join(blobs), f"Inference-Header-Content-Length: {len(header)}\r\n"


def run_protocol_bench(config: ProtocolBenchConfig, pools: TextPools, progress=print) -> dict:
    from server.engine.backbone import read_backbone_folder

    shape = read_backbone_folder(config.backbone).shape()
    tasks = build_tasks(shape, make_tasks(config.tasks, config.seed, config.tenants, shape.max_prefix_len, tag="proto"))
    requests = generate_requests(pools, len(tasks), config.requests, 1, config.seed)
    with tempfile.TemporaryDirectory(prefix="prefix-server-protocols-") as folder:
        server = http_servers.launch_server("prefix-server", config.backbone, Path(folder), Path(folder))
        try:
            http_servers.wait_ready(server)
            http_servers.install_tasks(server, tasks)
            calls = {p: [_call(server, p, tasks[r.task].spec, r.inputs) for r in requests] for p in PROTOCOLS}
            for protocol in PROTOCOLS:  # not measured: loads every prefix, warms every path and connection
                run_closed_loop(server.port, calls[protocol][: 4 * config.concurrency], config.concurrency)
            rounds = []
            for index in range(config.rounds):
                order = PROTOCOLS[index % len(PROTOCOLS):] + PROTOCOLS[: index % len(PROTOCOLS)]
                measured = {}
                for protocol in order:
                    result = run_closed_loop(server.port, calls[protocol], config.concurrency, warmup=config.concurrency)
                    measured[protocol] = {"inputs_per_s": round(result.inputs_ok / result.wall_s, 1) if result.wall_s else 0.0,
                                          "statuses": result.statuses, "latency": latency_summary(result.latencies)}
                    progress(f"  round {index + 1} {protocol}: {measured[protocol]['inputs_per_s']} inputs/s {result.statuses}")
                rounds.append(measured)
        finally:
            server.stop()
    return {"level": "protocols", "config": vars(config), "texts": pools.describe(), "rounds": rounds, "summary": summarize(rounds)}


def _call(server, protocol: str, spec, inputs) -> Call:
    path, body, headers = _body(protocol, spec.name, inputs)
    return Call(body, server.auth_header(spec.tenant) + headers, len(inputs), path)


def summarize(rounds: list[dict]) -> list[dict]:
    rows = []
    for protocol in PROTOCOLS:
        ratios = [r[protocol]["inputs_per_s"] / r["v1"]["inputs_per_s"] for r in rounds if r["v1"]["inputs_per_s"]]
        p99 = [r[protocol]["latency"]["p99_ms"] for r in rounds if r[protocol]["latency"]["p99_ms"] is not None]
        rows.append({
            "protocol": protocol,
            "inputs_per_s_median": statistics.median(r[protocol]["inputs_per_s"] for r in rounds),
            "vs_v1_median": round(statistics.median(ratios), 3) if ratios else None,
            "vs_v1_rounds": [round(x, 3) for x in ratios],
            "p99_ms_median": statistics.median(p99) if p99 else None,
            "non_200": sum(n for r in rounds for s, n in r[protocol]["statuses"].items() if s != "200"),
        })
    return rows


def render_sections(result: dict) -> list[str]:
    lines = ["## Each protocol over /v1/classify (same server, same texts, interleaved rounds)", "",
             "| protocol | inputs/s (median) | over /v1/classify (median) | per round | p99 ms (median) | non-200 |",
             "|---|---:|---:|---|---:|---:|"]
    for row in result["summary"]:
        lines.append(f"| {row['protocol']} | {row['inputs_per_s_median']} | {row['vs_v1_median']} | "
                     f"{', '.join(map(str, row['vs_v1_rounds']))} | {row['p99_ms_median']} | {row['non_200']} |")
    return lines + [""]
