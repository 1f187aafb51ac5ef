"""Word-level training data for token heads (`prefix-server train --head token`).

Owns reading `{"tokens": [...], "tags": [...]}` rows (CoNLL-2003 as shipped in shared/data), the
label space, and the alignment of words to sub-tokens. A row's words are joined by single spaces and
encoded by the serving tokenizer with character offsets, and each word is found by SPEC 2b's rule:
its first token whose character span is not empty and starts inside the word. That token is labelled
with the word's tag, every other token gets IGNORE (-100), as P-tuning v2's token-classification
scripts do (`label_all_tokens=False`). Because the mapping goes through the same text and offsets
the server sees, a word trained on is a word served.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from training.batches import Batch, pad_rows
from training.data import DataError

IGNORE = -100  # cross-entropy's ignore_index: tokens that are not a word's first sub-token
OUTSIDE = "O"


@dataclass(frozen=True)
class WordDataset:
    source: Path
    words: list[list[str]]
    tags: list[list[str]]  # per word, as in the file
    labels: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.words)

    def texts(self) -> list[str]:
        return [" ".join(words) for words in self.words]


def load_word_dataset(path: str | Path, labels: tuple[str, ...] | None = None) -> WordDataset:
    """Reads `path`; `labels` fixes the label space (pass the train set's for eval)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected a data file, got no such file")
    if path.suffix.lower() not in (".jsonl", ".ndjson", ".json"):
        raise DataError(f"{path}: --head token expected a .jsonl file of {{tokens, tags}} rows, got {path.suffix}")
    words, tags = [], []
    for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            row_words, row_tags = _parse_row(line, f"{path.name}:{line_number}")
            words.append(row_words)
            tags.append(row_tags)
    if not words:
        raise DataError(f"{path}: expected at least one row, got none")
    seen = {tag for row in tags for tag in row}
    if labels is None:
        labels = order_labels(seen)
    unknown = sorted(seen - set(labels))
    if unknown:
        raise DataError(f"{path.name}: tags {unknown[:10]} are not among the labels {list(labels)[:20]}")
    if len(labels) < 2:
        raise DataError(f"{path.name}: expected at least 2 labels, got {list(labels)} (name them with --labels)")
    return WordDataset(path, words, tags, tuple(labels))


def _parse_row(line: str, where: str) -> tuple[list[str], list[str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: expected one JSON object per line ({exc})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected an object with tokens and tags, got {type(record).__name__}")
    words, tags = record.get("tokens"), record.get("tags")
    for name, value in (("tokens", words), ("tags", tags)):
        if not isinstance(value, list) or not value or not all(isinstance(x, str) and x for x in value):
            shown = repr(value)[:80]
            raise DataError(f"{where}: expected '{name}' to be a non-empty list of non-empty strings, got {shown}")
    if len(words) != len(tags):
        raise DataError(f"{where}: expected as many tags as tokens, got {len(tags)} tags for {len(words)} tokens")
    spaced = next((w for w in words if len(w.split()) != 1), None)
    if spaced is not None:
        # The server finds words as runs of non-whitespace (SPEC 2b): such a token would be two words there.
        raise DataError(f"{where}: expected tokens without whitespace, got {spaced!r}")
    return words, tags


def order_labels(tags: set[str]) -> tuple[str, ...]:
    """`O` first, then per entity type (sorted) `B-X` before `I-X`, then any other tags sorted."""
    def key(tag: str) -> tuple:
        if tag == OUTSIDE:
            return (0, "", 0)
        if tag[:2] in ("B-", "I-"):
            return (1, tag[2:], tag[0] == "I")
        return (2, tag, 0)

    return tuple(sorted(tags, key=key))


def is_iob2(labels: tuple[str, ...]) -> bool:
    return all(label == OUTSIDE or (label[:2] in ("B-", "I-") and len(label) > 2) for label in labels)


def first_subtokens(offsets: list[tuple[int, int]], text: str, num_words: int) -> list[int | None]:
    """Per word (a run of non-whitespace of `text`), the index of its first sub-token, or None when no
    token starts inside it (cut off by truncation, or all its characters dropped by the normaliser)."""
    word_of_char = [-1] * len(text)  # [len(text)]: which word each character belongs to
    word, inside = -1, False
    for i, ch in enumerate(text):
        if ch.isspace():
            inside = False
            continue
        if not inside:
            word, inside = word + 1, True
        word_of_char[i] = word
    firsts: list[int | None] = [None] * num_words
    for index, (start, end) in enumerate(offsets):
        if end > start and start < len(text):
            w = word_of_char[start]
            if w >= 0 and firsts[w] is None:
                firsts[w] = index
    return firsts


@dataclass(frozen=True)
class EncodedWords:
    input_ids: list[int]
    token_type_ids: list[int]
    first_tokens: list[int | None]  # per word
    targets: list[int]  # per token: the word's label index at its first sub-token, else IGNORE

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class EncodedWordSet:
    """The word dataset tokenised once; `batch` pads like batches.EncodedSet, targets with IGNORE."""

    encoded: list[EncodedWords]
    pad_token_id: int

    @classmethod
    def build(cls, dataset: WordDataset, tokenizer, max_tokens: int) -> EncodedWordSet:
        index = {label: i for i, label in enumerate(dataset.labels)}
        texts = dataset.texts()
        enc = tokenizer(texts, truncation=True, max_length=max_tokens, return_offsets_mapping=True)
        rows = []
        for i, text in enumerate(texts):
            firsts = first_subtokens(enc["offset_mapping"][i], text, len(dataset.words[i]))
            ids = enc["input_ids"][i]
            targets = [IGNORE] * len(ids)
            for word, token in enumerate(firsts):
                if token is not None:
                    targets[token] = index[dataset.tags[i][word]]
            types = enc["token_type_ids"][i] if "token_type_ids" in enc else [0] * len(ids)
            rows.append(EncodedWords(ids, types, firsts, targets))
        return cls(rows, tokenizer.pad_token_id or 0)

    def __len__(self) -> int:
        return len(self.encoded)

    def batch(self, indices: list[int]) -> Batch:
        rows = [self.encoded[i] for i in indices]
        ids, types, mask = pad_rows(rows, self.pad_token_id)  # each [B, S]
        targets = torch.full(ids.shape, IGNORE, dtype=torch.long)  # [B, S]
        for i, row in enumerate(rows):
            targets[i, : len(row.targets)] = torch.tensor(row.targets)
        return Batch(ids, types, mask, targets)
