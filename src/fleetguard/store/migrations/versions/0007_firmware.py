"""Firmware analysis: stored scans, waivers of findings, gate settings.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "firmware_scans",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("image_name", sa.String(length=256), nullable=False),
        sa.Column("image_size", sa.BigInteger(), nullable=False),
        sa.Column("firmware_version", sa.String(length=128), nullable=True),
        sa.Column("device_type", sa.String(length=128), nullable=True),
        sa.Column("risk", sa.Integer(), nullable=False),
        sa.Column("max_severity", sa.String(length=16), nullable=False),
        sa.Column("findings", sa.Integer(), nullable=False),
        sa.Column("known_exploited", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("scanned_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("firmware_scans", schema=None) as batch_op:
        batch_op.create_index("ix_firmware_scans_sha256", ["image_sha256"], unique=False)
        batch_op.create_index("ix_firmware_scans_version", ["firmware_version"], unique=False)
    op.create_table(
        "firmware_waivers",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("image_sha256", sa.String(length=64), nullable=False),
        sa.Column("rule", sa.String(length=128), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("firmware_waivers", schema=None) as batch_op:
        batch_op.create_index("ix_firmware_waivers_sha256", ["image_sha256"], unique=False)
    op.create_table(
        "firmware_settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("firmware_settings")
    with op.batch_alter_table("firmware_waivers", schema=None) as batch_op:
        batch_op.drop_index("ix_firmware_waivers_sha256")
    op.drop_table("firmware_waivers")
    with op.batch_alter_table("firmware_scans", schema=None) as batch_op:
        batch_op.drop_index("ix_firmware_scans_version")
        batch_op.drop_index("ix_firmware_scans_sha256")
    op.drop_table("firmware_scans")
