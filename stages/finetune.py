"""finetune: continue training the base model on the full training split -> ``outputs/model/``.

Reads ``inputs/base_model/`` (``model.safetensors`` + ``config.json``, as pretrain writes it) and
``inputs/train.parquet``; the architecture comes from the base model, whose input features must be
the data's. The tuned weights go to ``model/`` in safetensors with their ``config.json``.

Parameters: ``seed`` (42), ``epochs`` (30), ``learning_rate`` (0.005), ``batch_size`` (64),
``l2`` (0.0001).
Writes ``model/`` and ``metrics.json`` (``loss``: the training loss after each epoch, so MLflow
records steps; ``initial_loss`` (the base model's), ``final_loss``, ``train_accuracy``).

Run: ``python -m stages.finetune`` in the workspace. Exit 2: bad parameters, missing or bad input.
"""

from __future__ import annotations

import sys
import time

from stages.mlp import CONFIG_FILE, WEIGHTS_FILE, TrainConfig, load_model, save_model, train
from stages.tables import read_parquet
from stages.workspace import InputError, Workspace, run_stage

__all__ = ["main", "run"]

BASE = "base_model"
DATA = "train.parquet"
OUTPUT = "model"


def run(ws: Workspace) -> None:
    params = ws.params()
    config = TrainConfig(
        epochs=params.integer("epochs", 30, low=1, high=10_000),
        learning_rate=params.number("learning_rate", 0.005, low=1e-6, high=1.0),
        batch_size=params.integer("batch_size", 64, low=1, high=1_000_000),
        l2=params.number("l2", 1e-4, low=0.0, high=10.0),
        seed=params.integer("seed", 42, low=0, high=2**32 - 1),
    )
    params.finish()
    model, base_config = load_model(ws.input_dir(BASE, WEIGHTS_FILE, CONFIG_FILE), f"inputs/{BASE}")
    data = read_parquet(ws.input_file(DATA))
    if base_config.get("features") != data.features:
        raise InputError(
            f"inputs/{DATA}: features {data.features} are not the base model's {base_config.get('features')}"
        )
    inputs, hidden = model.shape
    ws.log(f"fine-tuning the {inputs}-{hidden}-1 base model on {len(data.x)} rows for {config.epochs} epochs")
    started = time.perf_counter()
    result = train(
        model, data.x, data.y, config, lambda epoch, loss: ws.log(f"epoch {epoch}/{config.epochs} loss {loss:.5f}")
    )
    seconds = time.perf_counter() - started
    ws.log(f"loss {result.initial_loss:.5f} -> {result.epoch_loss[-1]:.5f} in {seconds:.2f} s")
    train_metrics = model.evaluate(data.x, data.y)
    with ws.publish_dir(OUTPUT) as directory:
        save_model(
            directory,
            model,
            {
                "features": data.features,
                "role": "fine-tuned",
                "base_model": {"role": base_config.get("role"), "training": base_config.get("training")},
                "training": {**params.used, "rows": len(data.x), "final_loss": result.epoch_loss[-1]},
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
    return run_stage("finetune", run, argv)


if __name__ == "__main__":
    sys.exit(main())
