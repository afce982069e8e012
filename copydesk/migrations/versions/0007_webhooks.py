"""webhook endpoints and delivery outbox

Revision ID: 0007_webhooks
Revises: 0006_idempotency
Create Date: 2026-11-24 15:15:00
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


revision = '0007_webhooks'
down_revision = '0006_idempotency'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
