"""The test and benchmark harness: what the tests, the benchmarks and scripts/ share to run real
processes. Not part of the product: the wheel leaves it out (pyproject's `include = ["server*"]`),
and nothing under server/ imports it.

- `harness.processes`: free ports, polling with a deadline (`wait_until`, which names what it waited
  for when it times out), a process's children, and `ServeProcess`: starting a real
  `prefix-server serve`, waiting until /readyz answers 200, stopping or SIGKILLing it (its engine too);
- `harness.postgres`, `harness.s3`: a PostgreSQL server and a moto S3 server as processes of their own;
- `harness.replicas`: `serve` replicas on one PostgreSQL database and one S3 bucket;
- `harness.nginx`: nginx running deploy/affinity/nginx.conf (or its round-robin twin) in front of replicas;
- `harness.random_backbone`: BERT and RoBERTa folders with random weights (the tests' tiny backbones);
- `harness.cuda_checks`: the checks of the GPU path that tests/engine/test_cuda.py and
  scripts/gpu_check.py both run (torch, transformers and the engine only: the device machine has no more).

This file imports nothing, so `import harness.cuda_checks` costs no more than that module.
"""
