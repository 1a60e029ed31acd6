"""The CLI's transparency log: the local log in ``$MLPROV_HOME/tlog`` (``MLPROV_TLOG_DIR``).

- Commands that store a manifest open the log *before* storing (a log that cannot be opened stores
  nothing), store, then append the manifest's entry (:mod:`provenance.tlog.entries`). An append that
  fails removes the manifest just stored where the store allows it and exits non-zero. The entry's
  index is logged (event ``tlog.appended``, shown with ``--debug``), never printed: the stdout lines
  scripts parse and the stderr of a successful create stay as atlas-cli's.
- ``verify`` adds :func:`provenance.checks.tlog_inclusion_check` when the log exists.
- ``--no-tlog`` / ``MLPROV_TLOG=off`` turn both off. Checkpoints are verified with ``MLPROV_TLOG_VKEY``
  when set, else with the log's own key.

The log is one writer at a time (a file lock): an invocation waits up to :data:`LOCK_TIMEOUT` seconds
for another one to finish with it. It is closed when the invocation ends.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Final

import click

from provenance.cli.runtime import settings, tlog_enabled

if TYPE_CHECKING:
    import httpx

    from provenance.report import NodeCheck
    from provenance.storage.base import ManifestStore, StoredManifest
    from provenance.tlog.base import LogEntry
    from provenance.tlog.checkpoint import SignedCheckpoint
    from provenance.tlog.local import LocalTransparencyLog
    from provenance.tlog.merkle import ConsistencyProof

__all__ = ["LOCK_TIMEOUT", "ServerLog", "inclusion_check", "log_stored", "open_cli_log", "verifier_keys"]

LOCK_TIMEOUT: Final = 10.0


def open_cli_log(*, create: bool, always: bool = False) -> LocalTransparencyLog | None:
    """The configured log, or ``None`` when it is turned off (unless ``always``) or, without ``create``,
    does not exist yet."""
    if not always and not tlog_enabled():
        return None
    path = settings().tlog_path
    if not create and not (path / "entries.log").is_file():
        return None
    from provenance.tlog.local import LocalTransparencyLog

    log = LocalTransparencyLog(path, lock_timeout=LOCK_TIMEOUT)
    click.get_current_context().find_root().call_on_close(log.close)
    return log


def verifier_keys(log: LocalTransparencyLog) -> str:
    """The key the log's checkpoints are checked with: ``MLPROV_TLOG_VKEY``, else the log's own."""
    return settings().tlog_vkey or log.verifier_key


def log_stored(log: LocalTransparencyLog, stored: StoredManifest, store: ManifestStore) -> LogEntry:
    """Append a manifest just stored; on failure remove it from the store (best effort) and raise."""
    import structlog

    from provenance.errors import ProvenanceError, TransparencyLogError
    from provenance.tlog.entries import manifest_entry

    try:
        entry = log.append(manifest_entry(stored.manifest))
    except ProvenanceError as exc:
        with contextlib.suppress(ProvenanceError):
            store.delete(stored.id)
        raise TransparencyLogError(f"manifest {stored.id} could not be logged, so it was not kept: {exc}") from None
    structlog.get_logger(__name__).info("tlog.appended", manifest_id=stored.id, index=entry.index, log=str(log.root))
    return entry


def inclusion_check() -> NodeCheck | None:
    """The inclusion check against the configured log's current checkpoint, when that log exists."""
    log = open_cli_log(create=False)
    if log is None:
        return None
    from provenance.checks import tlog_inclusion_check

    return tlog_inclusion_check(log, verifier_keys=verifier_keys(log))


class ServerLog:
    """The controller's transparency log over HTTP (``/api/v1/log``), enough for ``audit_checkpoint``:
    ``checkpoint()`` and ``consistency_proof()``. Sends ``MLPROV_TOKEN`` as the bearer token."""

    def __init__(self, url: str) -> None:
        import httpx

        headers = {"Accept": "application/json"}
        token = settings().token_value
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.url = url.rstrip("/")
        self._client = httpx.Client(
            base_url=self.url + "/api/v1/log", headers=headers, timeout=settings().http_timeout, trust_env=False
        )
        click.get_current_context().find_root().call_on_close(self._client.close)

    def _get(self, path: str, **params: int) -> httpx.Response:
        import httpx

        from provenance.errors import TransparencyLogError

        try:
            response = self._client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise TransparencyLogError(f"cannot reach the log at {self.url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            detail = response.text.strip()[:200]
            raise TransparencyLogError(f"the log at {self.url} answered {path} with {response.status_code}: {detail}")
        return response

    def vkey(self) -> str:
        return self._get("/vkey").text.strip()

    def checkpoint(self) -> SignedCheckpoint:
        """The served checkpoint, parsed only: ``audit_checkpoint`` verifies it with the pinned key."""
        from provenance.tlog.checkpoint import Checkpoint, SignedCheckpoint, parse_note

        note = self._get("/checkpoint").text
        return SignedCheckpoint(Checkpoint.from_body(parse_note(note).text), note)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ConsistencyProof:
        from provenance.tlog.merkle import ConsistencyProof

        params: dict[str, int] = {"from": old_size}
        if new_size is not None:
            params["to"] = new_size
        return ConsistencyProof.from_dict(self._get("/proof/consistency", **params).json())
