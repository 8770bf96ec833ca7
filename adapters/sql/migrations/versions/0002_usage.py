"""usage ledger, daily rollups, limits

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:02:07.170602
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('limits',
    sa.Column('scope', sa.String(length=8), nullable=False),
    sa.Column('scope_id', sa.UUID(), nullable=False),
    sa.Column('rpm', sa.BigInteger(), nullable=True),
    sa.Column('tpm', sa.BigInteger(), nullable=True),
    sa.Column('daily_budget_micros', sa.BigInteger(), nullable=True),
    sa.Column('monthly_budget_micros', sa.BigInteger(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('scope', 'scope_id')
    )
    op.create_table('usage_daily',
    sa.Column('day', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=False),
    sa.Column('key_id', sa.UUID(), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('errors', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost_micros', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('day', 'tenant_id', 'key_id', 'model')
    )
    op.create_table('usage_ledger',
    sa.Column('request_id', sa.String(length=128), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tenant_id', sa.UUID(), nullable=True),
    sa.Column('key_id', sa.UUID(), nullable=True),
    sa.Column('route', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=128), nullable=True),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('cost_micros', sa.BigInteger(), nullable=False),
    sa.Column('latency_ms', sa.Double(), nullable=False),
    sa.Column('status', sa.Integer(), nullable=False),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.PrimaryKeyConstraint('request_id')
    )
    op.create_index('ix_usage_ledger_key_at', 'usage_ledger', ['key_id', 'at'], unique=False)
    op.create_index('ix_usage_ledger_tenant_at', 'usage_ledger', ['tenant_id', 'at'], unique=False)
    # the ledger is append-only: corrections are new rows, never edits
    op.execute("""
        CREATE FUNCTION usage_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'usage_ledger is append-only (% refused)', TG_OP; END $$;
        CREATE TRIGGER usage_ledger_append_only BEFORE UPDATE OR DELETE ON usage_ledger
            FOR EACH ROW EXECUTE FUNCTION usage_ledger_append_only();
    """)


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS usage_ledger_append_only ON usage_ledger; "
               "DROP FUNCTION IF EXISTS usage_ledger_append_only()")
    op.drop_index('ix_usage_ledger_tenant_at', table_name='usage_ledger')
    op.drop_index('ix_usage_ledger_key_at', table_name='usage_ledger')
    op.drop_table('usage_ledger')
    op.drop_table('usage_daily')
    op.drop_table('limits')
