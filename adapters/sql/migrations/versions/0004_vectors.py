"""vector store (pgvector): collections, chunks partitioned by collection

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 11:20:00.000000

Needs the pgvector extension. A server without it stops here with one error naming scripts/pgvector.sh, before
anything is written (the whole migration runs in one transaction). Per-collection partitions and their HNSW indexes
are created at run time by scaigrid.adapters.vector.pgvector, not here.
"""
import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import UserDefinedType

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

MIN_VERSION = (0, 5)  # HNSW arrived in pgvector 0.5.0


class _Vector(UserDefinedType):  # local copy: a migration must not change when models.py does
    cache_ok = True

    def get_col_spec(self, **kw):
        return "vector"


def _ensure_pgvector() -> None:
    bind = op.get_bind()
    installed = bind.scalar(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
    if installed is None:
        if bind.scalar(sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")) is None:
            server = bind.scalar(sa.text("SHOW server_version"))
            raise RuntimeError(
                f"pgvector is not installed on this PostgreSQL server ({server}): run scripts/pgvector.sh as root "
                "on the database host (or install your distribution's postgresql-NN-pgvector), then upgrade again")
        if not bind.scalar(sa.text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")):
            database = bind.scalar(sa.text("SELECT current_database()"))
            raise RuntimeError(
                f"pgvector is installed but CREATE EXTENSION needs a superuser: ask one to run "
                f"'CREATE EXTENSION vector;' in database {database}, then upgrade again")
        op.execute("CREATE EXTENSION IF NOT EXISTS vector")
        installed = bind.scalar(sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'"))
    version = tuple(int(p) for p in installed.split(".")[:2])
    if version < MIN_VERSION:
        raise RuntimeError(f"pgvector {installed} has no HNSW index: 0.5 or newer is needed "
                           "(scripts/pgvector.sh installs 0.8; then ALTER EXTENSION vector UPDATE)")


def upgrade() -> None:
    _ensure_pgvector()
    op.create_table('vector_collections',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('tenant_id', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('dimensions', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant_id', 'name', name='uq_vector_collections_tenant_name')
    )
    op.create_table('vector_chunks',
    sa.Column('collection_id', sa.BigInteger(), nullable=False),
    sa.Column('tenant_id', sa.String(length=100), nullable=False),
    sa.Column('id', sa.String(length=100), nullable=False),
    sa.Column('document_id', sa.String(length=100), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('metadata', postgresql.JSONB(astext_type=sa.Text()), server_default='{}', nullable=False),
    sa.Column('embedding', _Vector(), nullable=False),
    sa.Column('tsv', postgresql.TSVECTOR(),
              sa.Computed("to_tsvector('english'::regconfig, text)", persisted=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['collection_id'], ['vector_collections.id'], ondelete='CASCADE',
                            name='fk_vector_chunks_collection'),
    sa.PrimaryKeyConstraint('id', 'collection_id', 'tenant_id', name='pk_vector_chunks'),  # id first: models.py
    postgresql_partition_by='LIST (collection_id)'
    )
    # Indexes on the partitioned parent: PostgreSQL creates them on every partition, present and future.
    # document_id alone: collection and tenant are constant within a partition (see models.py).
    op.create_index('ix_vector_chunks_document', 'vector_chunks', ['document_id'], unique=False)
    op.create_index('ix_vector_chunks_tsv', 'vector_chunks', ['tsv'], unique=False, postgresql_using='gin')


def downgrade() -> None:
    # Dropping the parent drops every partition with it. The extension stays: other databases' objects or an
    # operator may rely on it, and it costs nothing unused.
    op.drop_index('ix_vector_chunks_tsv', table_name='vector_chunks', postgresql_using='gin')
    op.drop_index('ix_vector_chunks_document', table_name='vector_chunks')
    op.drop_table('vector_chunks')
    op.drop_table('vector_collections')
