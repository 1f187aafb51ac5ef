"""Settings beyond `serve`'s flags: a PREFIX_SERVER_* variable nothing reads is named at start-up with
the closest known name, the variables other commands read are not taken for misspellings, and a
setting that needs an optional extra names the extra."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from server.settings import API_KEY_VARIABLE, BENCH_DATA_VARIABLE, ENV_PREFIX, Settings, unknown_variables

ROOT = Path(__file__).resolve().parents[1]


def test_a_misspelled_variable_is_named_with_the_closest_setting():
    environ = {"PREFIX_SERVER_MAX_BACH_SIZE": "8", "prefix_server_admin_tokn": "x", "PREFIX_SERVER_WHATEVER_ELSE": "1",
               "PREFIX_SERVER_PORT": "8001", "HOME": "/root"}
    assert unknown_variables(environ) == {
        "PREFIX_SERVER_MAX_BACH_SIZE": "PREFIX_SERVER_MAX_BATCH_SIZE",
        "PREFIX_SERVER_WHATEVER_ELSE": None,  # nothing close: named all the same
        "prefix_server_admin_tokn": "PREFIX_SERVER_ADMIN_TOKEN",  # read regardless of case, so checked so
    }


def test_variables_read_elsewhere_are_not_misspellings():
    environ = {ENV_PREFIX + name.upper(): "1" for name in Settings.model_fields}
    environ.update({"PREFIX_SERVER_ADMIN_TOKEN_FILE": "/run/secrets/token", "PREFIX_SERVER_DATABASE_URL_FILE": "/run/secrets/db",
                    API_KEY_VARIABLE: "psk_x", BENCH_DATA_VARIABLE: "/data", "prefix_server_port": "1"})
    assert unknown_variables(environ) == {}


def test_start_up_warns_once_naming_the_closest_setting(monkeypatch, caplog):
    for name in [n for n in os.environ if n.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREFIX_SERVER_MAX_WAIT_M", "5")
    monkeypatch.setenv("PREFIX_SERVER_ADMIN_TOKEN", "t")
    settings = Settings(backbone="unused")
    assert settings.max_wait_ms == 2.0  # the misspelled variable changed nothing
    with caplog.at_level(logging.INFO, logger="server.settings"):
        settings.log_once()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ["ignored, no setting reads them: PREFIX_SERVER_MAX_WAIT_M (did you mean PREFIX_SERVER_MAX_WAIT_MS?)"]


@pytest.mark.parametrize("field, value, module, extra", [
    ("database_url", "postgresql+psycopg://u:p@db:5432/prefix", "psycopg", "replicas"),
    ("blob_url", "s3://bucket/prefixes", "boto3", "replicas"),
    ("opentelemetry", True, "opentelemetry", "otel"),
])
def test_a_setting_that_needs_an_extra_names_it(monkeypatch, field, value, module, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else real(name, *a))
    with pytest.raises(ValidationError, match=rf"needs the '{extra}' extra.*pip install 'prefix-server\[{extra}\]'"):
        Settings(**{field: value})
    monkeypatch.setattr(importlib.util, "find_spec", real)
    assert getattr(Settings(**{field: value}), field)  # installed here (the test extra has them): accepted


def test_serving_the_embedded_default_imports_no_extra():
    """The replica and training libraries stay out of a plain `serve` (they are extras)."""
    probe = (
        "import sys; from server.api.app import create_app; from server.settings import Settings; "
        "create_app(Settings(prefixes_dir='')); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'psycopg', 'boto3', 'botocore', 'seqeval', 'sklearn', 'scipy'}))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_device_budgets_former_name_still_sets_it(monkeypatch):
    for name in [n for n in os.environ if n.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREFIX_SERVER_PREFIX_CACHE_BYTES", "1000")
    assert Settings(backbone="unused").device_cache_bytes == 1000
    monkeypatch.setenv("PREFIX_SERVER_DEVICE_CACHE_BYTES", "2000")  # the SPEC 6 name wins when both are set
    assert Settings(backbone="unused").device_cache_bytes == 2000


def test_a_gpu_gets_the_measured_defaults_unless_they_are_set(monkeypatch):
    for name in [n for n in os.environ if n.upper().startswith(ENV_PREFIX)]:
        monkeypatch.delenv(name)
    cpu = Settings(backbone="unused")
    assert (cpu.dtype, cpu.max_batch_tokens, cpu.max_batch_size) == ("float32", 8192, 64)
    gpu = Settings(backbone="unused", device="cuda:0")
    assert (gpu.dtype, gpu.max_batch_tokens, gpu.max_batch_size) == ("float16", 16384, 512)
    monkeypatch.setenv("PREFIX_SERVER_DTYPE", "bfloat16")
    chosen = Settings(backbone="unused", device="cuda", max_batch_tokens=4096)
    assert (chosen.dtype, chosen.max_batch_tokens, chosen.max_batch_size) == ("bfloat16", 4096, 512)
