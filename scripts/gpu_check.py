"""The prepared device check of the GPU path (issue 13): one run on one GPU, under 8 minutes.

    python scripts/gpu_check.py --out $OUT        # on the device machine
    python scripts/gpu_check.py --smoke           # here, on the CPU: tiny shapes, sdpa only, seconds
    TRITON_INTERPRET=1 python scripts/gpu_check.py --smoke   # the triton path too, under the interpreter

Measures the machine (bf16 matmul peak, copy bandwidth), runs the correctness checks of
harness/cuda_checks.py, then a BERT-base-shaped backbone with random weights (12 layers, 12
heads, hidden 768) on token lengths of real text (scripts/text_lengths.json), in float16 and
bfloat16: the no-prefix limit and mixed prefixes with 1, 64 and 10,000 resident tasks (P uniform in
4..64, the pool filled on the device) under each attention path; then the engine end to end (packing,
the index copy, heads and the copy back included) at 64 and 10,000 tasks. Writes gpu_check.json and
gpu_check.md under --out (default $OUT, else ./gpu-check). Starts no new section past --budget-s.

Imports only engine modules, torch, transformers and safetensors (what the device machine has).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from benchmarks.gpu_timings import (  # noqa: E402
    Work,
    bare_work,
    measure_engine,
    measure_engine_pipelined,
    measure_forward,
    measure_machine,
)
from harness import cuda_checks  # noqa: E402
from server.artifact import ProblemType  # noqa: E402
from server.engine import EncodedInput, Engine, TokenBatch, read_backbone_folder  # noqa: E402
from server.engine.heads import HeadEntry, HeadPool  # noqa: E402
from server.engine.prefix_pool import PoolEntry, PrefixPool  # noqa: E402
from server.engine.tasks import LoadedTask, TaskTable  # noqa: E402

KINDS = [ProblemType.SINGLE_LABEL, ProblemType.MULTI_LABEL, ProblemType.REGRESSION]
FULL = {"hidden": 768, "layers": 12, "heads": 12, "tasks": [1, 64, 10_000], "engine_tasks": [64, 10_000],
        "budget_tokens": 16384, "budget_sweep": [4096, 65536], "batches": 12, "dtypes": ["float16", "bfloat16"], "matmul": 8192, "copy_mb": 1024}
SMOKE = {"hidden": 64, "layers": 2, "heads": 4, "tasks": [1, 4, 16], "engine_tasks": [4, 16],
         "budget_tokens": 512, "budget_sweep": [256], "batches": 3, "dtypes": ["float32"], "matmul": 256, "copy_mb": 16}


def write_backbone(folder: Path, cfg: dict) -> Path:
    torch.manual_seed(0)
    config = BertConfig(hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
                        intermediate_size=4 * cfg["hidden"], max_position_embeddings=512)
    BertModel(config, add_pooling_layer=True).save_pretrained(folder, safe_serialization=True)
    return folder


def text_batches(cfg: dict, seed: int = 0) -> list[list[EncodedInput]]:
    """Batches of real-text lengths up to the token budget; random ids, [CLS] first."""
    lengths = json.loads((ROOT / "scripts" / "text_lengths.json").read_text())["lengths"]
    rng = random.Random(seed)
    rng.shuffle(lengths)
    batches, batch, tokens, i = [], [], 0, 0
    while len(batches) < cfg["batches"] + 2:  # two to warm up
        n = lengths[i % len(lengths)]
        i += 1
        ids = [101] + [rng.randrange(1000, 30000) for _ in range(n - 2)] + [102]
        batch.append(EncodedInput(np.array(ids, np.int32), np.zeros(n, np.int8)))
        tokens += n
        if tokens >= cfg["budget_tokens"]:
            batches.append(batch)
            batch, tokens = [], 0
    return batches


def resident_tasks(engine: Engine, count: int, seed: int = 0) -> list[int]:
    """`count` tasks with P uniform in 4..64 and 2-label heads, the pools sized and filled on the device;
    returns their handles (0 .. count - 1)."""
    rng = random.Random(seed)
    g, device = engine.files.geometry, engine.device
    lens = [rng.randint(4, 64) for _ in range(count)]
    pool = PrefixPool(g.num_layers, g.num_heads, g.head_dim, device, engine.dtype, initial_slots=sum(lens))
    for layer in range(g.num_layers):
        pool.storage[layer].normal_()
    heads = HeadPool(g.hidden_size, device, initial_slots=2 * count)
    heads.storage.normal_(std=0.05)
    engine.prefix_pool, engine.head_pool = pool, heads
    engine.tasks = TaskTable(engine.shape, pool, heads, engine.model.pooler is not None)
    offset = 0
    for i, P in enumerate(lens):
        task = LoadedTask(PoolEntry(np.arange(offset, offset + P), pool), HeadEntry((2 * i, 2 * i + 1), heads), KINDS[i % 3], ("a", "b"))
        engine.tasks.add(i, task)
        offset += P
    return list(range(count))


class Run:
    """Sections in order, each skipped once the time budget is spent, each failure recorded, not raised."""

    def __init__(self, budget_s: float):
        self.started, self.budget_s = time.perf_counter(), budget_s
        self.results: list[dict] = []

    def section(self, name: str, fn, **labels) -> dict | None:
        elapsed = time.perf_counter() - self.started
        entry = {"section": name, **labels}
        if elapsed > self.budget_s:
            entry["skipped"] = f"past the {self.budget_s:.0f} s budget"
        else:
            try:
                entry.update(fn())
            except Exception as exc:  # noqa: BLE001 — recorded, and the run goes on to the next section
                entry["error"] = f"{type(exc).__name__}: {exc}"
                entry["traceback"] = traceback.format_exc(limit=4)
        entry["at_s"] = round(time.perf_counter() - self.started, 1)
        self.results.append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k != "traceback"}, default=str), flush=True)
        return entry


def correctness(folder: Path, device: str) -> dict:
    checks = cuda_checks.run_all(folder, device)
    failed = [c for c in checks if "error" in c]
    summary = f"{len(checks) - len(failed)} of {len(checks)} checks passed" + "".join(
        f"; FAILED {c['check']} {c['dtype']} {c['attention']}: {c['error'][:300]}" for c in failed)
    out = {"checks": checks, "summary": summary}
    if failed:
        out["error"] = summary  # the run goes on, and exits 1
    return out


def bench_dtype(run: Run, folder: Path, cfg: dict, device: str, dtype_name: str, peak: float) -> None:
    dtype = getattr(torch, dtype_name)
    engine = Engine(read_backbone_folder(folder), None, device, dtype)  # auto: the fastest path here
    default_path = engine.attention
    paths = cuda_checks.available_paths(device, dtype)
    batches = text_batches(cfg)
    bare = bare_work(batches)
    for path in paths:
        engine.attention = path  # the same weights through each path
        run.section("forward", lambda: measure_forward(engine, bare, peak), dtype=dtype_name, path=path, tasks=0)
    for count in cfg["tasks"]:
        tasks = resident_tasks(engine, count)
        rng = random.Random(count)
        mixed = []
        for b in batches:
            handles = [tasks[rng.randrange(count)] for _ in b]
            mixed.append(Work(TokenBatch.of(b, handles), np.array([engine.task(h).prefix_len for h in handles])))
        for path in paths:
            engine.attention = path
            run.section("forward", lambda mixed=mixed: measure_forward(engine, mixed, peak), dtype=dtype_name, path=path,
                        tasks=count)
        if count in cfg["engine_tasks"]:
            engine.attention = default_path
            run.section("engine", lambda mixed=mixed: measure_engine(engine, mixed, peak), dtype=dtype_name, path=default_path,
                        tasks=count)
            run.section("engine", lambda mixed=mixed: measure_engine_pipelined(engine, mixed, peak), dtype=dtype_name,
                        path=f"{default_path}, pipelined", tasks=count)
        del tasks, mixed
        engine.tasks = engine.prefix_pool = engine.head_pool = None
        if device == "cuda":
            torch.cuda.empty_cache()


def sweep_budget(run: Run, folder: Path, cfg: dict, device: str, peak: float) -> None:
    """The no-prefix limit at other token budgets (the batcher's MAX_BATCH_TOKENS), first dtype, auto path."""
    engine = Engine(read_backbone_folder(folder), None, device, getattr(torch, cfg["dtypes"][0]))
    for budget in cfg["budget_sweep"]:
        bare = bare_work(text_batches({**cfg, "budget_tokens": budget}))
        run.section("budget", lambda budget=budget, bare=bare: {"budget_tokens": budget, **measure_forward(engine, bare, peak)},
                    dtype=cfg["dtypes"][0], path=engine.attention, tasks=0)


def targets(results: list[dict]) -> list[dict]:
    """The issue's targets, per dtype, against the best no-prefix figure of that dtype."""
    out = []
    for dtype in sorted({r["dtype"] for r in results if "dtype" in r}):
        ok = [r for r in results if r.get("dtype") == dtype and "tokens_s" in r]
        limits = [r for r in ok if r["section"] == "forward" and r["tasks"] == 0]
        if not limits:
            continue
        limit = max(limits, key=lambda r: r["tokens_s"])
        for path in sorted({r["path"] for r in ok}):
            mixed = [r for r in ok if r["section"] == "forward" and r["path"] == path and r["tasks"]]
            if mixed:
                ratios = [r["tokens_s"] / limit["tokens_s"] for r in mixed]
                spread = max(r["tokens_s"] for r in mixed) / min(r["tokens_s"] for r in mixed) - 1
                out.append({"dtype": dtype, "target": f"{path}: mixed prefixes >= 0.9x the limit, within 3%",
                            "measured": ", ".join(f"{r['tasks']}: {x:.3f}x" for r, x in zip(mixed, ratios))
                            + f"; spread {spread:.1%}", "met": min(ratios) >= 0.9 and spread <= 0.03})
        out.append({"dtype": dtype, "target": "the limit >= 45% of the bf16 peak",
                    "measured": f"{limit['peak_fraction']:.1%} ({limit['path']})", "met": limit["peak_fraction"] >= 0.45})
        for r in (r for r in ok if r["section"] == "engine"):
            ratio = r["tokens_s"] / limit["tokens_s"]
            out.append({"dtype": dtype, "target": f"engine end to end at {r['tasks']} tasks >= 0.8x the limit",
                        "measured": f"{ratio:.3f}x ({r['path']})", "met": ratio >= 0.8})
    return out


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# GPU check ({report['mode']}, {report['date']})", "",
             f"{m.get('device')}: {m.get('matmul_dtype')} matmul peak {m.get('peak_tflops', 0):.1f} TFLOP/s, "
             f"copy {m.get('copy_gb_s', 0):.0f} GB/s; torch {report['versions']['torch']}, "
             f"triton {report['versions']['triton']}, transformers {report['versions']['transformers']}", "",
             "| section | dtype | path | tasks | tokens/s | inputs/s | p50 ms | p99 ms | TFLOP/s | of peak |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        if r["section"] not in ("forward", "engine", "budget"):
            continue
        if "tokens_s" not in r:
            lines.append(f"| {r['section']} | {r.get('dtype')} | {r.get('path')} | {r.get('tasks')} | "
                         f"{r.get('skipped') or r.get('error')} | | | | | |")
            continue
        section = f"budget {r['budget_tokens']}" if r["section"] == "budget" else r["section"]
        lines.append(f"| {section} | {r['dtype']} | {r['path']} | {r['tasks'] or 'none (limit)'} | "
                     f"{r['tokens_s']:,.0f} | {r['inputs_s']:,.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | "
                     f"{r['tflops']:.1f} | {r['peak_fraction']:.1%} |")
    lines += ["", "| check | dtype | path | result |", "|---|---|---|---|"]
    for r in (r for r in report["results"] if r["section"] == "correctness"):
        for c in r.get("checks", []):
            lines.append(f"| {c['check']} | {c['dtype']} | {c.get('attention', 'all')} | {_check_result(c)} |")
        lines.append(f"| all | | | {r.get('error') or r.get('skipped') or r.get('summary')} |")
    lines += ["", "| dtype | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {t['dtype']} | {t['target']} | {t['measured']} | {'yes' if t['met'] else 'no'} |" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def _check_result(c: dict) -> str:
    if "error" in c:
        return f"FAILED: {c['error'][:200]}"
    if c["check"] == "parity":
        return (f"vs transformers {c['max_diff_reference']:.2e}, vs alone {c['max_diff_alone']:.2e}, "
                f"label flips {c['label_flips']} (tolerance {c['tolerance']:g})")
    return ", ".join(f"{k} {v:.2e}" for k, v in c["max_diff"].items()) + f" (tolerance {c['tolerance']:g})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu-check")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, sdpa only: proves the script")
    parser.add_argument("--budget-s", type=float, default=None, help="start no section past this (420; smoke 60)")
    args = parser.parse_args(argv)
    cfg = SMOKE if args.smoke else FULL
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("expected a CUDA device, got none (use --smoke on a CPU)")
    run = Run(args.budget_s if args.budget_s is not None else 60.0 if args.smoke else 420.0)
    machine = run.section("machine", lambda: measure_machine(cfg, device))
    peak = machine.get("peak_tflops") or float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        small = cuda_checks.write_bert(Path(tmp) / "small", hidden=32 if args.smoke else 128)
        run.section("correctness", lambda: correctness(small, device))
        folder = write_backbone(Path(tmp) / "bert", cfg)
        for dtype_name in cfg["dtypes"]:
            bench_dtype(run, folder, cfg, device, dtype_name, peak)
        sweep_budget(run, folder, cfg, device, peak)
    report = {"mode": "smoke" if args.smoke else "full", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "config": cfg, "machine": machine, "results": run.results, "targets": targets(run.results),
              "versions": {"torch": torch.__version__, "triton": _version("triton"), "transformers": _version("transformers")}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report))
    return 1 if any("error" in r for r in run.results) else 0


def _version(package: str) -> str:
    try:
        return __import__(package).__version__
    except ImportError:
        return "absent"


if __name__ == "__main__":
    sys.exit(main())
