"""What the commands share: per-invocation settings, the store, the signing identity, the trust store,
and the option decorators of atlas-cli's common flags.

Settings, stores and keys load on first use inside a command and are cached on the click context of
that invocation only (tests run many invocations in one process with different environments).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from provenance.errors import InvalidInputError
from provenance.storage.base import STORAGE_TYPES

if TYPE_CHECKING:
    from provenance.config import CliSettings
    from provenance.keys import SigningIdentity, TrustStore
    from provenance.storage.base import ManifestStore

__all__ = [
    "create_options",
    "echo_note",
    "load_signer",
    "load_trust",
    "open_cli_store",
    "settings",
    "split_list",
    "storage_options",
    "tlog_enabled",
    "tlog_option",
]

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_STORAGE_TYPE = "database"
DEFAULT_STORAGE_URL = "http://localhost:8080"


def _meta() -> dict[str, Any]:
    return click.get_current_context().find_root().meta


class _Stderr:
    """Resolves ``sys.stderr`` at each write (click's test runner swaps it per invocation)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging() -> None:
    """Structured logs of the library go to stderr, warnings and up (``--debug``: everything), so stdout
    stays what scripts parse. Called by the commands that use the library, once per invocation."""
    meta = _meta()
    if meta.get("mlprov.logging"):
        return
    import logging

    import structlog

    level = logging.DEBUG if meta.get("mlprov.debug") else logging.WARNING
    saved = structlog.get_config()
    # Restore the previous configuration when the invocation ends (the CLI may run inside a process
    # that logs on, e.g. click's test runner or `mlprov serve`'s parent).
    click.get_current_context().find_root().call_on_close(lambda: structlog.configure(**saved))
    structlog.configure(
        logger_factory=structlog.PrintLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]  # a TextIO duck
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )
    meta["mlprov.logging"] = True


def settings() -> CliSettings:
    """The settings of this invocation (read from the environment once)."""
    meta = _meta()
    cached = meta.get("mlprov.settings")
    if cached is None:
        configure_logging()
        from pydantic import ValidationError

        from provenance.config import load_settings

        try:
            cached = load_settings()
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first.get("loc", ())) or "settings"
            raise InvalidInputError(f"MLPROV_{field.upper()}: {first.get('msg', 'invalid value')}") from None
        meta["mlprov.settings"] = cached
    return cached


def open_cli_store(storage_type: str | None, storage_url: str | None) -> ManifestStore:
    """The store the flags name (their defaults: atlas-cli's, or MLPROV_STORAGE_TYPE/URL when set)."""
    from provenance.storage import open_store

    conf = settings()
    return open_store(
        storage_type or conf.storage_type,
        storage_url or conf.storage_url,
        token=conf.token_value,
        timeout=conf.http_timeout,
        home=conf.home,
        signer=lambda: load_signer(None),
    )


def load_signer(key: Path | None) -> SigningIdentity:
    """``--key PEM`` (a bare EC/RSA key, as atlas-cli) or the identity under ``$MLPROV_HOME``."""
    from provenance.keys import load_identity, load_private_key_pem

    if key is not None:
        return load_private_key_pem(key)
    return load_identity(settings().home)


def load_trust() -> TrustStore:
    from provenance.keys import TrustStore

    return TrustStore.load(settings().trust_dir)


def echo_note(message: str) -> None:
    """One informational line on stderr (stdout stays parseable by scripts)."""
    click.echo(f"note: {message}", err=True)


def split_list(values: Iterable[str]) -> list[str]:
    """atlas-cli's comma lists: ``--paths=a,b --paths c`` gives ``[a, b, c]``; empty items are refused."""
    items: list[str] = []
    for value in values:
        for item in value.split(","):
            if not item.strip():
                raise InvalidInputError(f"empty item in the comma list {value!r}; remove the stray comma")
            items.append(item.strip())
    return items


def storage_options(f: F) -> F:
    f = click.option(
        "--storage-url",
        default=None,
        metavar="URL",
        help=f"Store URL: a directory for local-fs.  [default: {DEFAULT_STORAGE_URL}, or $MLPROV_STORAGE_URL]",
    )(f)
    f = click.option(
        "--storage-type",
        type=click.Choice(STORAGE_TYPES),
        default=None,
        help=f"Where manifests are kept.  [default: {DEFAULT_STORAGE_TYPE}, or $MLPROV_STORAGE_TYPE]",
    )(f)
    return f


def _no_tlog(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta["mlprov.no_tlog"] = True


def tlog_option(f: F) -> F:
    """``--no-tlog``: neither append to nor check the transparency log (as ``MLPROV_TLOG=off``)."""
    return click.option(
        "--no-tlog",
        is_flag=True,
        expose_value=False,
        callback=_no_tlog,
        help="Do not use the transparency log ($MLPROV_TLOG=off).",
    )(f)


def tlog_enabled() -> bool:
    """Whether this invocation appends to and checks the transparency log."""
    return not _meta().get("mlprov.no_tlog") and settings().tlog


def signing_options(f: F) -> F:
    f = click.option(
        "--hash-alg",
        type=click.Choice(["sha256", "sha384", "sha512"]),
        default="sha384",
        show_default=True,
        help="Hash of the signature and the ingredient digests.",
    )(f)
    f = click.option(
        "--key",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="PEM private key (EC or RSA) to sign with.  [default: the identity in $MLPROV_HOME]",
    )(f)
    return f


def create_options(
    *, paths: bool = True, links: bool = True, formats: tuple[str, ...] = ("json", "cbor")
) -> Callable[[F], F]:
    """atlas-cli's ``create`` flags (the asset-specific ones are added by each command)."""

    def decorate(f: F) -> F:
        f = tlog_option(f)
        f = storage_options(f)
        f = click.option(
            "--with-tdx", is_flag=True, help="Add a confidential-computing attestation (mock without TDX)."
        )(f)
        f = click.option(
            "--format",
            "format_",
            type=click.Choice(formats),
            default="json",
            show_default=True,
            help="Encoding of --print (cbor is printed as hex).",
        )(f)
        f = click.option("--print", "print_", is_flag=True, help="Print the signed manifest instead of storing it.")(f)
        f = signing_options(f)
        if links:
            f = click.option(
                "--linked-manifests",
                multiple=True,
                metavar="ID",
                help="Manifest to cross-reference (repeatable).",
            )(f)
        f = click.option("--description", default=None, help="Description.")(f)
        f = click.option("--author-name", default=None, help="Author (person).")(f)
        f = click.option("--author-org", default=None, help="Author (organisation).")(f)
        f = click.option("--name", required=True, help="Title of the manifest.")(f)
        if paths:
            f = click.option(
                "--ingredient-names",
                multiple=True,
                required=True,
                metavar="A,B,...",
                help="One name per path, comma-separated, in the same order.",
            )(f)
            f = click.option(
                "--paths",
                multiple=True,
                required=True,
                metavar="P1,P2,...",
                help="Files or directories, comma-separated (or repeated).",
            )(f)
        return f

    return decorate
