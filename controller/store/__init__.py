"""The controller's persistent store: SQLAlchemy 2 models, engines and sessions, Alembic migrations."""

from controller.store.db import default_sqlite_url, make_engine, make_session_factory, migrate, session_scope
from controller.store.models import Base

__all__ = ["Base", "default_sqlite_url", "make_engine", "make_session_factory", "migrate", "session_scope"]
