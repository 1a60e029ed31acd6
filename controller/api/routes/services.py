"""``/api/v1/services``: the service catalog (admin writes; admin and read-only tokens read).

``POST /services/validate`` is the dry run of registration (``mlprov deploy`` calls it before it
changes anything): each entry goes through the same checks as ``POST``/``PUT`` (the ``ServiceSpec``
model, the name rule) and is compared with the catalog, and nothing is written.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller.api.deps import AdminDep, ReaderDep, SessionDep, SettingsDep
from controller.catalog import ServiceSpec, validate_for_runtime
from controller.errors import InvalidInputError
from controller.store import services_repo

__all__ = ["ServiceCheck", "ValidateRequest", "ValidateResult", "router"]

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
def create_service(spec: ServiceSpec, session: SessionDep, settings: SettingsDep, _: AdminDep) -> ServiceSpec:
    created = services_repo.create_service(session, _for_runtime(spec, settings.runtime))
    session.commit()
    return created


def _for_runtime(spec: ServiceSpec, runtime: str) -> ServiceSpec:
    """``spec`` checked for what the controller's runtime needs (on Kubernetes: an image, Job-valid fields),
    so a spec that cannot run is refused at registration (422 naming the field), not at launch."""
    try:
        return validate_for_runtime(spec, runtime)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]) from None


class ValidateRequest(BaseModel):
    """``POST /services/validate``: the entries to check, as they would be sent to ``POST``/``PUT``."""

    model_config = ConfigDict(extra="forbid")
    services: list[Any] = Field(max_length=1000, description="service specs (any JSON: each is checked alone)")


class ServiceCheck(BaseModel):
    index: int
    name: str | None
    action: Literal["create", "update", "unchanged", "invalid"]
    """What registering it would do: ``create`` (POST), ``update`` (PUT), ``unchanged`` or ``invalid``."""
    errors: list[str] = Field(default_factory=list)
    """``field: problem`` lines, as the 400/422 answer of a registration would name them."""


class ValidateResult(BaseModel):
    ok: bool
    services: list[ServiceCheck]


def _problems(exc: ValidationError) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in e['loc']) or '(entry)'}: {str(e['msg']).removeprefix('Value error, ')}"
        for e in exc.errors()
    ]


def _check(session: SessionDep, runtime: str, index: int, entry: Any, seen: set[str]) -> ServiceCheck:
    name = entry.get("name") if isinstance(entry, dict) and isinstance(entry.get("name"), str) else None
    try:
        spec = ServiceSpec.model_validate(entry, context={"runtime": runtime})
    except ValidationError as exc:
        return ServiceCheck(index=index, name=name, action="invalid", errors=_problems(exc))
    except InvalidInputError as exc:  # the name rule (400 on registration)
        return ServiceCheck(index=index, name=name, action="invalid", errors=[f"name: {exc}"])
    if spec.name in seen:
        return ServiceCheck(index=index, name=spec.name, action="invalid", errors=[f"name: {spec.name!r} is twice"])
    seen.add(spec.name)
    return ServiceCheck(index=index, name=spec.name, action=services_repo.planned_action(session, spec))


@router.post("/validate", response_model=ValidateResult)
def validate_services(body: ValidateRequest, session: SessionDep, settings: SettingsDep, _: AdminDep) -> ValidateResult:
    """Dry run: would registering these entries succeed, and would each create or update? Writes nothing."""
    seen: set[str] = set()
    checks = [_check(session, settings.runtime, i, entry, seen) for i, entry in enumerate(body.services)]
    session.rollback()
    return ValidateResult(ok=all(c.action != "invalid" for c in checks), services=checks)


@router.get("/{name:path}", response_model=ServiceSpec, responses=_ERRORS)
def get_service(name: str, session: SessionDep, _: ReaderDep) -> ServiceSpec:
    return services_repo.get_service(session, name)


@router.put("/{name:path}", response_model=ServiceSpec, responses={**_ERRORS, 409: {"description": "rename"}})
def replace_service(
    name: str, spec: ServiceSpec, session: SessionDep, settings: SettingsDep, _: AdminDep
) -> ServiceSpec:
    replaced = services_repo.replace_service(session, name, _for_runtime(spec, settings.runtime))
    session.commit()
    return replaced


@router.delete("/{name:path}", status_code=status.HTTP_204_NO_CONTENT, responses=_ERRORS)
def delete_service(name: str, session: SessionDep, _: AdminDep) -> None:
    services_repo.delete_service(session, name)
    session.commit()
