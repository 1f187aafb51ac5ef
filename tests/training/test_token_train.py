"""`train --head token` on the tiny backbone: word data and its first-sub-token alignment, parity of
the trained token model with transformers' BertModel given the prefix as past key/values, the SPEC 1b
artifact, the seqeval evaluation, and the command."""

from __future__ import annotations

import argparse
import json
import random

import pytest
import torch
from transformers import AutoTokenizer, BertModel, DynamicCache

from server.artifact import HeadKind, artifact_to_bytes, read_artifact, read_artifact_file
from server.commands import train as train_command
from tests.helpers import past
from training import DataError, TrainConfig
from training.token_model import token_logits
from training.token_trainer import token_metrics, train_token
from training.words import IGNORE, EncodedWordSet, first_subtokens, load_word_dataset, order_labels

NAMES = ["Alice", "Bob", "Carol", "Dave"]
PLACES = ["Paris", "London", "Berlin", "Madrid"]
FILLER = ["met", "in", "the", "city", "of", "yesterday", "and", "saw"]


def word_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tokens, tags = [], []
        for _ in range(rng.randint(2, 6)):
            kind = rng.random()
            if kind < 0.25:
                tokens += [rng.choice(NAMES), "Smithson"]
                tags += ["B-PER", "I-PER"]
            elif kind < 0.45:
                tokens.append(rng.choice(PLACES))
                tags.append("B-LOC")
            else:
                tokens.append(rng.choice(FILLER))
                tags.append("O")
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(tmp_path, **overrides) -> TrainConfig:
    defaults = dict(steps=6, batch_size=8, prefix_len=5, lr=3e-2, seed=1)
    return TrainConfig(
        train=write_jsonl(tmp_path / "train.jsonl", word_rows(40)),
        eval=write_jsonl(tmp_path / "eval.jsonl", word_rows(12, seed=1)),
        **{**defaults, **overrides},
    )


def test_labels_come_from_the_data_in_iob2_order(tmp_path):
    assert order_labels({"I-PER", "O", "B-LOC", "B-PER", "I-LOC"}) == ("O", "B-LOC", "I-LOC", "B-PER", "I-PER")
    dataset = load_word_dataset(write_jsonl(tmp_path / "d.jsonl", word_rows(30)))
    assert dataset.labels == ("O", "B-LOC", "B-PER", "I-PER")


@pytest.mark.parametrize(
    "row, message",
    [
        ({"tokens": ["a", "b"], "tags": ["O"]}, "expected as many tags as tokens"),
        ({"tokens": ["a b"], "tags": ["O"]}, "expected tokens without whitespace"),
        ({"text": "a", "label": 0}, "expected 'tokens' to be a non-empty list"),
    ],
)
def test_bad_rows_are_refused(tmp_path, row, message):
    with pytest.raises(DataError, match=message):
        load_word_dataset(write_jsonl(tmp_path / "d.jsonl", [row, row]))


def test_first_subtoken_rule():
    text = "Smithson  ok \u200b x"  # a zero-width space is not whitespace: a word the tokenizer drops
    offsets = [(0, 0), (0, 5), (5, 8), (10, 12), (15, 16), (0, 0)]
    assert first_subtokens(offsets, text, 4) == [1, 3, None, 4]  # token 2 is ##son of word 0


def test_only_first_subtokens_are_labelled(tiny_engine, tmp_path):
    rows = [{"tokens": ["Smithson", "met"], "tags": ["B-PER", "O"]}] * 2
    dataset = load_word_dataset(write_jsonl(tmp_path / "d.jsonl", rows))
    row = EncodedWordSet.build(dataset, tiny_engine.encoder.tokenizer, 64).encoded[0]
    tokens = tiny_engine.encoder.tokenizer.convert_ids_to_tokens(row.input_ids)
    assert len(tokens) > 4  # [CLS] smith ##son met [SEP]: Smithson is split
    labelled = [(tok, dataset.labels[t]) for tok, t in zip(tokens, row.targets) if t != IGNORE]
    assert labelled == [(tokens[1], "B-PER"), ("met", "O")]


def test_token_model_equals_transformers_with_past_key_values(tiny_engine, tiny_backbone_dir, tmp_path):
    result = train_token(_config(tmp_path), tiny_engine, progress=False)
    artifact = read_artifact(artifact_to_bytes(result.artifact), tiny_engine.shape)
    kv = artifact.key_values  # [L, 2, H, P, D]
    head = torch.nn.Linear(kv.shape[2] * kv.shape[4], len(artifact.labels))
    head.load_state_dict({"weight": artifact.classifier_weight, "bias": artifact.classifier_bias})
    texts = ["Alice Smithson met Bob", "in Paris", "the city of London and Berlin yesterday " * 3]
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone_dir)
    reference = BertModel.from_pretrained(tiny_backbone_dir, attn_implementation="eager").eval()
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    mask = enc["attention_mask"].bool()
    L, _, H, P, D = kv.shape
    with torch.no_grad():
        ours = token_logits(tiny_engine.model, kv[:, :, None].expand(L, 2, 3, H, P, D), head,
                            enc["input_ids"], enc["token_type_ids"], mask)  # [B, S, C]
        for row in range(len(texts)):
            n = int(mask[row].sum())
            cache = DynamicCache()
            for layer in range(L):
                cache.update(kv[layer, 0][None], kv[layer, 1][None], layer)  # each [1, H, P, D]
            ids, types = enc["input_ids"][row : row + 1, :n], enc["token_type_ids"][row : row + 1, :n]  # [1, n]
            mask_with_prefix = torch.ones(1, P + n, dtype=torch.long)  # the seed's cat(prefix ones, mask)
            out = reference(input_ids=ids, token_type_ids=types, attention_mask=mask_with_prefix, **past(reference, cache))
            expected = head(out.last_hidden_state[0])  # [n, C]
            assert torch.allclose(ours[row, :n], expected, atol=1e-5), (ours[row, :n] - expected).abs().max()


def test_artifact_is_a_spec_1b_token_head(tiny_engine, tmp_path):
    result = train_token(_config(tmp_path, dtype="float16"), tiny_engine, progress=False)
    data = artifact_to_bytes(result.artifact)
    meta = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])["__metadata__"]  # the safetensors header
    assert (meta["format"], meta["format_version"], meta["head"]) == ("ptv2-prefix", "2", "token")
    assert meta["problem_type"] == "single_label_classification"
    assert json.loads(meta["labels"]) == ["O", "B-LOC", "B-PER", "I-PER"]
    assert meta["backbone_fingerprint"] == tiny_engine.shape.fingerprint and meta["backbone_family"] == "bert"
    assert {"eval_f1", "eval_precision", "eval_recall", "eval_word_accuracy", "eval_f1_per_type"} <= set(meta)
    artifact = read_artifact(data, tiny_engine.shape)
    assert artifact.head is HeadKind.TOKEN and artifact.pooler_weight is None  # a token head has no pooler
    assert artifact.key_values.dtype == torch.float16 and artifact.classifier_weight.dtype == torch.float32


def test_training_learns_the_entities(tiny_engine, tmp_path):
    result = train_token(_config(tmp_path, steps=60, lr=5e-2), tiny_engine, progress=False)
    assert result.metrics["f1"] > 0.5 and result.metrics["word_accuracy"] > 0.8


def test_entity_metrics_are_seqeval_micro_f1():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["I-ORG", "O"]]  # an I- without B- still starts an entity
    metrics = token_metrics(gold, pred, ("O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"))
    assert metrics["precision"] == 1.0 and metrics["recall"] == pytest.approx(2 / 3)
    assert metrics["f1"] == pytest.approx(0.8) and metrics["word_accuracy"] == pytest.approx(4 / 6)
    assert metrics["f1_per_type"] == {"LOC": 0.0, "ORG": 1.0, "PER": 1.0}


def test_command_writes_a_token_artifact(tiny_backbone_dir, tmp_path, capsys):
    config = _config(tmp_path)
    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    out = tmp_path / "entities.safetensors"
    args = parser.parse_args(["train", "--head", "token", "--train", str(config.train), "--eval", str(config.eval),
                              "--backbone", str(tiny_backbone_dir), "--steps", "3", "--prefix-len", "4",
                              "--quiet", "--out", str(out)])
    assert args.func(args) == 0
    assert read_artifact_file(out, train_command_shape(tiny_backbone_dir)).head is HeadKind.TOKEN
    assert "token head" in capsys.readouterr().out


def train_command_shape(folder):
    from server.engine import read_backbone_folder

    return read_backbone_folder(folder).shape()


def test_roberta_token_training_equals_transformers(tmp_path):
    """On a RoBERTa backbone without a pooler: positions padding_idx + 1 + P + i, one token type."""
    from transformers import RobertaModel

    from harness.random_backbone import write_random_roberta_backbone
    from server.engine import Engine

    folder = write_random_roberta_backbone(tmp_path / "tiny-roberta", with_pooler=False)
    engine = Engine.from_folder(folder)
    result = train_token(_config(tmp_path, steps=3), engine, progress=False)
    artifact = read_artifact(artifact_to_bytes(result.artifact), engine.shape)
    assert artifact.backbone_family == "roberta" and artifact.head is HeadKind.TOKEN
    kv = artifact.key_values  # [L, 2, H, P, D]
    L, _, H, P, D = kv.shape
    head = torch.nn.Linear(H * D, len(artifact.labels))
    head.load_state_dict({"weight": artifact.classifier_weight, "bias": artifact.classifier_bias})
    enc = AutoTokenizer.from_pretrained(folder)(["Alice Smithson met Bob in Paris"], return_tensors="pt")
    reference = RobertaModel.from_pretrained(folder, attn_implementation="eager", add_pooling_layer=False).eval()
    cache = DynamicCache()
    for layer in range(L):
        cache.update(kv[layer, 0][None], kv[layer, 1][None], layer)  # each [1, H, P, D]
    n = enc["input_ids"].shape[1]
    with torch.no_grad():
        ours = token_logits(engine.model, kv[:, :, None], head, enc["input_ids"], torch.zeros_like(enc["input_ids"]),
                            torch.ones(1, n, dtype=torch.bool))  # [1, n, C]
        out = reference(input_ids=enc["input_ids"], attention_mask=torch.ones(1, P + n, dtype=torch.long), **past(reference, cache))
    assert torch.allclose(ours[0], head(out.last_hidden_state[0]), atol=1e-5)
