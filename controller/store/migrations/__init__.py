"""Alembic migrations of the controller store, shipped inside the package (run by ``controller.store.db.migrate``)."""
