"""The seed's way of serving a P-tuning v2 task: transformers' `BertModel` (eager attention, as the
seed's BertPrefixForSequenceClassification) given the prefix as its past key/values in a
`DynamicCache`, the attention mask extended by ones over the prefix, one request at a time (a request's
inputs form one padded batch, all with that request's prefix). The recipe is the one of
tests/helpers.reference_scores, copied here so the benchmark does not import the tests.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from transformers import AutoTokenizer, BertModel, DynamicCache

from server.artifact import PrefixArtifact
from server.engine import TextInput
from server.engine.scoring import score_logits


class SeedModel:
    def __init__(self, folder: str | Path):
        self.model = BertModel.from_pretrained(str(folder), attn_implementation="eager").eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.max_positions = self.model.config.max_position_embeddings
        self.lock = threading.Lock()  # one request at a time, as the seed serves

    @torch.inference_mode()
    def classify(self, artifact: PrefixArtifact, inputs: list[TextInput]) -> list[list[float]]:
        """Scores per input, in input order; the whole request is one forward pass."""
        if all(isinstance(item, str) for item in inputs):
            return self._forward(artifact, (list(inputs),))
        if not any(isinstance(item, str) for item in inputs):
            return self._forward(artifact, ([a for a, _ in inputs], [b for _, b in inputs]))
        return [self._forward(artifact, (item,) if isinstance(item, str) else tuple(item))[0] for item in inputs]

    def _forward(self, artifact: PrefixArtifact, texts: tuple) -> list[list[float]]:
        P = artifact.prefix_len
        enc = self.tokenizer(
            *texts, padding=True, truncation=True, max_length=self.max_positions - P, return_tensors="pt"
        )
        batch = enc["input_ids"].shape[0]
        kv = artifact.key_values.float()  # [L, 2, H, P, D]
        cache = DynamicCache()
        for layer in range(kv.shape[0]):
            keys = kv[layer, 0][None].expand(batch, -1, -1, -1)  # [B, H, P, D]
            values = kv[layer, 1][None].expand(batch, -1, -1, -1)
            cache.update(keys, values, layer)
        mask = torch.cat([torch.ones(batch, P, dtype=enc["attention_mask"].dtype), enc["attention_mask"]], dim=1)
        out = self.model(
            input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"], attention_mask=mask, cache=cache
        )
        logits = out.pooler_output @ artifact.classifier_weight.float().T + artifact.classifier_bias.float()
        return score_logits(logits, artifact.problem_type).tolist()
