"""What ``mlprov deploy`` and ``mlprov pipeline test|import-test`` do (``controller.pipeline.commands`` declares
their options and imports this module only when one runs, so ``mlprov --help`` stays fast).

Errors of :mod:`controller.pipeline.errors` become one ``error: ...`` line and their exit code:
0 ok, 2 bad input, 4 a check failed, 5 Airflow, the controller or the target unreachable, 1 else.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import httpx

from controller.pipeline.airflow_client import AirflowClient
from controller.pipeline.checks import CHECKS, PipelineTest, PipelineTestOptions, PipelineTestOutcome
from controller.pipeline.controller_client import ControllerClient
from controller.pipeline.dagcheck import check_dags
from controller.pipeline.deploy import DeployOptions, DeployResult, deploy
from controller.pipeline.errors import BadInputError, PipelineError, UnreachableError
from controller.pipeline.junit import CheckResult, write_junit
from controller.pipeline.targets import publisher_for

__all__ = ["Target", "local_target", "print_summary", "run_deploy", "run_import_test", "run_pipeline_test"]


def _fail(exc: PipelineError) -> int:
    click.echo(f"error: {' '.join(str(exc).split())}", err=True)
    return exc.exit_code


def _default_pipeline(dags: Path) -> str:
    return os.environ.get("CI_PROJECT_PATH") or dags.resolve().parent.name or "default"


def _deploy_options(
    dags: Path, plugins: Path | None, services: Path | None, pipeline: str | None, environment: str | None,
    commit: str | None = None, ref: str | None = None,
) -> DeployOptions:  # fmt: skip
    return DeployOptions(
        dags=dags,
        plugins=plugins,
        services=services,
        pipeline=pipeline or _default_pipeline(dags),
        environment=environment or os.environ.get("CI_ENVIRONMENT_NAME") or "production",
        commit=commit,
        ref=ref,
    )


def _summary(result: DeployResult) -> str:
    d = result.deployment
    services = ", ".join(f"{s['name']}={s['action']}" for s in result.services) or "-"
    return (
        f"deployment {d.get('id')} recorded (sequence {d.get('sequence')}, manifest {d.get('manifest_id')}): "
        f"{len(result.files)} files, services {services}, target {result.target.get('kind')}"
    )


def run_deploy(
    controller_url: str, dags: Path, plugins: Path | None, services: Path | None, dest: str | None,
    pipeline: str | None, environment: str | None, commit: str | None, ref: str | None, images: Path | None,
    require_pinned_images: bool, as_json: bool,
) -> int:  # fmt: skip
    """Validate, stage, register services, switch and record a deployment: all or nothing."""
    options = replace(
        _deploy_options(dags, plugins, services, pipeline, environment, commit, ref),
        images=images,
        require_pinned_images=require_pinned_images,
    )
    try:
        publisher = publisher_for(dest) if dest else None
        with ControllerClient(controller_url, os.environ.get("MLPROV_TOKEN")) as controller:
            result = deploy(options, controller, publisher, echo=click.echo)
    except PipelineError as exc:
        return _fail(exc)
    click.echo(json.dumps(result.deployment, indent=2) if as_json else _summary(result))
    return 0


def run_import_test(dags: Path, plugins: Path | None) -> int:
    """Every DAG file imports in Airflow's DagBag, without errors and without I/O at parse time."""
    try:
        report = check_dags(dags, plugins)
        for f in report.files:
            mark = "ok  " if f.ok else "FAIL"
            click.echo(f"{mark} {f.path}: {', '.join(f.dag_ids) or '(no DAG)'}")
        report.raise_for_problems()
    except PipelineError as exc:
        return _fail(exc)
    click.echo(f"{len(report.files)} file(s) import cleanly in {report.seconds:.1f} s")
    return 0


@dataclass(frozen=True)
class Target:
    airflow_url: str
    controller_url: str
    controller_token: str | None
    airflow_token: str | None = None
    airflow_user: str | None = None
    airflow_password: str | None = None
    mlflow_url: str | None = None


def local_target() -> Target:
    """The ``make up`` stack of ``$MLPROV_HOME`` (default ``./.mlprov``), from its ``up.json``."""
    from controller.stack import StackConfig, StackError, airflow_password, read_state

    try:
        config = StackConfig.from_env()
    except StackError as exc:
        raise BadInputError(str(exc)) from exc
    state = read_state(config.state_file)
    if state is None:
        raise UnreachableError(f"the local stack is not up (no {config.state_file}): run `make up` first")
    services: dict[str, Any] = state["services"]
    home = Path(state.get("home") or config.home)
    config = StackConfig(root=config.root, home=home)
    try:
        token = (home / "admin-token").read_text().strip()
        password = airflow_password(config)
    except (OSError, StackError) as exc:
        raise UnreachableError(f"the local stack in {home} has no credentials: {exc}") from exc
    return Target(
        airflow_url=str(services["airflow-api-server"]["url"]),
        controller_url=str(services["controller"]["url"]),
        controller_token=token,
        airflow_user="admin",
        airflow_password=password,
        mlflow_url=str(services["mlflow"]["url"]) if "mlflow" in services else None,
    )


@contextmanager
def _clients(target: Target) -> Iterator[tuple[AirflowClient, ControllerClient, httpx.Client | None]]:
    airflow = AirflowClient(
        target.airflow_url, token=target.airflow_token, username=target.airflow_user,
        password=target.airflow_password,
    )  # fmt: skip
    controller = ControllerClient(target.controller_url, target.controller_token)
    mlflow = httpx.Client(base_url=target.mlflow_url, timeout=30, trust_env=False) if target.mlflow_url else None
    try:
        yield airflow, controller, mlflow
    finally:
        airflow.close()
        controller.close()
        if mlflow is not None:
            mlflow.close()


def print_summary(outcome: PipelineTestOutcome, dag_id: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"mlprov pipeline test {dag_id}" + (f" (run {outcome.run_id})" if outcome.run_id else ""))
    table.add_column("check")
    table.add_column("result")
    table.add_column("seconds", justify="right")
    table.add_column("detail", overflow="fold")
    for r in outcome.results:
        mark = {True: "[green]passed[/]", False: "[red]FAILED[/]", None: "[yellow]skipped[/]"}[r.ok]
        table.add_row(r.name, mark, f"{r.seconds:.1f}", r.message)
    Console(width=max(120, Console().width)).print(table)


def run_pipeline_test(
    dag_id: str, conf: str, target: str, airflow_url: str | None, airflow_user: str | None,
    airflow_password: str | None, controller_url: str | None, mlflow_url: str | None, junit_path: Path | None,
    timeout: float, do_deploy: bool, dags: Path | None, plugins: Path | None, services: Path | None,
    deploy_to: str | None, pipeline: str | None, environment: str | None,
) -> int:  # fmt: skip
    """Deploy, trigger DAG_ID through Airflow's REST API, wait, then check the run end to end."""
    try:
        params = json.loads(conf)
    except ValueError as exc:
        return _fail(BadInputError(f"--conf is not JSON ({exc}): pass a JSON object"))
    if not isinstance(params, dict):
        return _fail(BadInputError("--conf must be a JSON object of DAG params"))
    try:
        resolved = _resolve_target(target, airflow_url, airflow_user, airflow_password, controller_url, mlflow_url)
    except UnreachableError as exc:  # e.g. `make up` is not running: still a report naming the check
        results = [CheckResult("reachable", False, str(exc))]
        results += [CheckResult(name, None, "not run: an earlier check failed") for name in CHECKS[1:]]
        return _finish(PipelineTestOutcome(results, None, exc.exit_code), dag_id, junit_path)
    except PipelineError as exc:
        return _fail(exc)
    options = PipelineTestOptions(dag_id=dag_id, conf=params, timeout=timeout, mlflow_url=resolved.mlflow_url)
    with _clients(resolved) as (airflow, controller, mlflow):
        deployer: Callable[[], str] | None = None
        if do_deploy:
            dag_dir = dags or Path("dags")
            plugin_dir = plugins or (Path("plugins") if Path("plugins").is_dir() else None)
            services_file = services or (Path("services.yaml") if Path("services.yaml").is_file() else None)
            deploy_options = _deploy_options(dag_dir, plugin_dir, services_file, pipeline, environment or "test")

            def deployer() -> str:
                publisher = publisher_for(deploy_to) if deploy_to else None
                return _summary(deploy(deploy_options, controller, publisher))

        runner = PipelineTest(options, airflow, controller, deployer=deployer, mlflow=mlflow, progress=click.echo)
        outcome = runner.run()
    return _finish(outcome, dag_id, junit_path)


def _finish(outcome: PipelineTestOutcome, dag_id: str, junit_path: Path | None) -> int:
    """The summary table, the JUnit report, one ``error:`` line naming the first failed check; the exit code."""
    print_summary(outcome, dag_id)
    if junit_path is not None:
        write_junit(junit_path, f"mlprov pipeline test {dag_id}", outcome.results)
        click.echo(f"JUnit report: {junit_path}")
    failure = outcome.first_failure
    if failure is not None:
        click.echo(f"error: check {failure.name!r} failed: {' '.join(failure.message.split())}", err=True)
    return outcome.exit_code


def _resolve_target(
    target: str, airflow_url: str | None, airflow_user: str | None, airflow_password: str | None,
    controller_url: str | None, mlflow_url: str | None,
) -> Target:  # fmt: skip
    token = os.environ.get("MLPROV_TOKEN")
    if target == "local" and not airflow_url:
        local = local_target()
        return Target(
            airflow_url=local.airflow_url,
            controller_url=controller_url or local.controller_url,
            controller_token=token if controller_url else local.controller_token,
            airflow_user=airflow_user or local.airflow_user,
            airflow_password=airflow_password if airflow_user else local.airflow_password,
            mlflow_url=mlflow_url or local.mlflow_url,
        )
    url = airflow_url or target
    if not url.startswith(("http://", "https://")):
        raise BadInputError(f"--target {target!r}: use `local` or Airflow's http(s) URL")
    if not controller_url:
        raise BadInputError("a remote target needs --controller-url (or MLPROV_CONTROLLER_URL)")
    airflow_token = os.environ.get("AIRFLOW_TOKEN")
    if not airflow_token and not (airflow_user and airflow_password is not None):
        raise BadInputError("Airflow credentials missing: set AIRFLOW_TOKEN or --airflow-user/--airflow-password")
    return Target(
        airflow_url=url,
        controller_url=controller_url,
        controller_token=token,
        airflow_token=airflow_token,
        airflow_user=airflow_user,
        airflow_password=airflow_password,
        mlflow_url=mlflow_url,
    )
