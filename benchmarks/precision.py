"""Precision benchmark: reduced-precision engines against float32 on the real demo tasks.

The three shipped prefixes (prefixes/) score their own eval sets (SST-2 dev, TREC test, MRPC dev)
in mixed batches of all three tasks, once per dtype, on the same batches. Reported per dtype and task:
accuracy, agreement of the predicted label with float32, the largest and the mean absolute
difference of any score from float32's; and per dtype the engine's throughput on those batches
(the dtypes interleaved, `repeats` rounds, median). A dtype is kept as a serving mode only within
TOLERANCE of float32 (see the report's targets).
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from server.artifact import read_artifact_file
from server.engine import Engine
from server.engine.backbone import read_backbone_folder
from server.engine.tokenize import TextEncoder
from training.data import load_dataset

# task file -> eval file in the shared data folder
DEMO_TASKS = {"sentiment": "sst2.dev.jsonl", "question-type": "trec.test.jsonl", "paraphrase": "mrpc.dev.jsonl"}
# What "the same classifier" means here: the label flips on at most 0.5% of inputs, accuracy moves
# by at most half a point, and no score moves by more than 0.05.
TOLERANCE = {"label_agreement": 0.995, "accuracy_delta": 0.005, "max_abs_diff": 0.05}


@dataclass
class PrecisionBenchConfig:
    backbone: str
    data_dir: str
    prefixes_dir: str
    dtypes: list[str] = field(default_factory=lambda: ["float32", "bfloat16", "float16"])
    batch_size: int = 64
    repeats: int = 3
    limit_rows: int | None = None  # per task, for smoke runs

    def describe(self) -> dict:
        return asdict(self)


def run_precision_bench(config: PrecisionBenchConfig, progress=print) -> dict:
    files, encoder = read_backbone_folder(config.backbone), TextEncoder.from_folder(config.backbone)
    engines = {name: Engine(files, encoder, dtype=getattr(torch, name)) for name in config.dtypes}
    tasks = _load_tasks(config, files.shape())
    batches = {name: _batches(engine, tasks, config.batch_size) for name, engine in engines.items()}
    scores = {name: _score(engines[name], batches[name]) for name in engines}
    speed = _throughput(engines, batches, config.repeats)
    rows = []
    for name in engines:
        for task_name, (_, dataset) in tasks.items():
            rows.append(_compare(name, task_name, dataset, scores[name][task_name], scores["float32"][task_name]))
            progress(f"precision {name:<9} {task_name:<14} accuracy {rows[-1]['accuracy']:.4f} "
                     f"agreement {rows[-1]['label_agreement']:.4f} max |diff| {rows[-1]['max_abs_diff']:.2e}")
    return {"level": "precision", "config": config.describe(), "tolerance": TOLERANCE, "tasks": rows,
            "throughput": speed, "rows_per_task": {name: len(d) for name, (_, d) in tasks.items()}}


def _load_tasks(config: PrecisionBenchConfig, shape) -> dict:
    tasks = {}
    for name, eval_file in DEMO_TASKS.items():
        artifact = read_artifact_file(Path(config.prefixes_dir) / f"{name}.safetensors", shape)
        dataset = load_dataset(Path(config.data_dir) / eval_file, labels=artifact.labels, problem_type=artifact.problem_type)
        if config.limit_rows:
            dataset.inputs[:] = dataset.inputs[: config.limit_rows]
        tasks[name] = (artifact, dataset)
    return tasks


def _batches(engine: Engine, tasks: dict, batch_size: int) -> list[list[tuple[str, int, tuple]]]:
    """All tasks' rows, (encoded input, task handle), interleaved (every batch mixes the three tasks),
    cut into batches."""
    per_task = []
    for name, (artifact, dataset) in tasks.items():
        handle = engine.load(artifact)
        encoded = engine.encode(dataset.inputs, artifact.prefix_len)
        per_task.append([(name, i, (e, handle)) for i, e in enumerate(encoded)])
    # Round-robin over the tasks while each has rows left.
    mixed = [item for group in itertools.zip_longest(*per_task) for item in group if item is not None]
    return [mixed[i : i + batch_size] for i in range(0, len(mixed), batch_size)]


def _score(engine: Engine, batches) -> dict[str, np.ndarray]:
    out: dict[str, dict[int, list[float]]] = {}
    for batch in batches:
        for (name, index, _), values in zip(batch, engine.score_encoded([row for _, _, row in batch])):
            out.setdefault(name, {})[index] = values
    return {name: np.array([by_index[i] for i in range(len(by_index))]) for name, by_index in out.items()}


def _throughput(engines: dict[str, Engine], batches: dict, repeats: int) -> dict[str, dict]:
    rounds: dict[str, list[float]] = {name: [] for name in engines}
    inputs = sum(len(b) for b in next(iter(batches.values())))
    for name, engine in engines.items():  # warm-up
        engine.score_encoded([row for _, _, row in batches[name][0]])
    for repeat in range(repeats):
        for name in (list(engines) if repeat % 2 == 0 else list(engines)[::-1]):
            started = time.perf_counter()
            for batch in batches[name]:
                engines[name].score_encoded([row for _, _, row in batch])
            rounds[name].append(inputs / (time.perf_counter() - started))
    base = rounds["float32"]
    return {name: {"inputs_per_s": round(statistics.median(r), 1),
                   "vs_float32": round(statistics.median([a / b for a, b in zip(r, base)]), 3)} for name, r in rounds.items()}


def _compare(dtype: str, task: str, dataset, got: np.ndarray, reference: np.ndarray) -> dict:
    gold = dataset.targets.numpy()[: len(got)]
    predicted, reference_predicted = got.argmax(axis=1), reference.argmax(axis=1)
    diff = np.abs(got - reference)
    return {
        "dtype": dtype, "task": task, "rows": len(got),
        "accuracy": round(float((predicted == gold).mean()), 4),
        "accuracy_float32": round(float((reference_predicted == gold).mean()), 4),
        "label_agreement": round(float((predicted == reference_predicted).mean()), 4),
        "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
    }
