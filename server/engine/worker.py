"""The engine process's main loop: owns the Engine (model, prefix pool, loaded prefixes) and serves
the server's requests one at a time over a pipe (wire.py), for EngineProcess (process.py).

Started as `python -m server.engine.worker FD CONFIG` with one end of a socket pair as FD.
The loop is single-threaded on purpose: a forward pass is the only Python running here, so it never
waits on a GIL held by the HTTP layer. It exits when the server goes away (the pipe closes), so a
killed server never leaves an engine behind holding memory or a GPU.
"""

from __future__ import annotations

import logging
import os
import signal
import traceback

log = logging.getLogger("server.engine.worker")


def run_worker(conn, config: dict) -> None:
    """Entry point of the child process. `config`: backbone, device, dtype, merge_pairs, attention, torch_threads."""
    import dataclasses

    import numpy as np
    import torch

    from server.artifact import read_artifact
    from server.engine import wire
    from server.engine.backbone import DTYPES
    from server.engine.engine import Engine, Row
    from server.engine.scoring import ScoreFunction
    from server.heap import freeze_heap

    logging.basicConfig(level=config.get("log_level", "WARNING"), format="%(asctime)s %(levelname)s engine: %(message)s")
    if config.get("log_json"):
        from server.logs import JsonFormatter

        logging.getLogger().handlers[0].setFormatter(JsonFormatter())
    # A supervisor that signals the whole group (systemd, a terminal's Ctrl-C) must not kill the engine
    # under requests in flight: the server drains first, then closes the pipe, and this loop ends.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        if config.get("torch_threads"):
            torch.set_num_threads(config["torch_threads"])
        dtype = DTYPES[config.get("dtype", "float32")]
        engine = Engine.from_folder(config["backbone"], config.get("device", "cpu"), dtype, config.get("merge_pairs"),
                                    attention=config.get("attention", "auto"))
        shape = engine.shape
        freeze_heap()  # what is alive now lives as long as the process
        conn.send_bytes(wire.encode_header({
            "op": "ready", "pid": os.getpid(), "info": engine.info(), "merge_pairs": engine.merge_pairs,
            "torch_threads": torch.get_num_threads(),
            "shape": dataclasses.asdict(shape),
        }))
    except Exception as exc:  # noqa: BLE001 — a start-up failure goes back to the parent, which reports it
        conn.send_bytes(wire.encode_header({"op": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return
    prefixes: dict[int, object] = {}  # handle -> LoadedPrefix

    def rows_of(payload: bytes) -> list[Row]:
        return [
            Row(encoded, prefixes[handle] if handle != wire.NO_PREFIX else None, ScoreFunction(function))
            for encoded, handle, function in wire.decode_batch(payload)
        ]

    while True:
        try:
            header = wire.decode_header(conn.recv_bytes())
            payload = conn.recv_bytes() if header.get("payload") else None
        except (EOFError, OSError):
            return  # the server is gone
        for handle in header.get("release", ()):
            prefixes.pop(handle, None)  # its pool slots go back once no batch holds it
        op, reply, out = header["op"], {"id": header.get("id"), "ok": True}, None
        try:
            if op == "load":
                prefixes[header["handle"]] = engine.load_prefix(read_artifact(payload, shape))
                reply["nbytes"] = prefixes[header["handle"]].nbytes
            elif op == "score":
                scores, tokens = engine.score_matrices(rows_of(payload))
                tokens = tokens.numpy() if tokens is not None else np.zeros((0, 1), dtype=np.float32)
                out = wire.encode_matrices(scores.numpy(), tokens)
            elif op == "pooled":
                out = wire.encode_matrix(engine.pooled(rows_of(payload)).float().cpu().numpy())
            elif op == "stats":
                reply["resident_prefixes"] = len(prefixes)
                reply["pool_slots"] = [engine.prefix_pool.used_slots, engine.prefix_pool.capacity]
            elif op == "stop":
                conn.send_bytes(wire.encode_header(reply))
                return
            else:
                raise ValueError(f"unknown engine op {op!r}")
        except Exception as exc:  # noqa: BLE001 — the op's failure goes back to its caller; the process serves on
            log.error("engine op %s failed: %s", op, traceback.format_exc())
            reply = {"id": header.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}
            out = None
        reply["payload"] = out is not None
        try:
            conn.send_bytes(wire.encode_header(reply))
            if out is not None:
                conn.send_bytes(out)
        except OSError:
            return  # the server went away during this op


if __name__ == "__main__":  # python -m server.engine.worker FD CONFIG_JSON (started by EngineProcess)
    import json
    import sys
    from multiprocessing.connection import Connection

    run_worker(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))
