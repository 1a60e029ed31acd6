"""The transparency log API (admin or read-only tokens): checkpoints, proofs, entries, the verifier key.

- ``GET /log/checkpoint``: the current C2SP signed note (``text/plain``); ``?format=json`` gives
  ``{origin, treeSize, rootHash, note, vkey}``.
- ``GET /log/proof/inclusion?hash=<leaf hash hex | manifest ID>[&size=N]``: the entry and its RFC 9162
  inclusion proof in the tree of ``size`` entries (default: the current checkpoint, included).
- ``GET /log/proof/consistency?from=M[&to=N]``: that the tree of M entries is a prefix of the tree of N.
- ``GET /log/entries/{index}``: the entry (data hex, leaf hash) and, for a manifest entry, its ID and hash.
- ``GET /log/vkey``: the note verifier key to pin (``MLPROV_TLOG_VKEY``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from controller.api.deps import ReaderDep, SessionDep, StateDep
from controller.errors import InvalidInputError, NotFoundError, UnavailableError
from controller.services.artifacts_query import get_manifest_row
from provenance.errors import InvalidInputError as ProvenanceInvalidInput
from provenance.errors import ProofError, TransparencyLogError
from provenance.tlog.base import TransparencyLog
from provenance.tlog.entries import manifest_entry_leaf, parse_manifest_entry

__all__ = ["router"]

router = APIRouter(prefix="/log", tags=["transparency log"])

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def _log(state: StateDep) -> TransparencyLog:
    if state.tlog is None:
        raise UnavailableError("the transparency log is not open")
    return state.tlog.log


@router.get("/checkpoint", response_model=None, responses={200: {"content": {"text/plain": {}}}})
def checkpoint(state: StateDep, _: ReaderDep, format: str = "note") -> Response | dict[str, Any]:
    signed = _log(state).checkpoint()
    if format == "json":
        return {**signed.to_dict(), "vkey": getattr(state.tlog.log if state.tlog else None, "verifier_key", None)}
    if format != "note":
        raise InvalidInputError("format must be note or json")
    return PlainTextResponse(signed.note)


@router.get("/vkey", response_class=PlainTextResponse)
def vkey(state: StateDep, _: ReaderDep) -> str:
    key = getattr(_log(state), "verifier_key", None)
    if not isinstance(key, str):
        raise NotFoundError("this log has no note verifier key")
    return key + "\n"


@router.get("/proof/inclusion", responses={404: {"description": "no such entry or manifest"}})
def inclusion(
    state: StateDep,
    session: SessionDep,
    _: ReaderDep,
    hash: Annotated[str, Query(min_length=1, max_length=255, description="leaf hash (hex) or manifest ID")],
    size: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:
    log = _log(state)
    if _HEX64.fullmatch(hash):
        leaf = bytes.fromhex(hash)
    else:
        row = get_manifest_row(session, hash)
        try:
            leaf = manifest_entry_leaf(row.manifest)
        except ProvenanceInvalidInput as exc:
            raise InvalidInputError(str(exc)) from None
    entry = log.find(leaf)
    if entry is None:
        raise NotFoundError(f"no log entry with leaf hash {leaf.hex()}")
    answer: dict[str, Any] = {"entry": entry.to_dict()}
    if size is None:
        signed = log.checkpoint()
        size = signed.size
        answer["checkpoint"] = signed.to_dict()
    if entry.index >= size:
        raise InvalidInputError(f"entry {entry.index} is not in a tree of {size} entries")
    try:
        answer["inclusionProof"] = log.inclusion_proof(entry.index, size).to_dict()
    except ProofError as exc:
        raise InvalidInputError(str(exc)) from None
    return answer


@router.get("/proof/consistency")
def consistency(
    state: StateDep,
    _: ReaderDep,
    old: Annotated[int, Query(alias="from", ge=0)],
    new: Annotated[int | None, Query(alias="to", ge=0)] = None,
) -> dict[str, Any]:
    log = _log(state)
    target = log.size() if new is None else new
    if old > target:
        raise InvalidInputError(f"from ({old}) is larger than to ({target})")
    try:
        return log.consistency_proof(old, target).to_dict()
    except ProofError as exc:
        raise InvalidInputError(str(exc)) from None


@router.get("/entries/{index}", responses={404: {"description": "no entry at this index"}})
def entry(index: int, state: StateDep, _: ReaderDep) -> dict[str, Any]:
    log = _log(state)
    if not 0 <= index < log.size():
        raise NotFoundError(f"no log entry {index}: the log has {log.size()} entries")
    try:
        found = log.entry(index)
    except TransparencyLogError as exc:
        raise UnavailableError(str(exc)) from None
    answer: dict[str, Any] = found.to_dict()
    try:
        parsed = parse_manifest_entry(found.data)
        answer["manifest"] = {"id": parsed.manifest_id, "hash": parsed.manifest_hash}
    except ProvenanceInvalidInput:
        answer["manifest"] = None
    return answer
