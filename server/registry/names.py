"""Tenant and task names (SPEC section 2): one pattern, one check, shared by the registry and the API."""

from __future__ import annotations

import re

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
_NAME_RE = re.compile(NAME_PATTERN)


class InvalidName(ValueError):
    """A tenant or task name does not match the SPEC's pattern (the API answers 422)."""


def split_task_path(path: object) -> tuple[str, str]:
    """'tenant/task' (how settings and admin calls name another tenant's task) -> (tenant, task);
    raises InvalidName."""
    tenant, slash, task = path.partition("/") if isinstance(path, str) else ("", "", "")
    if not slash:
        raise InvalidName(f"task path: expected tenant/task, got {path!r}")
    return validate_name("tenant", tenant), validate_name("task", task)


def validate_name(kind: str, name: object) -> str:
    """Returns `name` unchanged if it is a valid `kind` ('tenant', 'task') name; raises InvalidName."""
    # fullmatch, not match + '$': '$' would accept a trailing newline.
    if isinstance(name, str) and _NAME_RE.fullmatch(name):
        return name
    shown = repr(name) if not isinstance(name, str) or len(name) <= 80 else f"{name[:80]!r}... ({len(name)} chars)"
    raise InvalidName(
        f"{kind} name: expected 1 to 63 characters of lowercase letters, digits, '_' or '-', starting with a "
        f"letter or digit ({NAME_PATTERN}), got {shown}"
    )
