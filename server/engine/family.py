"""Backbone families: what differs between BERT and RoBERTa-style encoders, in one place.

The layers are the same (post-norm transformer, fused here into model.py's EncoderLayer); a family
decides only (SPEC 1b):
- positions: token i of a row with prefix length P takes position `position_offset + P + i`, where
  BERT's offset is 0 and RoBERTa's is `padding_idx + 1` (what HF RoBERTa's position ids give when
  handed P past key/values); so a row holds at most `max_position_embeddings - offset - P` tokens;
- token types: RoBERTa has one, so every token type id is 0 whatever its tokenizer says for pairs;
- weight names: the checkpoint's base-model prefix (`bert.`, `roberta.`) is dropped;
- the pooler: BERT checkpoints always have one; a RoBERTa checkpoint may not, and then every sequence
  task carries its own (`pooler.weight`/`pooler.bias`, SPEC 1b).
Pairs are encoded by the backbone's own fast tokenizer (`[CLS] A [SEP] B [SEP]`, `<s> A </s></s> B </s>`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str  # what an artifact's `backbone_family` metadata names
    title: str  # for messages
    weight_prefix: str  # the base-model prefix of task checkpoints' weight names
    offset_after_padding: bool  # positions start past padding_idx (RoBERTa), or at 0 (BERT)
    single_token_type: bool
    pooler_required: bool

    def position_offset(self, pad_token_id: int) -> int:
        return pad_token_id + 1 if self.offset_after_padding else 0


BERT = Family("bert", "BERT", "bert.", offset_after_padding=False, single_token_type=False, pooler_required=True)
ROBERTA = Family("roberta", "RoBERTa", "roberta.", offset_after_padding=True, single_token_type=True, pooler_required=False)

# config.json `model_type` -> family (a missing model_type is an old BERT config).
MODEL_TYPES = {None: BERT, "bert": BERT, "roberta": ROBERTA, "xlm-roberta": ROBERTA, "camembert": ROBERTA}
FAMILIES = {family.name: family for family in (BERT, ROBERTA)}
