"""The naive way to serve many LoRA adapters, as the baseline of benchmarks/lora_http.py: PEFT itself.

One `PeftModel` (transformers' sequence classifier of the backbone) holds every adapter of a folder,
each under its folder's name; requests are batched *by adapter*: the batcher takes what is waiting
(up to `--max-batch` inputs, waiting at most `--max-wait-ms` for the first batch to fill), groups it by
adapter, and for each group calls `set_adapter` and runs one padded forward of that group's texts.
`POST /v1/classify` takes `{"task", "inputs": [text, ...]}` (single texts) and answers as prefix-server
does (`results[i].scores`, `label`, `score`), with labels `label_0`, `label_1`, ...
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool


class ClassifyRequest(BaseModel):
    task: str
    inputs: list[str]


def load_model(backbone: str, adapters: Path, num_labels: int):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()

    folders = sorted(p for p in adapters.iterdir() if (p / "adapter_config.json").is_file())
    base = AutoModelForSequenceClassification.from_pretrained(backbone, num_labels=num_labels)
    model = PeftModel.from_pretrained(base, folders[0], adapter_name=folders[0].name)
    for folder in folders[1:]:
        model.load_adapter(folder, adapter_name=folder.name)
    return model.eval(), AutoTokenizer.from_pretrained(backbone), {p.name for p in folders}


def create_app(backbone: str, adapters: Path, num_labels: int, max_batch: int, max_wait_ms: float) -> FastAPI:
    model, tokenizer, names = load_model(backbone, adapters, num_labels)
    labels = [f"label_{i}" for i in range(num_labels)]
    lock = threading.Lock()
    queue: asyncio.Queue = asyncio.Queue()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = asyncio.create_task(batcher())
        yield
        task.cancel()

    app = FastAPI(title="PEFT baseline: batches by adapter", lifespan=lifespan)

    def forward(task: str, texts: list[str]) -> list[list[float]]:
        with lock, torch.inference_mode():
            model.set_adapter(task)
            encoded = tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
            return model(**encoded).logits.softmax(-1).tolist()

    async def batcher():
        loop = asyncio.get_running_loop()
        while True:
            waiting = [await queue.get()]
            deadline = loop.time() + max_wait_ms / 1000
            while len(waiting) < max_batch:
                if not queue.empty():
                    waiting.append(queue.get_nowait())
                    continue
                try:
                    waiting.append(await asyncio.wait_for(queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            groups: dict[str, list] = {}
            for item in waiting:
                groups.setdefault(item[0], []).append(item)
            for task, items in groups.items():  # one adapter per forward: the naive way
                try:
                    scores = await run_in_threadpool(forward, task, [text for _, text, _ in items])
                except Exception as exc:  # noqa: BLE001 — a benchmark baseline: hand any failure to the requests
                    for _, _, future in items:
                        future.set_exception(exc)
                    continue
                for (_, _, future), values in zip(items, scores):
                    future.set_result(values)

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    @app.post("/v1/classify")
    async def classify(body: ClassifyRequest):
        if body.task not in names:
            return {"error": {"code": "not_found", "message": f"unknown task {body.task!r}"}}
        futures = []
        for text in body.inputs:
            future = asyncio.get_running_loop().create_future()
            queue.put_nowait((body.task, text, future))
            futures.append(future)
        results = []
        for values in await asyncio.gather(*futures):
            top = max(range(len(values)), key=values.__getitem__)
            results.append({"scores": dict(zip(labels, values)), "label": labels[top], "score": values[top]})
        return {"task": body.task, "results": results}

    return app


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--adapters", type=Path, required=True, help="a folder of PEFT adapter folders (save_pretrained)")
    parser.add_argument("--num-labels", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    parser.add_argument("--torch-threads", type=int, default=0)
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    app = create_app(args.backbone, args.adapters, args.num_labels, args.max_batch, args.max_wait_ms)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
