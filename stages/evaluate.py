"""evaluate: the base and the tuned model on the validation split -> ``outputs/evaluation.json``.

Reads ``inputs/base_model/``, ``inputs/model/`` and ``inputs/val.parquet``. ``evaluation.json`` holds
top-level scalars (what the evaluation manifest and MLflow show: ``base_loss``, ``base_accuracy``,
``tuned_loss``, ``tuned_accuracy``, ``loss_improvement``, ``accuracy_improvement``, ``rows``) and
the details per model; ``metrics.json`` the same scalars. Takes no parameters.

Run: ``python -m stages.evaluate`` in the workspace. Exit 2: missing or bad input, models that do
not fit the data.
"""

from __future__ import annotations

import sys

from stages.mlp import CONFIG_FILE, WEIGHTS_FILE, Mlp, load_model
from stages.tables import Table, read_parquet
from stages.workspace import InputError, Workspace, run_stage

__all__ = ["main", "run"]

BASE = "base_model"
TUNED = "model"
DATA = "val.parquet"


def _score(ws: Workspace, name: str, data: Table) -> tuple[dict[str, float], dict[str, object]]:
    model: Mlp
    model, config = load_model(ws.input_dir(name, WEIGHTS_FILE, CONFIG_FILE), f"inputs/{name}")
    if config.get("features") != data.features:
        raise InputError(f"inputs/{DATA}: features {data.features} are not those of inputs/{name}")
    metrics = model.evaluate(data.x, data.y)
    ws.log(f"{name}: loss {metrics['loss']:.5f} accuracy {metrics['accuracy']:.4f}")
    return metrics, config


def run(ws: Workspace) -> None:
    ws.params().finish()
    data = read_parquet(ws.input_file(DATA))
    ws.log(f"evaluating on {len(data.x)} validation rows")
    base, base_config = _score(ws, BASE, data)
    tuned, tuned_config = _score(ws, TUNED, data)
    summary = {
        "base_loss": base["loss"],
        "base_accuracy": base["accuracy"],
        "tuned_loss": tuned["loss"],
        "tuned_accuracy": tuned["accuracy"],
        "loss_improvement": base["loss"] - tuned["loss"],
        "accuracy_improvement": tuned["accuracy"] - base["accuracy"],
        "rows": len(data.x),
    }
    ws.log(f"tuned vs base: accuracy {summary['accuracy_improvement']:+.4f}, loss {-summary['loss_improvement']:+.5f}")
    ws.publish_json(
        "evaluation.json",
        {
            **summary,
            "dataset": f"inputs/{DATA}",
            "models": {
                BASE: {"metrics": base, "role": base_config.get("role")},
                TUNED: {"metrics": tuned, "role": tuned_config.get("role")},
            },
        },
    )
    ws.publish_json("metrics.json", summary)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", run, argv)


if __name__ == "__main__":
    sys.exit(main())
