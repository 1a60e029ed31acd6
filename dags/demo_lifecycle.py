"""demo_lifecycle: ingest -> preprocess -> pretrain -> finetune -> evaluate, every task through the controller.

Each task is a ``ControllerTaskOperator`` running one registered ``job`` service of the repository's
``services.yaml`` (the stages in ``stages/``). The controller resolves the code ref to a commit,
materialises each input by digest under ``inputs/<name>``, runs the stage, and the provenance
sidecar signs every output, linked to its inputs and code. A task takes exactly the upstream
outputs it uses, picked by name from the upstream's XCom ``outputs`` and passed **by digest**, so
the lineage says e.g. that pretrain read ``train.parquet`` and not ``val.parquet``.

Trigger with a conf to override the params below, e.g. ``{"epochs": 50, "seed": 7}``; ``source``
can be ``builtin://synthetic`` (generated, the default: no internet here), ``file:///...``,
``https://...`` or ``s3://bucket/key`` (S3 endpoint and credentials: ``stages/sources.py``).

Parse time does no I/O: the file only builds the DAG (the repository path is computed from this
file's path as a string; templates are rendered when a task runs). Templates render to native
types (``render_template_as_native_obj``) so numeric params reach the stages as numbers.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from airflow.sdk import DAG, Param

from plugins.operators import ControllerTaskOperator

# The repository this file lives in (dags/..): the code the controller resolves to a commit.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Poll the controller often: a task that ends just after a poll would otherwise wait a whole interval,
# which on second-long stages costs more than the provenance capture itself (bench/bench_demo.py).
_OPERATOR_DEFAULTS: dict[str, Any] = {"poll_interval": 0.25, "log_settle": 3.0}


def output_digest(task_id: str, name: str) -> str:
    """A template rendering to the digest of ``task_id``'s output named ``name`` (from its XCom ``outputs``)."""
    return (
        f"{{{{ ti.xcom_pull(task_ids='{task_id}', key='outputs') "
        f"| selectattr('name', 'equalto', '{name}') | map(attribute='digest') | first }}}}"
    )


def _param(name: str) -> str:
    return f"{{{{ params.{name} }}}}"


with DAG(
    dag_id="demo_lifecycle",
    description="mlprov demo: ingest, preprocess, pre-train, fine-tune and evaluate a small model, all signed",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    render_template_as_native_obj=True,
    tags=["mlprov", "demo"],
    params={
        "source": Param("builtin://synthetic", type="string", description="data source URI"),
        "source_sha256": Param("", type="string", description="expected sha256 of the source (empty: any)"),
        "seed": Param(42, type="integer", minimum=0, description="one seed for data, split and training"),
        "rows": Param(2000, type="integer", minimum=100, maximum=1_000_000, description="builtin source rows"),
        "features": Param(8, type="integer", minimum=3, maximum=64, description="builtin source features"),
        "val_fraction": Param(0.2, type="number", minimum=0.05, maximum=0.5),
        "hidden_units": Param(16, type="integer", minimum=1, maximum=1024, description="base model width"),
        "pretrain_epochs": Param(5, type="integer", minimum=1, maximum=10_000),
        "epochs": Param(30, type="integer", minimum=1, maximum=10_000, description="fine-tuning epochs"),
        "learning_rate": Param(0.005, type="number", exclusiveMinimum=0, maximum=1, description="fine-tuning"),
        "batch_size": Param(64, type="integer", minimum=1),
        "code_repo": Param(REPOSITORY, type="string", description="git repository of the stages"),
        "code_ref": Param("HEAD", type="string", description="branch, tag or commit; resolved by the controller"),
    },
) as dag:
    code = {"repo": _param("code_repo"), "ref": _param("code_ref")}

    ingest = ControllerTaskOperator(
        task_id="ingest",
        service="ingest",
        params={
            "source": _param("source"),
            "sha256": _param("source_sha256"),
            "seed": _param("seed"),
            "rows": _param("rows"),
            "features": _param("features"),
        },
        code=code,
        **_OPERATOR_DEFAULTS,
    )
    preprocess = ControllerTaskOperator(
        task_id="preprocess",
        service="preprocess",
        params={"seed": _param("seed"), "val_fraction": _param("val_fraction")},
        inputs=[output_digest("ingest", "raw.csv")],
        code=code,
        **_OPERATOR_DEFAULTS,
    )
    pretrain = ControllerTaskOperator(
        task_id="pretrain",
        service="pretrain",
        params={
            "seed": _param("seed"),
            "hidden_units": _param("hidden_units"),
            "epochs": _param("pretrain_epochs"),
            "batch_size": _param("batch_size"),
        },
        inputs=[output_digest("preprocess", "train.parquet")],
        code=code,
        **_OPERATOR_DEFAULTS,
    )
    finetune = ControllerTaskOperator(
        task_id="finetune",
        service="finetune",
        params={
            "seed": _param("seed"),
            "epochs": _param("epochs"),
            "learning_rate": _param("learning_rate"),
            "batch_size": _param("batch_size"),
        },
        inputs=[output_digest("pretrain", "base_model"), output_digest("preprocess", "train.parquet")],
        code=code,
        **_OPERATOR_DEFAULTS,
    )
    evaluate = ControllerTaskOperator(
        task_id="evaluate",
        service="evaluate",
        inputs=[
            output_digest("pretrain", "base_model"),
            output_digest("finetune", "model"),
            output_digest("preprocess", "val.parquet"),
        ],
        code=code,
        **_OPERATOR_DEFAULTS,
    )

    ingest >> preprocess >> pretrain >> finetune >> evaluate
