"""The demo ML stages: plain programs that know nothing of provenance.

Each stage runs with its job's workspace as working directory (``python -m stages.<name>``, or
``--workspace DIR``): it reads ``params.json`` and ``inputs/``, writes ``outputs/`` (+
``outputs/metrics.json``), publishes every output atomically and exits non-zero with one ``error:``
line on stderr on bad input. The provenance sidecar watches ``outputs/`` and signs each finished
artifact; nothing here imports ``provenance`` or ``controller`` (ARCHITECTURE section 3).

The chain (``dags/demo_lifecycle.py``)::

    ingest      source URI            -> raw.csv
    preprocess  raw.csv               -> train.parquet, val.parquet, normalizer.json
    pretrain    train.parquet         -> base_model/   (model.safetensors + config.json)
    finetune    base_model/, train    -> model/        (model.safetensors + config.json)
    evaluate    base_model/, model/,  -> evaluation.json
                val.parquet
"""
