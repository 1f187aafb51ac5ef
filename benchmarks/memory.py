"""Memory benchmark: resident set size (VmRSS from /proc) of one backbone with k tasks resident in the
PrefixCache (1, 100, 1,000), against the same tasks served as separately fine-tuned models, one
backbone copy each.

Every figure comes from a fresh subprocess (`python -m benchmarks.memory probe ...`), so nothing
measured earlier inflates it. The prefixes are read from .safetensors files, as the registry's blob
store serves them. For the one-model-per-task side, RSS is measured for k = 1, 2, 4 real backbone
copies (PrefixBert modules, each warmed by a forward pass) and extrapolated linearly to 100 and
1,000 copies; the report says which figures are extrapolated.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.stats import proc_memory
from benchmarks.workload import build_tasks, make_tasks

MIB = 1024 * 1024
WARM_TEXTS = ["a gorgeous, witty, seductive movie.", "What is the capital of France ?", "flat and lifeless"] * 22


@dataclass
class MemoryBenchConfig:
    backbone: str
    resident: list[int] = field(default_factory=lambda: [1, 100, 1000])
    copies: list[int] = field(default_factory=lambda: [1, 2, 4])
    seed: int = 0
    served: bool = True  # also measure `serve` itself over HTTP

    def describe(self) -> dict:
        return asdict(self)


def run_memory_bench(config: MemoryBenchConfig, progress=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="prefix-bench-mem-") as folder:
        files = _write_artifacts(config, Path(folder))
        idle = _probe({"kind": "idle"})
        progress(f"memory: python + torch + server imported, nothing loaded: {idle['rss_mb']} MiB")
        resident = []
        for count in config.resident:
            result = _probe({"kind": "prefixes", "backbone": config.backbone, "files": [str(f) for f in files[:count]]})
            resident.append({"tasks": count, **result})
            progress(
                f"memory: {count} tasks resident: RSS {result['rss_resident_mb']} MiB (backbone alone "
                f"{result['rss_backbone_mb']} MiB, prefixes {result['prefix_mb']} MiB)"
            )
        copies = []
        for count in config.copies:
            result = _probe({"kind": "copies", "backbone": config.backbone, "copies": count})
            copies.append({"copies": count, **result})
            progress(f"memory: {count} backbone copies: RSS {result['rss_mb']} MiB")
        served = _served(config, Path(folder), progress) if config.served else []
    return {
        "level": "memory", "config": config.describe(), "idle": idle, "resident": resident, "copies": copies,
        "comparison": compare(resident, copies), "served": served,
    }


def _served(config: MemoryBenchConfig, folder: Path, progress) -> list[dict]:
    """`prefix-server serve` as users run it (the API process and its engine process), its tasks
    uploaded over HTTP and each classified once (so its prefix is resident), measured as the
    processes' summed RSS after 0, then each of config.resident tasks."""
    import orjson

    from benchmarks import http_servers
    from benchmarks.http_client import Call, run_closed_loop
    from server.engine.backbone import read_backbone_folder

    shape = read_backbone_folder(config.backbone).shape()
    specs = make_tasks(max(config.resident), config.seed, max_prefix=shape.max_prefix_len, tag="srv")
    server = http_servers.launch_server("prefix-server", config.backbone, folder / "served", folder / "unused")
    rows = []
    try:
        http_servers.wait_ready(server)
        rows.append({"tasks": 0, **server.memory()})
        done = 0
        for count in sorted(config.resident):
            for start in range(done, count, 100):
                http_servers.install_tasks(server, build_tasks(shape, specs[start : min(count, start + 100)]))
            calls = [Call(orjson.dumps({"task": spec.name, "inputs": ["a fine film"]}), server.auth_header(spec.tenant), 1)
                     for spec in specs[done:count]]
            result = run_closed_loop(server.port, calls, 16)
            if result.statuses != {"200": len(calls)}:
                raise RuntimeError(f"memory (served): classifying the new tasks answered {result.statuses}")
            done = count
            rows.append({"tasks": count, **server.memory()})
            progress(f"memory: served, {count} tasks resident: RSS {rows[-1]['rss_mb']} MiB (API + engine processes)")
    finally:
        server.stop()
    return rows


def compare(resident: list[dict], copies: list[dict]) -> list[dict]:
    """prefix-server's measured RSS for k tasks against k backbone copies, fitted as a + b * k."""
    ks = np.array([c["copies"] for c in copies], dtype=float)
    rss = np.array([c["rss_mb"] for c in copies], dtype=float)
    slope, intercept = np.polyfit(ks, rss, 1) if len(ks) > 1 else (rss[0], 0.0)
    rows = []
    for entry in resident:
        k = entry["tasks"]
        measured = {int(c["copies"]): c["rss_mb"] for c in copies}
        separate = measured.get(k, intercept + slope * k)
        budget = entry["rss_backbone_mb"] + 1.2 * entry["prefix_mb"]
        rows.append({
            "tasks": k,
            "prefix_server_rss_mb": entry["rss_resident_mb"],
            "prefix_server_serving_rss_mb": entry["rss_serving_mb"],
            "backbone_rss_mb": entry["rss_backbone_mb"],
            "prefix_mb": entry["prefix_mb"],
            "budget_mb": round(budget, 1),  # target: backbone RSS + 1.2 x the prefixes' bytes
            "within_budget": entry["rss_resident_mb"] <= budget,
            "separate_models_rss_mb": round(float(separate), 1),
            "separate_models_extrapolated": k not in measured,
            "separate_over_prefix_server": round(float(separate) / entry["rss_resident_mb"], 2),
        })
    return [{"fit": {"mb_per_copy": round(float(slope), 1), "intercept_mb": round(float(intercept), 1)}}] + rows


def _write_artifacts(config: MemoryBenchConfig, folder: Path) -> list[Path]:
    from server.engine.backbone import read_backbone_folder

    shape = read_backbone_folder(config.backbone).shape()
    specs = make_tasks(max(config.resident), config.seed, max_prefix=shape.max_prefix_len, tag="mem")
    paths = []
    for start in range(0, len(specs), 50):  # in slices: never all artifacts in memory at once
        for task in build_tasks(shape, specs[start : start + 50]):
            path = folder / f"{task.spec.name}.safetensors"
            path.write_bytes(task.data)
            paths.append(path)
    return paths


def _probe(spec: dict) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "probe", json.dumps(spec)],
        capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"memory probe {spec.get('kind')} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- inside the probe subprocess ------------------------------------------------------------------


def _probe_prefixes(backbone: str, files: list[str]) -> dict:
    from server.batching import PrefixCache
    from server.engine import Engine, TokenBatch

    engine = Engine.from_folder(backbone)
    encoded = engine.encode(WARM_TEXTS, 64)
    engine.pooled(TokenBatch.of(encoded))
    backbone_rss = proc_memory()["rss_mb"]
    by_sha = {str(i): Path(path) for i, path in enumerate(files)}
    cache = PrefixCache(engine, lambda sha: by_sha[sha].read_bytes(), max_bytes=1 << 40)
    prefixes = [cache.get(sha) for sha in by_sha]
    resident = proc_memory()
    engine.score(TokenBatch.of(encoded, [prefixes[i % len(prefixes)].handle for i in range(len(encoded))]))
    serving = proc_memory()
    return {
        "rss_backbone_mb": backbone_rss,
        "rss_resident_mb": resident["rss_mb"],
        "rss_serving_mb": serving["rss_mb"],
        "peak_rss_mb": serving["peak_rss_mb"],
        "prefix_mb": round(cache.resident_bytes / MIB, 1),
        "resident_tasks": len(prefixes),
    }


def _probe_copies(backbone: str, copies: int) -> dict:
    import torch

    from server.engine import TextEncoder
    from server.engine.backbone import read_backbone_folder
    from server.engine.model import PrefixBert

    encoder = TextEncoder.from_folder(backbone)  # one tokenizer: only the weights are per model
    encoded = encoder.encode(WARM_TEXTS, 512)
    models = []
    for _ in range(copies):
        files = read_backbone_folder(backbone)
        models.append(PrefixBert.from_backbone_weights(files.geometry, files.state_dict))
        del files  # a fine-tuned model keeps its module, not the file's tensors
    longest = max(len(e) for e in encoded)
    ids = torch.tensor([e.input_ids.tolist() + [0] * (longest - len(e)) for e in encoded])
    types = torch.tensor([e.token_type_ids.tolist() + [0] * (longest - len(e)) for e in encoded])
    mask = torch.arange(longest)[None, :] < torch.tensor([len(e) for e in encoded])[:, None]
    with torch.inference_mode():
        for model in models:
            model(ids, types, mask, None, torch.zeros(len(encoded), dtype=torch.long))
    memory = proc_memory()
    return {"rss_mb": memory["rss_mb"], "peak_rss_mb": memory["peak_rss_mb"]}


def _probe_main(spec: dict) -> dict:
    import torch  # noqa: F401  (the idle figure includes the libraries every probe loads)

    import server.batching  # loaded for the same reason; `server` is bound by the next line too
    import server.engine  # noqa: F401

    if spec["kind"] == "idle":
        return proc_memory()
    if spec["kind"] == "prefixes":
        return _probe_prefixes(spec["backbone"], spec["files"])
    if spec["kind"] == "copies":
        return _probe_copies(spec["backbone"], spec["copies"])
    raise ValueError(f"unknown probe kind {spec['kind']!r}")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "probe":
        sys.exit("usage: python -m benchmarks.memory probe '<json spec>'")
    print(json.dumps(_probe_main(json.loads(sys.argv[2]))))
