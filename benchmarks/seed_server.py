"""The seed's way over HTTP, for the benchmark only: a minimal FastAPI app serving POST /v1/classify
(the same request and response shape as prefix-server) with transformers' BertModel + DynamicCache,
one request at a time under a lock (benchmarks.seed_model).

Tasks are the `.safetensors` artifacts of a folder, addressed by file stem; they are read on first use
and kept. There is no authentication: the Authorization header is ignored. Run it as
`python -m benchmarks.seed_server --port P --backbone DIR --tasks-dir DIR`.
"""

from __future__ import annotations

import argparse
import threading
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from benchmarks.seed_model import SeedModel
from server.api.schemas import ClassifyRequest
from server.artifact import BackboneShape, PrefixArtifact, read_artifact_file


def create_seed_app(backbone: str, tasks_dir: str) -> FastAPI:
    model = SeedModel(backbone)
    config = model.model.config
    shape = BackboneShape(
        config.num_hidden_layers, config.num_attention_heads, config.hidden_size // config.num_attention_heads,
        config.max_position_embeddings, fingerprint="",
    )
    artifacts: dict[str, PrefixArtifact] = {}
    load_lock = threading.Lock()
    app = FastAPI(title="seed baseline")

    def artifact_for(task: str) -> PrefixArtifact | None:
        with load_lock:
            if task not in artifacts:
                path = Path(tasks_dir) / f"{task}.safetensors"
                if not path.is_file():
                    return None
                artifacts[task] = read_artifact_file(path, shape)
            return artifacts[task]

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    @app.post("/v1/classify")
    def classify(body: ClassifyRequest):  # a plain def: FastAPI runs it on its thread pool
        artifact = artifact_for(body.task)
        if artifact is None:
            return JSONResponse({"error": {"code": "not_found", "message": f"unknown task {body.task!r}"}}, 404)
        inputs = [i if isinstance(i, str) else (i.text if i.text_pair is None else (i.text, i.text_pair)) for i in body.inputs]
        with model.lock:
            scores = model.classify(artifact, inputs)
        results = []
        for values in scores:
            top = max(range(len(values)), key=values.__getitem__)
            results.append({"scores": dict(zip(artifact.labels, values)), "label": artifact.labels[top], "score": values[top]})
        return {"task": body.task, "version": 1, "results": results}

    return app


def main(argv: list[str] | None = None) -> None:
    import torch
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--tasks-dir", required=True)
    parser.add_argument("--torch-threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    uvicorn.run(create_seed_app(args.backbone, args.tasks_dir), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
