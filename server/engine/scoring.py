"""The one home of scoring: how a row's logits become the scores a caller sees, and how scores
become labels.

Softmax for single-label tasks, sigmoid for multi-label, the raw logits for regression (SPEC 1);
a caller may ask for another function (raw scores, the HF Inference API's `function_to_apply`).
Multi-label answers name the labels scoring at least MULTI_LABEL_THRESHOLD. The engine (batched,
per-row functions), the trainer's evaluation, the bench's seed reference and the API's formatting
all use these; the label helpers take plain lists, so the API layer never touches a tensor.
"""

from __future__ import annotations

from enum import IntEnum

import torch

from server.artifact import HeadKind, ProblemType

MULTI_LABEL_THRESHOLD = 0.5


class ScoreFunction(IntEnum):
    """What turns a row's logits into its scores (values are the codes the engine process receives)."""

    SOFTMAX = 0
    SIGMOID = 1
    NONE = 2  # the raw logits


# A row without a score function of its own (the usual case) gets the one its head was trained with.
TASK_SCORE_FUNCTION = {
    ProblemType.SINGLE_LABEL: ScoreFunction.SOFTMAX,
    ProblemType.MULTI_LABEL: ScoreFunction.SIGMOID,
    ProblemType.REGRESSION: ScoreFunction.NONE,
}


def default_score_function(head: HeadKind, problem_type: ProblemType) -> ScoreFunction:
    """A row's score function when the caller names none: its task's, except for span and choice
    heads, whose raw logits are normalised across a row's tokens (span) or an item's rows (choice)
    by the serving side."""
    if head in (HeadKind.SPAN, HeadKind.CHOICE):
        return ScoreFunction.NONE
    return TASK_SCORE_FUNCTION[problem_type]


def score_rows(logits: torch.Tensor, num_labels: torch.Tensor, functions: torch.Tensor) -> torch.Tensor:
    """Each row's score function on its logits [B, labels_max] (padded past num_labels [B]);
    functions: [B] ScoreFunction codes. Returns [B, labels_max]."""
    label_valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < num_labels[:, None]  # [B, labels_max]
    softmax = logits.masked_fill(~label_valid, float("-inf")).softmax(dim=-1)  # padding takes no weight
    row_function = functions[:, None]  # [B, 1]
    return torch.where(
        row_function == ScoreFunction.SOFTMAX, softmax,
        torch.where(row_function == ScoreFunction.SIGMOID, logits.sigmoid(), logits),
    )


def score_logits(logits: torch.Tensor, problem_type: ProblemType) -> torch.Tensor:
    """The task's own score function on logits [..., num_labels] of one task (trainer, references)."""
    function = TASK_SCORE_FUNCTION[problem_type]
    if function is ScoreFunction.SOFTMAX:
        return logits.softmax(dim=-1)
    if function is ScoreFunction.SIGMOID:
        return logits.sigmoid()
    return logits


def multi_label_threshold(raw: bool) -> float:
    """The cut for multi-label answers; on raw logits it is 0, since sigmoid(x) >= 0.5 exactly when x >= 0."""
    return 0.0 if raw else MULTI_LABEL_THRESHOLD


def chosen_labels(labels: tuple[str, ...] | list[str], scores: list[float], raw: bool = False) -> list[str]:
    """The labels a multi-label answer names: those scoring at least the threshold."""
    threshold = multi_label_threshold(raw)
    return [label for label, score in zip(labels, scores) if score >= threshold]


def top_label(scores: list[float]) -> int:
    """Index of the highest score (the first on ties): a single-label answer's label."""
    return max(range(len(scores)), key=scores.__getitem__)
