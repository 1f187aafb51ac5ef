"""Turns texts and text pairs into token ids with the backbone's fast tokenizer.

A row's token budget depends on its prefix: positions start at P, so at most
max_position_embeddings - P tokens fit, [CLS] and [SEP] included. Inputs are encoded once without
truncation (batched); only the rare over-long ones are encoded again with the tokenizer's own
truncation (`longest_first` for pairs), so a cut input is exactly what the tokenizer would give.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import transformers
from transformers import AutoTokenizer, PreTrainedTokenizerBase

TextInput = str | tuple[str, str]  # a text, or (text, text_pair)


@dataclass(frozen=True, slots=True)
class EncodedInput:
    input_ids: list[int]
    token_type_ids: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)


class InputTooLong(ValueError):
    def __init__(self, index: int, num_tokens: int, limit: int, hint: str = "send truncate: true to cut it"):
        self.index, self.num_tokens, self.limit = index, num_tokens, limit
        super().__init__(f"inputs[{index}]: expected at most {limit} tokens for this task, got {num_tokens} ({hint})")


class TextEncoder:
    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if not tokenizer.is_fast:
            raise ValueError("expected a fast (Rust) tokenizer, got a Python one")
        self.tokenizer = tokenizer
        # A fast tokenizer keeps its truncation settings as state on the shared Rust object, so two
        # threads encoding with different limits would cut each other's inputs: one call at a time.
        self._lock = threading.Lock()

    @classmethod
    def from_folder(cls, folder: str | Path) -> "TextEncoder":
        transformers.logging.set_verbosity_error()  # silences "sequence longer than model_max_length"
        return cls(AutoTokenizer.from_pretrained(str(folder), use_fast=True))

    def encode(self, inputs: list[TextInput], max_tokens: int, truncate: bool = True) -> list[EncodedInput]:
        """Encodes `inputs` for one prefix length; raises InputTooLong when truncate is False."""
        singles = [i for i, item in enumerate(inputs) if isinstance(item, str)]
        pairs = [i for i, item in enumerate(inputs) if not isinstance(item, str)]
        out: list[EncodedInput | None] = [None] * len(inputs)
        for indices in (singles, pairs):
            if indices:
                for index, encoded in zip(indices, self._encode_group([inputs[i] for i in indices], None)):
                    out[index] = encoded
        over = [i for i, encoded in enumerate(out) if len(encoded) > max_tokens]
        if over and not truncate:
            raise InputTooLong(over[0], len(out[over[0]]), max_tokens)
        if over:
            pair_set = set(pairs)
            over_pairs = [i for i in over if i in pair_set]
            if over_pairs and max_tokens < 3:  # [CLS] a [SEP] b [SEP] cannot be cut below three
                index = over_pairs[0]
                raise InputTooLong(index, len(out[index]), max_tokens, "a text pair cannot be cut below 3 tokens")
            for same_kind in ([i for i in over if i not in pair_set], [i for i in over if i in pair_set]):
                if same_kind:
                    cut = self._encode_group([inputs[i] for i in same_kind], max_tokens)
                    for index, encoded in zip(same_kind, cut):
                        out[index] = EncodedInput(encoded.input_ids, encoded.token_type_ids, truncated=True)
        return out  # type: ignore[return-value]

    def _encode_group(self, items: list[TextInput], max_tokens: int | None) -> list[EncodedInput]:
        is_pair = not isinstance(items[0], str)
        texts = [item[0] for item in items] if is_pair else items
        text_pairs = [item[1] for item in items] if is_pair else None
        with self._lock:
            batch = self.tokenizer(
                texts,
                text_pairs,
                add_special_tokens=True,
                truncation="longest_first" if max_tokens is not None else False,
                max_length=max_tokens,
                return_attention_mask=False,
                return_token_type_ids=True,
            )
        return [EncodedInput(ids, types) for ids, types in zip(batch["input_ids"], batch["token_type_ids"])]
