"""Decoding the results of heads whose answer spans several rows or needs a rule beyond a softmax: a
question's answer from its windows' start and end logits (spans.py, SPEC 2d), an item's choice from
its rows' logits (choices.py). Shared by the serving side (batching) and the trainer's evaluation, so
what is evaluated is what is served. Imports the engine's tokenizer only; no tensors, no queues."""

from server.decoding.choices import ChoiceScores, choice_scores
from server.decoding.spans import SpanAnswer, SpanOptions, SpanWindow, decode_answer, span_windows

__all__ = ["ChoiceScores", "SpanAnswer", "SpanOptions", "SpanWindow", "choice_scores", "decode_answer", "span_windows"]
