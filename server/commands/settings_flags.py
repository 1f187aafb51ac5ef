"""`serve`'s flags, generated from `Settings.model_fields`: one flag per field (booleans as
`--x/--no-x`), each with its description, default and environment variable in `--help`. Values pass
through as given and pydantic validates them, so a flag and its variable are checked by the same rule
and fail with the same one-line message (exit code 2, no traceback)."""

from __future__ import annotations

import argparse
import sys
import typing

from pydantic import SecretStr, ValidationError
from pydantic_settings import SettingsError

from server.settings import ENV_PREFIX, SECRET_FILE_FIELDS, ConfigurationError, Settings

# Kept for scripts written before the flags were generated; each is the same as its generated twin.
ALIASES = {"--engine-in-process": ("engine_process", False)}


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, info in Settings.model_fields.items():
        options = {"dest": name, "default": None, "help": _help(name, info)}
        choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
        if info.annotation is bool:
            parser.add_argument(flag_name(name), action=argparse.BooleanOptionalAction, **options)
        else:
            # Choices go in the metavar, not to argparse: pydantic checks them, as it does the variable.
            metavar = name.upper() if choices is None else "{" + ",".join(map(str, choices)) + "}"
            parser.add_argument(flag_name(name), metavar=metavar, **options)
    for alias, (name, value) in ALIASES.items():
        parser.add_argument(alias, dest=name, action="store_const", const=value, help=f"same as --no-{name.replace('_', '-')}")
    parser.error = lambda message: usage_error(parser.prog, message)  # one line, not the whole usage


def settings_from_args(args: argparse.Namespace, prog: str = "prefix-server serve") -> Settings:
    """Flags over variables over *_FILE secrets; any bad value ends the process with exit code 2."""
    overrides = {name: getattr(args, name) for name in Settings.model_fields if getattr(args, name, None) is not None}
    try:
        return Settings(**overrides)
    except ValidationError as error:
        usage_error(prog, "; ".join(_describe(e, overrides) for e in error.errors()))
    except (ConfigurationError, SettingsError) as error:
        usage_error(prog, str(error))


def usage_error(prog: str, message: str) -> typing.NoReturn:
    sys.stderr.write(f"{prog}: error: {' '.join(message.split())} (see --help)\n")
    sys.exit(2)


def _describe(error: dict, overrides: dict) -> str:
    expected = error["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    if not error["loc"]:  # a rule across fields: its message names them
        return expected
    name = str(error["loc"][0])
    source = flag_name(name) if name in overrides else ENV_PREFIX + name.upper()
    got = "a secret" if name in SECRET_FILE_FIELDS else repr(error.get("input"))
    if expected.startswith(("greater", "less")):
        expected = "a value " + expected
    return f"{source}: expected {expected}, got {got}"


def _help(name: str, info) -> str:
    text = info.description or name.replace("_", " ")
    variable = ENV_PREFIX + name.upper()
    secret_file = f"; or the file {variable}_FILE names" if name in SECRET_FILE_FIELDS else ""
    return f"{text} (default: {_default(info)}; env {variable}{secret_file})".replace("%", "%%")  # argparse formats help with %


def _default(info) -> str:
    if info.default_factory is not None:
        try:
            value = info.default_factory()
        except Exception:  # noqa: BLE001 — e.g. the default backbone's package is not installed: help must still work
            return "computed at start"
    else:
        value = info.default
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return "**********"
    return str(value).lower() if isinstance(value, bool) else str(value)
