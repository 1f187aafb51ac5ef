"""Tenants count their tasks and artifact bytes in columns (`task_count`, `artifact_bytes`), so a quota
check reads the tenant's row instead of counting its tasks and summing its versions on every upload:
an upload costs the same with 10^6 tasks as with 10 (SPEC 6). Every write of tasks or versions updates
them in its transaction (server.registry.queries.count_usage); this revision fills them from the rows.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("task_count", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("artifact_bytes", sa.BigInteger, nullable=False, server_default="0"))
    op.execute(
        "UPDATE tenants SET "
        "task_count = (SELECT COUNT(*) FROM tasks t WHERE t.tenant = tenants.name), "
        "artifact_bytes = COALESCE((SELECT SUM(v.size_bytes) FROM versions v WHERE v.tenant = tenants.name), 0)"
    )


def downgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("artifact_bytes")
        batch.drop_column("task_count")
