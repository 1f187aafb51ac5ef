"""The no-prefix baselines of the span and choice demos (docs/ACCURACY.md): the same head trained on
the frozen backbone's own outputs, with no prefix at all (the probe's equivalent for these heads).

- span: `qa_outputs` [2, hidden] on every token's final hidden state of the bare backbone, trained on
  the same training windows as `prefix-server train --head span` (span_data.py), then decoded on the
  serving windows of the eval questions by the serving rule (server/decoding/spans.py) and scored with
  the same SQuAD exact match / F1;
- choice: `classifier` [1, hidden] on the bare backbone's pooled output of each (text, choice) pair,
  softmax over an item's pairs, scored by accuracy.
The features are computed once (forward passes only), then the head is fitted with Adam (lr 1e-2).

    python scripts/head_probe.py --head span --train A.jsonl --eval B.jsonl --max-length 192 --doc-stride 64
    python scripts/head_probe.py --head choice --train copa.train.jsonl --eval copa.dev.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from server.decoding import SpanOptions, choice_scores, decode_answer, span_windows
from server.engine import Engine, TokenBatch
from server.engine.attention import pack_padded
from server.engine.backbone import default_backbone_dir
from training.batches import pad_rows
from training.choice_trainer import load_choice_dataset
from training.span_data import load_span_dataset, span_training_set
from training.span_trainer import squad_metrics
from training.token_model import unpack_tokens

BATCH = 32


@torch.no_grad()
def token_states(engine: Engine, rows: list) -> list[torch.Tensor]:
    """Each row's final hidden states [S, C] (float16), no prefix."""
    out: list = [None] * len(rows)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    pad = engine.encoder.tokenizer.pad_token_id or 0
    for start in range(0, len(order), BATCH):
        chunk = order[start : start + BATCH]
        ids, types, mask = pad_rows([rows[i] for i in chunk], pad)  # [B, S] each
        batch = pack_padded(ids, types, mask, None, torch.zeros(len(chunk), dtype=torch.long), engine.model.max_positions)
        hidden = unpack_tokens(engine.model.hidden_states(batch), mask, batch.restore_order)  # [B, S, C]
        for j, i in enumerate(chunk):
            out[i] = hidden[j, : len(rows[i])].half()
    return out


def fit(hidden: int, losses, outputs: int, epochs: int, lr: float, seed: int) -> torch.nn.Linear:
    """A Linear(hidden, outputs) fitted with Adam: `losses(head)` yields one epoch's minibatch losses."""
    torch.manual_seed(seed)
    head = torch.nn.Linear(hidden, outputs)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for _ in range(epochs):
        for loss in losses(head):
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return head


def span_probe(args, engine: Engine) -> dict:
    train_set, eval_set = load_span_dataset(args.train), load_span_dataset(args.eval)
    encoded = span_training_set(train_set, engine.encoder, args.max_length, args.doc_stride)
    states = token_states(engine, encoded.encoded)
    longest = max(len(s) for s in states)
    grid = torch.zeros(len(states), longest, states[0].shape[1], dtype=torch.float16)  # [N, S, C]
    mask = torch.zeros(len(states), longest, dtype=torch.bool)  # [N, S]
    for i, s in enumerate(states):
        grid[i, : len(s)], mask[i, : len(s)] = s, True
    del states
    targets = encoded.targets  # [N, 2]
    generator = torch.Generator().manual_seed(args.seed)

    def losses(head):
        for batch in torch.randperm(len(grid), generator=generator).split(256):
            logits = head(grid[batch].float()).masked_fill(~mask[batch][:, :, None], -1e4)  # [b, S, 2]
            yield (F.cross_entropy(logits[:, :, 0], targets[batch, 0]) + F.cross_entropy(logits[:, :, 1], targets[batch, 1])) / 2

    head = fit(grid.shape[-1], losses, 2, args.epochs, args.lr, args.seed)
    options = SpanOptions()
    max_seq_len, stride = options.window(engine.shape.max_tokens(0))
    answers = []
    for q in eval_set.questions:
        windows = span_windows(engine.encoder, q.question, q.context, max_seq_len, stride)
        with torch.no_grad():
            logits = [head(s.float()).numpy() for s in token_states(engine, [w.encoded for w in windows])]
        answers.append(decode_answer(windows, logits, q.context, options).answer)
    return {"windows": len(grid), **squad_metrics(answers, eval_set)}


@torch.no_grad()
def pooled(engine: Engine, pairs: list) -> torch.Tensor:
    rows = engine.encoder.encode(pairs, engine.shape.max_tokens(0), truncate=True)
    return torch.from_numpy(np.concatenate([engine.pooled(TokenBatch.of(rows[i : i + BATCH])) for i in range(0, len(rows), BATCH)]))


def choice_probe(args, engine: Engine) -> dict:
    train_set, eval_set = load_choice_dataset(args.train), load_choice_dataset(args.eval)
    features = pooled(engine, train_set.pairs())  # [R, C]
    counts = [len(c) for c in train_set.choices]
    C = max(counts)
    starts = np.cumsum([0, *counts[:-1]])
    index = torch.tensor([[s + min(j, n - 1) for j in range(C)] for s, n in zip(starts, counts)])  # [N, C]
    missing = torch.tensor([[j >= n for j in range(C)] for n in counts])  # [N, C]
    labels = torch.tensor(train_set.labels)

    def losses(head):
        logits = head(features)[:, 0][index].masked_fill(missing, float("-inf"))  # [N, C]
        yield F.cross_entropy(logits, labels)

    head = fit(features.shape[-1], losses, 1, args.choice_steps, args.lr, args.seed)
    with torch.no_grad():
        logits = head(pooled(engine, eval_set.pairs())).tolist()
    chosen, at = [], 0
    for choices in eval_set.choices:
        chosen.append(choice_scores(logits[at : at + len(choices)]).choice)
        at += len(choices)
    return {"accuracy": sum(c == y for c, y in zip(chosen, eval_set.labels)) / len(eval_set)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--head", choices=["span", "choice"], required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, default=None)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--doc-stride", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20, help="span: epochs of Adam over minibatches of 256 windows (default 20)")
    parser.add_argument("--choice-steps", type=int, default=500, help="choice: full-batch Adam steps (default 500)")
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    engine = Engine.from_folder(args.backbone or default_backbone_dir())
    started = time.perf_counter()
    result = span_probe(args, engine) if args.head == "span" else choice_probe(args, engine)
    print({**result, "seconds": round(time.perf_counter() - started, 1)})


if __name__ == "__main__":
    main()
