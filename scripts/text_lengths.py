"""Writes scripts/text_lengths.json: token lengths of real inputs for scripts/gpu_check.py, which runs
where neither the data nor the MiniLM tokenizer is. Run here: python scripts/text_lengths.py

A seeded draw (random.Random(13)) of 2,000 inputs from ../shared/data: 850 SST-2 dev sentences, 480
TREC test questions, 400 MRPC dev pairs, 270 RTE dev pairs (nearly all of each), shuffled, each encoded with the default backbone's
(all-MiniLM-L6-v2, BERT uncased WordPiece) tokenizer, [CLS] and [SEP] included, cut at 448 tokens
(512 positions less the longest prefix, 64), in the drawn order.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from transformers import AutoTokenizer

from server.engine.backbone import default_backbone_dir

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DRAW = {"sst2.dev.jsonl": 850, "trec.test.jsonl": 480, "mrpc.dev.jsonl": 400, "rte.dev.jsonl": 270}
MAX_TOKENS = 448


def main() -> None:
    rng = random.Random(13)
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_dir())
    inputs = []
    for name, count in DRAW.items():
        records = [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]
        inputs += [(r["text"], r.get("text_pair")) for r in rng.sample(records, count)]
    rng.shuffle(inputs)
    lengths = [
        len(tokenizer(text, pair, truncation=True, max_length=MAX_TOKENS)["input_ids"]) for text, pair in inputs
    ]
    out = {"how": __doc__.strip().split("\n\n")[1].replace("\n", " "), "sources": DRAW, "lengths": lengths}
    (ROOT / "scripts" / "text_lengths.json").write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"{len(lengths)} lengths, mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)}")


if __name__ == "__main__":
    main()
