"""The heads that are not "a classifier on the backbone's pooled output" (SPEC 1b), run after the
shared forward pass on the same hidden states, so one batch mixes every kind of task:

- a sequence task with its own pooler: pooled = tanh(W_task h_first + b_task) replaces the backbone's
  pooled output of its rows before the classifiers run;
- a token task: its classifier on every token's final hidden state, then its score function.

Own poolers take one matmul per task present in the batch; token heads one matmul for all of them. Batches without
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
    float32 on hidden's device, each token's first num_labels columns its task's.

    hidden: [T, C] packed final states; starts: where each caller row's tokens begin in it.
    All token tasks' classifiers are stacked into one matrix, so the tokens take one matmul and one
    gather of their own task's columns, however many token tasks the batch holds."""
    device = hidden.device
    tasks = list(_by_prefix(rows, token_rows))
    column_start, columns = {}, 0
    for prefix in tasks:
        column_start[prefix] = columns
        columns += prefix.num_labels
    weight = torch.cat([p.classifier_weight for p in tasks])  # [sum C_task, C]
    bias = torch.cat([p.classifier_bias for p in tasks])  # [sum C_task]
    lengths = torch.tensor([len(rows[i].encoded) for i in token_rows])  # [R]
    out_start = lengths.cumsum(0) - lengths  # [R] where each token row's tokens begin in the output
    row_start = torch.tensor([starts[i] for i in token_rows])  # [R]
    N = int(lengths.sum())
    source = torch.repeat_interleave(row_start - out_start, lengths) + torch.arange(N)  # [N] into hidden

    def per_row(values: list[int]) -> torch.Tensor:  # [R] -> [N]: each token row's value on its tokens
        return torch.repeat_interleave(torch.tensor(values), lengths).to(device)

    first_column = per_row([column_start[rows[i].prefix] for i in token_rows])  # [N]
    num_labels = per_row([rows[i].prefix.num_labels for i in token_rows])  # [N]
    functions = per_row([int(rows[i].resolved_score_function()) for i in token_rows])  # [N]
    labels_max = max(p.num_labels for p in tasks)
    states = hidden[source.to(device)].float()  # [N, C]
    every_task = states @ weight.T + bias  # [N, sum C_task]
    own = (first_column[:, None] + torch.arange(labels_max, device=device)[None, :]).clamp(max=columns - 1)  # [N, labels_max]
    logits = every_task.gather(1, own)  # [N, labels_max]; columns past a task's labels are masked or cut
    return score_rows(logits, num_labels, functions)  # [N, labels_max], on the device: the caller copies it back


def _by_prefix(rows: list, indices: list[int]) -> dict:
    groups: dict = {}
    for i in indices:
        groups.setdefault(rows[i].prefix, []).append(i)
    return groups
