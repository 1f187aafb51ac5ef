"""The references for span and choice heads (SPEC 1d, 2d), written apart from the package's code:

- the model: transformers' model of the backbone's family given the prefix as past key/values (a
  DynamicCache, the attention mask extended over the prefix), `qa_outputs` on every token's final
  state (BertPrefixForQuestionAnswering) or the classifier on the pooled first token of each
  (text, choice) pair (BertPrefixForMultipleChoice), softmax over an item's pairs;
- the answer: transformers 4.x's question-answering pipeline (`top_k=1`, fast tokenizer), as SPEC 2d
  spells it out and as transformers 4.57's `pipelines/question_answering.py` computes it (that
  pipeline is gone from transformers 5): the tokenizer's own overflowing windows, the p_mask with the
  [CLS] token unmasked, float32 softmaxes, the full start x end matrix cut to the band, its best 12,
  `Encoding.token_to_word` / `word_to_chars` for the words, merging by lower-cased text.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer, DynamicCache

from server.artifact import PrefixArtifact

TOP_K = 1
PRE_TOP_K = TOP_K * 2 + 10  # the pipeline's candidates before word alignment


@functools.lru_cache(maxsize=4)
def _model(folder: str):
    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder)


@torch.no_grad()
def _hidden(folder: str, artifact: PrefixArtifact, input_ids: list[int], token_type_ids: list[int] | None):
    model, _ = _model(str(folder))
    P = artifact.prefix_len
    kv = artifact.key_values.float()  # [L, 2, H, P, D]
    cache = DynamicCache()
    for layer in range(kv.shape[0]):
        cache.update(kv[layer, 0][None], kv[layer, 1][None], layer)  # each [1, H, P, D]
    ids = torch.tensor([input_ids])  # [1, S]
    mask = torch.ones(1, P + ids.shape[1], dtype=torch.long)  # [1, P + S]
    types = torch.tensor([token_type_ids]) if token_type_ids is not None else torch.zeros_like(ids)
    return model(input_ids=ids, token_type_ids=types, attention_mask=mask, cache=cache)


def reference_windows(folder, question: str, context: str, max_seq_len: int, doc_stride: int):
    """The pipeline's encoding: question first, only the context cut, overflowing windows."""
    _, tokenizer = _model(str(folder))
    return tokenizer(
        question.lstrip(), context, truncation="only_second", max_length=max_seq_len, stride=doc_stride,
        return_token_type_ids=True, return_overflowing_tokens=True, return_offsets_mapping=True,
    )


def reference_answer(folder, artifact: PrefixArtifact, question: str, context: str, *, max_seq_len: int = 384,
                     doc_stride: int = 128, max_answer_len: int = 15, allow_impossible: bool = False) -> dict:
    """The pipeline's answer {"answer", "score", "start", "end"} on the reference model."""
    _, tokenizer = _model(str(folder))
    encoded = reference_windows(folder, question, context, max_seq_len, doc_stride)
    weight, bias = artifact.classifier_weight.float(), artifact.classifier_bias.float()
    answers: list[dict] = []
    min_null = 1_000_000.0
    for window in range(len(encoded["input_ids"])):
        ids = encoded["input_ids"][window]
        types = encoded["token_type_ids"][window] if "token_type_ids" in encoded else None
        hidden = _hidden(folder, artifact, ids, types).last_hidden_state[0]  # [S, C]
        logits = (hidden @ weight.T + bias).numpy().astype(np.float32)  # [S, 2]
        p_mask = np.array([s != 1 for s in encoded.sequence_ids(window)], dtype=np.int64)
        p_mask[np.array(ids) == tokenizer.cls_token_id] = 0
        allowed = 1 - p_mask  # 1: may bound an answer
        start = np.where(allowed == 0, -10000.0, logits[:, 0]).astype(np.float32)
        end = np.where(allowed == 0, -10000.0, logits[:, 1]).astype(np.float32)
        start = np.exp(start - start.max())
        start = start / start.sum()
        end = np.exp(end - end.max())
        end = end / end.sum()
        min_null = min(min_null, float(start[0] * end[0]))
        start[0] = end[0] = 0.0
        grid = np.tril(np.triu(np.outer(start, end)), max_answer_len - 1)  # [S, S]
        flat = grid.flatten()
        best = np.argsort(-flat, kind="stable")[:PRE_TOP_K]
        starts, ends = np.unravel_index(best, grid.shape)
        encoding = encoded.encodings[window]
        for s, e in zip(starts, ends):
            if not (allowed[s] and allowed[e]):
                continue
            try:
                first = encoding.word_to_chars(encoding.token_to_word(s), sequence_index=1)[0]
                last = encoding.word_to_chars(encoding.token_to_word(e), sequence_index=1)[1]
            except Exception:  # noqa: BLE001 — the pipeline's fallback: no word (the [CLS] token)
                first, last = encoding.offsets[s][0], encoding.offsets[e][1]
            text = context[first:last]
            same = next((a for a in answers if a["answer"].lower() == text.lower()), None)
            if same is not None:
                same["score"] += float(grid[s, e])
            else:
                answers.append({"score": float(grid[s, e]), "start": int(first), "end": int(last), "answer": text})
    if allow_impossible:
        answers.append({"score": min_null, "start": 0, "end": 0, "answer": ""})
    return sorted(answers, key=lambda a: a["score"], reverse=True)[0]


def reference_choice(folder, artifact: PrefixArtifact, text: str, choices: list[str]) -> list[float]:
    """BertPrefixForMultipleChoice in eval mode: each pair's logit, softmaxed over the item."""
    _, tokenizer = _model(str(folder))
    logits = []
    for choice in choices:
        enc = tokenizer(text, choice, truncation=True)
        out = _hidden(folder, artifact, enc["input_ids"], enc.get("token_type_ids"))
        if artifact.pooler_weight is not None:
            first = out.last_hidden_state[0, 0]
            pooled = torch.tanh(first @ artifact.pooler_weight.float().T + artifact.pooler_bias.float())
        else:
            pooled = out.pooler_output[0]
        logits.append(pooled @ artifact.classifier_weight.float()[0] + artifact.classifier_bias.float()[0])
    return torch.stack(logits).softmax(0).tolist()


def folder_of(engine) -> Path:
    return Path(engine.files.folder)
