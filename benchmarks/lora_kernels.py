"""How to add many LoRA adapters' deltas in one forward: the engine's two ways against the others, on
the real backbone, measured in one run. Times are the process's CPU time per batch (its wall time is
reported too): on a shared machine CPU time moves far less with the other jobs than wall time does.

`python -m benchmarks.lora_kernels` builds `--tasks` random LoRA adapters (rank `--rank` on `--targets`,
query and value by default), loads them into an in-process Engine and times packing plus the encoder
forward (`PrefixBert.hidden_states`, the part LoRA changes) over batches of `--batch` rows, one real
text per row and each row's task drawn at random, with the LoRA deltas computed by:
- `runs` and `blocks`: the engine's own two (server/engine/lora.py): two matmuls per run of rows of
  one adapter on views of the input and output (the CPU's default), or blocks of tokens with one gather
  of each block's adapter units, two bmm per Linear and one index_add_ (the GPU's);
- `per-token`: vLLM's CPU path (its torch `bgmv_shrink` / `bgmv_expand` ops on stacked per-slot
  weights): every token gathers its adapter's A `[r, in]` and B `[out, r]`, then two einsums;
- `loop`: one gather, two matmuls and one index_add_ per adapter of the batch (a plain segment loop);
plus the same rows with no adapter at all (`none`: the bare backbone) and every row on one adapter
(`one-adapter`: the engine's whole-batch path). Each strategy's hidden states are checked against the
engine's `runs` first. Rounds alternate the order of the strategies; the report gives each one's median
time per batch and its throughput relative to `none`.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from datetime import UTC, datetime

import numpy as np
import torch

from benchmarks.lora_tasks import lora_artifact
from benchmarks.workload import DataMissing, load_text_pools, synthetic_pools
from server.artifact.lora import parse_targets
from server.engine import NO_TASK, Engine, TokenBatch
from server.engine.backbone import default_backbone_dir


class _Baseline:
    """A LoRA strategy built from the engine's packed batch and pool (the same adapters and weights)."""

    def __init__(self, engine: Engine, packed, tasks: list):
        packed_tasks = [tasks[i] for i in packed.order.tolist()]  # [B] packed order
        token_task = np.array([id(packed_tasks[r]) for r in packed.rows.token_row.tolist()])  # [T]
        self.storage = {m: engine.lora_pool.storage(m) for m in engine.lora_pool.modules}
        self.segments = {}  # module -> [(token index [n], units [r])]
        for module in self.storage:
            found = {}
            for task in packed_tasks:
                if task.lora is not None and module in task.lora.units:
                    found[id(task)] = task.lora.units[module]
            self.segments[module] = [(torch.from_numpy(np.flatnonzero(token_task == key)), torch.from_numpy(units))
                                     for key, units in found.items()]


class LoopLora(_Baseline):
    def apply(self, y, x, layer, module):
        if module not in self.segments:
            return y
        a_storage, b_storage = self.storage[module]
        for tokens, units in self.segments[module]:
            a, b = a_storage[layer].index_select(0, units), b_storage[layer].index_select(0, units)  # [r, in], [r, out]
            y.index_add_(0, tokens, (x.index_select(0, tokens) @ a.T) @ b)
        return y


class PerTokenLora(_Baseline):
    """vLLM's torch ops: weights stacked per adapter slot ([slots, r, in], [slots, out, r]), gathered per token."""

    def __init__(self, engine, packed, tasks):
        super().__init__(engine, packed, tasks)
        T = packed.num_tokens
        self.token_slot, self.stacks = {}, {}
        for module, segments in self.segments.items():
            slot = torch.zeros(T, dtype=torch.long)  # [T]; slot 0 holds zeros (a token without an adapter there)
            rank = max(units.shape[0] for _, units in segments)
            a_storage, b_storage = self.storage[module]
            L, _, in_features = a_storage.shape
            a_stack = torch.zeros(L, len(segments) + 1, rank, in_features)  # [L, slots, r, in]
            b_stack = torch.zeros(L, len(segments) + 1, b_storage.shape[2], rank)  # [L, slots, out, r]
            for index, (tokens, units) in enumerate(segments, start=1):
                slot[tokens] = index
                a_stack[:, index, : units.shape[0]] = a_storage[:, units]
                b_stack[:, index, :, : units.shape[0]] = b_storage[:, units].transpose(1, 2)
            self.token_slot[module], self.stacks[module] = slot, (a_stack, b_stack)

    def apply(self, y, x, layer, module):
        if module not in self.stacks:
            return y
        a_stack, b_stack = self.stacks[module]
        slot = self.token_slot[module]
        shrunk = torch.einsum("bi,bri->br", x, a_stack[layer][slot])  # per token [r, in] gathered: [T, r]
        return y.add_(torch.einsum("br,bor->bo", shrunk, b_stack[layer][slot]))  # per token [out, r]: [T, out]


STRATEGIES = {"loop": LoopLora, "per-token": PerTokenLora}


def forward(engine: Engine, batch: TokenBatch, strategy: str) -> torch.Tensor:
    engine.lora_mode = "blocks" if strategy == "blocks" else "runs"
    packed = engine.pack(batch)
    if strategy in STRATEGIES:
        packed.lora = STRATEGIES[strategy](engine, packed, engine.tasks.resolve(batch.tasks))
    return engine.model.hidden_states(packed)  # [T, C]


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    engine = Engine.from_folder(args.backbone)
    targets = parse_targets(args.targets)
    handles = [engine.load(lora_artifact(engine.shape, seed, args.rank, targets)) for seed in range(args.tasks)]
    try:
        pools = load_text_pools()
    except DataMissing:
        pools = synthetic_pools()
    texts = [t for pool in pools.sources.values() for t in pool]
    rng = random.Random(0)
    batches = {name: [] for name in ("none", "runs", "blocks", "per-token", "loop", "one-adapter")}
    for _ in range(args.batches):
        encoded = engine.encode([rng.choice(texts) for _ in range(args.batch)], 0)
        rows = [rng.choice(handles) for _ in encoded]
        batches["none"].append(TokenBatch.of(encoded, [NO_TASK] * len(encoded)))
        for name in ("runs", "blocks", "per-token", "loop"):
            batches[name].append(TokenBatch.of(encoded, rows))
        batches["one-adapter"].append(TokenBatch.of(encoded, [handles[0]] * len(encoded)))
    with torch.inference_mode():
        reference = forward(engine, batches["runs"][0], "runs")
        for name in ("blocks", *STRATEGIES):
            got = forward(engine, batches[name][0], name)
            assert torch.allclose(got, reference, atol=1e-4), f"{name} disagrees with the engine's runs"
        wall, cpu = {name: [] for name in batches}, {name: [] for name in batches}
        names = list(batches)
        for round_index in range(args.rounds):
            for index in range(args.batches):  # every strategy on the same batch back to back, order rotating
                shift = (round_index * args.batches + index) % len(names)
                for name in names[shift:] + names[:shift]:
                    started, started_cpu = time.perf_counter(), time.process_time()
                    forward(engine, batches[name][index], name)
                    wall[name].append(time.perf_counter() - started)
                    cpu[name].append(time.process_time() - started_cpu)
    median = {name: statistics.median(values) for name, values in cpu.items()}
    tokens = statistics.mean(int(b.lengths.sum()) for b in batches["none"])
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "backbone": engine.files.name, "adapters": args.tasks, "rank": args.rank, "targets": list(targets),
        "rows_per_batch": args.batch, "mean_tokens_per_batch": round(tokens, 1), "batches_per_round": args.batches,
        "rounds": args.rounds,
        "median_cpu_ms_per_batch": {name: round(value * 1e3, 2) for name, value in median.items()},
        "median_wall_ms_per_batch": {name: round(statistics.median(values) * 1e3, 2) for name, values in wall.items()},
        "throughput_vs_none": {name: round(median["none"] / value, 3) for name, value in median.items()},
        "runs_speedup_over": {name: round(median[name] / median["runs"], 2) for name in ("blocks", "per-token", "loop")},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default=str(default_backbone_dir()))
    parser.add_argument("--tasks", type=int, default=64, help="LoRA adapters loaded (default 64)")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--targets", default="query,value", help="as train's --lora-targets (default query,value)")
    parser.add_argument("--batch", type=int, default=64, help="rows per batch (default 64)")
    parser.add_argument("--batches", type=int, default=4, help="batches per strategy per round (default 4)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
