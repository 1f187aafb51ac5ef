"""The properties the replicas depend on, asserted on the rendered Kubernetes base and example overlay:
rolling updates without losing a replica, probes, the migration Job, selectors of the Service and the
disruption budget, the autoscaler, secrets by reference only, non-root pods on a read-only root with
writable caches, spreading over nodes, and grace periods that outlast the server's drain."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.deploy.support import (
    RENDERED,
    REQUEST_TIMEOUT_S,
    SECRET_ENV,
    SECRET_NAME,
    _config,
    _container,
    _env,
    _one,
    _shutdown_budget_s,
    _strings,
)

# ---------------------------------------------------------------- Kubernetes: the replicas


@pytest.mark.parametrize("name", RENDERED)
def test_deployment_runs_several_replicas_and_rolls_without_losing_one(rendered, name):
    deployment = _one(rendered[name], "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    strategy = deployment["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0
    assert strategy["rollingUpdate"]["maxSurge"] >= 1
    assert _container(deployment)["command"] == ["prefix-server", "serve"]


@pytest.mark.parametrize("name", RENDERED)
def test_probes_are_on_the_right_paths(rendered, name):
    container = _container(_one(rendered[name], "Deployment"))
    http_port = next(p for p in container["ports"] if p["name"] == "http")
    assert http_port["containerPort"] == int(_config(rendered[name])["PREFIX_SERVER_PORT"])
    paths = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in ("http", http_port["containerPort"]), probe
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    startup = container["startupProbe"]
    # Loading and warming the backbone takes tens of seconds on a CPU; the kubelet must wait minutes.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180


@pytest.mark.parametrize("name", RENDERED)
def test_replicas_never_migrate_and_the_job_does(rendered, name):
    docs = rendered[name]
    deployment, job = _one(docs, "Deployment"), _one(docs, "Job")
    assert _env(_container(deployment))["PREFIX_SERVER_MIGRATE"]["value"] == "false"
    assert _config(docs).get("PREFIX_SERVER_MIGRATE", "false") == "false"
    migrate = _container(job)
    assert migrate["command"] == ["prefix-server", "migrate"]
    assert migrate["image"] == _container(deployment)["image"], "the Job must migrate to the schema the replicas run"
    assert "valueFrom" in _env(migrate)["PREFIX_SERVER_DATABASE_URL"]
    assert job["spec"]["backoffLimit"] >= 1
    assert job["spec"]["ttlSecondsAfterFinished"] > 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")


@pytest.mark.parametrize("name", RENDERED)
def test_service_and_disruption_budget_select_the_deployments_pods(rendered, name):
    docs = rendered[name]
    deployment = _one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    pdb = _one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # The migration Job's pods are neither endpoints nor covered by the budget.
    job_labels = _one(docs, "Job")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items()
    assert not pdb["spec"]["selector"]["matchLabels"].items() <= job_labels.items()
    assert any(p["targetPort"] in ("http", 8000) for p in service["spec"]["ports"])


@pytest.mark.parametrize("name", RENDERED)
def test_autoscaler_scales_the_deployment_on_queue_depth(rendered, name):
    docs = rendered[name]
    deployment, hpa = _one(docs, "Deployment"), _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "prefix_server_queued_inputs"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("name", RENDERED)
def test_secrets_come_by_reference_and_no_manifest_holds_one(rendered, name):
    docs = rendered[name]
    assert not [doc for doc in docs if doc["kind"] == "Secret"], "a Secret must never be rendered from the repository"
    for workload in (_one(docs, "Deployment"), _one(docs, "Job")):
        env = _env(_container(workload))
        for variable in SECRET_ENV & env.keys():
            assert env[variable]["valueFrom"]["secretKeyRef"]["name"] == SECRET_NAME, variable
            assert "value" not in env[variable], variable
        for source in _container(workload).get("envFrom", []):
            assert "secretRef" in source or "configMapRef" in source
    assert SECRET_ENV <= _env(_container(_one(docs, "Deployment"))).keys()  # noqa: SIM300 - reads as meant: every secret is set
    assert not SECRET_ENV & _config(docs).keys()
    for text in _strings(docs):
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", text), f"credentials in a URL: {text!r}"
    for doc in docs:
        for item in _strings(doc.get("data", {})):
            assert not re.search(r"(?i)password|secret_access|token=", item), item


@pytest.mark.parametrize("name", RENDERED)
def test_pods_run_non_root_on_a_read_only_root_with_writable_caches(rendered, name):
    docs = rendered[name]
    config = _config(docs)
    for workload in (_one(docs, "Deployment"), _one(docs, "Job")):
        pod = workload["spec"]["template"]["spec"]
        container = _container(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        empty_dirs = {v["name"]: v for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"] if m["name"] in empty_dirs}
        assert "/tmp" in mounts
    deployment = _one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in _container(deployment)["volumeMounts"]}
    cache_dir = Path(config["PREFIX_SERVER_BLOB_CACHE_DIR"])
    holder = next((p for p in map(Path, mounts) if cache_dir == p or p in cache_dir.parents), None)
    assert holder is not None, f"the blob cache {cache_dir} is on no writable volume"
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(holder)])
    limit = volume["emptyDir"]["sizeLimit"]
    assert limit.endswith("Gi") and int(config["PREFIX_SERVER_BLOB_CACHE_BYTES"]) < int(limit[:-2]) * 1024**3, (
        "a cache bound over the emptyDir's sizeLimit gets the pod evicted"
    )


@pytest.mark.parametrize("name", RENDERED)
def test_replicas_spread_over_nodes_and_stop_gracefully(rendered, name):
    deployment = _one(rendered[name], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    by_node = [c for c in pod["topologySpreadConstraints"] if c["topologyKey"] == "kubernetes.io/hostname"]
    assert by_node and by_node[0]["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    container = _container(deployment)
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    env = _config(rendered[name]) | {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # The kubelet runs preStop, then sends SIGTERM, then SIGKILLs at the grace period's end.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + _shutdown_budget_s(env)
    assert _shutdown_budget_s(env) >= REQUEST_TIMEOUT_S, "the drain should let the longest request finish"
    resources = _container(deployment)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() and {"cpu", "memory"} <= resources["limits"].keys()
    assert _config(rendered[name])["PREFIX_SERVER_HOST"] == "0.0.0.0"
