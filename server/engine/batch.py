"""What the serving side hands the engine for one forward pass, and what comes back: flat arrays,
exactly as the pipe to the engine process carries them (wire.py), so token ids are never turned into
Python objects between the batcher and the forward.

A batch of B rows: each row's token count, the rows' token ids and token types one after another,
and per row its task (a handle the engine gave out when it loaded the task's artifact), its head kind
and its score function. The head kind of a row is decided here, once, from its task's head (the batcher
builds the batch); the engine and the result split both read it from the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.artifact import HeadKind
from server.engine.tokenize import EncodedInput

NO_TASK = -1  # a row with no task: the bare backbone (warm-up, baselines)
# Span rows are scored per token like token rows (start and end logits); choice rows like sequence
# rows (one logit from the pooled first token). Their decoding is the serving side's.
HEAD_CODES = {HeadKind.SEQUENCE: 0, HeadKind.TOKEN: 1, HeadKind.SPAN: 2, HeadKind.CHOICE: 3}
SEQUENCE, TOKEN, SPAN, CHOICE = (HEAD_CODES[h] for h in (HeadKind.SEQUENCE, HeadKind.TOKEN, HeadKind.SPAN, HeadKind.CHOICE))
PER_TOKEN = (TOKEN, SPAN)


@dataclass(frozen=True)
class TokenBatch:
    lengths: np.ndarray  # [B] int32: tokens per row
    ids: np.ndarray  # [T] int32: the rows' token ids one after another, T = lengths.sum()
    types: np.ndarray  # [T] int8: token type ids
    tasks: np.ndarray  # [B] int64: task handles (NO_TASK: none)
    heads: np.ndarray  # [B] int8: HEAD_CODES of each row's task
    functions: np.ndarray  # [B] int8: ScoreFunction codes

    @classmethod
    def of(
        cls,
        encoded: Sequence[EncodedInput],
        tasks: Sequence[int] | None = None,
        heads: Sequence[HeadKind] | None = None,
        functions: Sequence[int] | None = None,
    ) -> TokenBatch:
        """Rows of encoded inputs; without `tasks` they have none (the bare backbone: pooled outputs
        only), heads default to sequence heads and functions to softmax."""
        count = len(encoded)
        return cls(
            lengths=np.fromiter((len(e) for e in encoded), dtype=np.int32, count=count),  # [B]
            ids=np.concatenate([e.input_ids for e in encoded]) if count else np.zeros(0, np.int32),  # [T]
            types=np.concatenate([e.token_type_ids for e in encoded]) if count else np.zeros(0, np.int8),  # [T]
            tasks=np.asarray(tasks if tasks is not None else [NO_TASK] * count, dtype=np.int64).reshape(count),  # [B]
            heads=np.fromiter((HEAD_CODES[h] for h in heads), dtype=np.int8, count=count) if heads is not None
            else np.zeros(count, np.int8),  # [B]
            functions=np.asarray(functions if functions is not None else [0] * count, dtype=np.int8).reshape(count),  # [B]
        )

    @property
    def rows(self) -> int:
        return self.lengths.shape[0]

    def __len__(self) -> int:
        return self.rows

    @property
    def token_rows(self) -> np.ndarray:
        """Indices of the rows whose head scores every token (token and span heads), [R]."""
        return np.flatnonzero(np.isin(self.heads, PER_TOKEN))


@dataclass(frozen=True)
class BatchScores:
    """A batch's scores on the host: `rows` [B, labels_max] float32 (row i's first num_labels columns
    are its task's; unused for token and span rows) and `tokens` [sum S of the token and span rows,
    labels_max], those rows' tokens one after another, in row order."""

    rows: np.ndarray
    tokens: np.ndarray

    def split(self, batch: TokenBatch, num_labels: Sequence[int]) -> list:
        """Per row, its scores cut to its labels: a list, for a token row one list per token, for a span
        row its [S, 2] start and end logits as an array (decoded by the serving side as arrays)."""
        out, next_token = [], 0
        lengths = batch.lengths.tolist()
        for row, (head, n) in enumerate(zip(batch.heads.tolist(), num_labels)):
            if head in PER_TOKEN:
                values = self.tokens[next_token : next_token + lengths[row], :n]  # [S, n]
                out.append(values.copy() if head == SPAN else values.tolist())
                next_token += lengths[row]
            else:
                out.append(self.rows[row, :n].tolist())
        return out
