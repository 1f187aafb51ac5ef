"""The engine: one forward pass over rows that each carry their own task (prefix and/or LoRA adapter,
and head) and text.

Owns the device-resident model, the tasks loaded into its pools (tasks.py) and the step from an array
batch (batch.py) to scores: pack the rows (attention.pack: no padding in the dense layers), run the
model, apply every row's own head from the head pool with one batched matmul (heads.py), score, and
copy the scores to the host (through pinned memory and an event on CUDA, so the next batch may be
packed and launched meanwhile). It knows nothing of HTTP, tenants or queues.
"""

from __future__ import annotations

import itertools
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from server.artifact import BackboneShape, PrefixArtifact
from server.engine.attention import pack, resolve_attention
from server.engine.backbone import BackboneFiles, read_backbone_folder
from server.engine.batch import BatchScores, TokenBatch
from server.engine.heads import HeadPool, apply_heads, apply_own_poolers, head_index, token_scores
from server.engine.layout import HostIndex, PackedBatch
from server.engine.lora import LoraPlanner
from server.engine.lora_pool import LoraPool
from server.engine.model import PrefixBert
from server.engine.prefix_pool import PrefixPool
from server.engine.scoring import ScoreFunction, default_score_function, score_rows
from server.engine.surface import TaskFacts
from server.engine.tasks import LoadedTask, TaskTable
from server.engine.tokenize import EncodedInput, TextEncoder, TextInput


class Engine:
    def __init__(
        self, files: BackboneFiles, encoder: TextEncoder, device: str = "cpu", dtype=torch.float32,
        merge_pairs: int | None = None, attention: str = "auto",
    ):
        self.files = files
        self.encoder = encoder
        self.device = torch.device(device)
        self.dtype = dtype
        self.attention = resolve_attention(attention, self.device, dtype)  # "triton", "varlen" or "sdpa"
        self.model = PrefixBert.from_backbone_weights(files.geometry, files.state_dict).to(self.device, dtype)
        g = files.geometry
        self.prefix_pool = PrefixPool(g.num_layers, g.num_heads, g.head_dim, self.device, dtype)
        self.head_pool = HeadPool(g.hidden_size, self.device)
        if self.device.type == "cuda" and self.model.pooler is not None:  # TEI's choice: half-precision layers, a float32 pooler and heads
            self.model.pooler.float()
        self.lora_pool = LoraPool(g.num_layers, g.hidden_size, g.intermediate_size, self.device, dtype)
        # Matmuls on contiguous runs of rows on the CPU, batched blocks on a GPU (lora.py says why).
        self.lora_mode = "runs" if self.device.type == "cpu" else "blocks"
        self.tasks = TaskTable(files.shape(), self.prefix_pool, self.head_pool, self.model.pooler is not None, self.lora_pool)
        self._handles = itertools.count(1 << 40)  # load()'s own handles, apart from a caller's small ones
        # What one more attention call costs, in padded query-key pairs (chunked.plan_chunks). On MiniLM,
        # 2-core CPU, throughput was flat within noise from 0 to 32768 (BENCHMARKS.md, merge_pairs
        # sweep). A GPU launch costs far more than a small chunk's math, so there nearly every batch
        # is one chunk.
        self.merge_pairs = merge_pairs if merge_pairs is not None else (8192 if self.device.type == "cpu" else 1 << 20)

    @classmethod
    def from_folder(
        cls, folder: str | Path, device: str = "cpu", dtype=torch.float32, merge_pairs: int | None = None,
        attention: str = "auto",
    ) -> Engine:
        return cls(read_backbone_folder(folder), TextEncoder.from_folder(folder), device, dtype, merge_pairs, attention)

    @property
    def shape(self) -> BackboneShape:
        return self.files.shape()

    def encode(self, inputs: list[TextInput], prefix_len: int, truncate: bool = True) -> list[EncodedInput]:
        """A convenience for tools and tests in this process; serving encodes in the batcher."""
        return self.encoder.encode(inputs, self.shape.max_tokens(prefix_len), truncate)

    def info(self) -> dict:
        g = self.files.geometry
        return {
            "name": self.files.name,
            "fingerprint": self.files.fingerprint,
            "num_layers": g.num_layers,
            "num_heads": g.num_heads,
            "hidden_size": g.hidden_size,
            "max_position_embeddings": g.max_position_embeddings,
            "family": g.family_name,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "attention": self.attention,
        }

    @property
    def alive(self) -> bool:
        return True  # in this process: up while the process is

    @property
    def generation(self) -> int:
        return 0  # in this process: never restarted

    @property
    def batches_in_flight(self) -> int:
        return 1  # in one process, a second forward pass would only contend with the first for the cores

    @property
    def launches_async(self) -> bool:
        """Whether `launch` returns before the device has finished (CUDA): then the host may pack and
        launch the next batch while this one runs."""
        return self.device.type == "cuda"

    def close(self) -> None:
        """Nothing to stop in process (EngineProcess stops its child)."""

    # --- tasks ------------------------------------------------------------------------------

    def load_task(self, handle: int, data: bytes) -> TaskFacts:
        return self.tasks.load(handle, data).facts()

    def start_load(self, handle: int, data: bytes) -> Future[TaskFacts]:
        """In process there is nothing to wait behind: loads now, on the calling thread."""
        loaded: Future[TaskFacts] = Future()
        try:
            loaded.set_result(self.load_task(handle, data))
        except Exception as error:  # noqa: BLE001 — handed to the caller through the future
            loaded.set_exception(error)
        return loaded

    def release_task(self, handle: int) -> None:
        self.tasks.release([handle])

    def load(self, artifact: PrefixArtifact | bytes) -> int:
        """Loads a task under a handle of the engine's own choosing (tools and tests); returns it."""
        handle = next(self._handles)
        self.tasks.load(handle, artifact)
        return handle

    def task(self, handle: int) -> LoadedTask:
        return self.tasks.resolve(np.array([handle]))[0]

    def score_encoded(self, rows: list[tuple[EncodedInput, int]], functions: list[ScoreFunction | None] | None = None) -> list:
        """Scores of (encoded input, task handle) rows, each cut to its task's labels, with the task's own
        score function unless `functions` names another for it (tools and tests; serving builds its batches)."""
        tasks = [self.task(handle) for _, handle in rows]
        batch = TokenBatch.of(
            [encoded for encoded, _ in rows], [handle for _, handle in rows], [t.head_kind for t in tasks],
            [f if f is not None else default_score_function(t.head_kind, t.problem_type)
             for f, t in zip(functions or [None] * len(tasks), tasks)],
        )
        return self.score(batch).split(batch, [t.num_labels for t in tasks])

    # --- forward passes ---------------------------------------------------------------------

    def score(self, batch: TokenBatch) -> BatchScores:
        """Scores per row: each row's score function of its logits (by default probabilities, raw
        values for regression); a token row's are per token."""
        return self.launch(batch).wait()

    @torch.inference_mode()
    def launch(self, batch: TokenBatch) -> PendingScores:
        """Packs the batch, queues the forward pass and the heads, and starts the scores' copy to the
        host; on the CPU all of it is done on return."""
        tasks = self.tasks.resolve(batch.tasks)  # [B]
        heads = HostIndex()
        slots, labels_max = head_index([task.head for task in tasks])
        heads.add("head_slots", slots)
        heads.add("num_labels", [task.num_labels for task in tasks])
        heads.add("functions", batch.functions)
        packed = self._pack(batch, tasks, heads)  # the heads' arrays ride in the batch's one copy
        hidden = self.model.hidden_states(packed)  # [T, C]
        pooled = self._pooled(hidden, packed, tasks)  # [B, C] float32, caller order
        logits = apply_heads(self.head_pool.storage, pooled, packed.extra["head_slots"], labels_max)  # [B, labels_max]
        scores = score_rows(logits, packed.extra["num_labels"], packed.extra["functions"])  # [B, labels_max]
        tokens = None
        token_rows = batch.token_rows
        if token_rows.shape[0]:
            tokens = token_scores(hidden, self.head_pool.storage, tasks, token_rows, packed.token_starts(),
                                  batch.lengths, batch.functions)  # [sum S, labels_max]
        return PendingScores.copy_to_host(scores, tokens)

    @torch.inference_mode()
    def pooled(self, batch: TokenBatch) -> np.ndarray:
        """The pooled output per row, [B, C] float32; rows may have no task (the bare-backbone baseline)."""
        tasks = self.tasks.resolve(batch.tasks)
        packed = self._pack(batch, tasks)
        return self._pooled(self.model.hidden_states(packed), packed, tasks).cpu().numpy()

    def pack(self, batch: TokenBatch) -> PackedBatch:
        """The batch laid out for the model (tools and benchmarks that time the forward alone)."""
        return self._pack(batch, self.tasks.resolve(batch.tasks))

    def _pack(self, batch: TokenBatch, tasks: list[LoadedTask | None], extra: HostIndex | None = None) -> PackedBatch:
        prefix_lens = np.fromiter((t.prefix_len if t is not None else 0 for t in tasks), dtype=np.int64, count=len(tasks))
        row_slots = [t.pooled_prefix.slots if t is not None and t.pooled_prefix is not None else None for t in tasks]
        adapters = [t.lora if t is not None else None for t in tasks]
        lora = LoraPlanner(adapters, self.lora_pool, self.lora_mode) if any(a is not None for a in adapters) else None
        packed = pack(
            batch.lengths, prefix_lens, batch.ids, batch.types, row_slots, self.prefix_pool.storage, self.attention,
            self.merge_pairs, self.model.max_positions, self.device, extra, lora,
        )
        if lora is not None:
            packed.lora = lora.deltas(packed.extra)
        return packed

    def _pooled(self, hidden: torch.Tensor, packed: PackedBatch, tasks: list[LoadedTask | None]) -> torch.Tensor:
        """Each row's pooled output [B, C] float32, caller order: the backbone's pooler, or its task's own."""
        first = hidden.index_select(0, packed.cls_index)  # [B, C] packed row order
        pooled = self.model.pool(first).index_select(0, packed.restore_order).float()  # [B, C]
        own = [i for i, task in enumerate(tasks) if task is not None and task.pooler_weight is not None]
        if not own:
            return pooled
        return apply_own_poolers(pooled, first.index_select(0, packed.restore_order).float(), tasks, own)


@dataclass(frozen=True)
class PendingScores:
    """A batch's scores on their way to the host. From CUDA they land in pinned memory behind an
    event, so waiting blocks on this batch alone, not on the whole device (nor on a batch launched
    after it)."""

    scores: torch.Tensor  # [B, labels_max] float32, on the host
    tokens: torch.Tensor | None  # [sum S, labels_max] float32, on the host
    done: torch.cuda.Event | None = None

    @classmethod
    def copy_to_host(cls, scores: torch.Tensor, tokens: torch.Tensor | None) -> PendingScores:
        if scores.device.type != "cuda":
            return cls(scores.cpu(), tokens.cpu() if tokens is not None else None)
        host = [_pinned_copy(t) if t is not None else None for t in (scores, tokens)]
        done = torch.cuda.Event()
        done.record()
        return cls(host[0], host[1], done)

    def wait(self) -> BatchScores:
        if self.done is not None:
            self.done.synchronize()
        tokens = self.tokens.numpy() if self.tokens is not None else np.zeros((0, self.scores.shape[1]), np.float32)
        return BatchScores(self.scores.numpy(), tokens)


def _pinned_copy(values: torch.Tensor) -> torch.Tensor:
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    return host
