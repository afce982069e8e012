"""batches of jobs

Revision ID: 0005_batches
Revises: 0004_files
Create Date: 2026-11-24 15:15:00
"""

from __future__ import annotations

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401


revision = '0005_batches'
down_revision = '0004_files'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
