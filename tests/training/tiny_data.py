"""Small synthetic training files for the trainer tests."""

from __future__ import annotations

import json
import random

GOOD = ["great", "lovely", "superb", "fine", "charming"]
BAD = ["awful", "dull", "boring", "bad", "tedious"]
FILLER = ["the", "film", "was", "a", "story", "plot", "and", "really", "quite"]


def sentence(rng: random.Random, words: list[str]) -> str:
    return " ".join(rng.sample(FILLER, rng.randint(1, 6)) + [rng.choice(words)])


def write_rows(path, rows) -> str:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def single_label_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        row = {"text": sentence(rng, GOOD if label == "positive" else BAD), "label": label}
        if i % 3 == 0:
            row["text_pair"] = sentence(rng, FILLER)
        rows.append(row)
    return rows


def multi_label_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        labels = [name for bit, name in ((1, "good"), (2, "bad")) if i % 4 & bit]
        words = (GOOD if "good" in labels else []) + (BAD if "bad" in labels else []) + FILLER
        rows.append({"text": sentence(rng, words), "label": labels})
    return rows


def regression_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"text": sentence(rng, GOOD + BAD), "label": round(rng.uniform(0, 5), 2)} for _ in range(n)]
