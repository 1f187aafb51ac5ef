#!/usr/bin/env python
"""The token-classification baseline of docs/ACCURACY.md: logistic regression on the frozen
backbone's last hidden state at each word's first sub-token (no prefix), same word-level data, scored
with the same entity-level micro F1 (seqeval) as `prefix-server train --head token`.

Requires scikit-learn and seqeval, which are NOT dependencies of the server: `pip install scikit-learn
seqeval`. Words are found exactly as the trainer and the server find them (training/words.py):
the row's words joined by spaces, each word's first token whose character span starts inside it. A
word the truncation cut off is predicted `O`. The regularisation strength C is picked on a held-out
tenth of the training sentences (by entity F1), then the probe is refitted on all of them.
`--max-train-words N` subsamples the training words (random, fixed seed) when time is short.

    python scripts/linear_probe_tokens.py --train conll03.train.jsonl --eval conll03.dev.jsonl
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from training.token_trainer import token_metrics
from training.words import OUTSIDE, EncodedWordSet, WordDataset, load_word_dataset

try:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
except ImportError:  # pragma: no cover
    sys.exit("scripts/linear_probe_tokens.py needs scikit-learn (not a prefix-server dependency): pip install scikit-learn")

C_GRID = [0.01, 0.1, 1.0]
HOLDOUT = 0.1


@torch.no_grad()
def word_features(model, tokenizer, dataset: WordDataset, max_length: int, batch_size: int = 128):
    """Per word with a first sub-token: its feature row `[hidden]`; plus (sentence, word) of each row."""
    encoded = EncodedWordSet.build(dataset, tokenizer, max_length)
    order = np.argsort([len(e) for e in encoded.encoded], kind="stable")  # similar lengths: little padding
    features, where = [], []
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size].tolist()
        batch = encoded.batch(indices)
        hidden = model(input_ids=batch.input_ids, token_type_ids=batch.token_type_ids,
                       attention_mask=batch.token_mask.long()).last_hidden_state  # [B, S, C]
        for row, i in enumerate(indices):
            for word, token in enumerate(encoded.encoded[i].first_tokens):
                if token is not None:
                    features.append(hidden[row, token].numpy())
                    where.append((i, word))
    return np.stack(features), where  # [N_words, C]


def predict(probe, x: np.ndarray, where: list[tuple[int, int]], dataset: WordDataset) -> list[list[str]]:
    predicted = [[OUTSIDE] * len(words) for words in dataset.words]  # cut words stay O
    for (i, word), label in zip(where, probe.predict(x)):
        predicted[i][word] = dataset.labels[label]
    return predicted


def fit(x: np.ndarray, y: np.ndarray, C: float):
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
    return probe.fit(x, y)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, help="model folder (default: the embedded MiniLM)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--max-train-words", type=int, help="subsample the training words to at most N")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    from server.engine.backbone import default_backbone_dir

    folder = str(args.backbone or default_backbone_dir())
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    train_set = load_word_dataset(args.train)
    eval_set = load_word_dataset(args.eval, train_set.labels)
    started = time.perf_counter()
    x, where = word_features(model, tokenizer, train_set, args.max_length)
    y = np.array([train_set.labels.index(train_set.tags[i][w]) for i, w in where])
    keep = np.arange(len(y))
    if args.max_train_words and args.max_train_words < len(y):
        keep = np.sort(np.random.default_rng(0).choice(len(y), args.max_train_words, replace=False))
    sentence = np.array([i for i, _ in where])
    held = np.random.default_rng(1).random(len(train_set)) < HOLDOUT  # [N_sentences]
    fit_rows, held_rows = keep[~held[sentence[keep]]], keep[held[sentence[keep]]]
    best_C, best_f1 = None, -1.0
    for C in C_GRID:
        probe = fit(x[fit_rows], y[fit_rows], C)
        held_sentences = sorted(set(sentence[held_rows].tolist()))
        sub = WordDataset(train_set.source, [train_set.words[i] for i in held_sentences],
                          [train_set.tags[i] for i in held_sentences], train_set.labels)
        renumber = {i: k for k, i in enumerate(held_sentences)}
        sub_where = [(renumber[where[r][0]], where[r][1]) for r in held_rows]
        f1 = token_metrics(sub.tags, predict(probe, x[held_rows], sub_where, sub), sub.labels)["f1"]
        print(f"C={C:g}: held-out entity F1 {f1:.4f}", file=sys.stderr)
        if f1 > best_f1:
            best_C, best_f1 = C, f1
    probe = fit(x[keep], y[keep], best_C)
    seconds = time.perf_counter() - started
    x_eval, eval_where = word_features(model, tokenizer, eval_set, args.max_length)
    scores = token_metrics(eval_set.tags, predict(probe, x_eval, eval_where, eval_set), eval_set.labels)
    per_type = ", ".join(f"{k} {v:.4f}" for k, v in scores["f1_per_type"].items())
    print(
        f"{args.eval.name}: entity F1 {scores['f1']:.4f} (precision {scores['precision']:.4f}, recall "
        f"{scores['recall']:.4f}), word accuracy {scores['word_accuracy']:.4f}; {per_type} "
        f"(C={best_C:g}, {len(keep)} train words, {seconds:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
