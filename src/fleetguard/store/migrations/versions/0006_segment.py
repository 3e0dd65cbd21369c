"""Segmentation: MUD profiles, device network bindings, the fleet's MUD context, applied rulesets.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "segment_profiles",
        sa.Column("url", sa.String(length=2048), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=True),
        sa.Column("signer", sa.Text(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("url"),
    )
    op.create_table(
        "segment_bindings",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("ipv4", sa.String(length=15), nullable=True),
        sa.Column("ipv6", sa.String(length=39), nullable=True),
        sa.Column("mac", sa.String(length=17), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
        sa.UniqueConstraint("ipv4", name="uq_segment_bindings_ipv4"),
        sa.UniqueConstraint("ipv6", name="uq_segment_bindings_ipv6"),
        sa.UniqueConstraint("mac", name="uq_segment_bindings_mac"),
    )
    op.create_table(
        "segment_settings",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "segment_applies",
        sa.Column("generation", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("actor", sa.String(length=256), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("generation"),
    )


def downgrade() -> None:
    op.drop_table("segment_applies")
    op.drop_table("segment_settings")
    op.drop_table("segment_bindings")
    op.drop_table("segment_profiles")
