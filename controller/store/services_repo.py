"""Catalog persistence: the ``services`` table, read and written as ``ServiceSpec``.

Functions add/flush but do not commit; the caller commits (one unit of work per request).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.catalog import ServiceSpec, validate_service_name
from controller.errors import ConflictError, ServiceNotFoundError
from controller.store.models import Service, utcnow

__all__ = [
    "create_service",
    "delete_service",
    "get_service",
    "list_services",
    "planned_action",
    "replace_service",
    "upsert_services",
]


def _spec(row: Service) -> ServiceSpec:
    return ServiceSpec.model_validate(row.spec)


def _row(session: Session, name: str) -> Service:
    row = session.get(Service, validate_service_name(name))
    if row is None:
        raise ServiceNotFoundError(f"no service named {name!r}: register it with POST /api/v1/services")
    return row


def get_service(session: Session, name: str) -> ServiceSpec:
    return _spec(_row(session, name))


def list_services(session: Session) -> list[ServiceSpec]:
    return [_spec(row) for row in session.scalars(select(Service).order_by(Service.name))]


def planned_action(session: Session, spec: ServiceSpec) -> Literal["create", "update", "unchanged"]:
    """What registering ``spec`` would do to the stored services (a dry run: reads only)."""
    row = session.get(Service, spec.name)
    if row is None:
        return "create"
    return "unchanged" if row.spec == spec.model_dump(mode="json") else "update"


def create_service(session: Session, spec: ServiceSpec) -> ServiceSpec:
    if session.get(Service, spec.name) is not None:
        raise ConflictError(f"service {spec.name!r} exists: change it with PUT /api/v1/services/{spec.name}")
    session.add(Service(name=spec.name, kind=spec.kind.value, spec=spec.model_dump(mode="json")))
    try:
        session.flush()
    except IntegrityError as exc:  # created concurrently by another request
        session.rollback()
        raise ConflictError(f"service {spec.name!r} exists: change it with PUT /api/v1/services/{spec.name}") from exc
    return spec


def replace_service(session: Session, name: str, spec: ServiceSpec) -> ServiceSpec:
    row = _row(session, name)
    if spec.name != row.name:
        raise ConflictError(
            f"the body names {spec.name!r} but the path {row.name!r}: a service cannot be renamed, "
            "create the new name and delete the old"
        )
    row.kind = spec.kind.value
    row.spec = spec.model_dump(mode="json")
    row.updated_at = utcnow()
    session.flush()
    return spec


def delete_service(session: Session, name: str) -> None:
    session.delete(_row(session, name))
    session.flush()


def upsert_services(session: Session, specs: Iterable[ServiceSpec]) -> None:
    """Insert or replace each service (``services.yaml`` at start); other services are left alone."""
    for spec in specs:
        row = session.get(Service, spec.name)
        data = spec.model_dump(mode="json")
        if row is None:
            session.add(Service(name=spec.name, kind=spec.kind.value, spec=data))
        elif row.spec != data:
            row.kind = spec.kind.value
            row.spec = data
            row.updated_at = utcnow()
    session.flush()
