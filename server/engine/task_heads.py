"""The heads that are not "a classifier on the backbone's pooled output" (SPEC 1b), run after the
shared forward pass on the same hidden states, so one batch mixes every kind of task:

- a sequence task with its own pooler: pooled = tanh(W_task h_first + b_task) replaces the backbone's
  pooled output of its rows before the classifiers run;
- a token task: its classifier on every token's final hidden state, then its score function.

Rows are grouped by task (one matmul per task present in the batch, not per row). Batches without
such tasks never reach this module (the engine checks first), so the plain path pays nothing.
"""

from __future__ import annotations

import torch

from server.engine.scoring import score_rows


def apply_own_poolers(pooled: torch.Tensor, first: torch.Tensor, rows: list, own: list[int]) -> torch.Tensor:
    """pooled, first: [B, C] float32, caller row order; `own`: rows whose task has its own pooler."""
    pooled = pooled.clone()  # [B, C]
    for prefix, indices in _by_prefix(rows, own).items():
        index = torch.tensor(indices, device=pooled.device)  # [n]
        pooled[index] = torch.tanh(first[index] @ prefix.pooler_weight.T + prefix.pooler_bias)  # [n, C]
    return pooled


def token_scores(hidden: torch.Tensor, rows: list, token_rows: list[int], starts: list[int]) -> torch.Tensor:
    """Scores of every token of the token rows, rows after row in caller order: [sum S, labels_max]
    float32 on the CPU, each token's first num_labels columns its task's.

    hidden: [T, C] packed final states; starts: where each caller row's tokens begin in it."""
    device = hidden.device
    out_row: list[int] = []  # [sum S] where each token's scores go in the output
    offset = 0
    first_out = {}
    for i in token_rows:
        first_out[i] = offset
        offset += len(rows[i].encoded)
    labels_max = max(rows[i].prefix.num_labels for i in token_rows)
    logits = torch.zeros(offset, labels_max, device=device)  # [sum S, labels_max]
    num_labels = torch.zeros(offset, dtype=torch.long, device=device)  # [sum S]
    functions = torch.zeros(offset, dtype=torch.long, device=device)  # [sum S]
    for prefix, indices in _by_prefix(rows, token_rows).items():
        source: list[int] = []
        out_row = []
        for i in indices:
            length = len(rows[i].encoded)
            source += range(starts[i], starts[i] + length)
            out_row += range(first_out[i], first_out[i] + length)
        dest = torch.tensor(out_row, device=device)  # [n]
        states = hidden[torch.tensor(source, device=device)].float()  # [n, C]
        logits[dest, : prefix.num_labels] = states @ prefix.classifier_weight.T + prefix.classifier_bias  # [n, labels]
        num_labels[dest] = prefix.num_labels
        for i in indices:
            functions[first_out[i] : first_out[i] + len(rows[i].encoded)] = int(rows[i].resolved_score_function())
    return score_rows(logits, num_labels, functions).cpu()  # [sum S, labels_max]


def _by_prefix(rows: list, indices: list[int]) -> dict:
    groups: dict = {}
    for i in indices:
        groups.setdefault(rows[i].prefix, []).append(i)
    return groups
