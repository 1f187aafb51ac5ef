"""Engine throughput on the real MiniLM backbone (float32, CPU): is a batch whose 32 rows belong to 32
different tasks as fast as the same rows on one task, and close to the bare backbone?

Variants (32 rows of SST-2 dev sentences per batch; tokenization is done beforehand and not timed):
  mixed32-P16   32 rows, 32 random prefixes, all P = 16
  mixed32-Pmix  32 rows, 32 random prefixes, P cycling 8, 16, 32 (shorter prefixes masked where padded)
  onetask-P16   32 rows, one prefix, P = 16
  backbone      32 rows, no prefix (Row(encoded, None) through engine.pooled)
Prefixed variants are timed with engine.score (heads and scores included) and/or engine.pooled (the
same forward as the backbone variant, so mixed/backbone compares like with like).

The machine is shared and noisy, so every round runs every variant on each batch, interleaved per
batch in a fresh random order, after warm-up rounds; ratios are taken within a round, then medianed,
with a bootstrap interval of that median. A torch.profiler op table (variants alternated) shows where
the time goes on any engine. Engines with the internals of commit 9300f1e (`_collate_tokens`,
`_gather_prefixes`, `PackedLayout.pad`) also get a step breakdown and two prototypes ("proto" rows,
checked to give identical outputs): `gather_direct` and `pad_in_place` below.

    .venv/bin/python scripts/bench_engine.py            # 30 rounds of 3 batches, updates BENCHMARKS.md
    .venv/bin/python scripts/bench_engine.py --rounds 3 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import subprocess
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # runnable as a plain script from any directory

from server.artifact import PrefixArtifact, ProblemType  # noqa: E402
from server.engine import Engine, LoadedPrefix, Row  # noqa: E402
from server.engine.engine import _apply_heads, _unique_prefixes  # noqa: E402
from server.engine import model as engine_model  # noqa: E402
from server.engine.random_backbone import default_backbone_dir  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "sst2.dev.jsonl"
BATCH = 32
MIXED_P = (8, 16, 32)


def random_prefix(engine: Engine, prefix_len: int, seed: int) -> LoadedPrefix:
    """A task with random weights: timing does not depend on what the prefix learned."""
    shape, gen = engine.shape, torch.Generator().manual_seed(seed)
    artifact = PrefixArtifact(
        key_values=torch.randn(shape.num_layers, 2, shape.num_heads, prefix_len, shape.head_dim, generator=gen),
        classifier_weight=torch.randn(2, shape.hidden_size, generator=gen) * 0.1,
        classifier_bias=torch.zeros(2),
        problem_type=ProblemType.SINGLE_LABEL,
        labels=("negative", "positive"),
    )
    return engine.load_prefix(artifact)


def gather_direct(engine: Engine, prefixes, row_to_prefix):
    """Prototype of Engine._gather_prefixes: builds the [L, 2, B, H, P_max, D] batch straight from the
    rows' prefixes. One torch.stack when every row has P_max (one pass over the output, no zero fill,
    no per-task intermediate, no index_select), else a per-row copy into a zeroed buffer. Same values."""
    lens = torch.tensor([p.prefix_len if p else 0 for p in prefixes], dtype=torch.long)
    row_lens = lens[row_to_prefix].to(engine.device)
    p_max = int(lens.max())
    if p_max == 0:
        return None, row_lens
    row_prefixes = [prefixes[i] for i in row_to_prefix.tolist()]
    if all(p is not None and p.prefix_len == p_max for p in row_prefixes):
        return torch.stack([p.key_values for p in row_prefixes], dim=2), row_lens
    g = engine.files.geometry
    shape = (g.num_layers, 2, len(row_prefixes), g.num_heads, p_max, g.head_dim)
    out = torch.zeros(shape, device=engine.device, dtype=engine.dtype)  # padding must be finite: 0 * NaN = NaN
    for index, prefix in enumerate(row_prefixes):
        if prefix is not None:
            out[:, :, index, :, : prefix.prefix_len] = prefix.key_values
    return out, row_lens


def pad_in_place(layout, packed: torch.Tensor) -> torch.Tensor:
    """Prototype of PackedLayout.pad: `index_copy_` into the fresh zeros instead of `index_copy`,
    which clones the whole [B * S, F] buffer first (one full extra pass per layer). Same values."""
    if layout.dense:
        return packed
    return packed.new_zeros(layout.batch * layout.longest, packed.shape[-1]).index_copy_(0, layout.flat_index, packed)


@contextlib.contextmanager
def prototypes(engine: Engine, names: tuple[str, ...]):
    """Applies the named prototypes for the duration of one call, then restores the engine's code."""
    layout_class = getattr(engine_model, "PackedLayout", None)
    original_pad = layout_class.pad if layout_class else None
    if "gather" in names:
        engine._gather_prefixes = types.MethodType(gather_direct, engine)  # an instance attribute, removed below
    if "pad" in names and layout_class:
        layout_class.pad = pad_in_place
    try:
        yield
    finally:
        engine.__dict__.pop("_gather_prefixes", None)
        if layout_class:
            layout_class.pad = original_pad


@dataclass
class Variant:
    method: str  # "score" or "pooled"
    batches: list[list[Row]]
    protos: tuple[str, ...] = ()

    def run(self, engine: Engine, batch: int) -> float:
        with prototypes(engine, self.protos):
            start = time.perf_counter()
            getattr(engine, self.method)(self.batches[batch])
            return time.perf_counter() - start


def build_variants(engine: Engine, sentences: list[str], num_batches: int) -> dict[str, Variant]:
    """Every variant sees the same sentences; only the prefixes (and prototypes) differ."""
    one_task = random_prefix(engine, 16, seed=0)
    mixed16 = [random_prefix(engine, 16, seed=1 + i) for i in range(BATCH)]
    mixed_p = [random_prefix(engine, MIXED_P[i % len(MIXED_P)], seed=100 + i) for i in range(BATCH)]
    layouts = {"mixed32-P16": mixed16, "mixed32-Pmix": mixed_p, "onetask-P16": [one_task] * BATCH}
    batches: dict[str, list[list[Row]]] = {name: [] for name in [*layouts, "backbone"]}
    for b in range(num_batches):
        texts = sentences[b * BATCH : (b + 1) * BATCH]
        for name, prefixes in layouts.items():
            batches[name].append([Row(engine.encode([t], p.prefix_len)[0], p) for t, p in zip(texts, prefixes)])
        batches["backbone"].append([Row(e, None) for e in engine.encode(texts, 0)])
    variants = {
        "mixed32-P16 score": Variant("score", batches["mixed32-P16"]),
        "onetask-P16 score": Variant("score", batches["onetask-P16"]),
        "mixed32-P16 pooled": Variant("pooled", batches["mixed32-P16"]),
        "onetask-P16 pooled": Variant("pooled", batches["onetask-P16"]),
        "mixed32-Pmix pooled": Variant("pooled", batches["mixed32-Pmix"]),
        "backbone pooled": Variant("pooled", batches["backbone"]),
    }
    # The prototypes replace engine internals of commit 9300f1e; an engine without them skips them.
    if hasattr(engine, "_gather_prefixes"):
        variants["proto gather: mixed32-P16 pooled"] = Variant("pooled", batches["mixed32-P16"], ("gather",))
        variants["proto gather: mixed32-Pmix pooled"] = Variant("pooled", batches["mixed32-Pmix"], ("gather",))
    if hasattr(getattr(engine_model, "PackedLayout", None), "pad"):
        variants["proto pad: backbone pooled"] = Variant("pooled", batches["backbone"], ("pad",))
        variants["proto pad+gather: mixed32-P16 pooled"] = Variant("pooled", batches["mixed32-P16"], ("pad", "gather"))
    return variants


def run_round(engine: Engine, variants: dict[str, Variant], rng: random.Random) -> dict[str, float]:
    """Seconds per variant over all its batches. Interleaved per batch, in a fresh random order each
    time, so that every variant meets the same load within seconds of the others."""
    seconds = dict.fromkeys(variants, 0.0)
    for batch in range(len(next(iter(variants.values())).batches)):
        for name in rng.sample(list(variants), len(variants)):
            seconds[name] += variants[name].run(engine, batch)
    return seconds


def check_prototypes(engine: Engine, variants: dict[str, Variant]) -> None:
    """A prototype must give the engine's exact results, or its timing means nothing."""
    for name, variant in variants.items():
        if variant.protos:
            rows = variant.batches[0]
            reference = engine.pooled(rows)
            with prototypes(engine, variant.protos):
                assert torch.equal(engine.pooled(rows), reference), name


def components(engine: Engine, rows: list[Row], protos: tuple[str, ...] = ()) -> dict[str, float]:
    """One batch through engine.score's steps, each timed on its own (seconds)."""
    timings, clock = {}, time.perf_counter
    with torch.inference_mode(), prototypes(engine, protos):
        t0 = clock()
        prefixes, row_to_prefix = _unique_prefixes(rows)
        ids, types_, mask = engine._collate_tokens(rows)
        t1 = clock()
        prefix_kv, prefix_lens = engine._gather_prefixes(prefixes, row_to_prefix)
        t2 = clock()
        pooled = engine.model(ids, types_, mask, prefix_kv, prefix_lens).float()
        t3 = clock()
        if prefixes[0] is not None:
            scores = _apply_heads(pooled, prefixes, row_to_prefix)
            [v[: r.prefix.num_labels] for v, r in zip(scores.tolist(), rows)]
        t4 = clock()
    timings.update(collate=t1 - t0, gather=t2 - t1, model=t3 - t2, heads=t4 - t3)
    return timings


def quantiles(values: list[float]) -> tuple[float, float, float]:
    cuts = statistics.quantiles(values, n=10, method="inclusive")
    return statistics.median(values), cuts[0], cuts[-1]


def median_interval(values: list[float], resamples: int = 2000) -> tuple[float, float]:
    """90% bootstrap interval of the median: how far the noise leaves the median itself uncertain."""
    rng = random.Random(1)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.05 * resamples)], medians[int(0.95 * resamples) - 1]


def result_tables(throughput: dict[str, list[float]], parts: dict[str, dict[str, list[float]]]) -> str:
    """Throughput per variant, per-round ratios, and the component breakdown, as Markdown."""
    out = ["| variant (32 rows per batch) | median inputs/s | p10 | p90 | best round |", "|---|---:|---:|---:|---:|"]
    for name, values in throughput.items():
        out.append("| {} | {:.1f} | {:.1f} | {:.1f} | {:.1f} |".format(name, *quantiles(values), max(values)))
    out += ["", "| ratio of throughputs (per round, then median) | median | 90% CI of median | p10 | p90 | best/best |"]
    out.append("|---|---:|---:|---:|---:|---:|")
    for label, (num, den) in RATIOS.items():
        if num not in throughput or den not in throughput:
            continue  # a prototype that does not apply to this code
        values = [a / b for a, b in zip(throughput[num], throughput[den])]
        med, p10, p90 = quantiles(values)
        low, high = median_interval(values)
        best = max(throughput[num]) / max(throughput[den])
        out.append(f"| {label} | {med:.3f} | {low:.3f}-{high:.3f} | {p10:.3f} | {p90:.3f} | {best:.3f} |")
    if not parts:
        return "\n".join(out)  # an engine without these internal steps: the op profile still shows them
    out += ["", "| first batch, median ms | collate | prefix gather | model forward | heads + scores |"]
    out.append("|---|---:|---:|---:|---:|")
    for label, steps in parts.items():
        cells = " | ".join(f"{1000 * statistics.median(steps[s]):.2f}" for s in ("collate", "gather", "model", "heads"))
        out.append(f"| {label} | {cells} |")
    return "\n".join(out)


def op_profiles(engine: Engine, variants: dict[str, Variant], names: tuple[str, ...], passes: int = 6) -> str:
    """Self CPU time per op, ms per batch, from torch.profiler; the variants are profiled alternately
    (one pass each, `passes` times) so that both meet the same load. Top ops, and the difference."""
    from torch.profiler import ProfilerActivity, profile

    totals: dict[str, dict[str, float]] = {name: {} for name in names}
    for _ in range(passes):
        for name in names:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                variants[name].run(engine, 0)
            for event in prof.key_averages():
                totals[name][event.key] = totals[name].get(event.key, 0.0) + event.self_cpu_time_total / 1000 / passes
    ops = sorted(set().union(*totals.values()), key=lambda op: -max(t.get(op, 0.0) for t in totals.values()))[:10]
    lines = ["| op (self CPU, ms per batch) | " + " | ".join(names) + " | difference |", "|---|---:|---:|---:|"]
    for op in ops + ["total"]:
        cells = [sum(totals[n].values()) if op == "total" else totals[n].get(op, 0.0) for n in names]
        lines.append(f"| {op} | " + " | ".join(f"{c:.1f}" for c in cells) + f" | {cells[0] - cells[-1]:+.1f} |")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    def sh(cmd):
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=REPO).stdout.strip()

    dirty = sh("git status --porcelain server/engine server/artifact").replace("\n", "; ")
    return {
        "cpu": sh("lscpu | grep 'Model name'").split(":", 1)[-1].strip(),
        "cores": sh("nproc"),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "date": sh("date -u"),
        "load": " ".join(sh("cat /proc/loadavg").split()[:3]),
        "code": sh("git rev-parse --short HEAD") + (f" with uncommitted changes ({dirty})" if dirty else ""),
    }


RATIOS = {  # label -> (numerator, denominator): throughputs of the same round
    "mixed32-P16 / onetask-P16 (score)": ("mixed32-P16 score", "onetask-P16 score"),
    "mixed32-P16 / onetask-P16 (pooled)": ("mixed32-P16 pooled", "onetask-P16 pooled"),
    "mixed32-P16 pooled / backbone": ("mixed32-P16 pooled", "backbone pooled"),
    "mixed32-P16 score / backbone": ("mixed32-P16 score", "backbone pooled"),
    "onetask-P16 pooled / backbone": ("onetask-P16 pooled", "backbone pooled"),
    "mixed32-Pmix pooled / backbone": ("mixed32-Pmix pooled", "backbone pooled"),
    "proto gather: mixed32-P16 / onetask-P16 (pooled)": ("proto gather: mixed32-P16 pooled", "onetask-P16 pooled"),
    "proto gather: mixed32-P16 pooled / backbone": ("proto gather: mixed32-P16 pooled", "backbone pooled"),
    "proto gather: mixed32-Pmix pooled / backbone": ("proto gather: mixed32-Pmix pooled", "backbone pooled"),
    "proto pad: backbone / backbone": ("proto pad: backbone pooled", "backbone pooled"),
    "proto pad+gather: mixed32-P16 / proto pad: backbone": (
        "proto pad+gather: mixed32-P16 pooled", "proto pad: backbone pooled"
    ),
}
COMPONENT_ROWS = {  # label -> (variant whose first batch is used, prototypes)
    "mixed32-P16": ("mixed32-P16 pooled", ()),
    "proto gather: mixed32-P16": ("mixed32-P16 pooled", ("gather",)),
    "onetask-P16": ("onetask-P16 pooled", ()),
    "backbone": ("backbone pooled", ()),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batches", type=int, default=3, help="batches of 32 rows per variant per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print only, do not write BENCHMARKS.md")
    parser.add_argument("--raw", help="also save the per-round timings to this JSON file")
    args = parser.parse_args()
    if not DATA.is_file():
        print(f"skipped: {DATA} not found (the shared data folder is absent)")
        return 0
    torch.set_num_threads(args.threads)
    lines = DATA.read_text().splitlines()[: BATCH * args.batches]
    sentences = [json.loads(line)["text"] for line in lines]
    engine = Engine.from_folder(default_backbone_dir())  # float32, CPU
    variants = build_variants(engine, sentences, args.batches)
    check_prototypes(engine, variants)
    rng = random.Random(0)
    for _ in range(args.warmup):
        run_round(engine, variants, rng)

    seconds = {name: [] for name in variants}
    has_steps = all(hasattr(engine, name) for name in ("_collate_tokens", "_gather_prefixes"))
    parts: dict[str, dict[str, list[float]]] = {
        label: {} for label, (variant, _) in COMPONENT_ROWS.items() if has_steps and variant in variants
    }
    for number in range(args.rounds):
        for name, s in run_round(engine, variants, rng).items():
            seconds[name].append(s)
        for label in rng.sample(list(parts), len(parts)):
            variant, protos = COMPONENT_ROWS[label]
            for step, s in components(engine, variants[variant].batches[0], protos).items():
                parts[label].setdefault(step, []).append(s)
        print(f"round {number + 1}/{args.rounds}", file=sys.stderr, flush=True)

    if args.raw:
        Path(args.raw).write_text(json.dumps({"seconds": seconds, "components": parts, "batches": args.batches}))
    table = result_tables({n: [BATCH * args.batches / s for s in v] for n, v in seconds.items()}, parts)
    prof_table = op_profiles(engine, variants, ("mixed32-P16 pooled", "backbone pooled"))
    env = environment()
    longest = [max(len(r.encoded) for r in rows) for rows in variants["backbone pooled"].batches]
    print(table, "\n\nModel forward, top ops by self CPU time:\n", prof_table, sep="")
    print(f"\nlongest rows {longest}; {env}")
    if not args.no_write:
        write_report(args, table, prof_table, env, longest)
    return 0


BEGIN, END = "<!-- bench_engine:begin -->", "<!-- bench_engine:end -->"


def write_report(args, table: str, prof_table: str, env: dict[str, str], longest: list[int]) -> None:
    """Replaces only this script's section of BENCHMARKS.md: notes written around it are kept."""
    command = ".venv/bin/python scripts/bench_engine.py"
    defaults = {"rounds": 30, "batches": 3, "warmup": 2, "threads": 2}
    command += "".join(f" --{k} {getattr(args, k)}" for k, v in defaults.items() if getattr(args, k) != v)
    proto_note = ""
    if "proto " in table:
        proto_note = "\n\"proto\" rows run this script's prototypes (gather_direct, pad_in_place), not the engine's code."
    section = f"""{BEGIN}
Command: `{command}` (writes this section; text outside the markers is kept)

Code: {env['code']}.
Machine: {env['cpu']}, {env['cores']} cores, shared; torch {env['torch']}, {env['threads']} threads, float32 CPU.
Date: {env['date']}. Load average (1, 5, 15 min) at the end of the run: {env['load']}.
Backbone: MiniLM-L6-H384 (the embedded default). Data: the first {BATCH * args.batches} sentences of SST-2 dev,
{args.batches} batches of {BATCH} (longest row per batch: {', '.join(map(str, longest))} tokens). {args.rounds} rounds
after {args.warmup} warm-up rounds; within a round every variant runs on each batch, in a fresh random order per batch.
Prefixes are random, 2 labels, single-label; P = 16, or P cycling {', '.join(map(str, MIXED_P))} for Pmix.{proto_note}

{table}

engine.pooled on the first batch, top ops by self CPU time (torch.profiler, the two variants alternated 6 times):

{prof_table}
{END}"""
    path = REPO / "BENCHMARKS.md"
    title = "# Benchmarks\n\n## Engine: mixed-task batch vs one-task batch vs bare backbone\n\n"
    text = path.read_text() if path.is_file() else title
    if BEGIN in text and END in text:
        text = text[: text.index(BEGIN)] + section + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
