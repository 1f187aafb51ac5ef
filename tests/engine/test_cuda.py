"""The GPU path on a GPU (`pytest -m cuda`; skipped without one): parity with transformers BertModel +
DynamicCache (float32 within 1e-5 with TF32 off; float16 within 1e-2 and bfloat16 within 3e-2 of the
float32 reference, equal labels), a row batched equals the row alone, the attention paths agree.
The checks live in harness/cuda_checks.py, which scripts/gpu_check.py also runs on the device machine."""

from __future__ import annotations

import pytest
import torch

from harness import cuda_checks

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return cuda_checks.write_bert(tmp_path_factory.mktemp("cuda-bert"))


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("attention", ["triton", "varlen", "sdpa"])
def test_parity_with_transformers_and_alone(bert_dir, dtype, attention):
    if attention not in cuda_checks.available_paths("cuda", dtype):
        pytest.skip(f"{attention} does not run {dtype} here")
    cuda_checks.check_parity(bert_dir, "cuda", dtype, attention)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"])
def test_attention_paths_agree(bert_dir, dtype):
    cuda_checks.check_paths_agree(bert_dir, "cuda", dtype, cuda_checks.available_paths("cuda", dtype))

