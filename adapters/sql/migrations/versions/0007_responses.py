"""responses: /v1/responses answers kept per tenant (GET, DELETE, previous_response_id)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 14:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('responses',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('key_id', sa.UUID(), nullable=True),
    sa.Column('model', sa.String(length=256), nullable=False),
    sa.Column('conversation', sa.LargeBinary(), nullable=False),
    sa.Column('response', sa.LargeBinary(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_responses_tenant_created', 'responses', ['tenant_id', 'created_at'], unique=False)
    op.create_index('ix_responses_created', 'responses', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_responses_created', table_name='responses')
    op.drop_index('ix_responses_tenant_created', table_name='responses')
    op.drop_table('responses')
