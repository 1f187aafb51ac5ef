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
