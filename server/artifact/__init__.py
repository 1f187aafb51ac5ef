"""The prefix artifact: format, validation and (de)serialisation. No dependency on the engine."""

from server.artifact.heads import HEAD_RULES, HeadRule
from server.artifact.prefix import (
    FAMILIES,
    BackboneShape,
    HeadKind,
    PrefixArtifact,
    ProblemType,
    artifact_to_bytes,
    read_artifact,
    read_artifact_file,
    read_head,
    write_artifact,
)
from server.artifact.safetensors_header import ArtifactError

__all__ = [
    "FAMILIES",
    "HEAD_RULES",
    "ArtifactError",
    "BackboneShape",
    "HeadKind",
    "HeadRule",
    "PrefixArtifact",
    "ProblemType",
    "artifact_to_bytes",
    "read_artifact",
    "read_artifact_file",
    "read_head",
    "write_artifact",
]
