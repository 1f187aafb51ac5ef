"""The RoBERTa family and token heads against transformers' own models given the prefix as past
key/values (tests/helpers.reference_scores), float32 to 1e-5: sentence tasks on the backbone's pooler
and on an artifact's own, text pairs as RoBERTa's tokenizer encodes them, truncation at the family's
limit, token tasks of both families, and mixed batches of every kind where each row equals itself alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.random_backbone import write_random_roberta_backbone
from server.artifact import ArtifactError, HeadKind, ProblemType, artifact_to_bytes, read_artifact
from server.engine import Engine
from server.engine.backbone import read_backbone_folder
from tests.helpers import Loaded, load_task, make_artifact, reference_scores, score_rows

TOL = 1e-5
LONG = "the quick brown fox jumps over the lazy dog " * 20
TEXTS = [
    "a gorgeous, witty, seductive movie.",
    ("A man is playing a guitar.", "Someone plays an instrument."),
    LONG,
    ("What is the capital of France?", LONG),
    "George Washington went to New York.",
]


@pytest.fixture(scope="module")
def roberta_dir(tmp_path_factory):
    return write_random_roberta_backbone(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="module")
def roberta_no_pooler_dir(tmp_path_factory):
    return write_random_roberta_backbone(tmp_path_factory.mktemp("tiny-roberta-np"), with_pooler=False, seed=1)


@pytest.fixture(scope="module")
def roberta_engine(roberta_dir):
    return Engine.from_folder(roberta_dir)


@pytest.fixture(scope="module")
def roberta_no_pooler_engine(roberta_no_pooler_dir):
    return Engine.from_folder(roberta_no_pooler_dir)


def close(got, expected) -> bool:
    return torch.allclose(torch.tensor(got), torch.tensor(expected), atol=TOL, rtol=0)


def check(engine, folder, artifact, texts=TEXTS):
    handle = engine.load(artifact)
    rows = [(engine.encode([t], artifact.prefix_len)[0], handle) for t in texts]
    for text, got in zip(texts, engine.score_encoded(rows)):
        assert close(got, reference_scores(folder, artifact, text)), text


# --- RoBERTa: the family's rules -----------------------------------------------------------------


def test_roberta_folder_reads_as_the_roberta_family(roberta_dir, roberta_engine):
    files = read_backbone_folder(roberta_dir)
    assert files.geometry.family_name == "roberta" and files.geometry.position_offset == 2
    assert files.geometry.layer_norm_eps == 1e-5
    shape = roberta_engine.shape
    assert (shape.family, shape.position_offset, shape.max_prefix_len) == ("roberta", 2, 66 - 2 - 2)
    assert roberta_engine.info()["family"] == "roberta"


def test_pairs_are_encoded_as_roberta_does_with_one_token_type(roberta_engine):
    tokenizer = roberta_engine.encoder.tokenizer
    encoded = roberta_engine.encode([("a man", "a guitar")], 4)[0]
    tokens = tokenizer.convert_ids_to_tokens(encoded.input_ids)
    assert tokens[0] == "<s>" and tokens[-1] == "</s>" and tokens.count("</s>") == 3
    assert tokens[tokens.index("</s>") + 1] == "</s>"  # <s> A </s></s> B </s>
    assert set(encoded.token_type_ids) == {0}


@pytest.mark.parametrize("prefix_len", [1, 7, 30])
def test_truncation_at_the_family_limit(roberta_engine, roberta_dir, prefix_len):
    limit = 66 - 1 - 1 - prefix_len  # max_position_embeddings - padding_idx - 1 - P
    assert roberta_engine.shape.max_tokens(prefix_len) == limit
    for text in (LONG, ("short question?", LONG), (LONG, LONG)):
        encoded = roberta_engine.encode([text], prefix_len)[0]
        assert len(encoded) == limit and encoded.truncated
    check(roberta_engine, roberta_dir, make_artifact(roberta_engine.shape, prefix_len, 3, seed=prefix_len), [LONG, ("q?", LONG)])


@pytest.mark.parametrize("kind", list(ProblemType))
@pytest.mark.parametrize("prefix_len", [1, 16])
def test_sentence_tasks_on_the_backbone_pooler(roberta_engine, roberta_dir, kind, prefix_len):
    check(roberta_engine, roberta_dir, make_artifact(roberta_engine.shape, prefix_len, 3, kind, seed=3))


@pytest.mark.parametrize("engine_name", ["roberta", "roberta_no_pooler"])
def test_sentence_tasks_on_the_artifacts_own_pooler(engine_name, request):
    engine = request.getfixturevalue(f"{engine_name}_engine")
    folder = request.getfixturevalue(f"{engine_name}_dir")
    check(engine, folder, make_artifact(engine.shape, 5, 4, seed=9, own_pooler=True))


def test_a_backbone_without_pooler_refuses_a_task_without_its_own(roberta_no_pooler_engine):
    with pytest.raises(ArtifactError, match=r"expected .pooler\.weight. and .pooler\.bias."):
        roberta_no_pooler_engine.load(make_artifact(roberta_no_pooler_engine.shape, 4, 2))


def test_an_artifact_for_another_family_is_refused(roberta_engine, tiny_engine):
    bert_task = dataclasses.replace(make_artifact(tiny_engine.shape, 4, 2), backbone_family="bert")
    with pytest.raises(ArtifactError, match="expected this server's 'roberta', got 'bert'"):
        read_artifact(artifact_to_bytes(bert_task), roberta_engine.shape)


def test_checkpoint_names_with_the_roberta_prefix_load_to_the_same_weights(roberta_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    for name in roberta_dir.iterdir():
        shutil.copy(name, tmp_path / name.name)
    weights = load_file(str(roberta_dir / "model.safetensors"))
    save_file({f"roberta.{k}": v for k, v in weights.items()} | {"lm_head.bias": torch.zeros(3)}, str(tmp_path / "model.safetensors"))
    assert read_backbone_folder(tmp_path).fingerprint == read_backbone_folder(roberta_dir).fingerprint


# --- token heads, both families --------------------------------------------------------------------

IOB = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")


@pytest.mark.parametrize("family", ["tiny", "roberta"])
@pytest.mark.parametrize("prefix_len", [1, 12])
def test_token_tasks_match_the_reference(family, prefix_len, request):
    engine = request.getfixturevalue(f"{family}_engine")
    folder = request.getfixturevalue("tiny_backbone_dir" if family == "tiny" else "roberta_dir")
    task = make_artifact(engine.shape, prefix_len, len(IOB), seed=21, head=HeadKind.TOKEN, labels=IOB)
    handle = engine.load(task)
    for text in ["George Washington went to New York.", LONG]:
        encoded = engine.encode([text], prefix_len)[0]
        got = engine.score_encoded([(encoded, handle)])[0]
        assert len(got) == len(encoded) and all(len(t) == len(IOB) for t in got)
        assert close(got, reference_scores(folder, task, text)), text


def _all_kinds(engine):
    shape = engine.shape
    return [
        make_artifact(shape, 3, 2, ProblemType.SINGLE_LABEL, seed=31),
        make_artifact(shape, 9, len(IOB), seed=32, head=HeadKind.TOKEN, labels=IOB),
        make_artifact(shape, 1, 4, ProblemType.MULTI_LABEL, seed=33, own_pooler=True),
        make_artifact(shape, 20, 3, seed=34, head=HeadKind.TOKEN),
        make_artifact(shape, 6, 1, ProblemType.REGRESSION, seed=35),
    ]


@pytest.mark.parametrize("family", ["tiny", "roberta"])
def test_mixed_batch_of_every_kind_matches_alone_and_the_reference(family, request):
    engine = request.getfixturevalue(f"{family}_engine")
    folder = request.getfixturevalue("tiny_backbone_dir" if family == "tiny" else "roberta_dir")
    tasks = _all_kinds(engine)
    handles = [engine.load(t) for t in tasks]
    rows, cases = [], []
    for i, text in enumerate(TEXTS * 2):
        task, handle = tasks[i % len(tasks)], handles[i % len(tasks)]
        if task.head is HeadKind.TOKEN and not isinstance(text, str):
            text = text[0]  # token tasks take single texts (pairs are refused at the API)
        rows.append((engine.encode([text], task.prefix_len)[0], handle))
        cases.append((task, text))
    batched = engine.score_encoded(rows)
    for row, (task, text), in_batch in zip(rows, cases, batched):
        alone = engine.score_encoded([row])[0]
        assert close(in_batch, alone), (task.head, text)
        assert close(in_batch, reference_scores(folder, task, text)), (task.head, text)


def test_engine_process_returns_token_scores_as_in_process(tiny_backbone_dir, tiny_engine):
    from server.engine import EngineProcess

    process = EngineProcess(str(tiny_backbone_dir))
    try:
        tasks = _all_kinds(tiny_engine)
        local = [load_task(tiny_engine, t) for t in tasks]
        remote = [load_task(process, t) for t in tasks]
        assert remote == [Loaded(r.handle, here.facts) for r, here in zip(remote, local)]  # the same facts, from its own parse
        texts = [t if isinstance(t, str) else t[0] for t in TEXTS]
        encoded = [tiny_engine.encode([x], t.prefix_len)[0] for x, t in zip(texts, tasks)]
        assert score_rows(process, list(zip(encoded, remote))) == score_rows(tiny_engine, list(zip(encoded, local)))
    finally:
        process.close()


def test_upload_to_a_backbone_without_pooler_needs_the_artifacts_own(roberta_no_pooler_engine):
    shape = roberta_no_pooler_engine.shape
    assert shape.pooler is False
    with pytest.raises(ArtifactError, match="this server's backbone has no pooler"):
        read_artifact(artifact_to_bytes(make_artifact(shape, 4, 2)), shape)
    assert read_artifact(artifact_to_bytes(make_artifact(shape, 4, 2, own_pooler=True)), shape).pooler_weight is not None
    token = make_artifact(shape, 4, 3, head=HeadKind.TOKEN)
    assert read_artifact(artifact_to_bytes(token), shape).head is HeadKind.TOKEN
