"""idempotency keys

Revision ID: 0006_idempotency
Revises: 0005_batches
Create Date: 2026-11-24 15:15:00
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


revision = '0006_idempotency'
down_revision = '0005_batches'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
