"""Alembic's environment: runs the migrations on the connection server.registry.schema hands over
(inside its transaction, under its lock), never on a URL of its own."""

from alembic import context

from server.registry.tables import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
