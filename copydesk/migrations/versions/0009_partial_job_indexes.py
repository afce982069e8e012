"""jobs: the fair-rank index holds only active rows

Revision ID: 0009_partial_job_indexes
Revises: 0008_claim_index_order
Create Date: 2026-12-06 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009_partial_job_indexes'
down_revision = '0008_claim_index_order'
branch_labels = None
depends_on = None

_ACTIVE = "status IN ('queued', 'running')"


def _where(predicate: str) -> dict[str, sa.TextClause]:
    return {'postgresql_where': sa.text(predicate), 'sqlite_where': sa.text(predicate)}


def upgrade() -> None:
    # A job's status changes are never HOT updates (status is indexed), so each of its
    # three row versions is written to every index it belongs to: a finished one no
    # longer goes into the fair-rank index (only the active rows' newest rank is asked for).
    # (The batch rows' index stays whole: made partial on batch_id IS NOT NULL, SQLite
    # preferred it to ix_jobs_batch_active for the check whether a batch has jobs left.)
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_org_id_status_fair_rank')
        batch_op.create_index(
            'ix_jobs_active_org_id_fair_rank',
            ['org_id', 'fair_rank'],
            unique=False,
            **_where(_ACTIVE),
        )


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_active_org_id_fair_rank', **_where(_ACTIVE))
        batch_op.create_index(
            'ix_jobs_org_id_status_fair_rank', ['org_id', 'status', 'fair_rank'], unique=False
        )
