"""pretrain: train the base model on a subset of the training split -> ``outputs/base_model/``.

The demo's stand-in for a generic pre-trained model: the MLP of :mod:`stages.mlp` trained briefly on a
seeded ``subset_fraction`` of ``inputs/train.parquet``, so fine-tuning has something to improve.

Parameters: ``seed`` (42), ``hidden_units`` (16), ``epochs`` (5), ``learning_rate`` (0.01),
``batch_size`` (64), ``l2`` (0.0), ``subset_fraction`` (0.25).
Writes ``base_model/`` (``model.safetensors``, ``config.json``) and ``metrics.json`` (``loss``: the
training loss after each epoch, ``initial_loss``, ``final_loss``, ``train_accuracy``; no timings, so
equal seeds give equal bytes).

Run: ``python -m stages.pretrain`` in the workspace. Exit 2: bad parameters, missing or bad input.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from stages.mlp import Mlp, TrainConfig, save_model, train
from stages.tables import read_parquet
from stages.workspace import Workspace, run_stage

__all__ = ["main", "run"]

INPUT = "train.parquet"
OUTPUT = "base_model"


def run(ws: Workspace) -> None:
    params = ws.params()
    seed = params.integer("seed", 42, low=0, high=2**32 - 1)
    hidden = params.integer("hidden_units", 16, low=1, high=1024)
    config = TrainConfig(
        epochs=params.integer("epochs", 5, low=1, high=10_000),
        learning_rate=params.number("learning_rate", 0.01, low=1e-6, high=1.0),
        batch_size=params.integer("batch_size", 64, low=1, high=1_000_000),
        l2=params.number("l2", 0.0, low=0.0, high=10.0),
        seed=seed,
    )
    fraction = params.number("subset_fraction", 0.25, low=0.01, high=1.0)
    params.finish()
    data = read_parquet(ws.input_file(INPUT))
    rng = np.random.default_rng(seed)
    subset = np.sort(rng.permutation(len(data.x))[: max(1, round(len(data.x) * fraction))])
    x, y = data.x[subset], data.y[subset]
    ws.log(f"pre-training a {len(data.features)}-{hidden}-1 MLP on {len(x)} of {len(data.x)} training rows")
    model = Mlp.initial(len(data.features), hidden, rng)
    started = time.perf_counter()
    result = train(model, x, y, config, lambda epoch, loss: ws.log(f"epoch {epoch}/{config.epochs} loss {loss:.5f}"))
    ws.log(f"loss {result.initial_loss:.5f} -> {result.epoch_loss[-1]:.5f} in {time.perf_counter() - started:.2f} s")
    train_metrics = model.evaluate(x, y)
    with ws.publish_dir(OUTPUT) as directory:
        save_model(
            directory,
            model,
            {
                "features": data.features,
                "role": "base",
                "training": {**params.used, "rows": len(x), "final_loss": result.epoch_loss[-1]},
            },
        )
    ws.publish_json(
        "metrics.json",
        {
            "loss": result.epoch_loss,
            "initial_loss": result.initial_loss,
            "final_loss": result.epoch_loss[-1],
            "train_accuracy": train_metrics["accuracy"],
        },
    )


def main(argv: list[str] | None = None) -> int:
    return run_stage("pretrain", run, argv)


if __name__ == "__main__":
    sys.exit(main())
