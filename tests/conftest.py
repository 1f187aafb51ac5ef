from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.random_backbone import write_random_backbone
from server.engine import Engine
from server.engine.backbone import default_backbone_dir

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory) -> Path:
    return write_random_backbone(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_backbone_dir) -> Engine:
    torch.manual_seed(0)
    return Engine.from_folder(tiny_backbone_dir)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    return default_backbone_dir()


@pytest.fixture(scope="session")
def minilm_engine(minilm_dir) -> Engine:
    return Engine.from_folder(minilm_dir)
