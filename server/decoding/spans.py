"""Extractive question answering on the serving side (SPEC 2d): a question and its context in windows
that each go to the engine as a row, and the answer decoded from the windows' start and end logits,
as transformers' question-answering pipeline (4.x, `top_k=1`, fast tokenizer) decoded it.

The one home of the span rule; the engine only returns each window's logits [S, 2]. Decoding:
- per window, tokens outside the context are masked (logits -10000) except the first token; start and
  end logits are each softmaxed over the window; the window's no-answer score is start[0] x end[0]
  (the item's: the smallest over its windows), then start[0] = end[0] = 0;
- candidates: the TOP_CANDIDATES (s, e) pairs of highest start[s] x end[e] with
  s <= e <= s + max_answer_len - 1, less those with s or e masked;
- each candidate is widened to the words (of this window's encoding) of its first and last tokens;
  candidates whose text is equal ignoring case, in any window, merge and add their scores;
- with `allow_impossible` the no-answer ("", score, 0, 0) joins them; the highest score wins (the
  first found among equals).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.engine import EncodedInput, InputRefused, TextEncoder

DEFAULT_MAX_SEQ_LEN = 384
DEFAULT_DOC_STRIDE = 128
DEFAULT_MAX_ANSWER_LEN = 15
TOP_CANDIDATES = 12  # the pipeline's top_k * 2 + 10 for top_k = 1: words may merge candidates
MASKED_LOGIT = -10000.0


@dataclass(frozen=True)
class SpanOptions:
    """A span request's fields (SPEC 2d); None: the default for the task."""

    max_seq_len: int | None = None
    doc_stride: int | None = None
    max_answer_len: int = DEFAULT_MAX_ANSWER_LEN
    allow_impossible: bool = False

    def window(self, fit: int) -> tuple[int, int]:
        """(tokens per window, stride) for a task whose rows hold at most `fit` tokens."""
        if self.max_seq_len is not None and self.max_seq_len > fit:
            raise InputRefused(f"max_seq_len: expected at most {fit} tokens for this task (beside its prefix), got {self.max_seq_len}")
        max_seq_len = self.max_seq_len if self.max_seq_len is not None else min(DEFAULT_MAX_SEQ_LEN, fit)
        stride = self.doc_stride if self.doc_stride is not None else min(max_seq_len // 2, DEFAULT_DOC_STRIDE)
        if stride > max_seq_len:
            raise InputRefused(f"doc_stride: expected at most max_seq_len ({max_seq_len}), got {stride}")
        return max_seq_len, stride


@dataclass(frozen=True, eq=False)
class SpanWindow:
    """One window of a question and its context: a row for the engine, and what decoding reads back."""

    encoded: EncodedInput
    offsets: np.ndarray  # [S, 2] int64: each token's character span in its own text
    words: np.ndarray  # [S] int64: the context word of each context token, -1 for the others


@dataclass(frozen=True, slots=True)
class SpanAnswer:
    answer: str
    score: float
    start: int  # character offsets into the context, end exclusive
    end: int


def span_windows(encoder: TextEncoder, question: str, context: str, max_seq_len: int, stride: int) -> list[SpanWindow]:
    """The rows of one question: the pair (question without its leading spaces, context) in windows
    of `max_seq_len` tokens sharing `stride` (SpanOptions.window)."""
    out = []
    for encoding in encoder.encode_windows(question.lstrip(), context, max_seq_len, stride):
        ids = np.array(encoding.ids, dtype=np.int32)  # [S]
        types = np.zeros(len(ids), np.int8) if encoder.single_token_type else np.array(encoding.type_ids, dtype=np.int8)  # [S]
        in_context = [sequence == 1 for sequence in encoding.sequence_ids]
        words = [w if inside and w is not None else -1 for w, inside in zip(encoding.word_ids, in_context)]
        out.append(SpanWindow(
            EncodedInput(ids, types),
            np.array(encoding.offsets, dtype=np.int64).reshape(len(ids), 2),  # [S, 2]
            np.array(words, dtype=np.int64),  # [S]
        ))
    return out


def decode_answer(windows: list[SpanWindow], logits: list[np.ndarray], context: str, options: SpanOptions) -> SpanAnswer:
    """The answer from each window's start and end logits ([S, 2] each, window order)."""
    found: dict[str, SpanAnswer] = {}  # by lower-cased text, in the order first found
    no_answer = float("inf")
    for window, values in zip(windows, logits):
        null_score, candidates = _window_candidates(window, values, options.max_answer_len)
        no_answer = min(no_answer, null_score)
        for s, e, score in candidates:
            start, end = _widen(window, s, e)
            key = context[start:end].lower()
            seen = found.get(key)
            if seen is None:
                found[key] = SpanAnswer(context[start:end], score, start, end)
            else:
                found[key] = SpanAnswer(seen.answer, seen.score + score, seen.start, seen.end)
    answers = list(found.values())
    if options.allow_impossible:
        answers.append(SpanAnswer("", no_answer, 0, 0))
    if not answers:
        return SpanAnswer("", 0.0, 0, 0)
    return max(answers, key=lambda a: a.score)  # max keeps the first among equals


def _window_candidates(window: SpanWindow, values: np.ndarray, max_answer_len: int) -> tuple[float, list[tuple[int, int, float]]]:
    """The window's no-answer score and its candidates (start token, end token, score), best first."""
    allowed = window.words >= 0  # [S] context tokens
    allowed[0] = True  # the first token stays unmasked (models trained on SQuAD 2 answer "no" there)
    start = _softmax(np.where(allowed, values[:, 0], MASKED_LOGIT))  # [S]
    end = _softmax(np.where(allowed, values[:, 1], MASKED_LOGIT))  # [S]
    null_score = float(start[0] * end[0])
    start[0] = end[0] = 0.0
    S = start.shape[0]
    ends = np.arange(S)[:, None] + np.arange(max_answer_len)[None, :]  # [S, max_answer_len]: e = s + d
    in_range = ends < S
    band = np.where(in_range, start[:, None] * end[np.minimum(ends, S - 1)], -1.0)  # [S, max_answer_len]
    flat = band.ravel()  # in (s, e) order, so equal scores keep the order of an argmax over the (s, e) grid
    best = np.argsort(-flat, kind="stable")[:TOP_CANDIDATES]
    best = best[flat[best] >= 0]
    s_index, e_index, band = best // max_answer_len, ends.ravel()[best], flat[best]
    kept = [(int(s), int(e), float(score)) for s, e, score in zip(s_index, e_index, band)]
    return null_score, [(s, e, score) for s, e, score in kept if allowed[s] and allowed[e]]


def _widen(window: SpanWindow, s: int, e: int) -> tuple[int, int]:
    """Character span of the words of tokens s and e (within this window); the tokens' own offsets
    for a token outside the context (the first token)."""
    words, offsets = window.words, window.offsets
    if words[s] < 0 or words[e] < 0:
        return int(offsets[s, 0]), int(offsets[e, 1])
    same_start = np.flatnonzero(words == words[s])  # the word's tokens, contiguous
    same_end = np.flatnonzero(words == words[e])
    return int(offsets[same_start[0], 0]), int(offsets[same_end[-1], 1])


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x.astype(np.float64) - x.max())
    return z / z.sum()
