"""`prefix-server serve`'s configuration: flags generated from Settings, one-line usage errors (exit 2)
for flags and variables alike, secrets from *_FILE, JSON log lines, and a failed start-up that ends
the process with a non-zero code."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import build_parser
from server.commands.settings_flags import flag_name, settings_from_args
from server.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def _serve(*args, timeout=60, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFIX_SERVER_")}
    environment.update(env, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "server", "serve", *args], capture_output=True, text=True, env=environment,
        timeout=timeout, cwd=ROOT,
    )


def _args(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_help_lists_every_setting_with_its_default_and_variable():
    out = _serve("--help").stdout
    flat = " ".join(out.split())
    for name, info in Settings.model_fields.items():
        assert flag_name(name) in out, name
        assert f"PREFIX_SERVER_{name.upper()}" in flat.replace("- ", "-"), name
        if info.annotation is bool:
            assert f"--no-{name.replace('_', '-')}" in out
    assert "(default: 8000; env PREFIX_SERVER_PORT)" in flat
    assert "PREFIX_SERVER_ADMIN_TOKEN_FILE" in flat


@pytest.mark.parametrize(
    "argv, env, expected",
    [
        (["--port", "abc"], {}, "--port: expected a valid integer"),
        (["--dtype", "f16"], {}, "--dtype: expected 'float32', 'float16' or 'bfloat16', got 'f16'"),
        ([], {"PREFIX_SERVER_MAX_WAIT_MS": "-1"}, "PREFIX_SERVER_MAX_WAIT_MS: expected a value greater than or equal to 0"),
        ([], {"PREFIX_SERVER_MIGRATE": "maybe"}, "PREFIX_SERVER_MIGRATE: expected a valid boolean"),
        ([], {"PREFIX_SERVER_ADMIN_TOKEN_FILE": "/nonexistent/token"}, "expected a readable text file"),
        (["--metrics-port", "8000"], {}, "metrics_port: expected a port other than port's, got 8000 for both"),
        (["--no-such-flag"], {}, "unrecognized arguments: --no-such-flag"),
    ],
)
def test_a_bad_value_is_a_one_line_usage_error(argv, env, expected):
    result = _serve(*argv, **env)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr


def test_flags_win_over_variables_and_booleans_have_both_forms(monkeypatch):
    monkeypatch.setenv("PREFIX_SERVER_PORT", "9001")
    monkeypatch.setenv("PREFIX_SERVER_MIGRATE", "false")
    assert settings_from_args(_args()).port == 9001
    settings = settings_from_args(_args("--port", "9002", "--migrate", "--engine-in-process", "--log-level", "warning"))
    assert (settings.port, settings.migrate, settings.engine_process, settings.log_level) == (9002, True, False, "WARNING")
    assert settings_from_args(_args("--no-registry-notify")).registry_notify is False


def test_secrets_from_files(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("s3cret-token\n")
    (tmp_path / "url").write_text("sqlite:////tmp/x.sqlite3")
    monkeypatch.setenv("PREFIX_SERVER_ADMIN_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("PREFIX_SERVER_DATABASE_URL_FILE", str(tmp_path / "url"))
    settings = Settings()
    assert settings.admin_token.get_secret_value() == "s3cret-token"  # the trailing newline stripped
    assert settings.database_url.get_secret_value() == "sqlite:////tmp/x.sqlite3"
    assert "s3cret" not in settings.model_dump_json() and "s3cret" not in repr(settings)
    assert settings_from_args(_args("--admin-token", "from-flag")).admin_token.get_secret_value() == "from-flag"
    monkeypatch.setenv("PREFIX_SERVER_ADMIN_TOKEN", "also-set")
    with pytest.raises(SystemExit) as exit_info:
        settings_from_args(_args())
    assert exit_info.value.code == 2


def test_json_log_lines_parse_and_carry_the_request_id(capsys):
    from server.logs import configure_logging, request_id_var

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("info", "json")
        token = request_id_var.set("req-123")
        logging.getLogger("server.test").info("hello %s", "world")
        request_id_var.reset(token)
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("server.test").exception("failed")
    finally:
        root.handlers[:], _ = saved[0], root.setLevel(saved[1])
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    first, second = map(json.loads, lines)
    assert first["message"] == "hello world" and first["request_id"] == "req-123" and first["level"] == "INFO"
    assert second["request_id"] == "-" and "ValueError: boom" in second["exception"]


def test_a_failed_start_up_exits_non_zero_with_the_reason(tmp_path):
    bad_backbone = tmp_path / "not-a-model"
    bad_backbone.mkdir()
    result = _serve(
        "--port", "0", "--backbone", str(bad_backbone), "--data-dir", str(tmp_path / "data"), "--prefixes-dir", "",
        "--log-format", "json", "--engine-in-process", timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    *log_lines, last = result.stderr.strip().splitlines()
    assert last.startswith("prefix-server serve: start-up failed:") and str(bad_backbone) in last
    assert all(isinstance(json.loads(line), dict) for line in log_lines)
    # One line says why: no traceback, and the reason is not logged a second time.
    assert "Traceback" not in result.stderr and not any(json.loads(line)["level"] == "ERROR" for line in log_lines)


def test_a_bad_backbone_in_the_engine_process_is_one_line_too(tmp_path):
    (tmp_path / "not-a-model").mkdir()
    (tmp_path / "not-a-model" / "config.json").write_text("{}")
    result = _serve(
        "--port", "0", "--backbone", str(tmp_path / "not-a-model"), "--data-dir", str(tmp_path / "data"),
        "--prefixes-dir", "", timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("prefix-server serve: start-up failed: EngineStartFailed") and "config.json" in last
    assert str(tmp_path / "not-a-model") in last and "Traceback" not in result.stderr


def test_a_port_in_use_fails_at_once_with_one_line(tmp_path, tiny_backbone_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _serve(
            "--port", str(port), "--backbone", str(tiny_backbone_dir), "--data-dir", str(tmp_path / "data"),
            "--prefixes-dir", "", timeout=120,
        )
    assert result.returncode == 1, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [f"prefix-server serve: start-up failed: cannot listen on 127.0.0.1:{port}: Address already in use"]
    assert not (tmp_path / "data").exists()  # nothing was started before the port was checked


def test_an_unreadable_embedded_registry_exits_non_zero(tmp_path, tiny_backbone_dir):
    data_dir = tmp_path / "data"
    (data_dir / "registry.sqlite3").mkdir(parents=True)  # a folder where the database file should be
    result = _serve(
        "--port", "0", "--backbone", str(tiny_backbone_dir), "--data-dir", str(data_dir), "--prefixes-dir", "",
        "--engine-in-process", timeout=120,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "start-up failed: RegistryUnavailable" in result.stderr.strip().splitlines()[-1]
