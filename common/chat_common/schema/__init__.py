"""The database schema: the tables as SQLAlchemy Core metadata and their Alembic migrations."""
