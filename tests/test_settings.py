"""Settings beyond `serve`'s flags: a PREFIX_SERVER_* variable nothing reads is named at start-up with
the closest known name, and the variables other commands read are not taken for misspellings."""

from __future__ import annotations

import logging
import os

from server.settings import API_KEY_VARIABLE, BENCH_DATA_VARIABLE, ENV_PREFIX, Settings, unknown_variables


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
