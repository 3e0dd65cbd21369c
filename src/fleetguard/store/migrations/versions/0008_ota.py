"""OTA: releases, deltas, rollout campaigns, per-device campaign progress, device firmware status.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ota_releases",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("hardware_id", sa.String(length=128), nullable=False),
        sa.Column("release", sa.String(length=128), nullable=False),
        sa.Column("release_counter", sa.BigInteger(), nullable=False),
        sa.Column("target_path", sa.String(length=512), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("scan_id", sa.String(length=36), nullable=True),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hardware_id", "release", name="uq_ota_releases_name"),
        sa.UniqueConstraint("hardware_id", "release_counter", name="uq_ota_releases_counter"),
    )
    op.create_table(
        "ota_deltas",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("hardware_id", sa.String(length=128), nullable=False),
        sa.Column("from_sha256", sa.String(length=64), nullable=False),
        sa.Column("to_sha256", sa.String(length=64), nullable=False),
        sa.Column("target_path", sa.String(length=512), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("length", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hardware_id", "from_sha256", "to_sha256", name="uq_ota_deltas"),
    )
    op.create_table(
        "ota_campaigns",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("release_id", sa.String(length=36), nullable=False),
        sa.Column("hardware_id", sa.String(length=128), nullable=False),
        sa.Column("release", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("scope_ppm", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("open_waves", sa.Integer(), nullable=False),
        sa.Column("wave_opened_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("success_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "ota_campaign_devices",
        sa.Column("campaign_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("step_since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("detail", sa.String(length=1024), nullable=False),
        sa.PrimaryKeyConstraint("campaign_id", "device_id"),
    )
    with op.batch_alter_table("ota_campaign_devices", schema=None) as batch_op:
        batch_op.create_index("ix_ota_campaign_devices_device", ["device_id"], unique=False)
        batch_op.create_index("ix_ota_campaign_devices_wave", ["campaign_id", "wave", "step"], unique=False)
    op.create_table(
        "ota_device_status",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("hardware_id", sa.String(length=128), nullable=False),
        sa.Column("release", sa.String(length=128), nullable=False),
        sa.Column("release_counter", sa.BigInteger(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("device_id"),
    )


def downgrade() -> None:
    op.drop_table("ota_device_status")
    with op.batch_alter_table("ota_campaign_devices", schema=None) as batch_op:
        batch_op.drop_index("ix_ota_campaign_devices_wave")
        batch_op.drop_index("ix_ota_campaign_devices_device")
    op.drop_table("ota_campaign_devices")
    op.drop_table("ota_campaigns")
    op.drop_table("ota_deltas")
    op.drop_table("ota_releases")
