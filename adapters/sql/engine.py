"""Engines and sessions: one pooled engine per process and URL."""
from __future__ import annotations

from functools import lru_cache

from nameko.extensions import DependencyProvider
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker


def sqlalchemy_url(url: str) -> str:
    """Accept plain postgresql:// URLs; ScaiGrid always drives PostgreSQL through psycopg2."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


@lru_cache(maxsize=8)
def engine_for(url: str, pool_size: int = 10) -> Engine:
    return create_engine(sqlalchemy_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         pool_recycle=1800)


def sessions_for(url: str, pool_size: int = 10) -> sessionmaker[Session]:
    return sessionmaker(engine_for(url, pool_size), expire_on_commit=False)


class RepositoryProvider(DependencyProvider):
    """Hands workers one repository over the process's pooled engine: subclasses name `repository_class` (built
    with a sessionmaker); function config `db_pool` sizes the pool (default 10)."""

    repository_class: type

    def setup(self):
        fn_config = self.container.config.get("SCAIGRID_FUNCTION_CONFIG", {})
        self.repository = self.repository_class(sessions_for(self.container.config["DATABASE_URL"],
                                                             fn_config.get("db_pool", 10)),
                                                **self.repository_options(fn_config))

    def repository_options(self, fn_config: dict) -> dict:
        """More keyword arguments for the repository, from the function's config (none by default)."""
        return {}

    def get_dependency(self, worker_ctx):
        return self.repository
