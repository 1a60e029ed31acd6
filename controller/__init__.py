"""The ML service controller: catalog, task API, dispatcher, runtimes, store, logs, MLflow recording."""
