"""The affinity recipes that cannot run here (Envoy, ingress-nginx) hash on the same key as the nginx one
that tests/replicas/test_affinity.py runs: parsed, and their hashing settings checked."""

from __future__ import annotations

from pathlib import Path

import yaml

FOLDER = Path(__file__).resolve().parents[2] / "deploy" / "affinity"


def test_envoy_hashes_on_the_task_header_with_bounded_load():
    config = yaml.safe_load((FOLDER / "envoy.yaml").read_text())
    (cluster,) = config["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "RING_HASH"
    assert cluster["common_lb_config"]["consistent_hashing_lb_config"]["hash_balance_factor"] >= 100
    (listener,) = config["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    (route,) = manager["route_config"]["virtual_hosts"][0]["routes"]
    headers = [policy["header"]["header_name"] for policy in route["route"]["hash_policy"]]
    assert headers[0] == "x-prefix-task" and route["route"]["cluster"] == cluster["name"]


def test_ingress_nginx_hashes_on_the_task_header():
    ingress = yaml.safe_load((FOLDER / "ingress.yaml").read_text())
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_x_prefix_task"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "prefix-server", "port": {"name": "http"}}  # deploy/kubernetes/base/service.yaml
