"""usage_ledger.client_request_id: the caller's own x-request-id, kept beside the id the gateway mints

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 23:50:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: adding it rewrites nothing, however long the ledger already is
    op.add_column('usage_ledger', sa.Column('client_request_id', sa.String(length=128), nullable=True))


def downgrade() -> None:
    op.drop_column('usage_ledger', 'client_request_id')
