"""Enrollment: manufacturer CAs, zero-touch rules, one-time tokens, the approval queue.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "enroll_manufacturer_cas",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("manufacturer", sa.String(length=64), nullable=False),
        sa.Column("model_attribute", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("enroll_manufacturer_cas", schema=None) as batch_op:
        batch_op.create_index("ix_enroll_manufacturer_cas_manufacturer", ["manufacturer"], unique=False)

    op.create_table(
        "enroll_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("manufacturer", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("device_serial", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("factory_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("key_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("csr", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=256), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("certificate_serial", sa.String(length=48), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("enroll_requests", schema=None) as batch_op:
        batch_op.create_index("ix_enroll_requests_device", ["manufacturer", "device_serial"], unique=False)
        batch_op.create_index("ix_enroll_requests_status", ["status", "created_at"], unique=False)

    op.create_table(
        "enroll_rules",
        sa.Column("manufacturer", sa.String(length=64), nullable=False),
        sa.Column("model", sa.String(length=256), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("register_unknown", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("manufacturer", "model"),
    )
    op.create_table(
        "enroll_tokens",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("secret_sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_source", sa.String(length=128), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("enroll_tokens", schema=None) as batch_op:
        batch_op.create_index("ix_enroll_tokens_device", ["device_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("enroll_tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_enroll_tokens_device")

    op.drop_table("enroll_tokens")
    op.drop_table("enroll_rules")
    with op.batch_alter_table("enroll_requests", schema=None) as batch_op:
        batch_op.drop_index("ix_enroll_requests_status")
        batch_op.drop_index("ix_enroll_requests_device")

    op.drop_table("enroll_requests")
    with op.batch_alter_table("enroll_manufacturer_cas", schema=None) as batch_op:
        batch_op.drop_index("ix_enroll_manufacturer_cas_manufacturer")

    op.drop_table("enroll_manufacturer_cas")
