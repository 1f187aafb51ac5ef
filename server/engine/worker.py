"""The engine process's main loop: owns the Engine (model, prefix pool, loaded prefixes) and serves
the server's requests one at a time over a pipe (wire.py), for EngineProcess (process.py). On CUDA
it keeps one batch in flight: the next batch, when the server has sent it already, is packed and
launched before the scores of the one running are collected (_Ops).

Started as `python -m server.engine.worker FD CONFIG` with one end of a socket pair as FD.
The loop is single-threaded on purpose: a forward pass is the only Python running here, so it never
waits on a GIL held by the HTTP layer. It exits when the server goes away (the pipe closes), so a
killed server never leaves an engine behind holding memory or a GPU.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import traceback

import torch

from server.engine import wire
from server.engine.backbone import DTYPES
from server.engine.engine import Engine, PendingScores
from server.heap import freeze_heap

log = logging.getLogger("server.engine.worker")


def run_worker(conn, config: dict) -> None:
    """Entry point of the child process. `config`: backbone, device, dtype, merge_pairs, attention,
    torch_threads, and `pipeline` (default: on where the engine launches asynchronously, i.e. CUDA)."""
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
        ops = _Ops(conn, engine, pipeline=config.get("pipeline", engine.launches_async))
        ready = {
            "op": "ready", "pid": os.getpid(), "info": engine.info(), "merge_pairs": engine.merge_pairs,
            "torch_threads": torch.get_num_threads(), "shape": dataclasses.asdict(engine.shape),
            "batches_in_flight": 2 if ops.pipeline else 1,
        }
        freeze_heap()  # what is alive now lives as long as the process
    except Exception as exc:  # noqa: BLE001 — a start-up failure goes back to the parent, which reports it
        conn.send_bytes(wire.encode_header({"op": "failed", "error": f"{type(exc).__name__}: {exc}"}))
        return
    conn.send_bytes(wire.encode_header(ready))
    ops.serve()


class _Ops:
    """Serves the server's ops one at a time, in order of arrival. A batch is launched, then its
    scores collected at once, except when `pipeline` is on (CUDA): then they are collected only once
    the next batch that was already waiting has been launched, so the device runs batch n while the
    host packs batch n+1."""

    def __init__(self, conn, engine: Engine, pipeline: bool):
        self.conn, self.engine, self.pipeline = conn, engine, pipeline
        self.in_flight: tuple[dict, PendingScores] | None = None  # (reply, PendingScores) of the launched batch

    def serve(self) -> None:
        while True:
            if self.in_flight is not None and not self.conn.poll():
                self.finish()  # nothing waits behind the batch in flight: its caller should not either
            try:
                header = wire.decode_header(self.conn.recv_bytes())
                payload = self.conn.recv_bytes() if header.get("payload") else None
            except (EOFError, OSError):
                return  # the server is gone
            self.engine.tasks.release(header.get("release", ()))  # pool slots go back once no batch holds them
            reply = {"id": header.get("id"), "ok": True}
            if header["op"] == "score":
                self.launch(reply, payload)
                if not self.pipeline and self.in_flight is not None:
                    self.finish()
                continue
            if self.in_flight is not None:
                self.finish()
            if not self.run(header, payload, reply):
                return

    def launch(self, reply: dict, payload: bytes) -> None:
        try:
            pending = self.engine.launch(wire.decode_batch(payload))
        except Exception as exc:  # the batch's failure goes back to its caller
            log.exception("engine op score failed")
            self.send(_failed(reply, exc))
            return  # the batch in flight stays in flight
        if self.in_flight is not None:
            self.finish()
        self.in_flight = (reply, pending)

    def finish(self) -> None:
        (reply, pending), self.in_flight = self.in_flight, None
        try:
            out = wire.encode_scores(pending.wait())
        except Exception as exc:  # as in launch
            log.exception("engine op score failed")
            self.send(_failed(reply, exc))
            return
        self.send(reply, out)

    def run(self, header: dict, payload: bytes | None, reply: dict) -> bool:
        """One op, answered; False when the loop should end."""
        op, engine, out = header["op"], self.engine, None
        try:
            if op == "load":
                reply["facts"] = _facts_json(engine.load_task(header["handle"], payload))
            elif op == "pooled":
                out = wire.encode_matrix(engine.pooled(wire.decode_batch(payload)))
            elif op == "stats":
                reply["resident_prefixes"] = len(engine.tasks)
                reply["pool_slots"] = [engine.prefix_pool.used_slots, engine.prefix_pool.capacity]
            elif op == "stop":
                self.send(reply)
                return False
            else:
                raise ValueError(f"unknown engine op {op!r}")
        except Exception as exc:  # noqa: BLE001 — the op's failure goes back to its caller; the process serves on
            log.error("engine op %s failed: %s", op, traceback.format_exc())
            reply, out = _failed(reply, exc), None
        return self.send(reply, out)

    def send(self, reply: dict, out: bytes | None = None) -> bool:
        reply["payload"] = out is not None
        try:
            self.conn.send_bytes(wire.encode_header(reply))
            if out is not None:
                self.conn.send_bytes(out)
        except OSError:
            return False  # the server went away during this op
        return True


def _failed(reply: dict, exc: Exception) -> dict:
    return {"id": reply.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"}


def _facts_json(facts) -> dict:
    return {**dataclasses.asdict(facts), "head": facts.head.value, "problem_type": facts.problem_type.value}


if __name__ == "__main__":  # python -m server.engine.worker FD CONFIG_JSON (started by EngineProcess)
    import json
    import sys
    from multiprocessing.connection import Connection

    run_worker(Connection(int(sys.argv[1])), json.loads(sys.argv[2]))
