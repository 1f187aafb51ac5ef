"""The inference engine: backbone loading (BERT and RoBERTa families), the prefix-aware encoder,
tokenization, task heads and scoring; `EngineSurface` (surface.py) is what the serving side may call.

Never imports the API or batching layers."""

from server.engine.backbone import BackboneError, BackboneFiles, BertGeometry, read_backbone_folder
from server.engine.engine import Engine, LoadedPrefix, Row, ScoreFunction
from server.engine.process import EngineProcess, EngineStartFailed, EngineUnavailable, RemotePrefix
from server.engine.surface import EngineSurface
from server.engine.tokenize import EncodedInput, InputRefused, InputTooLong, TextEncoder, TextInput

__all__ = [
    "BackboneError",
    "BackboneFiles",
    "BertGeometry",
    "EncodedInput",
    "Engine",
    "EngineProcess",
    "EngineStartFailed",
    "EngineSurface",
    "EngineUnavailable",
    "InputRefused",
    "InputTooLong",
    "LoadedPrefix",
    "RemotePrefix",
    "Row",
    "ScoreFunction",
    "TextEncoder",
    "TextInput",
    "read_backbone_folder",
]
