"""Alembic migrations of the registry schema (run through server.registry.schema, not alembic.ini)."""
