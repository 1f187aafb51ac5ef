"""Baseline: the schema the embedded registry created before migrations existed (tenants, tasks,
versions). A database made by that code is stamped at this revision, not re-created.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NAME = sa.String(63)


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("name", NAME, nullable=False),
        sa.Column("api_key_hash", sa.String(64), nullable=True),
        sa.Column("max_tasks", sa.Integer, nullable=True),
        sa.Column("max_artifact_bytes", sa.BigInteger, nullable=True),
        sa.Column("max_queued_inputs", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_tenants"),
        sa.UniqueConstraint("api_key_hash", name="uq_tenants_api_key_hash"),
    )
    op.create_table(
        "tasks",
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("name", NAME, nullable=False),
        sa.Column("route", sa.JSON, nullable=False),
        sa.Column("pinned_version", sa.Integer, nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "name", name="pk_tasks"),
        sa.ForeignKeyConstraint(["tenant"], ["tenants.name"], name="fk_tasks_tenant_tenants"),
    )
    op.create_table(
        "versions",
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("task", NAME, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("prefix_len", sa.Integer, nullable=False),
        sa.Column("problem_type", sa.String(40), nullable=False),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "task", "version", name="pk_versions"),
        sa.ForeignKeyConstraint(
            ["tenant", "task"], ["tasks.tenant", "tasks.name"], name="fk_versions_tenant_task_tasks"
        ),
    )
    op.create_index("ix_versions_sha256", "versions", ["sha256"])


def downgrade() -> None:
    op.drop_table("versions")
    op.drop_table("tasks")
    op.drop_table("tenants")
