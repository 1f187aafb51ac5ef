"""Debian's nginx running deploy/affinity/nginx.conf as shipped (only the replicas' addresses and its port
filled in) from a folder of its own, for tests/replicas/test_affinity.py and benchmarks/affinity.py.

Owns writing that config (the shipped consistent-hash upstream, or the same file with its `hash` line
removed: nginx's round-robin, the baseline), starting nginx in the foreground and stopping it, and
reading its access log, which records for every request the task key nginx hashed on and the replicas
it went to (`$upstream_addr`, the same value as the X-Served-By header).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.processes import answers_ready, stop_process, wait_until

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "deploy" / "affinity" / "nginx.conf"
START_TIMEOUT_S = 60.0
# One line a request: the task key the upstream hashes on | the replicas tried, in order | the status.
ACCESS_LOG_FORMAT = "$prefix_server_task_key|$upstream_addr|$status"


@dataclass(frozen=True)
class Routed:
    """One request as nginx's access log has it: its task key, the replica that answered it (the last
    one tried, after a retry) and the status."""

    task: str
    replica: str
    status: int


def round_robin(shipped: str) -> str:
    """The shipped config without its `hash` line: the same upstream balanced round-robin."""
    balanced, removed = re.subn(r"(?m)^\s*hash \$prefix_server_task_key consistent;\n", "", shipped)
    if removed != 1:
        raise ValueError(f"expected one `hash ... consistent;` line in {SHIPPED}, found {removed}")
    return balanced


def affinity_config(folder: Path, replica_ports: list[int], port: int, hashing: bool = True) -> Path:
    """The shipped file with these addresses (round-robin when not `hashing`), inside the smallest main
    config nginx runs from a folder of its own (no root paths, in the foreground); returns the main file."""
    shipped = SHIPPED.read_text() if hashing else round_robin(SHIPPED.read_text())
    servers = re.findall(r"server replica-[a-z]:8000", shipped)
    if len(servers) != len(replica_ports):
        raise ValueError(f"the shipped upstream lists {servers}, expected {len(replica_ports)} servers")
    for placeholder, replica_port in zip(servers, replica_ports):
        shipped = shipped.replace(placeholder, f"server 127.0.0.1:{replica_port}", 1)
    if "listen 8080;" not in shipped:
        raise ValueError(f"expected `listen 8080;` in {SHIPPED}")
    (folder / "affinity.conf").write_text(shipped.replace("listen 8080;", f"listen 127.0.0.1:{port};"))
    temp = "".join(f"{kind}_temp_path {folder}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    main = folder / "nginx.conf"
    main.write_text(
        f"daemon off;\nworker_processes 1;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log;\n"
        f"events {{ worker_connections 256; }}\n"
        f"http {{\n log_format affinity '{ACCESS_LOG_FORMAT}';\n access_log {folder}/access.log affinity;\n"
        f"{temp} include {folder}/affinity.conf;\n}}\n"
    )
    return main


class Nginx:
    """nginx on 127.0.0.1:`port` in front of the replicas on `replica_ports`, run from `folder`."""

    def __init__(self, folder: Path, replica_ports: list[int], port: int, hashing: bool = True):
        self.folder, self.port = folder, port
        self.config = affinity_config(folder, replica_ports, port, hashing)
        self.access_log = folder / "access.log"
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Nginx:
        """Starts it and waits until it answers /readyz with 200 (from a replica behind it)."""
        with open(self.folder / "nginx.stderr", "wb") as stderr:  # its complaints before its error_log opens
            self.proc = subprocess.Popen(["nginx", "-c", str(self.config), "-p", str(self.folder)],
                                         stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            wait_until(self._answers, START_TIMEOUT_S, f"nginx to answer /readyz on port {self.port}", 0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)

    def log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def routed(self, offset: int = 0) -> list[Routed]:
        """The access log's requests from byte `offset` on, in the order nginx finished them."""
        with open(self.access_log, "rb") as log:
            log.seek(offset)
            lines = log.read().decode().splitlines()
        parsed = []
        for line in lines:
            task, upstream, status = line.rsplit("|", 2)
            parsed.append(Routed(task, upstream.split(",")[-1].strip(), int(status)))
        return parsed

    def _answers(self) -> bool:
        return answers_ready(self.proc, self.base, lambda code: f"nginx exited with {code}: {(self.folder / 'nginx.stderr').read_text()}")
