"""batches of jobs

Revision ID: 0005_batches
Revises: 0004_files
Create Date: 2026-11-24 15:15:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005_batches'
down_revision = '0004_files'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('batches',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('org_id', sa.String(length=36), nullable=False),
    sa.Column('agent_id', sa.String(length=100), nullable=False),
    sa.Column('agent_version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['org_id'], ['organizations.id'], name=op.f('fk_batches_org_id_organizations')),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_batches')),
    sa.UniqueConstraint('id', name=op.f('uq_batches_id'))
    )
    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.create_index('ix_batches_org_id_seq', ['org_id', 'seq'], unique=False)
        batch_op.create_index('ix_batches_org_id_agent_id_seq', ['org_id', 'agent_id', 'seq'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('batch_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('row_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('custom_id', sa.String(length=200), nullable=True))
        batch_op.create_index('ix_jobs_batch_id_row_index', ['batch_id', 'row_index'], unique=False)
        batch_op.create_index('ix_jobs_batch_active', ['batch_id'], unique=False, postgresql_where=sa.text("status IN ('queued', 'running') AND batch_id IS NOT NULL"), sqlite_where=sa.text("status IN ('queued', 'running') AND batch_id IS NOT NULL"))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_batch_active', postgresql_where=sa.text("status IN ('queued', 'running') AND batch_id IS NOT NULL"), sqlite_where=sa.text("status IN ('queued', 'running') AND batch_id IS NOT NULL"))
        batch_op.drop_index('ix_jobs_batch_id_row_index')
        batch_op.drop_column('custom_id')
        batch_op.drop_column('row_index')
        batch_op.drop_column('batch_id')

    with op.batch_alter_table('batches', schema=None) as batch_op:
        batch_op.drop_index('ix_batches_org_id_agent_id_seq')
        batch_op.drop_index('ix_batches_org_id_seq')

    op.drop_table('batches')
