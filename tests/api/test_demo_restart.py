"""A restart of the app does not undo a user's upload or delete of a demo task."""

from __future__ import annotations

from tests.api.conftest import make_settings, running_client, upload


def test_a_restart_keeps_a_users_changes_to_demo_tasks(tmp_path, tiny_backbone_dir, artifact_bytes):
    prefixes = tmp_path / "prefixes"
    prefixes.mkdir()
    (prefixes / "sentiment.safetensors").write_bytes(artifact_bytes(seed=1))
    (prefixes / "topic.safetensors").write_bytes(artifact_bytes(seed=2))
    settings = make_settings(tmp_path / "data", tiny_backbone_dir, prefixes_dir=str(prefixes))
    with running_client(settings) as client:
        assert client.get("/v1/tasks/sentiment").json()["route"] == {"version": 1}
        assert upload(client, "sentiment", artifact_bytes(seed=3)).status_code == 201
        assert client.delete("/v1/tasks/topic").status_code == 204
    with running_client(settings) as client:
        shown = client.get("/v1/tasks/sentiment").json()
        assert [v["version"] for v in shown["versions"]] == [1, 2] and shown["route"] == {"version": 2}
        assert client.get("/v1/tasks/topic").status_code == 404
