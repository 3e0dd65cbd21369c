"""Zero trust: versioned policy sets, device signals (risk, vulnerability, attestation), enforcement state.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trust_policy_sets",
        sa.Column("version", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("firmware_minimum", sa.JSON(), nullable=False),
        sa.Column("end_of_life", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "trust_device_signals",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("risk", sa.Integer(), nullable=False),
        sa.Column("known_vulnerable", sa.Boolean(), nullable=False),
        sa.Column("attested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )
    op.create_table(
        "trust_enforcement",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("desired", sa.JSON(), nullable=False),
        sa.Column("desired_digest", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )
    with op.batch_alter_table("trust_enforcement", schema=None) as batch_op:
        batch_op.create_index("ix_trust_enforcement_due", ["status", "next_attempt_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("trust_enforcement", schema=None) as batch_op:
        batch_op.drop_index("ix_trust_enforcement_due")
    op.drop_table("trust_enforcement")
    op.drop_table("trust_device_signals")
    op.drop_table("trust_policy_sets")
