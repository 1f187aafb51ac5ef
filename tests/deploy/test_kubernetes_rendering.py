"""What `kubectl kustomize` renders from deploy/kubernetes, checked without a cluster: every document of
the base and the example overlay validates against the Kubernetes 1.30 schemas in strict mode (an unknown
field or a removed API version fails), the example Secret stays out of the kustomizations, and the
overlay sets the image tag, the replica count, the namespace and a ConfigMap name that rolls the pods."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.deploy.support import KUBERNETES, KUBERNETES_VERSION, RENDERED, SECRET_ENV, SECRET_NAME, _container, _one

# ---------------------------------------------------------------- Kubernetes: schema


@pytest.mark.parametrize("name", RENDERED)
def test_every_rendered_document_validates_strictly(rendered, validator, name):
    kinds = set()
    for doc in rendered[name]:
        # validate raises on a violation, and on a kind/apiVersion it has no schema for (the CLI
        # only warns about those): a removed API version must fail here.
        validator.validate(doc, KUBERNETES_VERSION, strict=True)
        kinds.add(doc["kind"])
    expected = {"ServiceAccount", "ConfigMap", "Service", "Deployment", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job"}
    assert kinds == expected


def test_strict_validation_rejects_what_the_api_server_would(rendered, validator):
    deployment = _one(rendered["base"], "Deployment")
    misspelt = copy.deepcopy(deployment)
    _container(misspelt)["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(validator.ValidationError):
        validator.validate(misspelt, KUBERNETES_VERSION, strict=True)
    old_api = copy.deepcopy(_one(rendered["base"], "HorizontalPodAutoscaler")) | {"apiVersion": "autoscaling/v2beta2"}
    with pytest.raises(validator.SchemaNotFoundError):
        validator.validate(old_api, KUBERNETES_VERSION, strict=True)


def test_the_example_secret_validates_and_stays_out_of_the_kustomizations(validator):
    secret = yaml.safe_load((KUBERNETES / "secret.example.yaml").read_text())
    validator.validate(secret, KUBERNETES_VERSION, strict=True)
    assert secret["metadata"]["name"] == SECRET_NAME
    assert set(secret["stringData"]) == SECRET_ENV
    for key, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, f"{key}: the example must hold placeholders, not a value"
    for path in KUBERNETES.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        assert "secretGenerator" not in kustomization, path
        assert not [r for r in kustomization.get("resources", []) if "secret" in r.lower()], path


# ---------------------------------------------------------------- Kubernetes: the overlay


def test_overlay_sets_the_image_tag_and_the_replica_count(rendered):
    base, overlay = rendered["base"], rendered["overlay"]
    for workload in ("Deployment", "Job"):
        image = _container(_one(overlay, workload))["image"]
        assert image == "registry.example.com/ml/prefix-server:0.1.0", workload
    assert _one(overlay, "Deployment")["spec"]["replicas"] == 3 != _one(base, "Deployment")["spec"]["replicas"]
    assert _one(overlay, "HorizontalPodAutoscaler")["spec"]["minReplicas"] == 3
    assert {doc["metadata"].get("namespace") for doc in overlay} == {"prefix-server"}
    # The generated ConfigMap's new name (its content hash) reaches the pods, so the change rolls them.
    config_name = _one(overlay, "ConfigMap")["metadata"]["name"]
    assert config_name != _one(base, "ConfigMap")["metadata"]["name"]
    assert _container(_one(overlay, "Deployment"))["envFrom"] == [{"configMapRef": {"name": config_name}}]
