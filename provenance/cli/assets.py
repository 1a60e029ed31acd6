"""atlas-cli's asset commands: ``dataset``, ``model``, ``software``, ``evaluation``
(``create``, ``list``, ``verify --id``, and the ``link-*`` shortcuts)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click

from provenance.cli.runtime import (
    create_options,
    echo_note,
    load_signer,
    open_cli_store,
    split_list,
    storage_options,
    tlog_option,
)

if TYPE_CHECKING:
    from provenance.keys import HashName
    from provenance.manifest import AssetKind

__all__ = ["dataset", "evaluation", "model", "software"]

_LIST_KINDS = {"model": "Model", "dataset": "Dataset", "software": "Software", "evaluation": "EvaluationResult"}


def _create(
    kind: str,
    *,
    pairs: list[tuple[Path, str]],
    name: str,
    author_org: str | None,
    author_name: str | None,
    description: str | None,
    linked: tuple[str, ...],
    key: Path | None,
    hash_alg: str,
    print_: bool,
    encoding: str,
    storage_type: str | None,
    storage_url: str | None,
    with_tdx: bool,
    software_type: str | None = None,
    version: str | None = None,
    metrics: dict[str, Any] | None = None,
    parameters: dict[str, Any] | None = None,
) -> None:
    from provenance.cli.creating import CreateRequest, create_manifest, render

    request = CreateRequest(
        kind=cast("AssetKind", kind),
        name=name,
        ingredients=pairs,
        hash_alg=cast("HashName", hash_alg),
        author_org=author_org,
        author_name=author_name,
        description=description,
        linked_manifests=linked,
        with_tdx=with_tdx,
        software_type=software_type,
        version=version,
        metrics=metrics,
        parameters=parameters or {},
    )
    identity = load_signer(key)
    store = open_cli_store(storage_type, storage_url) if (linked or not print_) else None
    created = create_manifest(request, identity=identity, store=store, note=echo_note)
    if print_:
        click.echo(render(created.manifest, encoding))
        return
    assert store is not None  # opened above whenever not printing
    from provenance.cli.tlogging import log_stored, open_cli_log

    tlog = open_cli_log(create=True)  # before storing: a log that cannot be opened stores nothing
    stored = store.put(created.manifest, c2pa=created.c2pa, oms_bundle=created.oms_bundle)
    if tlog is not None:
        log_stored(tlog, stored, store)
    click.echo(f"Manifest stored successfully with ID: {stored.id}")


def _asset_create(kind: str, extra: dict[str, Any] | None = None) -> Any:
    def body(
        paths: tuple[str, ...],
        ingredient_names: tuple[str, ...],
        name: str,
        author_org: str | None,
        author_name: str | None,
        description: str | None,
        linked_manifests: tuple[str, ...],
        key: Path | None,
        hash_alg: str,
        print_: bool,
        format_: str,
        storage_type: str | None,
        storage_url: str | None,
        with_tdx: bool,
        **more: Any,
    ) -> None:
        from provenance.cli.creating import pair_ingredients

        pairs = pair_ingredients(split_list(paths), split_list(ingredient_names))
        encoding = more.pop("encoding", None) or ("json" if format_ in ("standalone", "oms") else format_)
        _create(
            kind,
            pairs=pairs,
            name=name,
            author_org=author_org,
            author_name=author_name,
            description=description,
            linked=linked_manifests,
            key=key,
            hash_alg=hash_alg,
            print_=print_,
            encoding=encoding,
            storage_type=storage_type,
            storage_url=storage_url,
            with_tdx=with_tdx,
            **more,
        )

    return body


def _list(kind: str, storage_type: str | None, storage_url: str | None) -> None:
    wanted = _LIST_KINDS[kind]
    for summary in open_cli_store(storage_type, storage_url).list():
        if summary.kind == wanted:
            click.echo(
                f"Manifest: {summary.title} (ID: {summary.id}, Type: {summary.kind}, Created: {summary.created_at})"
            )


def _verify(manifest_id: str, storage_type: str | None, storage_url: str | None) -> None:
    from provenance.cli.verifying import run_verify

    run_verify(manifest_id, storage_type=storage_type, storage_url=storage_url)


def _add_list_and_verify(group: click.Group, kind: str) -> None:
    @group.command("list")
    @storage_options
    def list_(storage_type: str | None, storage_url: str | None) -> None:
        """List the stored manifests of this kind."""
        _list(kind, storage_type, storage_url)

    @group.command("verify")
    @click.option("--id", "manifest_id", required=True, help="Manifest ID to verify.")
    @storage_options
    @tlog_option
    def verify(manifest_id: str, storage_type: str | None, storage_url: str | None) -> None:
        """Verify a manifest and its whole chain: signatures, digests, links, transparency-log inclusion."""
        _verify(manifest_id, storage_type, storage_url)


# -- dataset --------------------------------------------------------------------------------------


@click.group()
def dataset() -> None:
    """Dataset manifests."""


@dataset.command("create")
@create_options()
def dataset_create(**kwargs: Any) -> None:
    """Create a signed dataset manifest for --paths (files or directories)."""
    _asset_create("dataset")(**kwargs)


_add_list_and_verify(dataset, "dataset")


# -- model ----------------------------------------------------------------------------------------


@click.group()
def model() -> None:
    """Model manifests (with an OpenSSF Model Signing bundle)."""


@model.command("create")
@create_options(formats=("json", "cbor", "standalone", "oms"))
@click.option(
    "--encoding",
    type=click.Choice(["json", "cbor"]),
    default=None,
    help="Encoding of --print (atlas-cli 0.2 spelling of --format).",
)
def model_create(**kwargs: Any) -> None:
    """Create a signed model manifest for --paths, plus its OMS bundle and C2PA sidecar."""
    _asset_create("model")(**kwargs)


_add_list_and_verify(model, "model")


@model.command("link-dataset")
@click.option("--model-id", required=True, help="Model manifest ID.")
@click.option("--dataset-id", required=True, help="Dataset manifest ID.")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), default=None, help="PEM key to re-sign with.")
@storage_options
@tlog_option
def model_link_dataset(
    model_id: str, dataset_id: str, key: Path | None, storage_type: str | None, storage_url: str | None
) -> None:
    """Link a dataset to a model: a new, re-signed version of the model manifest."""
    from provenance.cli.linking import link

    new_id = link(
        model_id, dataset_id, key=key, storage_type=storage_type, storage_url=storage_url, target_kind="Dataset"
    )
    click.echo(f"Successfully linked dataset {dataset_id} to model {model_id}")
    click.echo(f"Updated manifest ID: {new_id}")


# -- software -------------------------------------------------------------------------------------


@click.group()
def software() -> None:
    """Software manifests (code, scripts, containers)."""


@software.command("create")
@create_options()
@click.option("--software-type", required=True, help="Kind of software: script, container, VM...")
@click.option("--version", default=None, help="Software version.")
def software_create(**kwargs: Any) -> None:
    """Create a signed software manifest for --paths."""
    _asset_create("software")(**kwargs)


_add_list_and_verify(software, "software")


def _link_and_report(
    source: str, target: str, key: Path | None, storage_type: str | None, storage_url: str | None
) -> None:
    from provenance.cli.linking import link

    new_id = link(source, target, key=key, storage_type=storage_type, storage_url=storage_url)
    click.echo(f"Successfully linked manifest {source} to {target}")
    click.echo(f"Updated manifest ID: {new_id}")


@software.command("link-model")
@click.option("--software-id", required=True, help="Software manifest ID.")
@click.option("--model-id", required=True, help="Model manifest ID.")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), default=None, help="PEM key to re-sign with.")
@storage_options
@tlog_option
def software_link_model(
    software_id: str, model_id: str, key: Path | None, storage_type: str | None, storage_url: str | None
) -> None:
    """Link software to a model (as atlas-cli: a new version of the model manifest references it)."""
    _link_and_report(model_id, software_id, key, storage_type, storage_url)


@software.command("link-dataset")
@click.option("--software-id", required=True, help="Software manifest ID.")
@click.option("--dataset-id", required=True, help="Dataset manifest ID.")
@click.option("--key", type=click.Path(path_type=Path, dir_okay=False), default=None, help="PEM key to re-sign with.")
@storage_options
@tlog_option
def software_link_dataset(
    software_id: str, dataset_id: str, key: Path | None, storage_type: str | None, storage_url: str | None
) -> None:
    """Link software to a dataset (as atlas-cli: a new version of the dataset manifest references it)."""
    _link_and_report(dataset_id, software_id, key, storage_type, storage_url)


# -- evaluation -----------------------------------------------------------------------------------


@click.group()
def evaluation() -> None:
    """Evaluation-result manifests (linked to the model and dataset evaluated)."""


@evaluation.command("create")
@click.option("--path", "path", required=True, help="Evaluation results file.")
@click.option("--model-id", required=True, help="Manifest ID of the model evaluated.")
@click.option("--dataset-id", required=True, help="Manifest ID of the evaluation dataset.")
@click.option("--metrics", multiple=True, metavar="K=V,...", help="Metrics, comma-separated key=value pairs.")
@create_options(paths=False, links=False)
def evaluation_create(
    path: str,
    model_id: str,
    dataset_id: str,
    metrics: tuple[str, ...],
    **kwargs: Any,
) -> None:
    """Create a signed evaluation manifest cross-referencing the model and the dataset."""
    from provenance.cli.creating import pair_ingredients, parse_metrics

    pairs = pair_ingredients([path], ["Evaluation Results"])
    parsed = parse_metrics(split_list(metrics)) if metrics else {}
    _create(
        "evaluation",
        pairs=pairs,
        name=kwargs["name"],
        author_org=kwargs["author_org"],
        author_name=kwargs["author_name"],
        description=kwargs["description"],
        linked=(model_id, dataset_id),
        key=kwargs["key"],
        hash_alg=kwargs["hash_alg"],
        print_=kwargs["print_"],
        encoding=kwargs["format_"],
        storage_type=kwargs["storage_type"],
        storage_url=kwargs["storage_url"],
        with_tdx=kwargs["with_tdx"],
        metrics=parsed,
        parameters={"model_id": model_id, "dataset_id": dataset_id},
    )


_add_list_and_verify(evaluation, "evaluation")
