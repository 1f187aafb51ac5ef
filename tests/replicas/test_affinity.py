"""Task affinity through a real load balancer (SPEC 6): Debian's nginx runs deploy/affinity/nginx.conf as
shipped (only the replicas' addresses and its port filled in) in front of three `serve` replicas on one
registry. Each task's requests land on one replica, whether they name it in X-Prefix-Task or in a KServe
path; that replica alone holds it; a replica's death moves only its own tasks."""

from __future__ import annotations

import shutil
from collections import Counter

import httpx
import pytest

from harness.nginx import Nginx
from harness.processes import free_port
from tests.replicas.cluster import create_tenant, start_replicas
from tests.replicas.conftest import new_bucket

TASKS = [f"task-{i}" for i in range(12)]
REQUESTS_PER_TASK = 6

pytestmark = [pytest.mark.slow, pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed (apt install nginx)")]


def served_by(client: httpx.Client, key: str, task: str, kserve: bool = False) -> str:
    """Which replica answered one classification of `task` through nginx (its X-Served-By address)."""
    auth = {"Authorization": f"Bearer {key}"}
    if kserve:  # no header: nginx hashes on the model name of the path
        body = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a fine day"]}]}
        response = client.post(f"/v2/models/{task}/infer", json=body, headers=auth)
    else:
        response = client.post("/v1/classify", json={"task": task, "inputs": ["a fine day"]},
                               headers=auth | {"X-Prefix-Task": task})
    assert response.status_code == 200, response.text
    return response.headers["x-served-by"].split(",")[-1].strip()  # after a retry: the one that answered


def placement(client: httpx.Client, key: str) -> dict[str, str]:
    """Each task's replica; every request for a task must have gone to the same one."""
    placed = {}
    for task in TASKS:
        replicas = Counter(served_by(client, key, task) for _ in range(REQUESTS_PER_TASK))
        replicas.update([served_by(client, key, task, kserve=True)])
        assert len(replicas) == 1, f"{task}: answered by {dict(replicas)}"
        placed[task] = next(iter(replicas))
    return placed


def test_each_task_stays_on_one_replica_and_a_death_moves_only_its_share(
    tmp_path, postgres_server, s3_server, tiny_backbone_dir, make_artifact_bytes
):
    args = dict(backbone=tiny_backbone_dir, database_url=postgres_server.fresh_database(), blob_url=new_bucket(s3_server),
                s3_endpoint=s3_server.endpoint)
    replicas = start_replicas(["a", "b", "c"], tmp_path, **args)
    address = {f"127.0.0.1:{r.port}": r for r in replicas}
    nginx = Nginx(tmp_path, [r.port for r in replicas], free_port())
    try:
        key = create_tenant(replicas[0], "acme")
        with replicas[0].client(key) as direct:
            for i, task in enumerate(TASKS):
                assert direct.put(f"/v1/tasks/{task}", files={"file": ("p.safetensors", make_artifact_bytes(i))}).status_code == 201
        nginx.start()
        with httpx.Client(base_url=nginx.base, timeout=60) as client:
            before = placement(client, key)
            assert len(set(before.values())) >= 2, f"12 tasks hashed onto one replica: {before}"
            logged = {(routed.task, routed.replica) for routed in nginx.routed() if routed.task}
            assert logged == set(before.items()), f"nginx's access log has {sorted(logged)}"  # both request paths
            for task, served in before.items():  # the replica that answers a task is the only one holding it
                held = [a for a, r in address.items() if _on_device(r, key, task)]
                assert held == [served], f"{task}: answered by {served}, on the device of {held}"
            victim = Counter(before.values()).most_common(1)[0][0]
            address[victim].kill()
            for task in TASKS:  # nginx learns of the death on the first refused connection (then retries)
                served_by(client, key, task)
            after = placement(client, key)
        moved = {t for t in TASKS if after[t] != before[t]}
        assert moved == {t for t in TASKS if before[t] == victim}, f"moved {sorted(moved)}; {victim} held {before}"
        assert victim not in after.values()
    finally:
        nginx.stop()
        for replica in replicas:
            replica.kill()


def _on_device(replica, key: str, task: str) -> bool:
    with replica.client(key) as client:
        (version,) = client.get(f"/v1/tasks/{task}/residency").json()["versions"]
    return version["device"]
