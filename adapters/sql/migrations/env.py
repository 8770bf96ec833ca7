"""Alembic environment: the URL comes from the caller (scaigrid db upgrade), the metadata from models.py."""
from alembic import context
from sqlalchemy import create_engine, pool

import scaigrid.adapters.sql.rag_models  # noqa: F401  (its tables join Base.metadata)
import scaigrid.adapters.vector.models  # noqa: F401
from scaigrid.adapters.sql.models import Base

config = context.config


def include_object(obj, name, type_, reflected, compare_to) -> bool:
    """Per-collection vector partitions (vector_chunks_<id>) are made at run time, not by migrations."""
    return not (name or "").startswith("vector_chunks_")


def run() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=Base.metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata, include_object=include_object)
        with context.begin_transaction():
            context.run_migrations()


run()
