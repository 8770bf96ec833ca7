"""PostgreSQL through SQLAlchemy 2 (psycopg2 driver) and Alembic migrations."""
