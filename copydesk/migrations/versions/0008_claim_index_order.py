"""the claim index in claim order: priority descending

Revision ID: 0008_claim_index_order
Revises: 0007_webhooks
Create Date: 2026-12-06 17:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0008_claim_index_order'
down_revision = '0007_webhooks'
branch_labels = None
depends_on = None

_QUEUED = {
    'postgresql_where': sa.text("status = 'queued'"),
    'sqlite_where': sa.text("status = 'queued'"),
}


def upgrade() -> None:
    # ORDER BY priority DESC, fair_rank, seq could use the old (all ascending) index for
    # the priority only: SQLite sorted every queued row of the provider on each claim.
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_claim', **_QUEUED)
        batch_op.create_index(
            'ix_jobs_claim',
            ['provider', sa.text('priority DESC'), 'fair_rank', 'seq'],
            unique=False,
            **_QUEUED,
        )


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_claim', **_QUEUED)
        batch_op.create_index(
            'ix_jobs_claim', ['provider', 'priority', 'fair_rank', 'seq'], unique=False, **_QUEUED
        )
