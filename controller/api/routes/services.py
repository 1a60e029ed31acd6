"""``/api/v1/services``: the service catalog (admin writes; admin and read-only tokens read)."""

from __future__ import annotations

from fastapi import APIRouter, status

from controller.api.deps import AdminDep, ReaderDep, SessionDep
from controller.catalog import ServiceSpec
from controller.store import services_repo

__all__ = ["router"]

router = APIRouter(prefix="/services", tags=["services"])

_ERRORS: dict[int | str, dict[str, str]] = {
    400: {"description": "invalid service name (e.g. path traversal)"},
    404: {"description": "no such service"},
}


@router.get("", response_model=list[ServiceSpec])
def list_services(session: SessionDep, _: ReaderDep) -> list[ServiceSpec]:
    return services_repo.list_services(session)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ServiceSpec,
    responses={**_ERRORS, 409: {"description": "a service with this name exists"}},
)
def create_service(spec: ServiceSpec, session: SessionDep, _: AdminDep) -> ServiceSpec:
    created = services_repo.create_service(session, spec)
    session.commit()
    return created


@router.get("/{name:path}", response_model=ServiceSpec, responses=_ERRORS)
def get_service(name: str, session: SessionDep, _: ReaderDep) -> ServiceSpec:
    return services_repo.get_service(session, name)


@router.put("/{name:path}", response_model=ServiceSpec, responses={**_ERRORS, 409: {"description": "rename"}})
def replace_service(name: str, spec: ServiceSpec, session: SessionDep, _: AdminDep) -> ServiceSpec:
    replaced = services_repo.replace_service(session, name, spec)
    session.commit()
    return replaced


@router.delete("/{name:path}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_service(name: str, session: SessionDep, _: AdminDep) -> None:
    services_repo.delete_service(session, name)
    session.commit()
