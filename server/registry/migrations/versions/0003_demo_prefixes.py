"""Demo prefixes are registered once: `demo_prefixes` remembers which shipped file became which task
and version, so a restart leaves a user's upload, route change or delete of a demo task alone.

No foreign key to `tasks`: the row must outlive a deleted task, or the next start would bring it back.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

NAME = sa.String(63)


def upgrade() -> None:
    op.create_table(
        "demo_prefixes",
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("tenant", NAME, nullable=False),
        sa.Column("task", NAME, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("file_name", name="pk_demo_prefixes"),
    )


def downgrade() -> None:
    op.drop_table("demo_prefixes")
