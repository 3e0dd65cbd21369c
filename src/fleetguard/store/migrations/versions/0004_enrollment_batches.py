"""Manufacturing batches: one row per batch with its signed manifest.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enroll_batches",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("device_type_id", sa.String(length=128), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("manifest_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("manifest", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=False),
        sa.ForeignKeyConstraint(["device_type_id"], ["device_types.id"], ondelete="RESTRICT"),
        sa.ForeignKeyConstraint(["issuer_id"], ["pki_authorities.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("enroll_batches", schema=None) as batch_op:
        batch_op.create_index("ix_enroll_batches_created", ["created_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("enroll_batches", schema=None) as batch_op:
        batch_op.drop_index("ix_enroll_batches_created")

    op.drop_table("enroll_batches")
