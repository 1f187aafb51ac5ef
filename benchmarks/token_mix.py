"""The cost of token tasks in a mixed batch (issue 11): throughput of batches of 64 rows from 64
tasks, half of them token tasks, against 64 sentence tasks, on the same texts, in one run.

Batches of the two configurations alternate (the order flipping every batch), so a drift in the
machine's load weighs on both; the ratio is taken within each round and reported as the median (min-max). In-process Engine
(the forward pass and heads as served; no HTTP, no batcher), float32, the default backbone.

    python -m benchmarks.token_mix [--rounds 5] [--batches 12] [--configs sentence,mixed]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from server.artifact import HeadKind, PrefixArtifact, ProblemType
from server.engine import Engine
from server.engine.backbone import default_backbone_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll03.dev.jsonl"
IOB = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")


def task(shape, index: int, token: bool) -> PrefixArtifact:
    gen = torch.Generator().manual_seed(index)
    prefix_len = 4 + (index * 7) % 61  # 4..64, as the engine bench spreads them
    labels = IOB if token else tuple(f"l{i}" for i in range(2 + index % 5))
    return PrefixArtifact(
        key_values=torch.randn(shape.num_layers, 2, shape.num_heads, prefix_len, shape.head_dim, generator=gen),
        classifier_weight=torch.randn(len(labels), shape.hidden_size, generator=gen) * 0.5,
        classifier_bias=torch.zeros(len(labels)),
        problem_type=ProblemType.SINGLE_LABEL,
        labels=labels,
        head=HeadKind.TOKEN if token else HeadKind.SEQUENCE,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=12, help="batches of 64 rows per configuration per round")
    parser.add_argument("--configs", default="sentence,mixed")
    args = parser.parse_args()
    engine = Engine.from_folder(default_backbone_dir())
    texts = [" ".join(json.loads(line)["tokens"]) for line in DATA.read_text().splitlines()[: 64 * args.batches]]
    configs = args.configs.split(",")
    batches = {}
    for name in configs:
        handles = [engine.load(task(engine.shape, i, token=(name == "mixed" and i % 2 == 1))) for i in range(64)]
        batches[name] = [
            [(engine.encode([text], engine.task(handles[i]).prefix_len)[0], handles[i]) for i, text in enumerate(texts[b * 64 : (b + 1) * 64])]
            for b in range(args.batches)
        ]
    for rows in batches[configs[0]][:2]:
        engine.score_encoded(rows)  # warm-up
    per_round = {name: [] for name in configs}
    for round_index in range(args.rounds):
        # Paired at batch granularity: batch b of each configuration runs back to back, the order
        # alternating, so a slow spell of this shared machine falls on both alike.
        seconds = {name: 0.0 for name in configs}
        for b in range(args.batches):
            for name in configs if (round_index + b) % 2 == 0 else list(reversed(configs)):
                started = time.perf_counter()
                engine.score_encoded(batches[name][b])
                seconds[name] += time.perf_counter() - started
        for name in configs:
            per_round[name].append(64 * args.batches / seconds[name])
    for name in configs:
        print(f"{name}: median {statistics.median(per_round[name]):.1f} rows/s, rounds {[round(x, 1) for x in per_round[name]]}")
    if len(configs) == 2:
        ratios = [b / a for a, b in zip(per_round[configs[0]], per_round[configs[1]])]
        print(f"{configs[1]} / {configs[0]}: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
    machine = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}, {machine}")


if __name__ == "__main__":
    main()
