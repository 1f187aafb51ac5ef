"""The inference engine: backbone loading (BERT and RoBERTa families), the prefix-aware encoder,
tokenization, task heads and scoring; `EngineSurface` (surface.py) is what the serving side may call,
with array batches (batch.py).

Never imports the API or batching layers."""

from server.engine.backbone import BackboneError, BackboneFiles, BertGeometry, read_backbone_folder
from server.engine.batch import NO_TASK, BatchScores, TokenBatch
from server.engine.engine import Engine
from server.engine.process import EngineProcess, EngineStartFailed, EngineUnavailable
from server.engine.scoring import ScoreFunction
from server.engine.surface import EngineSurface, TaskFacts
from server.engine.tokenize import EncodedInput, InputRefused, InputTooLong, TextEncoder, TextInput

__all__ = [
    "NO_TASK",
    "BackboneError",
    "BackboneFiles",
    "BatchScores",
    "BertGeometry",
    "EncodedInput",
    "Engine",
    "EngineProcess",
    "EngineStartFailed",
    "EngineSurface",
    "EngineUnavailable",
    "InputRefused",
    "InputTooLong",
    "ScoreFunction",
    "TaskFacts",
    "TextEncoder",
    "TextInput",
    "TokenBatch",
    "read_backbone_folder",
]
