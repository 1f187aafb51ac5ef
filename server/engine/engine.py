"""The engine: one forward pass over rows that each carry their own prefix, head and text.

Owns the device-resident model, the conversion of artifacts into device tensors (once, at load),
batch packing (rows ordered by length and concatenated: no padding, see packing.py), the per-row heads
(gathered and applied as one batched matmul, no Python loop over rows) and the scores. It knows
nothing of HTTP, tenants or queues.

On CUDA (and whenever the attention path is not sdpa) batches go through attention.py's RaggedBatch:
index arrays in one pinned non-blocking copy, heads gathered from one device-resident pool
(head_pool.py), the scores back through pinned memory and an event; the pooler runs in float32.
On the CPU everything stays as measured in BENCHMARKS.md (sdpa chunks, the per-task head copy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from server.artifact import ArtifactError, BackboneShape, HeadKind, PrefixArtifact, ProblemType
from server.engine.attention import HostIndex, RaggedBatch, pack_ragged, resolve_attention
from server.engine.backbone import BackboneFiles, read_backbone_folder
from server.engine.head_pool import HeadEntry, HeadPool, apply_heads, head_index
from server.engine.model import PrefixBert
from server.engine.packing import PackedBatch, pack
from server.engine.prefix_pool import PoolEntry, PrefixPool
from server.engine.scoring import TASK_SCORE_FUNCTION, ScoreFunction, score_rows
from server.engine.task_heads import apply_own_poolers, token_scores
from server.engine.tokenize import EncodedInput, TextEncoder, TextInput


@dataclass(frozen=True, eq=False)
class LoadedPrefix:
    """A task version resident on the engine's device: its prefix in the engine's prefix pool (in the
    engine's dtype), its head in float32. Its pool slots are freed when the last reference goes."""

    pooled_prefix: PoolEntry
    classifier_weight: torch.Tensor  # [C, hidden] float32
    classifier_bias: torch.Tensor  # [C] float32
    problem_type: ProblemType
    labels: tuple[str, ...]
    head: HeadEntry | None = None  # its slots in the engine's head pool, where the engine has one
    head_kind: HeadKind = HeadKind.SEQUENCE
    pooler_weight: torch.Tensor | None = None  # [hidden, hidden] float32: its own pooler (SPEC 1b)
    pooler_bias: torch.Tensor | None = None  # [hidden] float32

    @property
    def token_head(self) -> bool:
        return self.head_kind is HeadKind.TOKEN

    @property
    def prefix_len(self) -> int:
        return self.pooled_prefix.prefix_len

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def stale(self) -> bool:
        return False  # in process: never outlived by its engine (RemotePrefix can be)

    @property
    def nbytes(self) -> int:
        tensors = (self.classifier_weight, self.classifier_bias, self.pooler_weight, self.pooler_bias)
        head = sum(t.numel() * t.element_size() for t in tensors if t is not None)
        if self.head is not None:
            head += len(self.head.slots) * self.head.pool.slot_bytes
        return self.prefix_len * self.pooled_prefix.pool.slot_bytes + head

    def key_values(self) -> torch.Tensor:
        """The prefix read back from the pool, [L, 2, H, P, D] (tests and tools; serving never calls it)."""
        return self.pooled_prefix.read()


@dataclass(frozen=True, slots=True)
class Row:
    encoded: EncodedInput
    prefix: LoadedPrefix | None  # None runs the bare backbone (baselines only)
    score_function: ScoreFunction | None = None  # None: the one of the prefix's problem type

    def resolved_score_function(self) -> ScoreFunction:
        if self.score_function is not None:
            return self.score_function
        return TASK_SCORE_FUNCTION[self.prefix.problem_type]


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
        cuda = self.device.type == "cuda"
        if cuda and self.model.pooler is not None:  # TEI's choice: half-precision layers, a float32 pooler and heads
            self.model.pooler.float()
        self.head_pool = HeadPool(g.hidden_size, self.device) if cuda or self.attention != "sdpa" else None
        # What one more attention call costs, in padded query-key pairs (packing.plan_chunks). On MiniLM,
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

    def max_tokens(self, prefix_len: int) -> int:
        return self.shape.max_tokens(prefix_len)

    def load_prefix(self, artifact: PrefixArtifact, data: bytes | None = None) -> LoadedPrefix:
        """`data` (the bytes it was read from) is for EngineProcess's sake; here the tensors are at hand."""
        own_pooler = artifact.pooler_weight is not None
        if artifact.head is HeadKind.SEQUENCE and not own_pooler and self.model.pooler is None:
            raise ArtifactError(  # read_artifact refuses these already; an artifact built in code may not have been read
                "tensors: expected 'pooler.weight' and 'pooler.bias' (this server's backbone has no pooler), got none"
            )
        pooled_head = None
        if self.head_pool is not None:
            pooled_head = self.head_pool.add(artifact.classifier_weight, artifact.classifier_bias)
        return LoadedPrefix(
            pooled_prefix=self.prefix_pool.add(artifact.key_values),
            classifier_weight=artifact.classifier_weight.to(self.device, torch.float32),
            classifier_bias=artifact.classifier_bias.to(self.device, torch.float32),
            problem_type=artifact.problem_type,
            labels=artifact.labels,
            head=pooled_head,
            head_kind=artifact.head,
            pooler_weight=artifact.pooler_weight.to(self.device, torch.float32) if own_pooler else None,
            pooler_bias=artifact.pooler_bias.to(self.device, torch.float32) if own_pooler else None,
        )

    def encode(self, inputs: list[TextInput], prefix_len: int, truncate: bool = True) -> list[EncodedInput]:
        """A convenience for tools and tests in this process; serving encodes in the batcher."""
        return self.encoder.encode(inputs, self.max_tokens(prefix_len), truncate)

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

    def close(self) -> None:
        """Nothing to stop in process (EngineProcess stops its child)."""

    def score(self, rows: list[Row]) -> list:
        """Scores per row, in row order: each row's score function of its logits (by default
        probabilities, raw values for regression); a token task's row gets one list per token."""
        scores, tokens = self.score_matrices(rows)
        return split_scores(rows, scores.tolist(), tokens.tolist() if tokens is not None else None)

    def score_matrices(self, rows: list[Row]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Scores as [B, labels_max] float32 on the CPU (row i's are its first num_labels columns; a
        token row's are unused), and the token rows' tokens' scores [sum S, labels_max] (or None)."""
        return self.launch(rows).wait()

    @property
    def batches_in_flight(self) -> int:
        return 1  # in one process, a second forward pass would only contend with the first for the cores

    @property
    def launches_async(self) -> bool:
        """Whether `launch` returns before the device has finished (CUDA): then the host may pack and
        launch the next batch while this one runs."""
        return self.device.type == "cuda"

    @torch.inference_mode()
    def launch(self, rows: list[Row]) -> PendingScores:
        """Packs the rows, queues the forward pass and the heads, and starts the scores' copy to the
        host; on the CPU all of it is done on return."""
        own = [i for i, row in enumerate(rows) if row.prefix.pooler_weight is not None]
        token_rows = [i for i, row in enumerate(rows) if row.prefix.token_head]
        if self.head_pool is None:  # the CPU path, as measured
            prefixes, row_to_prefix = _unique_prefixes(rows)
            batch, _, order = self._pack(rows)
            hidden = self.model.hidden_states(batch)  # [T, C]
            pooled = self._pooled(hidden, batch, rows, own)  # [B, C]
            functions = torch.tensor([row.resolved_score_function() for row in rows], device=self.device)  # [B]
            scores = _apply_heads(pooled, prefixes, row_to_prefix.to(self.device), functions)  # [B, labels_max]
            return PendingScores.copy_to_host(scores, self._token_scores(hidden, rows, token_rows, order))
        heads = HostIndex()
        slots, labels_max = head_index([row.prefix.head for row in rows])
        heads.add("head_slots", slots)
        heads.add("num_labels", [row.prefix.num_labels for row in rows])
        heads.add("functions", [int(row.resolved_score_function()) for row in rows])
        batch, index, order = self._pack(rows, heads)  # the heads' arrays ride in the batch's one copy
        if not isinstance(batch, RaggedBatch):
            index = heads.to(self.device)
        hidden = self.model.hidden_states(batch)  # [T, C]
        pooled = self._pooled(hidden, batch, rows, own)  # [B, C]
        logits = apply_heads(self.head_pool.storage, pooled, index["head_slots"], labels_max)  # [B, labels_max]
        scores = score_rows(logits, index["num_labels"], index["functions"])  # [B, labels_max]
        return PendingScores.copy_to_host(scores, self._token_scores(hidden, rows, token_rows, order))

    def _pooled(self, hidden: torch.Tensor, batch, rows: list[Row], own: list[int]) -> torch.Tensor:
        """Each row's pooled output [B, C] float32, caller order: the backbone's pooler, or its task's own."""
        first = hidden[batch.cls_index]  # [B, C] packed row order
        pooled = self.model.pool(first)[batch.restore_order].float()  # [B, C]
        if not own:
            return pooled
        return apply_own_poolers(pooled, first[batch.restore_order].float(), rows, own)

    @staticmethod
    def _token_scores(hidden: torch.Tensor, rows: list[Row], token_rows: list[int], order: list[int]):
        if not token_rows:
            return None
        starts, start = [0] * len(rows), 0
        for i in order:  # packed order: rows' tokens lie one after another in `hidden`
            starts[i] = start
            start += len(rows[i].encoded)
        return token_scores(hidden, rows, token_rows, starts)

    @torch.inference_mode()
    def pooled(self, rows: list[Row]) -> torch.Tensor:
        """The pooled output per row, [B, C]; rows may lack a prefix (the bare-backbone baseline)."""
        return self.model.forward_packed(self.pack(rows))

    def pack(self, rows: list[Row]) -> PackedBatch | RaggedBatch:
        """Orders rows by (length, prefix length) and concatenates their tokens (packing.py)."""
        return self._pack(rows)[0]

    def _pack(self, rows: list[Row], extra: HostIndex | None = None) -> tuple[PackedBatch | RaggedBatch, dict, list[int]]:
        """The batch, the device views of `extra`, and the packed order (caller rows, shortest first)."""
        def prefix_len(row: Row) -> int:
            return row.prefix.prefix_len if row.prefix is not None else 0

        order = sorted(range(len(rows)), key=lambda i: (len(rows[i].encoded), prefix_len(rows[i])))
        ids: list[int] = []
        types: list[int] = []
        for i in order:
            ids += rows[i].encoded.input_ids
            types += rows[i].encoded.token_type_ids
        restore = [0] * len(rows)
        for packed_row, caller_row in enumerate(order):
            restore[caller_row] = packed_row
        slots = [rows[i].prefix.pooled_prefix.slots for i in order if rows[i].prefix is not None]
        if self.attention != "sdpa":
            return *pack_ragged(
                [len(rows[i].encoded) for i in order], [prefix_len(rows[i]) for i in order], ids, types, restore,
                self.prefix_pool.storage if slots else None, torch.cat(slots) if slots else None,
                self.attention, self.model.max_positions, self.device, extra,
            ), order
        return pack(
            lengths=[len(rows[i].encoded) for i in order],
            prefix_lens=[prefix_len(rows[i]) for i in order],
            input_ids=torch.tensor(ids, device=self.device),  # [T]
            token_type_ids=torch.tensor(types, device=self.device),  # [T]
            restore_order=torch.tensor(restore),  # [B]
            prefix_storage=self.prefix_pool.storage if slots else None,  # read once: growth replaces it
            prefix_source=torch.cat(slots) if slots else None,  # [sum P]
            merge_pairs=self.merge_pairs,
            max_positions=self.model.max_positions,
        ), {}, order


def split_scores(rows: list, scores: list[list[float]], tokens: list[list[float]] | None) -> list:
    """Per row, its scores cut to its labels: a list, or for a token task's row one list per token
    (taken in order from `tokens`, the token rows' tokens one after another)."""
    out, next_token = [], 0
    for values, row in zip(scores, rows):
        n = row.prefix.num_labels
        if row.prefix.token_head:
            length = len(row.encoded)
            out.append([t[:n] for t in tokens[next_token : next_token + length]])
            next_token += length
        else:
            out.append(values[:n])
    return out


def _unique_prefixes(rows: list[Row]) -> tuple[list[LoadedPrefix | None], torch.Tensor]:
    slot: dict[LoadedPrefix | None, int] = {}
    row_to_prefix = [slot.setdefault(row.prefix, len(slot)) for row in rows]
    return list(slot), torch.tensor(row_to_prefix, dtype=torch.long)  # [B]


def _apply_heads(
    pooled: torch.Tensor, prefixes: list[LoadedPrefix], row_to_prefix: torch.Tensor, functions: torch.Tensor
) -> torch.Tensor:
    """Applies each row's own classifier and score function (`functions`: [B] ScoreFunction codes) in
    one batched pass: [B, labels_max]. The one place where logits become scores."""
    labels_max = max(p.num_labels for p in prefixes)
    U, C = len(prefixes), pooled.shape[1]
    weights = pooled.new_zeros(U, labels_max, C)  # [U, labels_max, C]
    biases = pooled.new_zeros(U, labels_max)  # [U, labels_max]
    num_labels = torch.tensor([p.num_labels for p in prefixes], device=pooled.device)  # [U]
    for index, prefix in enumerate(prefixes):
        weights[index, : prefix.num_labels] = prefix.classifier_weight
        biases[index, : prefix.num_labels] = prefix.classifier_bias
    logits = torch.bmm(weights[row_to_prefix], pooled[:, :, None]).squeeze(2) + biases[row_to_prefix]  # [B, labels_max]
    return score_rows(logits, num_labels[row_to_prefix], functions)


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

    def wait(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.done is not None:
            self.done.synchronize()
        return self.scores, self.tokens


def _pinned_copy(values: torch.Tensor) -> torch.Tensor:
    host = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
    host.copy_(values, non_blocking=True)
    return host
