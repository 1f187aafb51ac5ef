"""Training tests run single-threaded: their matrices are tiny, so a second intra-op thread only adds
synchronisation, and on a shared 2-core machine an oversubscribed thread pool is many times slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
