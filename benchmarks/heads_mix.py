"""The cost of mixing every head in one batch (issue 22): throughput of batches of 64 rows from 64 tasks,
a quarter each sequence, token, span and choice rows, against the SAME rows (the same token ids, the
same prefix lengths) scored as 64 sentence tasks, in one run.

Rows: SST-2 sentences (sequence), CoNLL-2003 sentences (token), SQuAD question/context windows of
max_seq_len 192 and doc_stride 64 (span), COPA (text, choice) pairs (choice). Batches of the two
configurations alternate, the order flipping every batch, so a drift in the machine's load weighs on
both; the ratio is taken within each round and reported as the median (min-max). In-process Engine
(the forward pass and heads as served; no HTTP, no batcher), float32, the default backbone. With
`--decode`, the mixed side also pays the serving side's decoding: each question's answer from its
windows (server/decoding/spans.py) and each item's softmax over its choices.

    python -m benchmarks.heads_mix [--rounds 5] [--batches 8] [--decode] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from server.artifact import HeadKind, PrefixArtifact, ProblemType
from server.decoding import SpanOptions, choice_scores, decode_answer, span_windows
from server.engine import Engine
from server.engine.backbone import default_backbone_dir

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KINDS = (HeadKind.SEQUENCE, HeadKind.TOKEN, HeadKind.SPAN, HeadKind.CHOICE)
OUTPUTS = {HeadKind.SEQUENCE: 2, HeadKind.TOKEN: 9, HeadKind.SPAN: 2, HeadKind.CHOICE: 1}


def task(shape, index: int, head: HeadKind) -> PrefixArtifact:
    gen = torch.Generator().manual_seed(index)
    prefix_len = 4 + (index * 7) % 61  # 4..64, as the engine bench spreads them
    outputs = OUTPUTS[head]
    return PrefixArtifact(
        key_values=torch.randn(shape.num_layers, 2, shape.num_heads, prefix_len, shape.head_dim, generator=gen),
        classifier_weight=torch.randn(outputs, shape.hidden_size, generator=gen) * 0.5,
        classifier_bias=torch.zeros(outputs),
        problem_type=ProblemType.SINGLE_LABEL,
        labels=tuple(f"l{i}" for i in range(outputs)),
        head=head,
    )


def rows_of_each_kind(engine: Engine, data: Path, count: int) -> dict[HeadKind, list]:
    """`count` inputs of each kind, as text (sequence, token), windows (span), pairs (choice)."""
    lines = {name: (data / name).read_text().splitlines() for name in ("sst2.dev.jsonl", "conll03.dev.jsonl", "squad.dev.jsonl", "copa.dev.jsonl")}
    sentences = [json.loads(line)["text"] for line in lines["sst2.dev.jsonl"][:count]]
    words = [" ".join(json.loads(line)["tokens"]) for line in lines["conll03.dev.jsonl"][:count]]
    windows = []
    for line in lines["squad.dev.jsonl"]:
        paragraph = json.loads(line)
        for qa in paragraph["qas"]:
            windows.append((qa["question"], paragraph["context"]))
        if len(windows) >= count:
            break
    items = [json.loads(line) for line in lines["copa.dev.jsonl"][: (count + 1) // 2]]
    return {HeadKind.SEQUENCE: sentences, HeadKind.TOKEN: words, HeadKind.SPAN: windows[:count], HeadKind.CHOICE: items}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="batches of 64 rows per configuration per round")
    parser.add_argument("--decode", action="store_true", help="the mixed side also decodes spans and choices")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    engine = Engine.from_folder(default_backbone_dir())
    per_kind = 16
    inputs = rows_of_each_kind(engine, args.data, per_kind * args.batches)
    options = SpanOptions(max_seq_len=192, doc_stride=64)
    mixed, sentence = [], []
    for b in range(args.batches):
        kinds = [k for k in KINDS for _ in range(per_kind)]  # 64 rows: 16 of each head
        mixed_handles = [engine.load(task(engine.shape, i, kind)) for i, kind in enumerate(kinds)]
        sentence_handles = [engine.load(task(engine.shape, i, HeadKind.SEQUENCE)) for i in range(len(kinds))]
        encoded, plan = [], []
        for kind, i in zip(kinds, range(len(kinds))):
            P = engine.task(mixed_handles[i]).prefix_len
            fit = engine.shape.max_tokens(P)
            j = b * per_kind + i % per_kind
            if kind is HeadKind.SPAN:
                question, context = inputs[kind][j]
                window = span_windows(engine.encoder, question, context, options.window(fit)[0], options.window(fit)[1])[0]
                encoded.append(window.encoded)
                plan.append(("span", window, context))
            elif kind is HeadKind.CHOICE:
                item = inputs[kind][j // 2]
                encoded.append(engine.encoder.encode([(item["text"], item["choices"][j % 2])], fit)[0])
                plan.append(("choice", None, None))
            else:
                encoded.append(engine.encoder.encode([inputs[kind][j]], fit, offsets=kind is HeadKind.TOKEN)[0])
                plan.append((kind.value, None, None))
        mixed.append(([(e, h) for e, h in zip(encoded, mixed_handles)], plan))
        sentence.append([(e, h) for e, h in zip(encoded, sentence_handles)])

    def run_mixed(b: int) -> None:
        rows, plan = mixed[b]
        results = engine.score_encoded(rows)
        if args.decode:
            for (kind, window, context), values in zip(plan, results):
                if kind == "span":
                    decode_answer([window], [values], context, options)
            for start in range(0, len(plan), 2):
                if plan[start][0] == "choice":
                    choice_scores(results[start : start + 2])

    engine.score_encoded(sentence[0])  # warm-up
    run_mixed(0)
    per_round: dict[str, list[float]] = {"sentence": [], "mixed": []}
    for round_index in range(args.rounds):
        seconds = {"sentence": 0.0, "mixed": 0.0}
        for b in range(args.batches):
            order = ("sentence", "mixed") if (round_index + b) % 2 == 0 else ("mixed", "sentence")
            for name in order:
                started = time.perf_counter()
                run_mixed(b) if name == "mixed" else engine.score_encoded(sentence[b])
                seconds[name] += time.perf_counter() - started
        for name in per_round:
            per_round[name].append(64 * args.batches / seconds[name])
    for name, values in per_round.items():
        print(f"{name}: median {statistics.median(values):.1f} rows/s, rounds {[round(x, 1) for x in values]}")
    ratios = [m / s for s, m in zip(per_round["sentence"], per_round["mixed"])]
    print(f"mixed{' + decoding' if args.decode else ''} / sentence: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    tokens = sum(len(e) for rows, _ in mixed for e, _ in rows) / len(mixed)
    print(f"{tokens:.0f} tokens per batch; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"Python {platform.python_version()}, {platform.processor() or platform.machine()}")


if __name__ == "__main__":
    main()
