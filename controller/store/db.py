"""Engines, sessions and migrations for the controller store (SQLite by default, PostgreSQL by URL).

::

    engine = make_engine(settings.effective_database_url)
    migrate(engine)                       # alembic upgrade head, migrations shipped in the package
    factory = make_session_factory(engine)
    with session_scope(factory) as session:   # commits on success, rolls back on error
        session.add(...)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import URL
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

__all__ = [
    "MIGRATIONS_DIR",
    "SQLITE_BUSY_TIMEOUT_MS",
    "default_sqlite_url",
    "make_engine",
    "make_session_factory",
    "migrate",
    "normalize_url",
    "session_scope",
]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 10_000


def default_sqlite_url(home: Path) -> str:
    """``sqlite:///$MLPROV_HOME/controller.db``."""
    return f"sqlite:///{(home / 'controller.db').resolve()}"


def normalize_url(url: str | URL) -> URL:
    """Map plain ``postgresql://`` / ``postgres://`` URLs to the psycopg 3 driver SQLAlchemy should use."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _on_sqlite_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes with WAL
    finally:
        cursor.close()


def make_engine(url: str | URL, *, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        kwargs: dict[str, Any] = {
            "connect_args": {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        }
        if _is_memory_sqlite(parsed):
            kwargs["poolclass"] = StaticPool  # one shared in-memory database
        elif parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, echo=echo, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    return create_engine(parsed, echo=echo, pool_pre_ping=True)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after commit (route handlers serialise them).
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit when the block ends normally, roll back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _alembic_config(url: str) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(engine_or_url: Engine | str | URL, revision: str = "head") -> None:
    """Run ``alembic upgrade <revision>`` on the database (idempotent; safe at every start)."""
    from alembic import command

    engine = engine_or_url if isinstance(engine_or_url, Engine) else make_engine(engine_or_url)
    try:
        config = _alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        if engine is not engine_or_url:
            engine.dispose()
