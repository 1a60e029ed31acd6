"""The click commands ``mlprov deploy`` and ``mlprov pipeline test|import-test`` (``controller.cli`` adds them).

Only option parsing lives here (this module imports nothing but click): each command imports
:mod:`controller.pipeline.runner` when it runs. Exit codes: 0 ok, 2 bad input, 4 a check failed,
5 Airflow, the controller or the target unreachable, 1 anything else; failures print one ``error:`` line.
"""

from __future__ import annotations

from pathlib import Path

import click

__all__ = ["deploy_command", "pipeline_group"]

_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command("deploy")
@click.option(
    "--controller",
    "controller_url",
    envvar="MLPROV_CONTROLLER_URL",
    required=True,
    help="The controller's URL (MLPROV_CONTROLLER_URL); its admin token from MLPROV_TOKEN.",
)
@click.option("--dags", type=_DIR, required=True, help="The folder of DAG files.")
@click.option("--plugins", type=_DIR, default=None, help="The folder of Airflow plugins.")
@click.option("--services", type=_FILE, default=None, help="services.yaml to register in the controller.")
@click.option(
    "--to",
    "dest",
    default=None,
    help="A folder, s3://bucket/prefix or git+<repo>#<branch>; omitted: the files are already "
    "where Airflow reads them (only the services and the record).",
)
@click.option("--pipeline", default=None, help="Pipeline name of the record (default CI_PROJECT_PATH).")
@click.option("--environment", default=None, help="Environment of the record (default CI_ENVIRONMENT_NAME).")
@click.option("--commit", default=None, help="The deployed commit (default CI_COMMIT_SHA or git HEAD).")
@click.option("--ref", default=None, help="The deployed branch or tag (default CI_COMMIT_REF_NAME).")
@click.option(
    "--images",
    type=_FILE,
    default=None,
    help="Dotenv of image references from the build jobs; ${NAME} in services.yaml images is replaced.",
)
@click.option("--require-pinned-images", is_flag=True, help="Refuse service images not pinned by @sha256: digest.")
@click.option("--json", "as_json", is_flag=True, help="Print the controller's record as JSON.")
def deploy_command(
    controller_url: str, dags: Path, plugins: Path | None, services: Path | None, dest: str | None,
    pipeline: str | None, environment: str | None, commit: str | None, ref: str | None, images: Path | None,
    require_pinned_images: bool, as_json: bool,
) -> int:  # fmt: skip
    """Validate, stage, register services, switch and record a deployment: all or nothing."""
    from controller.pipeline.runner import run_deploy

    return run_deploy(
        controller_url=controller_url,
        dags=dags,
        plugins=plugins,
        services=services,
        dest=dest,
        pipeline=pipeline,
        environment=environment,
        commit=commit,
        ref=ref,
        images=images,
        require_pinned_images=require_pinned_images,
        as_json=as_json,
    )


@click.group("pipeline")
def pipeline_group() -> None:
    """Test pipelines end to end and import-test DAG folders (the GitLab CI templates call these)."""


@pipeline_group.command("import-test")
@click.option("--dags", type=_DIR, default=Path("dags"), show_default=True, help="The folder of DAG files.")
@click.option("--plugins", type=_DIR, default=None, help="The folder of Airflow plugins.")
def import_test(dags: Path, plugins: Path | None) -> int:
    """Every DAG file imports in Airflow's DagBag, without errors and without I/O at parse time."""
    from controller.pipeline.runner import run_import_test

    return run_import_test(dags=dags, plugins=plugins)


@pipeline_group.command("test")
@click.argument("dag_id")
@click.option("--conf", default="{}", help="DAG params as a JSON object.")
@click.option(
    "--target",
    default="local",
    show_default=True,
    help="`local` (the `make up` stack of MLPROV_HOME) or the Airflow URL.",
)
@click.option("--airflow-url", envvar="AIRFLOW_URL", default=None, help="Airflow's URL (overrides --target).")
@click.option("--airflow-user", envvar="AIRFLOW_USER", default=None, help="Airflow user (or AIRFLOW_TOKEN).")
@click.option("--airflow-password", envvar="AIRFLOW_PASSWORD", default=None, help="Airflow password.")
@click.option(
    "--controller-url",
    envvar="MLPROV_CONTROLLER_URL",
    default=None,
    help="The controller's URL; its token from MLPROV_TOKEN.",
)
@click.option("--mlflow-url", envvar="MLPROV_MLFLOW_UI_URL", default=None, help="MLflow's URL (optional).")
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a JUnit XML report (one testcase per check) here.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=900.0,
    show_default=True,
    help="Seconds for the DAG to appear, and for the run to finish.",
)
@click.option(
    "--deploy/--no-deploy",
    "do_deploy",
    default=True,
    show_default=True,
    help="Deploy (services, DAG files, record) before the run.",
)
@click.option("--dags", type=_DIR, default=None, help="DAG folder to deploy (default ./dags).")
@click.option("--plugins", type=_DIR, default=None, help="Plugins folder to deploy (default ./plugins if any).")
@click.option("--services", type=_FILE, default=None, help="services.yaml (default ./services.yaml if any).")
@click.option("--deploy-to", default=None, help="Deploy target (see `mlprov deploy --to`); omitted: in place.")
@click.option("--pipeline", default=None, help="Pipeline name of the deployment record.")
@click.option("--environment", default=None, help="Environment of the deployment record (default `test`).")
def pipeline_test(
    dag_id: str, conf: str, target: str, airflow_url: str | None, airflow_user: str | None,
    airflow_password: str | None, controller_url: str | None, mlflow_url: str | None, junit_path: Path | None,
    timeout: float, do_deploy: bool, dags: Path | None, plugins: Path | None, services: Path | None,
    deploy_to: str | None, pipeline: str | None, environment: str | None,
) -> int:  # fmt: skip
    """Deploy, trigger DAG_ID through Airflow's REST API, wait, then check the run end to end."""
    from controller.pipeline.runner import run_pipeline_test

    return run_pipeline_test(
        dag_id=dag_id,
        conf=conf,
        target=target,
        airflow_url=airflow_url,
        airflow_user=airflow_user,
        airflow_password=airflow_password,
        controller_url=controller_url,
        mlflow_url=mlflow_url,
        junit_path=junit_path,
        timeout=timeout,
        do_deploy=do_deploy,
        dags=dags,
        plugins=plugins,
        services=services,
        deploy_to=deploy_to,
        pipeline=pipeline,
        environment=environment,
    )
