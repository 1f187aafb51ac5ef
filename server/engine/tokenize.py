"""Turns texts and text pairs into token ids with the backbone's fast tokenizer.

A row's token budget depends on its prefix and the family (BackboneShape.max_tokens): positions start
at offset + P, so at most max_position_embeddings - offset - P tokens fit, special tokens included.
A single-token-type family (RoBERTa) gets type ids 0 for every token, pairs included. Inputs are encoded once without
truncation (batched); only the rare over-long ones are encoded again with the tokenizer's own
truncation (`longest_first` for pairs), so a cut input is exactly what the tokenizer would give.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tokenizers
import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from server.engine.family import BERT, MODEL_TYPES, Family

TextInput = str | tuple[str, str]  # a text, or (text, text_pair)


@dataclass(frozen=True, slots=True, eq=False)
class EncodedInput:
    """One input's tokens as arrays, what a batch concatenates (batch.py) and the engine reads as is."""

    input_ids: np.ndarray  # [S] int32
    token_type_ids: np.ndarray  # [S] int8
    truncated: bool = False
    offsets: list[tuple[int, int]] | None = None  # character spans, for token tasks only (SPEC 2b)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


class InputRefused(ValueError):
    """An input the task cannot take (HTTP 422); the message says what was expected and what came."""


class InputTooLong(InputRefused):
    def __init__(self, index: int, num_tokens: int, limit: int, hint: str = "send truncate: true to cut it"):
        self.index, self.num_tokens, self.limit = index, num_tokens, limit
        super().__init__(f"inputs[{index}]: expected at most {limit} tokens for this task, got {num_tokens} ({hint})")


class TextEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase, single_token_type: bool = False):
        if not tokenizer.is_fast:
            raise ValueError("expected a fast (Rust) tokenizer, got a Python one")
        self.tokenizer = tokenizer
        self.single_token_type = single_token_type
        self._pair_minimum = tokenizer.num_special_tokens_to_add(pair=True)  # [CLS] a [SEP] b [SEP]: 3
        # Encoding goes straight to a private copy of the Rust tokenizer: the transformers wrapper adds
        # ~15 us of Python per call (about a third of encoding a sentence) and sets the same state.
        self._backend = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._backend.no_padding()
        # The Rust tokenizer keeps its truncation settings as state, so two threads encoding with
        # different limits would cut each other's inputs: one call at a time (re-entrant: see unless_busy).
        self._lock = threading.RLock()

    @classmethod
    def from_folder(cls, folder: str | Path) -> TextEncoder:
        transformers.logging.set_verbosity_error()  # silences "sequence longer than model_max_length"
        return cls(AutoTokenizer.from_pretrained(str(folder), use_fast=True), _family_of(Path(folder)).single_token_type)

    def encode(
        self, inputs: list[TextInput], max_tokens: int, truncate: bool = True, offsets: bool = False
    ) -> list[EncodedInput]:
        """Encodes `inputs` for one prefix length; raises InputTooLong when truncate is False.
        `offsets`: keep each token's character span (token tasks)."""
        with self._lock:
            return self._encode(inputs, max_tokens, truncate, offsets)

    @contextlib.contextmanager
    def unless_busy(self):
        """Holds the tokenizer for this thread if no other thread is encoding: yields True (encode calls
        inside run at once), or False at once (for callers that must not wait, such as the event loop)."""
        held = self._lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                self._lock.release()

    def encode_windows(self, first: str, second: str, max_tokens: int, stride: int) -> list[tokenizers.Encoding]:
        """The pair in windows of at most `max_tokens` tokens: `first` whole in each, `second` cut, with
        `stride` tokens of it shared by consecutive windows (what `tokenizer(first, second,
        truncation="only_second", max_length=max_tokens, stride=stride, return_overflowing_tokens=True)`
        gives; the tests compare the two). Raises InputRefused when `first` leaves no room, or no room
        for the stride."""
        with self._lock:
            self._backend.no_truncation()
            whole = self._backend.encode(first, second, add_special_tokens=True)
            if len(whole.ids) <= max_tokens:
                return [whole]
            room = max_tokens - sum(1 for s in whole.sequence_ids if s == 0) - self._pair_minimum
            if room < 1:
                raise InputRefused(
                    f"expected a question of at most {max_tokens - self._pair_minimum - 1} tokens for windows of "
                    f"{max_tokens} tokens, got {max_tokens - self._pair_minimum - room}"
                )
            if stride >= room:  # the Rust tokenizer panics on it
                raise InputRefused(
                    f"doc_stride: expected less than the {room} context tokens a window holds beside the question, got {stride}"
                )
            self._backend.enable_truncation(max_tokens, stride=stride, strategy="only_second")
            cut = self._backend.encode(first, second, add_special_tokens=True)
        return [cut, *cut.overflowing]

    def _encode(self, inputs: list[TextInput], max_tokens: int, truncate: bool, offsets: bool = False) -> list[EncodedInput]:
        out = self._encode_items(inputs, None, offsets)  # untruncated first: the full lengths decide what is cut
        over = [i for i, encoded in enumerate(out) if len(encoded) > max_tokens]
        if over and not truncate:
            raise InputTooLong(over[0], len(out[over[0]]), max_tokens)
        if over:
            over_pairs = [i for i in over if not isinstance(inputs[i], str)]
            if over_pairs and max_tokens < self._pair_minimum:  # no fewer than its special tokens
                index = over_pairs[0]
                hint = f"a text pair cannot be cut below {self._pair_minimum} tokens"
                raise InputTooLong(index, len(out[index]), max_tokens, hint)
            for index, encoded in zip(over, self._encode_items([inputs[i] for i in over], max_tokens, offsets)):
                out[index] = EncodedInput(encoded.input_ids, encoded.token_type_ids, True, encoded.offsets)
        return out

    def _encode_items(self, items: list[TextInput], max_tokens: int | None, offsets: bool = False) -> list[EncodedInput]:
        """What `tokenizer(texts, text_pairs, truncation="longest_first", max_length=...)` gives (the
        tests compare the two); the caller holds self._lock."""
        if max_tokens is None:
            self._backend.no_truncation()
        else:
            self._backend.enable_truncation(max_tokens, strategy="longest_first")
        # One by one, not encode_batch: that hands even a single text to rayon's thread pool, whose
        # wake-ups cost more than the text (measured 166 us vs 37 us per call in a loaded server) and
        # whose threads would take the cores the forward pass runs on.
        encode = self._backend.encode
        encodings = [encode(item, add_special_tokens=True) if isinstance(item, str) else encode(*item, add_special_tokens=True)
                     for item in items]
        return [
            EncodedInput(
                np.array(e.ids, dtype=np.int32),  # [S]
                np.zeros(len(e.ids), np.int8) if self.single_token_type else np.array(e.type_ids, dtype=np.int8),  # [S]
                offsets=e.offsets if offsets else None,
            )
            for e in encodings
        ]


def _family_of(folder: Path) -> Family:
    """The family a model folder's config.json names (BERT when there is none: a bare tokenizer folder)."""
    config = folder / "config.json"
    if not config.is_file():
        return BERT
    return MODEL_TYPES.get(json.loads(config.read_text()).get("model_type"), BERT)
