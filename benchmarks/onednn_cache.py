"""What oneDNN's primitive cache is worth to the CPU engine, and what it costs in memory (issue 12's
soak): the same seeded stream of varied batches, the cache on (oneDNN's default, 1,024 primitives)
and off (`ONEDNN_PRIMITIVE_CACHE_CAPACITY=0`, the engine process's default), alternating in fresh
processes (oneDNN reads the variable once, as it loads). Prints batches/s and RSS at the end.

    python -m benchmarks.onednn_cache [--rounds 4] [--batches 250] [--threads 2]

Needs ../shared/data (real texts) and the default backbone package.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time


def _one_stream(batches: int, threads: int) -> None:
    import torch

    from benchmarks.workload import build_tasks, load_text_pools, make_tasks
    from server.engine import Engine, TokenBatch
    from server.settings import Settings

    torch.set_num_threads(threads)
    engine = Engine.from_folder(Settings().backbone, "cpu", torch.float32, None)
    texts = [t for pool in load_text_pools().sources.values() for t in pool]
    encoded = engine.encode(texts[:2000], 64)
    loaded = [engine.load(t.artifact) for t in build_tasks(engine.shape, make_tasks(8, seed=0))]
    rng = random.Random(0)
    stream = []
    for _ in range(batches):
        rows = rng.randint(1, 64)
        stream.append(TokenBatch.of([rng.choice(encoded) for _ in range(rows)], [rng.choice(loaded) for _ in range(rows)]))
    for batch in stream[:20]:
        engine.score(batch)
    started = time.perf_counter()
    for batch in stream:
        engine.score(batch)
    seconds = time.perf_counter() - started
    with open("/proc/self/statm") as statm:
        rss_mib = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    print(f"{batches / seconds:.3f} {rss_mib:.0f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", type=int, default=250)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _one_stream(args.batches, args.threads)
        return 0
    ratios = []
    print("| round | on: batches/s | off: batches/s | off / on | RSS at the end, on / off (MiB) |")
    print("|---:|---:|---:|---:|---|")
    for index in range(args.rounds):
        measured = {}
        for name, capacity in (("on", "1024"), ("off", "0")):
            env = {**os.environ, "ONEDNN_PRIMITIVE_CACHE_CAPACITY": capacity}
            out = subprocess.run([sys.executable, __file__, "--child", "--batches", str(args.batches), "--threads",
                                  str(args.threads)], env=env, capture_output=True, text=True, check=True)
            rate, rss = out.stdout.split()[-2:]
            measured[name] = (float(rate), rss)
        ratios.append(measured["off"][0] / measured["on"][0])
        print(f"| {index + 1} | {measured['on'][0]:.2f} | {measured['off'][0]:.2f} | {ratios[-1]:.2f} | "
              f"{measured['on'][1]} / {measured['off'][1]} |", flush=True)
    print(f"\noff / on: median {statistics.median(ratios):.2f}, range {min(ratios):.2f}-{max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
