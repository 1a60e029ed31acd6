"""Alembic ``upgrade head`` builds exactly the models' schema, on SQLite and PostgreSQL.

If this fails after a change to ``controller/store/models.py``, regenerate the initial revision:
``.venv/bin/python -m controller.store.migrations.regenerate``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from controller.store.db import MIGRATIONS_DIR, _alembic_config, make_engine, migrate
from controller.store.models import Base

pytestmark = pytest.mark.integration

REGENERATE = "run `.venv/bin/python -m controller.store.migrations.regenerate`"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def test_upgrade_head_matches_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        migrate(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            diff = compare_metadata(context, Base.metadata)
            assert diff == [], f"migrations and models differ: {REGENERATE}\n{diff}"
            assert (
                context.get_current_revision()
                == ScriptDirectory.from_config(_alembic_config(db_url)).get_current_head()
            )
        assert set(inspect(engine).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    finally:
        engine.dispose()


def test_migrate_is_idempotent(db_url: str) -> None:
    migrate(db_url)
    migrate(db_url)  # every controller start runs it


def test_one_head_shipped_in_the_package() -> None:
    script = ScriptDirectory.from_config(_alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "script.py.mako").is_file()
