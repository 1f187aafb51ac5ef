#!/usr/bin/env python
"""The linear-probe baseline of docs/ACCURACY.md: logistic regression on the frozen backbone's
mean-pooled last hidden states (the sentence embedding of all-MiniLM-L6-v2), same data files.

Requires scikit-learn, which is NOT a dependency of prefix-server: `pip install scikit-learn`.
Pairs are encoded jointly, `[CLS] text [SEP] text_pair [SEP]`, as the prefix model sees them.
The regularisation strength C is picked by 3-fold cross-validation on the training set only.
`--cache DIR` keeps the embeddings, so a second run only refits.

    python scripts/linear_probe.py --train sst2.train.jsonl --eval sst2.dev.jsonl [--max-length 128]
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

from server.artifact import ProblemType
from training.data import load_dataset
from training.metrics import single_label_metrics

try:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
except ImportError:  # pragma: no cover
    sys.exit("scripts/linear_probe.py needs scikit-learn (not a prefix-server dependency): pip install scikit-learn")


C_GRID = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]


def cached(folder: Path | None, data: Path, max_length: int, compute) -> np.ndarray:
    if folder is None:
        return compute()
    path = folder / f"{data.stem}.len{max_length}.npy"
    if path.is_file():
        return np.load(path)
    folder.mkdir(parents=True, exist_ok=True)
    value = compute()
    np.save(path, value)
    return value


@torch.no_grad()
def embed(model, tokenizer, inputs: list, max_length: int, batch_size: int = 128) -> np.ndarray:
    """Mean of the last hidden states over the real tokens: [N, hidden]."""
    singles = [x if isinstance(x, str) else x[0] for x in inputs]
    pairs = None if all(isinstance(x, str) for x in inputs) else [None if isinstance(x, str) else x[1] for x in inputs]
    lengths = [len(t) + (len(p) if pairs and p else 0) for t, p in zip(singles, pairs or [None] * len(inputs))]
    order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
    out = np.zeros((len(inputs), model.config.hidden_size), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        texts = [singles[i] for i in idx]
        text_pairs = [pairs[i] for i in idx] if pairs else None
        enc = tokenizer(texts, text_pairs, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        hidden = model(**enc).last_hidden_state  # [B, S, C]
        mask = enc["attention_mask"][..., None].float()  # [B, S, 1]
        out[idx] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()  # [B, C]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--eval", type=Path, required=True)
    parser.add_argument("--labels", help="comma-separated label names (as for prefix-server train)")
    parser.add_argument("--backbone", type=Path, help="model folder (default: the embedded MiniLM)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, help="folder to keep the embeddings in (.npy)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # scikit-learn's notices of coming defaults
    torch.set_num_threads(args.threads)
    from transformers import AutoModel, AutoTokenizer

    from server.engine.backbone import default_backbone_dir

    folder = str(args.backbone or default_backbone_dir())
    model, tokenizer = AutoModel.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    labels = tuple(args.labels.split(",")) if args.labels else None
    train_set = load_dataset(args.train, labels)
    eval_set = load_dataset(args.eval, train_set.labels, train_set.problem_type)
    if train_set.problem_type is not ProblemType.SINGLE_LABEL:
        sys.exit(f"the probe handles single-label data, got {train_set.problem_type.value}")
    started = time.perf_counter()
    x_train, x_eval = (
        cached(args.cache, path, args.max_length, lambda d=data: embed(model, tokenizer, d.inputs, args.max_length))
        for path, data in ((args.train, train_set), (args.eval, eval_set))
    )
    probe = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=C_GRID, cv=3, max_iter=3000))
    probe.fit(x_train, train_set.targets.numpy())
    seconds = time.perf_counter() - started
    scores = single_label_metrics(eval_set.targets.numpy(), probe.predict(x_eval), train_set.labels)
    print(
        f"{args.eval.name}: accuracy {scores['accuracy']:.4f}  macro-F1 {scores['macro_f1']:.4f}  "
        f"(C={probe[-1].C_[0]:g}, {len(train_set)} train rows, {seconds:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
