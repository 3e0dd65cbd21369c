"""PKI: CA certificates, issued certificates, CRL numbers.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pki_authorities",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("key_ref", sa.String(length=1024), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "pki_certificates",
        sa.Column("serial", sa.String(length=48), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=True),
        sa.Column("profile", sa.String(length=16), nullable=False),
        sa.Column("subject", sa.String(length=512), nullable=False),
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("crl_partition", sa.Integer(), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sha256", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revocation_reason", sa.String(length=32), nullable=True),
        sa.Column("renewed_from", sa.String(length=48), nullable=True),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["issuer_id"], ["pki_authorities.id"], ondelete="RESTRICT"),
        sa.PrimaryKeyConstraint("serial"),
        sa.UniqueConstraint("sha256", name="uq_pki_certificates_sha256"),
    )
    with op.batch_alter_table("pki_certificates", schema=None) as batch_op:
        batch_op.create_index("ix_pki_certificates_device", ["device_id"], unique=False)
        batch_op.create_index("ix_pki_certificates_not_after", ["not_after"], unique=False)
        batch_op.create_index("ix_pki_certificates_status", ["status"], unique=False)
        batch_op.create_index(
            "ix_pki_certificates_shard", ["issuer_id", "crl_partition", "status"], unique=False
        )
        batch_op.create_index("ix_pki_certificates_revoked_at", ["revoked_at"], unique=False)

    op.create_table(
        "pki_crl_numbers",
        sa.Column("issuer_id", sa.String(length=64), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["issuer_id"],
            ["pki_authorities.id"],
        ),
        sa.PrimaryKeyConstraint("issuer_id"),
    )


def downgrade() -> None:
    op.drop_table("pki_crl_numbers")
    with op.batch_alter_table("pki_certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_pki_certificates_revoked_at")
        batch_op.drop_index("ix_pki_certificates_shard")
        batch_op.drop_index("ix_pki_certificates_status")
        batch_op.drop_index("ix_pki_certificates_not_after")
        batch_op.drop_index("ix_pki_certificates_device")

    op.drop_table("pki_certificates")
    op.drop_table("pki_authorities")
