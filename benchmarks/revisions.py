"""Did a change slow serving down? Two revisions of prefix-server side by side, in one run.

`python -m benchmarks.revisions --base REV` checks REV out into a temporary git worktree, starts
`serve` from it and from the working tree (same backbone, same settings, each on its own free port),
installs the same tasks into both, then sends the same closed-loop load (one input per request, real
texts) to each in turn, the order alternating round by round so a slow spell of a shared machine falls
on both alike. Reports each round's throughput and the median ratio working tree / base.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import tempfile
from pathlib import Path

import orjson

from benchmarks.http_client import Call, run_closed_loop
from benchmarks.http_servers import ServerProcess, install_tasks, launch_server, wait_ready
from benchmarks.workload import build_tasks, load_text_pools, make_tasks, synthetic_pools
from server.engine.backbone import default_backbone_dir, read_backbone_folder

ROOT = Path(__file__).resolve().parents[1]


def calls_for(server: ServerProcess, tasks, texts: list[str], count: int, seed: int) -> list[Call]:
    rng = random.Random(seed)
    calls = []
    for _ in range(count):
        spec = tasks[rng.randrange(len(tasks))].spec
        body = orjson.dumps({"task": spec.name, "inputs": [rng.choice(texts)]})
        calls.append(Call(body, server.auth_header(spec.tenant), 1))
    return calls


def run(base: str, tasks: int, requests: int, rounds: int, concurrency: int, backbone: str, workdir: Path) -> dict:
    base_tree = workdir / "base-tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base_tree), base], check=True, capture_output=True)
    servers: dict[str, ServerProcess] = {}
    try:
        servers["base"] = launch_server("prefix-server", backbone, workdir / "base", workdir, cwd=base_tree)
        servers["head"] = launch_server("prefix-server", backbone, workdir / "head", workdir, cwd=ROOT)
        for server in servers.values():
            wait_ready(server)
        built = build_tasks(read_backbone_folder(backbone).shape(), make_tasks(tasks, seed=7))
        for server in servers.values():
            install_tasks(server, built)
        try:
            pools = load_text_pools()
        except FileNotFoundError:
            pools = synthetic_pools()
        texts = [t for pool in pools.sources.values() for t in pool if isinstance(t, str)]
        for server in servers.values():  # warm both: first requests load prefixes
            run_closed_loop(server.port, calls_for(server, built, texts, 4 * tasks, seed=1), concurrency)
        per_round: dict[str, list[float]] = {name: [] for name in servers}
        for index in range(rounds):
            order = ["base", "head"] if index % 2 == 0 else ["head", "base"]
            for name in order:
                calls = calls_for(servers[name], built, texts, requests, seed=100 + index)
                result = run_closed_loop(servers[name].port, calls, concurrency)
                if result.statuses != {"200": requests}:
                    raise RuntimeError(f"{name}: expected {requests} answers 200, got {result.statuses}")
                per_round[name].append(result.inputs_ok / result.wall_s)
    finally:
        for server in servers.values():
            server.stop()
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base_tree)], check=False)
    ratios = [h / b for h, b in zip(per_round["head"], per_round["base"])]
    return {
        "base": base, "head": _head_revision(), "tasks": tasks, "requests_per_round": requests, "concurrency": concurrency,
        "inputs_per_s": {name: [round(x, 1) for x in values] for name, values in per_round.items()},
        "median_inputs_per_s": {name: round(statistics.median(values), 1) for name, values in per_round.items()},
        "ratio_head_over_base": {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                 "max": round(max(ratios), 3)},
    }


def _head_revision() -> str:
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return done.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="the revision to compare against (a commit, branch or tag)")
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--requests", type=int, default=600, help="requests per server per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--backbone", default=str(default_backbone_dir()))
    parser.add_argument("--out", type=Path, help="write the result as JSON here too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.base, args.tasks, args.requests, args.rounds, args.concurrency, args.backbone, Path(tmp))
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
