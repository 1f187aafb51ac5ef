"""Span and choice tasks against their references (tests/reference_heads.py): the question-answering
pipeline of transformers 4.x on transformers' own model given the prefix as past key/values, and
BertPrefixForMultipleChoice; both families, one-window and many-window contexts, the serving path
(inputs.expand -> engine.score -> each input's finish) as the batcher runs it."""

from __future__ import annotations

import pytest

from harness.random_backbone import write_random_roberta_backbone
from server.artifact import HeadKind
from server.batching.inputs import ChoiceInput, QuestionInput, assemble, expand
from server.decoding import SpanOptions
from server.engine import Engine
from tests.helpers import load_task, make_artifact, score_rows
from tests.reference_heads import folder_of, reference_answer, reference_choice

SCORE_TOL = 1e-4
BERT_CONTEXT = (
    "George Washington went to New York with John Smith of Acme Corp. The quick brown fox jumps over the lazy dog, "
    "and a gorgeous, witty, seductive movie played in Paris, the capital of France, in 1999. "
)
ROBERTA_CONTEXT = (
    "the quick brown fox jumps over the lazy dog. George Washington went to Washington with John Smith of Acme Corp "
    "in New York. What is the capital of France? Paris is. "
)
QUESTIONS = ["Who went to New York?", "  What is the capital of France?", "what jumps over the dog"]


@pytest.fixture(scope="module")
def roberta_engine(tmp_path_factory):
    return Engine.from_folder(write_random_roberta_backbone(tmp_path_factory.mktemp("tiny-roberta-qa")))


def serve(engine, artifact, inputs, head, options=None):
    """Each input's result as the batcher computes it: its rows scored in one batch, then finished."""
    options = options or SpanOptions()
    task = load_task(engine, artifact)
    fit = engine.shape.max_tokens(artifact.prefix_len)
    planned = expand(inputs, head, engine.encoder, fit, True, options)
    rows = [(encoded, task) for plan in planned for encoded in plan.rows]
    return assemble(planned, score_rows(engine, rows)), [len(plan.rows) for plan in planned]


def span_artifact(engine, seed=0, prefix_len=4):
    return make_artifact(engine.shape, prefix_len=prefix_len, num_labels=2, head=HeadKind.SPAN, seed=seed, labels=("start", "end"))


def assert_same(got, expected):
    assert (got.answer, got.start, got.end) == (expected["answer"], expected["start"], expected["end"]), (got, expected)
    assert abs(got.score - expected["score"]) <= SCORE_TOL, (got, expected)


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize(
    "options",
    [SpanOptions(), SpanOptions(max_seq_len=40, doc_stride=12), SpanOptions(max_seq_len=32, doc_stride=8, max_answer_len=3),
     SpanOptions(max_seq_len=40, doc_stride=16, allow_impossible=True)],
    ids=["one-window", "windows", "short-answers", "impossible"],
)
def test_span_answers_equal_the_pipeline(family, options, tiny_engine, roberta_engine):
    engine = tiny_engine if family == "bert" else roberta_engine
    context = (BERT_CONTEXT if family == "bert" else ROBERTA_CONTEXT) * (1 if options.max_seq_len is None else 3)
    for seed in (0, 1):
        artifact = span_artifact(engine, seed)
        inputs = [QuestionInput(q, context) for q in QUESTIONS]
        answers, windows = serve(engine, artifact, inputs, HeadKind.SPAN, options)
        max_seq_len, stride = options.window(engine.shape.max_tokens(artifact.prefix_len))
        for question, got, count in zip(QUESTIONS, answers, windows):
            expected = reference_answer(
                folder_of(engine), artifact, question, context, max_seq_len=max_seq_len, doc_stride=stride,
                max_answer_len=options.max_answer_len, allow_impossible=options.allow_impossible,
            )
            assert_same(got, expected)
            if options.max_seq_len is not None:
                assert count > 2, "a many-window case must have many windows"


@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("own_pooler", [False, True])
def test_choice_scores_equal_the_reference(family, own_pooler, tiny_engine, roberta_engine):
    engine = tiny_engine if family == "bert" else roberta_engine
    artifact = make_artifact(engine.shape, num_labels=1, head=HeadKind.CHOICE, labels=("choice",), own_pooler=own_pooler, seed=3)
    items = [
        ChoiceInput("the quick brown fox jumps over", ("the lazy dog.", "a gorgeous movie.", "New York")),
        ChoiceInput("What is the capital of France?", ("Paris is.", "George Washington")),
    ]
    results, rows = serve(engine, artifact, items, HeadKind.CHOICE)
    assert rows == [3, 2]
    for item, got in zip(items, results):
        expected = reference_choice(folder_of(engine), artifact, item.text, list(item.choices))
        assert got.scores == pytest.approx(expected, abs=1e-5)
        assert got.choice == max(range(len(expected)), key=expected.__getitem__) and got.score == pytest.approx(max(expected), abs=1e-5)


PARAGRAPH = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
    "their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through generations of "
    "assimilation and mixing with the native Frankish and Roman-Gaulish populations, their descendants would "
    "gradually merge with the Carolingian-based cultures of West Francia. The distinct cultural and ethnic "
    "identity of the Normans emerged initially in the first half of the 10th century, and it continued to "
    "evolve over the succeeding centuries. "
)
MINILM_CASES = [
    ("In what country is Normandy located?", PARAGRAPH),
    ("Who was the Norse leader?", PARAGRAPH),
    ("When did the Normans' identity emerge?", PARAGRAPH * 4),  # past 384 tokens: windows of the default size
]


@pytest.mark.minilm
def test_span_answers_equal_the_pipeline_on_minilm(minilm_engine):
    """A real backbone and its tokenizer on real text, with the default max_seq_len and doc_stride."""
    artifact = span_artifact(minilm_engine, seed=5, prefix_len=8)
    answers, windows = serve(minilm_engine, artifact, [QuestionInput(q, c) for q, c in MINILM_CASES], HeadKind.SPAN)
    assert windows == [1, 1, 2]
    for (question, context), got in zip(MINILM_CASES, answers):
        assert_same(got, reference_answer(folder_of(minilm_engine), artifact, question, context))
