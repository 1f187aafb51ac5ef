"""The inference engine: backbone loading, the prefix-aware BERT, tokenization and scoring.

Never imports the API or batching layers."""

from server.engine.backbone import BackboneError, BackboneFiles, BertGeometry, read_backbone_folder
from server.engine.engine import Engine, LoadedPrefix, Row, ScoreFunction
from server.engine.process import EngineProcess, EngineUnavailable, RemotePrefix
from server.engine.tokenize import EncodedInput, InputRefused, InputTooLong, TextEncoder, TextInput

__all__ = [
    "BackboneError",
    "BackboneFiles",
    "BertGeometry",
    "EncodedInput",
    "Engine",
    "EngineProcess",
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
