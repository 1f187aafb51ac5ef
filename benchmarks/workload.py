"""The benchmark workload: real texts, random tasks (and their artifacts), seeded request streams.

Texts come from the team's shared data folder (SST-2 dev sentences, TREC questions, MRPC pairs), so
requests carry the real length distribution; tests pass a synthetic pool instead. The text stream
depends only on (seed, inputs per request), never on the number of tasks: every task count, mode and
baseline of one run sees the very same texts in the same order, and only the task of each request
changes. Tasks have prefix lengths spread evenly over 4..64 (shuffled; a single task gets the middle,
34), so the mean prefix length is the same for 1, 8, 64 or 512 tasks.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from server.artifact import BackboneShape, PrefixArtifact, ProblemType, artifact_to_bytes
from server.engine import TextInput
from server.settings import BENCH_DATA_VARIABLE as DATA_ENV

# source name -> (files, whether rows are pairs)
SOURCES = {
    "sst2": (("sst2.dev.jsonl",), False),
    "trec": (("trec.train.jsonl", "trec.test.jsonl"), False),
    "mrpc": (("mrpc.train.jsonl", "mrpc.dev.jsonl"), True),
}
MIN_PREFIX, MAX_PREFIX = 4, 64


class DataMissing(RuntimeError):
    """The shared benchmark texts are not where they were expected."""


def default_data_dir() -> Path:
    """$PREFIX_SERVER_BENCH_DATA, else ../shared/data next to the repository."""
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV])
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass(frozen=True)
class TextPools:
    """Inputs by source: texts, or (text, text_pair) tuples."""

    sources: dict[str, list[TextInput]]
    origin: str  # where the texts came from, for the report

    def describe(self) -> dict:
        return {"origin": self.origin, "sizes": {name: len(items) for name, items in self.sources.items()}}


def require_data(data_dir: str | Path | None = None) -> Path:
    """The shared data folder, or DataMissing naming every file that is not there."""
    folder = Path(data_dir) if data_dir else default_data_dir()
    files = [folder / name for names, _ in SOURCES.values() for name in names]
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise DataMissing(
            f"the benchmark needs the shared texts (SST-2, TREC, MRPC as JSONL, see shared/data/SOURCES.md): "
            f"expected {', '.join(missing)}; pass --data DIR or set {DATA_ENV}"
        )
    return folder


def load_text_pools(data_dir: str | Path | None = None) -> TextPools:
    folder = require_data(data_dir)
    sources: dict[str, list[TextInput]] = {}
    for name, (file_names, pairs) in SOURCES.items():
        items: list[TextInput] = []
        for file_name in file_names:
            with open(folder / file_name, encoding="utf-8") as handle:
                for line in handle:
                    row = json.loads(line)
                    items.append((row["text"], row["text_pair"]) if pairs else row["text"])
        sources[name] = items
    return TextPools(sources, str(folder))


def synthetic_pools(seed: int = 0, size: int = 200) -> TextPools:
    """Random word sentences and pairs, for tests and for machines without the shared data."""
    rng = random.Random(seed)
    words = "the a movie film plot actor good bad great boring what who where when is was it how".split()

    def sentence() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(3, 30)))

    return TextPools(
        {"single": [sentence() for _ in range(size)], "pair": [(sentence(), sentence()) for _ in range(size)]},
        "synthetic",
    )


@dataclass(frozen=True)
class TaskSpec:
    index: int
    name: str  # unique over the whole benchmark, also across tenants
    tenant: str
    prefix_len: int
    num_labels: int
    seed: int


def make_tasks(count: int, seed: int = 0, num_tenants: int = 8, max_prefix: int = MAX_PREFIX, tag: str = "") -> list[TaskSpec]:
    """`count` tasks, prefix lengths spread evenly over 4..64 in a seeded order, 2-6 labels, spread over
    min(count, num_tenants) tenants."""
    rng = random.Random(f"tasks-{seed}-{count}")
    low, high = min(MIN_PREFIX, max_prefix), min(MAX_PREFIX, max_prefix)
    if count == 1:
        lengths = [(low + high) // 2]
    else:
        lengths = [round(low + (high - low) * i / (count - 1)) for i in range(count)]
        rng.shuffle(lengths)
    tenants = max(1, min(count, num_tenants))
    tag = tag or f"n{count}"
    return [
        TaskSpec(i, f"{tag}-t{i:04d}", f"bench-{i % tenants:02d}", lengths[i], rng.randint(2, 6), seed * 100_003 + i)
        for i in range(count)
    ]


def build_artifact(shape: BackboneShape, spec: TaskSpec) -> PrefixArtifact:
    """A random single-label P-tuning v2 artifact with the spec's prefix length and labels."""
    gen = torch.Generator().manual_seed(spec.seed)
    kv = torch.randn(shape.num_layers, 2, shape.num_heads, spec.prefix_len, shape.head_dim, generator=gen)
    return PrefixArtifact(
        key_values=kv,
        classifier_weight=torch.randn(spec.num_labels, shape.hidden_size, generator=gen) * 0.5,
        classifier_bias=torch.randn(spec.num_labels, generator=gen) * 0.1,
        problem_type=ProblemType.SINGLE_LABEL,
        labels=tuple(f"label_{i}" for i in range(spec.num_labels)),
        extra_metadata={"author": "python -m benchmarks", "bench_task": spec.name},
    )


@dataclass(frozen=True)
class BuiltTask:
    spec: TaskSpec
    artifact: PrefixArtifact
    data: bytes  # the .safetensors bytes
    sha256: str


def build_tasks(shape: BackboneShape, specs: list[TaskSpec]) -> list[BuiltTask]:
    built = []
    for spec in specs:
        artifact = build_artifact(shape, spec)
        data = artifact_to_bytes(artifact)
        built.append(BuiltTask(spec, artifact, data, hashlib.sha256(data).hexdigest()))
    return built


@dataclass(frozen=True)
class BenchRequest:
    task: int  # index into the task list
    inputs: tuple[TextInput, ...]


def generate_requests(
    pools: TextPools, num_tasks: int, num_requests: int, inputs_per_request: int, seed: int = 0
) -> list[BenchRequest]:
    """A seeded request stream: each request draws a source, then its inputs from that source, and a
    task uniformly. The texts do not depend on `num_tasks`."""
    text_rng = random.Random(f"texts-{seed}-{inputs_per_request}")
    task_rng = random.Random(f"assign-{seed}-{num_tasks}-{inputs_per_request}")
    names = sorted(pools.sources)
    requests = []
    for _ in range(num_requests):
        items = pools.sources[text_rng.choice(names)]
        inputs = tuple(text_rng.choice(items) for _ in range(inputs_per_request))
        requests.append(BenchRequest(task_rng.randrange(num_tasks), inputs))
    return requests


def flat_inputs(requests: list[BenchRequest]) -> list[TextInput]:
    return [text for request in requests for text in request.inputs]
