"""Rebuild the initial Alembic revision from ``controller/store/models.py``.

Run after changing a table while the schema is still unreleased (one initial revision)::

    .venv/bin/python -m controller.store.migrations.regenerate

It deletes ``versions/0001_initial.py``, autogenerates it again against an empty SQLite database,
and ``tests/integration/test_migrations.py`` then checks it matches the models on SQLite and PostgreSQL.
Once a release has shipped, add new revisions instead (``alembic revision --autogenerate``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command

from controller.store.db import MIGRATIONS_DIR, _alembic_config

INITIAL = MIGRATIONS_DIR / "versions" / "0001_initial.py"


def regenerate() -> Path:
    INITIAL.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        config = _alembic_config(f"sqlite:///{Path(tmp) / 'empty.db'}")
        command.revision(config, message="initial schema", autogenerate=True, rev_id="0001")
    created = sorted((MIGRATIONS_DIR / "versions").glob("0001_*.py"))
    if len(created) != 1:
        raise RuntimeError(f"expected one 0001 revision, found {created}")
    if created[0] != INITIAL:
        created[0].rename(INITIAL)
    return INITIAL


def main() -> int:
    path = regenerate()
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
