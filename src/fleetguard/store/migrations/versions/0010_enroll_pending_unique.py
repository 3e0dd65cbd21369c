"""Enrollment: at most one pending request per device (manufacturer, serial).

Two first requests of one device arriving at once could each find no pending request and insert
one (PostgreSQL's read committed isolation lets both through; SQLite's single writer does not). A
partial unique index makes the second insert fail; the queue then answers with the first request.

Rows that already break the rule are kept: every pending duplicate but the newest is marked
``rejected`` with a reason naming the request it duplicates, so nothing is lost and the operator's
queue shows each device once.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    connection = op.get_bind()
    requests = sa.table(
        "enroll_requests",
        sa.column("id", sa.String),
        sa.column("status", sa.String),
        sa.column("manufacturer", sa.String),
        sa.column("device_serial", sa.String),
        sa.column("created_at", sa.DateTime),
        sa.column("reason", sa.Text),
    )
    pending = connection.execute(
        sa.select(requests.c.id, requests.c.manufacturer, requests.c.device_serial)
        .where(requests.c.status == "pending")
        .order_by(requests.c.created_at.desc(), requests.c.id.desc())
    ).all()
    newest: dict[tuple[str, str], str] = {}
    for request_id, manufacturer, serial in pending:
        kept = newest.setdefault((manufacturer, serial), request_id)
        if kept != request_id:
            connection.execute(
                requests.update()
                .where(requests.c.id == request_id)
                .values(status="rejected", reason=f"duplicate of pending request {kept} (migration 0010)")
            )
    with op.batch_alter_table("enroll_requests", schema=None) as batch_op:
        batch_op.create_index(
            "uq_enroll_requests_pending",
            ["manufacturer", "device_serial"],
            unique=True,
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        )


def downgrade() -> None:
    with op.batch_alter_table("enroll_requests", schema=None) as batch_op:
        batch_op.drop_index("uq_enroll_requests_pending")
