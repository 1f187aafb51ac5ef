"""Builds BERT model folders with random weights, offline: the tiny backbone of the unit tests and
the BERT-base-shaped one of speed benchmarks. The tokenizer is copied from the default backbone."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from server.engine.backbone import default_backbone_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def write_random_backbone(
    folder: str | Path,
    *,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 128,
    seed: int = 0,
) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = default_backbone_dir()
    config = BertConfig(
        vocab_size=30522,  # the copied tokenizer's vocabulary
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    torch.manual_seed(seed)
    model = BertModel(config, add_pooling_layer=True)
    model.save_pretrained(folder, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return folder


ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4: <pad> = 1 = padding_idx
ROBERTA_CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "a gorgeous, witty, seductive movie.",
    "Someone plays an instrument while a man is playing a guitar.",
    "George Washington went to Washington with John Smith of Acme Corp in New York.",
    "it's a charming and often affecting journey; the film is strictly routine.",
    "What is the capital of France? Paris is.",
]


def write_random_roberta_backbone(
    folder: str | Path,
    *,
    with_pooler: bool = True,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 64,
    max_position_embeddings: int = 66,
    seed: int = 0,
) -> Path:
    """A tiny random RoBERTa folder, offline: a byte-level BPE tokenizer trained here on a few
    sentences, `pad_token_id` 1, one token type, layer-norm eps 1e-5 (what RoBERTa configs carry)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(ROBERTA_CORPUS * 4, vocab_size=400, min_frequency=1, special_tokens=ROBERTA_SPECIALS)
    bpe.save_model(str(folder))  # vocab.json, merges.txt
    tokenizer = RobertaTokenizerFast(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.save_pretrained(folder)
    config = RobertaConfig(
        vocab_size=bpe.get_vocab_size(), hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        type_vocab_size=1, layer_norm_eps=1e-5,
    )
    torch.manual_seed(seed)
    model = RobertaModel(config, add_pooling_layer=with_pooler)
    model.save_pretrained(folder, safe_serialization=True)
    return folder
