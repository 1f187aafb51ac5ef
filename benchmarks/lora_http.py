"""LoRA over HTTP (issue 21's targets): many LoRA tasks, mixed with prefix tasks, against one LoRA task,
no adapters, and the naive way (PEFT), all in one run, ratios per round.

`python -m benchmarks.lora_http` makes `--tasks` PEFT LoRA adapters (r=8 on query and value, 3 labels)
with `get_peft_model(...).save_pretrained`, and starts two servers on the backbone: `prefix-server
serve` (its engine in its own process, as deployed), where they are uploaded as zips next to the other
task sets, and benchmarks/peft_server.py, one PeftModel holding the same adapters that batches by
adapter. Task sets on prefix-server, `--tasks` each: `lora` (those adapters), `all-linear` (r=16 on all
six Linears of every layer), `prefix` (P=16), `bare` (P=1: the least adaptation an artifact may carry,
as "no adapters": an artifact holds a prefix or a LoRA). Configurations, each a closed loop of
`--requests` requests of one real text (SST-2 and TREC) at `--concurrency` in flight, task drawn at
random from its set: lora-N, lora-1 (all traffic to one LoRA task), bare-N, all-linear-N, prefix-N,
mix-N (half the tasks LoRA, half prefix) and peft-N (the PEFT server, time-boxed to `--peft-seconds`).
Every configuration of a round sends the same texts in the same order; rounds rotate the order. The
answers of both servers for one LoRA task are compared first (1e-4).

Two measures of each run: inputs/s (wall clock), and the servers' CPU time per input (the API process
plus its engine process; the PEFT server's one process), read from /proc around the run. On a machine
other jobs share, wall-clock throughput swings with their load, while the CPU an input costs hardly
moves: `1 / (CPU s per input)` is the throughput the servers would reach on cores of their own, and
its ratios are the ones to read there. Servers run with `--threads` torch threads (default 1, so no
thread spins at a barrier waiting for a descheduled sibling and bills it as work).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import orjson
import torch

from benchmarks.http_client import Call, run_closed_loop
from benchmarks.http_servers import ServerProcess, install_tasks, launch_server, wait_ready
from benchmarks.lora_tasks import lora_artifact, prefix_artifact
from benchmarks.workload import BuiltTask, DataMissing, TaskSpec, load_text_pools, synthetic_pools
from harness.processes import free_port
from server.artifact import artifact_to_bytes
from server.artifact.lora import LORA_MODULES
from server.engine.backbone import default_backbone_dir, read_backbone_folder

ROOT = Path(__file__).resolve().parents[1]
NUM_LABELS = 3


def make_peft_adapters(backbone: str, folder: Path, count: int) -> list[Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # not 64 load reports of the untrained head

    folders = []
    for index in range(count):
        torch.manual_seed(index)
        model = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=NUM_LABELS)
        config = LoraConfig(task_type="SEQ_CLS", r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False)
        peft_model = get_peft_model(model, config)
        with torch.no_grad():  # as if trained: B away from zero
            for name, parameter in peft_model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.02)
        peft_model.save_pretrained(folder / f"lora-{index:03d}")
        folders.append(folder / f"lora-{index:03d}")
    return folders


def zipped(folder: Path) -> bytes:
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(folder.iterdir()):
            archive.write(path, f"{folder.name}/{path.name}")
    return buffer.getvalue()


def task_sets(backbone: str, adapters: list[Path], count: int) -> dict[str, list[BuiltTask]]:
    shape = read_backbone_folder(backbone).shape()

    def built(name: str, index: int, data: bytes) -> BuiltTask:
        spec = TaskSpec(index, f"{name}-{index:03d}", f"bench-{index % 8:02d}", 0, NUM_LABELS, index)
        return BuiltTask(spec, None, data, hashlib.sha256(data).hexdigest())

    return {
        "lora": [built("lora", i, zipped(folder)) for i, folder in enumerate(adapters)],
        "all-linear": [built("all", i, artifact_to_bytes(lora_artifact(shape, 1000 + i, 16, LORA_MODULES))) for i in range(count)],
        "prefix": [built("prefix", i, artifact_to_bytes(prefix_artifact(shape, 2000 + i, 16))) for i in range(count)],
        "bare": [built("bare", i, artifact_to_bytes(prefix_artifact(shape, 3000 + i, 1))) for i in range(count)],
    }


def start_peft(backbone: str, adapters: Path, workdir: Path, threads: int) -> ServerProcess:
    port = free_port()
    log_path = workdir / "peft.log"
    command = [sys.executable, "-m", "benchmarks.peft_server", "--port", str(port), "--backbone", backbone,
               "--adapters", str(adapters), "--num-labels", str(NUM_LABELS)]
    if threads:
        command += ["--torch-threads", str(threads)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=ROOT)
    return ServerProcess("peft", proc, port, log_path)


def calls(server: ServerProcess, tasks: list[BuiltTask], texts: list[str], count: int, seed: int) -> list[Call]:
    """The same texts for every configuration of a round (seeded by the round); tasks drawn apart."""
    text_rng, task_rng = random.Random(f"texts-{seed}"), random.Random(f"tasks-{seed}-{len(tasks)}")
    out = []
    for _ in range(count):
        spec = tasks[task_rng.randrange(len(tasks))].spec
        out.append(Call(orjson.dumps({"task": spec.name, "inputs": [text_rng.choice(texts)]}), server.auth_header(spec.tenant), 1))
    return out


def check_agreement(ours: ServerProcess, peft: ServerProcess, task: BuiltTask, texts: list[str]) -> float:
    """The largest score difference of one LoRA task between the two servers."""
    worst = 0.0
    for text in texts:
        body = {"task": task.spec.name, "inputs": [text]}
        headers = {"Authorization": ours.auth_header(task.spec.tenant).split(": ", 1)[1].strip()}
        a = httpx.post(f"{ours.base}/v1/classify", json=body, headers=headers, timeout=60).json()["results"][0]["scores"]
        b = httpx.post(f"{peft.base}/v1/classify", json=body, timeout=60).json()["results"][0]["scores"]
        worst = max(worst, max(abs(x - y) for x, y in zip(a.values(), b.values())))  # label names differ
    if worst > 1e-4:
        raise RuntimeError(f"prefix-server and PEFT disagree on {task.spec.name}: {worst}")
    return worst


def warm_calls(server: ServerProcess, tasks: list[BuiltTask], texts: list[str]) -> list[Call]:
    """Every task once (its artifact loaded), then as many random ones."""
    first = [Call(orjson.dumps({"task": t.spec.name, "inputs": [texts[0]]}), server.auth_header(t.spec.tenant), 1) for t in tasks]
    return first + calls(server, tasks, texts, len(tasks), seed=-1)


def cpu_seconds(server: ServerProcess) -> float:
    used = server.cpu_seconds()
    return used["cpu_server_seconds"] + used["cpu_children_seconds"]


def run(args, workdir: Path) -> dict:
    adapters_dir = workdir / "adapters"
    adapters = make_peft_adapters(args.backbone, adapters_dir, args.tasks)
    sets = task_sets(args.backbone, adapters, args.tasks)
    half = args.tasks // 2
    configs = {
        f"lora-{args.tasks}": ("ours", sets["lora"]),
        "lora-1": ("ours", sets["lora"][:1]),
        f"bare-{args.tasks}": ("ours", sets["bare"]),
        f"all-linear-{args.tasks}": ("ours", sets["all-linear"]),
        f"prefix-{args.tasks}": ("ours", sets["prefix"]),
        f"mix-{args.tasks}": ("ours", [t for pair in zip(sets["lora"][:half], sets["prefix"][:half]) for t in pair]),
        f"peft-{args.tasks}": ("peft", sets["lora"]),
    }
    try:
        pools = load_text_pools()
    except DataMissing:
        pools = synthetic_pools()
    texts = [t for name in ("sst2", "trec", "single") if name in pools.sources for t in pools.sources[name]]
    servers = {"ours": launch_server("prefix-server", args.backbone, workdir / "ours", workdir, args.threads, cwd=ROOT),
               "peft": start_peft(args.backbone, adapters_dir, workdir, args.threads)}
    try:
        for server in servers.values():
            wait_ready(server, timeout_s=900)
        install_tasks(servers["ours"], [t for tasks in sets.values() for t in tasks])
        agreement = check_agreement(servers["ours"], servers["peft"], sets["lora"][0], texts[:8])
        for server, tasks in configs.values():  # every task loaded once, and warm
            run_closed_loop(servers[server].port, warm_calls(servers[server], tasks, texts), args.concurrency)
        rates: dict[str, list[float]] = {name: [] for name in configs}
        costs: dict[str, list[float]] = {name: [] for name in configs}  # server CPU seconds per input
        names = list(configs)
        for index in range(args.rounds):
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                server_name, tasks = configs[name]
                server = servers[server_name]
                seconds = args.peft_seconds if server_name == "peft" else None
                before = cpu_seconds(server)
                result = run_closed_loop(server.port, calls(server, tasks, texts, args.requests, seed=index), args.concurrency,
                                         max_seconds=seconds)
                if set(result.statuses) != {"200"}:
                    raise RuntimeError(f"{name}: expected only answers 200, got {result.statuses}")
                rates[name].append(result.inputs_ok / result.wall_s)
                costs[name].append((cpu_seconds(server) - before) / result.requests)  # in flight at the end: answered
                print(f"{time.strftime('%H:%M:%S')} round {index} {name}: {rates[name][-1]:.1f} inputs/s, "
                      f"{costs[name][-1] * 1e3:.2f} CPU ms per input", file=sys.stderr, flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return report(args, rates, costs, agreement)


def report(args, rates: dict[str, list[float]], costs: dict[str, list[float]], agreement: float) -> dict:
    n = args.tasks
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, servers at {args.threads} torch thread(s)",
        "backbone": args.backbone, "tasks": n, "requests_per_config_and_round": args.requests, "rounds": args.rounds,
        "concurrency": args.concurrency, "peft_agreement_max_abs": agreement,
        "inputs_per_s": {name: [round(x, 1) for x in values] for name, values in rates.items()},
        "cpu_ms_per_input": {name: [round(x * 1e3, 3) for x in values] for name, values in costs.items()},
        "median_inputs_per_s": {name: round(statistics.median(values), 1) for name, values in rates.items()},
        "median_cpu_ms_per_input": {name: round(statistics.median(values) * 1e3, 3) for name, values in costs.items()},
        "ratios_by_cpu_per_input": _ratios(n, args.rounds, {k: [1 / c for c in v] for k, v in costs.items()}),
        "ratios_by_wall_clock": _ratios(n, args.rounds, rates),
    }


def _ratios(n: int, rounds: int, rates: dict[str, list[float]]) -> dict:
    """The issue's ratios of speeds (inputs/s, or 1 / CPU per input), each within a round: median and per round."""

    def ratio(numerator: str, denominator) -> dict:
        per_round = [rates[numerator][i] / denominator(i) for i in range(rounds)]
        return {"median": round(statistics.median(per_round), 3), "per_round": [round(x, 3) for x in per_round]}

    return {
            f"lora-{n} / lora-1 (>= 0.95)": ratio(f"lora-{n}", lambda i: rates["lora-1"][i]),
            f"lora-{n} / bare-{n} (>= 0.85)": ratio(f"lora-{n}", lambda i: rates[f"bare-{n}"][i]),
            f"all-linear-{n} / bare-{n} (>= 0.7)": ratio(f"all-linear-{n}", lambda i: rates[f"bare-{n}"][i]),
            f"mix-{n} / slower of lora-{n}, prefix-{n} (>= 0.9)": ratio(
                f"mix-{n}", lambda i: min(rates[f"lora-{n}"][i], rates[f"prefix-{n}"][i])),
            f"lora-{n} / peft-{n} (>= 2)": ratio(f"lora-{n}", lambda i: rates[f"peft-{n}"][i]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=str(default_backbone_dir()))
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--requests", type=int, default=400, help="requests per configuration per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--peft-seconds", type=float, default=15.0, help="time box of a PEFT run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server (0: torch's default)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
