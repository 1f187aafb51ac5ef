"""Splits shared/data/squad.dev.jsonl (SQuAD v1.1 dev, one paragraph per line) by article, as
shared/data/SOURCES.md asks: the paragraphs of the first 38 articles (file order) to train on, those
of the last 10 ("SQuAD v1.1 dev, articles 39-48") to score on, so no paragraph is on both sides.

    python scripts/squad_split.py --data $DATA/squad.dev.jsonl --out /tmp/squad
    -> /tmp/squad/squad.articles01-38.jsonl, /tmp/squad/squad.articles39-48.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TRAIN_ARTICLES = 38


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="squad.dev.jsonl")
    parser.add_argument("--out", type=Path, required=True, help="folder for the two files")
    parser.add_argument("--train-articles", type=int, default=TRAIN_ARTICLES, help="articles to train on (default 38)")
    args = parser.parse_args()
    titles: list[str] = []
    lines = [line for line in args.data.read_text(encoding="utf-8").splitlines() if line.strip()]
    for line in lines:
        title = json.loads(line)["title"]
        if title not in titles:
            titles.append(title)
    train_titles = set(titles[: args.train_articles])
    args.out.mkdir(parents=True, exist_ok=True)
    first, last = args.train_articles, len(titles)
    train_path = args.out / f"squad.articles01-{first:02d}.jsonl"
    eval_path = args.out / f"squad.articles{first + 1:02d}-{last:02d}.jsonl"
    with train_path.open("w", encoding="utf-8") as train, eval_path.open("w", encoding="utf-8") as evaluation:
        for line in lines:
            (train if json.loads(line)["title"] in train_titles else evaluation).write(line + "\n")
    for path in (train_path, eval_path):
        paragraphs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        print(f"{path}: {len({p['title'] for p in paragraphs})} articles, {len(paragraphs)} paragraphs, "
              f"{sum(len(p['qas']) for p in paragraphs)} questions")


if __name__ == "__main__":
    main()
