"""Tasks count their versions in a column (`last_version`), updated under the task's row lock.

Numbers were max(version) + 1, which hands a deleted newest version's number out again once single
versions can be deleted (SPEC 2c); a counter never repeats a number within a task's life and, unlike a
database sequence, leaves no gap when a transaction rolls back.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("last_version", sa.Integer, nullable=False, server_default="0"))
    op.execute(
        "UPDATE tasks SET last_version = COALESCE((SELECT MAX(v.version) FROM versions v "
        "WHERE v.tenant = tasks.tenant AND v.task = tasks.name), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("last_version")
